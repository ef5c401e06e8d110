"""hugetlb_cma=: an area reserved at boot from which 1 GB pages are taken at run time.  Pure.

The choice `boot-config` offers (Documentation/admin-guide/kernel-parameters.txt):
  hugepagesz=1G hugepages=N   N pages taken from memory at boot.  They are there whatever
                              happens later, and that memory is gone for everything else
                              until the pool is shrunk.
  hugetlb_cma=SIZE            a CMA area of SIZE set aside at boot (Linux 5.7+, CONFIG_CMA).
                              The kernel lends it to movable allocations (page cache,
                              anonymous memory) while no huge page is taken from it, and
                              migrates them out when `hugeload reserve` (or any write of
                              nr_hugepages) asks for 1 GB pages, so those succeed however
                              fragmented memory is.  The pages still have to be reserved at
                              run time, and migrating what was lent takes a moment.
The kernel skips boot-time 1 GB pages when hugetlb_cma= is set ("hugetlb_cma is enabled, skip
boot time allocation", mm/hugetlb.c), so the two are not combined for 1 GB pages.
"""

from typing import NamedTuple

from hugeload.errors import UsageError
from hugeload.pages import PAGE_1G
from hugeload.units import GiB, KiB, parse_size

PARAM = "hugetlb_cma"


class CmaSpec(NamedTuple):
    """`4G` (spread over the nodes by the kernel), or per node `0:4G,1:4G`."""

    total: int | None  # bytes, when not per node
    per_node: tuple[tuple[int, int], ...] = ()  # (node, bytes)

    @property
    def bytes(self) -> int:
        return self.total if self.total is not None else sum(b for _, b in self.per_node)

    @property
    def pages_1g(self) -> int:
        return self.bytes // PAGE_1G.bytes

    def param(self) -> str:
        """The kernel parameter: hugetlb_cma=4G, hugetlb_cma=0:4G,1:4G."""
        if self.total is not None:
            return f"{PARAM}={_size(self.total)}"
        return f"{PARAM}=" + ",".join(f"{n}:{_size(b)}" for n, b in self.per_node)


def _size(n: int) -> str:
    return f"{n // GiB}G"


def _whole_pages(text: str) -> int:
    n = parse_size(text.strip())
    if n <= 0 or n % PAGE_1G.bytes:
        raise UsageError(
            f"hugetlb_cma size {text.strip()!r} is not a positive multiple of 1G: the area holds whole 1 GB pages"
        )
    return n


def parse_spec(text: str) -> CmaSpec:
    """`8G` or `0:4G,1:4G` (sizes as units.parse_size reads them, each a whole number of 1 GB
    pages); UsageError in one line otherwise."""
    text = str(text).strip()
    if ":" not in text:
        return CmaSpec(_whole_pages(text))
    per_node: list[tuple[int, int]] = []
    for part in text.split(","):
        node_text, sep, size_text = part.partition(":")
        if not sep or not node_text.strip().isdigit():
            raise UsageError(
                f"cannot parse {part.strip()!r} in --cma: use SIZE or NODE:SIZE[,NODE:SIZE...] (0:4G,1:4G)"
            )
        node = int(node_text)
        if any(n == node for n, _ in per_node):
            raise UsageError(f"node {node} is named twice in --cma {text!r}")
        per_node.append((node, _whole_pages(size_text)))
    return CmaSpec(None, tuple(per_node))


def arg_type(text: str) -> CmaSpec:
    """An argparse `type=` for --cma."""
    import argparse

    try:
        return parse_spec(text)
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def check_nodes(spec: CmaSpec, nodes: list[int]) -> None:
    """Per-node areas only on nodes this machine has (the kernel ignores the others)."""
    missing = [n for n, _ in spec.per_node if nodes and n not in nodes]
    if missing:
        raise UsageError(
            f"--cma names node(s) {', '.join(map(str, missing))}, this machine has {', '.join(map(str, nodes))}"
        )


def pages_left(meminfo: dict[str, int], pool_1g_total: int, boot_1g: int = 0) -> int:
    """1 GB pages the CMA area can still give: its size in whole pages less the 1 GB pages
    taken from it.  Pages reserved at boot (hugepages=) come from elsewhere; every other page of
    the 1 GB pool is counted as the area's, since the kernel tries the area first.  Movable
    pages lent out of the area do not count against it (they are migrated out), so this is more
    than CmaFree shows."""
    total_kb = meminfo.get("CmaTotal", 0)
    from_cma = max(0, pool_1g_total - boot_1g)
    return max(0, total_kb * KiB // PAGE_1G.bytes - from_cma)
