"""Argument helpers shared by commands."""

import argparse

from hugeload.act import hvo as act_hvo
from hugeload.errors import NotSupported, UsageError
from hugeload.probe import pools


def add_json(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def require_hugetlb(root) -> None:
    """Fail with one line when the kernel has no huge page support to read."""
    if not pools.page_sizes(root):
        raise NotSupported(
            f"no huge page support found under {root.rstrip('/')}/sys/kernel/mm/hugepages "
            "(not Linux, or a kernel without hugetlb)"
        )


def add_state_dir(parser) -> None:
    parser.add_argument(
        "--state-dir",
        default=None,
        help="where hugeload keeps its ledger and store (default $HUGELOAD_STATE_DIR or /run/hugeload)",
    )


def parsed_by(parse, name: str):
    """An argparse `type=` from a parser that raises UsageError: bad input is refused at parse
    time, in argparse's one line (exit 2), and the handler gets the parsed value."""

    def convert(text: str):
        try:
            return parse(text)
        except UsageError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = name  # argparse names the type in its messages
    return convert


def octal(text: str) -> int:
    try:
        return int(text, 8)
    except ValueError:
        raise UsageError(f"mode {text!r} is not an octal number like 1770") from None


def add_hvo(p) -> None:
    p.add_argument(
        "--hvo",
        type=act_hvo.arg_type,
        default=None,
        metavar="{auto,leave}",
        help="vm.hugetlb_optimize_vmemmap (HVO), which gives back the struct page memory of huge pages "
        "allocated while it is on (16 MiB per 1 GB page, 14 MiB per GiB of 2 MB pages): auto turns it on "
        "before reserving and puts it back when hugeload's last page goes, unless it was set outside "
        "hugeload; leave never writes it (default: $HUGELOAD_HVO, else auto)",
    )
