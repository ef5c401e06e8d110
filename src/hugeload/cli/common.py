"""Argument helpers shared by commands."""

from hugeload.errors import NotSupported
from hugeload.probe import pools


def add_json(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def require_hugetlb(root) -> None:
    """Fail with one line when the kernel has no huge page support to read."""
    if not pools.page_sizes(root):
        raise NotSupported(f"no huge page support found under {root.rstrip('/')}/sys/kernel/mm/hugepages (not Linux, or a kernel without hugetlb)")
