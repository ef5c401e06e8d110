"""Kernel version and the huge page parameters on the boot command line."""

import re
from typing import NamedTuple

from hugeload.errors import HugeloadError
from hugeload.pages import PAGE_2M
from hugeload.probe.files import read_text
from hugeload.units import KiB, parse_size


class BootParams(NamedTuple):
    # page size (kB) -> hugepages= count that follows its hugepagesz=
    hugepages: dict[int, int]
    default_hugepagesz_kb: int | None
    transparent_hugepage: str | None
    raw: str
    hugetlb_cma: str | None = None  # `hugetlb_cma=` as written: `4G`, or per node `0:4G,1:4G`


def read_kernel_release(root="/") -> str:
    return (read_text(root, "proc/sys/kernel/osrelease", "") or "").strip()


def version_tuple(release: str) -> tuple[int, ...]:
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", release)
    return tuple(int(x) for x in m.groups() if x is not None) if m else ()


_INVALID = -1  # a hugepagesz= that did not parse: the kernel ignores the hugepages= after it


def _page_count(value: str) -> int:
    """`16`, or the per-node form `0:16,1:16` (Linux 5.19+), summed."""
    if ":" in value:
        return sum(int(part.partition(":")[2]) for part in value.split(","))
    return int(value)


def parse_cmdline(cmdline: str) -> BootParams:
    """Pairs each `hugepages=N` with the `hugepagesz=` before it, as the kernel does.

    A `hugepages=` with no preceding `hugepagesz=` applies to the default size
    (`default_hugepagesz=`, else 2M on x86).
    """
    hugepages: dict[int, int] = {}
    default_kb: int | None = None
    thp = None
    cma: str | None = None
    current: int | None = None  # the size a following hugepages= counts (None: the default size)
    pending_default_count = None
    # Arguments after a lone "--" go to init, not the kernel.
    kernel_args = f" {cmdline} ".split(" -- ", 1)[0]
    for arg in kernel_args.split():
        key, _, value = arg.partition("=")
        try:
            if key == "hugepagesz":
                current = _INVALID  # until it parses
                current = parse_size(value) // KiB
            elif key == "hugepages":
                count = _page_count(value)
                if current == _INVALID:
                    continue
                if current is None:
                    pending_default_count = count
                else:
                    hugepages[current] = count
            elif key == "default_hugepagesz":
                default_kb = parse_size(value) // KiB
                # A hugepages= that follows applies to the default size (hugetlbpage.rst).
                current = default_kb
            elif key == "transparent_hugepage":
                thp = value
            elif key == "hugetlb_cma":
                cma = value  # the last one counts, as for every early_param
        except (ValueError, HugeloadError):
            continue  # a malformed boot parameter is ignored, as the kernel does
    if pending_default_count is not None:
        hugepages.setdefault(default_kb or PAGE_2M.kb, pending_default_count)
    return BootParams(hugepages, default_kb, thp, cmdline.strip(), cma)


def read_boot_params(root="/") -> BootParams:
    return parse_cmdline(read_text(root, "proc/cmdline", "") or "")
