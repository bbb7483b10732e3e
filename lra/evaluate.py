"""`python -m lra.evaluate`: the command's old name, kept for users; the code is lra/compare/evaluate.py."""

import sys

from lra.compare.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
