"""`python -m hugeload`: the CLI (what the systemd units run, with the interpreter root owns)."""

import sys

from hugeload.cli import main

if __name__ == "__main__":
    sys.exit(main())
