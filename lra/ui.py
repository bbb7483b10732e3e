"""`python -m lra.ui`: the command's old name, kept for users; the code is lra/compare/ui.py."""

import sys

from lra.compare.ui import main

if __name__ == "__main__":
    sys.exit(main())
