"""`python -m lra.report`: the command's old name, kept for users; the code is lra/compare/report.py."""

import sys

from lra.compare.report import main

if __name__ == "__main__":
    sys.exit(main())
