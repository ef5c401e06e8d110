"""Huge page pools per page size, system-wide and per NUMA node."""

import re
from typing import NamedTuple

from hugeload.probe.files import listdir, read_int

HUGEPAGES_DIR = "sys/kernel/mm/hugepages"
NODES_DIR = "sys/devices/system/node"
_SIZE_DIR = re.compile(r"^hugepages-(\d+)kB$")


class Pool(NamedTuple):
    page_size_kb: int
    node: int | None  # None: the whole system
    total: int
    free: int
    reserved: int | None  # not kept per node by the kernel
    surplus: int
    overcommit: int | None  # system-wide setting only

    @property
    def in_use(self) -> int:
        """Pages mapped or promised to a mapping: these cannot be released."""
        return self.total - self.free + (self.reserved or 0)

    @property
    def available(self) -> int:
        """Free pages not yet promised to a mapping (free minus reserved)."""
        return self.free - (self.reserved or 0)


def page_sizes(root="/") -> list[int]:
    """Huge page sizes the kernel offers, in kB, smallest first."""
    sizes = []
    for name in listdir(root, HUGEPAGES_DIR):
        m = _SIZE_DIR.match(name)
        if m:
            sizes.append(int(m.group(1)))
    return sorted(sizes)


def nodes(root="/") -> list[int]:
    return sorted(int(n[4:]) for n in listdir(root, NODES_DIR) if n.startswith("node") and n[4:].isdigit())


def _read_pool(root, base: str, kb: int, node: int | None) -> Pool:
    d = f"{base}/hugepages-{kb}kB"
    return Pool(
        page_size_kb=kb,
        node=node,
        total=read_int(root, f"{d}/nr_hugepages", 0),
        free=read_int(root, f"{d}/free_hugepages", 0),
        reserved=read_int(root, f"{d}/resv_hugepages") if node is None else None,
        surplus=read_int(root, f"{d}/surplus_hugepages", 0),
        overcommit=read_int(root, f"{d}/nr_overcommit_hugepages") if node is None else None,
    )


def system_pool(root, kb: int) -> Pool:
    return _read_pool(root, HUGEPAGES_DIR, kb, None)


def node_pool(root, kb: int, node: int) -> Pool:
    return _read_pool(root, f"{NODES_DIR}/node{node}/hugepages", kb, node)


def read_pools(root="/") -> list[Pool]:
    """System pools for each size, then each NUMA node's pools."""
    sizes = page_sizes(root)
    out = [system_pool(root, kb) for kb in sizes]
    for node in nodes(root):
        for kb in sizes:
            if listdir(root, f"{NODES_DIR}/node{node}/hugepages/hugepages-{kb}kB"):
                out.append(node_pool(root, kb, node))
    return out
