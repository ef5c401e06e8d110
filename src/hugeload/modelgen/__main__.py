"""`python -m hugeload.modelgen OUT --size 2G ...`: the same as `hugeload make-model` (an entry
point, like the `hugeload` script: the one module of the package that may call the CLI)."""

import sys

from hugeload.cli import main

sys.exit(main(["make-model", *sys.argv[1:]]))
