"""The `hugeload` command: thin argument parsing and rendering over probe/plan/act.

Each command lives in a cmd_*.py module with `register(subparsers)`, which adds
its parser and sets `func` to a handler taking the parsed args and returning
the exit code.
"""

import argparse
import os
import sys

from hugeload import __version__
from hugeload.cli import (
    cmd_bench,
    cmd_boot,
    cmd_container,
    cmd_doctor,
    cmd_exporter,
    cmd_make_model,
    cmd_mount,
    cmd_plan,
    cmd_pools,
    cmd_run,
    cmd_status,
    cmd_store,
)
from hugeload.errors import HugeloadError

COMMANDS = [
    cmd_status,
    cmd_doctor,
    cmd_plan,
    cmd_pools,
    cmd_mount,
    cmd_boot,
    cmd_store,
    cmd_container,
    cmd_run,
    cmd_bench,
    cmd_make_model,
    cmd_exporter,
]


class Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line, exit 2: the same shape as every other bad-input error.
        self.exit(2, f"hugeload: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="hugeload", description="Model weights in 1 GB huge pages for CPU inference engines.")
    parser.add_argument("--version", action="version", version=f"hugeload {__version__}")
    parser.add_argument("--root", default="/", help=argparse.SUPPRESS)  # probe another root (tests)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except HugeloadError as e:
        print(f"hugeload: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("hugeload: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 141
    except Exception as e:
        if os.environ.get("HUGELOAD_DEBUG"):
            raise
        print(
            f"hugeload: internal error: {type(e).__name__}: {e} (HUGELOAD_DEBUG=1 shows the traceback)", file=sys.stderr
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
