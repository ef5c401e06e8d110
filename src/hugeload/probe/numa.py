"""NUMA nodes: their CPUs, memory and huge page pools (/sys/devices/system/node), and
where a process's pages sit (/proc/PID/numa_maps)."""

import re
from typing import NamedTuple

from hugeload.probe import pools
from hugeload.probe.files import listdir, read_text

NODES_DIR = pools.NODES_DIR
_NODE_MEMINFO = re.compile(r"^Node\s+\d+\s+(\S+):\s+(\d+)")


class Node(NamedTuple):
    node: int
    cpus: tuple[int, ...]
    mem_total_kb: int
    mem_free_kb: int
    pools: dict[int, pools.Pool]  # page size kB -> this node's pool

    @property
    def has_memory(self) -> bool:
        return self.mem_total_kb > 0


def parse_cpulist(text: str | None) -> tuple[int, ...]:
    """'0-3,8,10-11' -> (0, 1, 2, 3, 8, 10, 11)."""
    out: list[int] = []
    for part in (text or "").strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        try:
            out.extend(range(int(lo), int(hi or lo) + 1))
        except ValueError:
            continue
    return tuple(out)


def node_meminfo(root, node: int) -> dict[str, int]:
    """Fields of nodeN/meminfo ('Node 0 MemFree: 123 kB'); kB, or pages for HugePages_*."""
    out = {}
    for line in (read_text(root, f"{NODES_DIR}/node{node}/meminfo", "") or "").splitlines():
        m = _NODE_MEMINFO.match(line)
        if m:
            out[m.group(1)] = int(m.group(2))
    return out


def read_node(root, node: int) -> Node:
    mem = node_meminfo(root, node)
    sizes = pools.page_sizes(root)
    return Node(
        node,
        parse_cpulist(read_text(root, f"{NODES_DIR}/node{node}/cpulist")),
        mem.get("MemTotal", 0),
        mem.get("MemFree", 0),
        {
            kb: pools.node_pool(root, kb, node)
            for kb in sizes
            if listdir(root, f"{NODES_DIR}/node{node}/hugepages/hugepages-{kb}kB")
        },
    )


def read_nodes(root="/") -> list[Node]:
    """Every node the kernel lists; an empty list on a kernel without NUMA support."""
    return [read_node(root, n) for n in pools.nodes(root)]


def cpu_nodes(root="/") -> dict[int, int]:
    """CPU id -> its node."""
    return {cpu: n.node for n in read_nodes(root) for cpu in n.cpus}


class Mapping(NamedTuple):
    start: int
    policy: str
    path: str | None
    pages: dict[int, int]  # node -> pages of this mapping present there
    page_kb: int


def read_numa_maps(root, pid="self") -> list[Mapping]:
    """/proc/PID/numa_maps: one entry per mapping with pages present, per node."""
    return parse_numa_maps(read_text(root, f"proc/{pid}/numa_maps", "") or "")


_OCTAL = re.compile(r"\\([0-7]{3})")


def parse_numa_maps(text: str) -> list[Mapping]:
    """'7f0000000000 bind:1 file=/x/y huge dirty=3 N1=3 kernelpagesize_kB=2048' lines.
    The kernel escapes space, tab, newline and '=' in the file name as octal (seq_file_path
    in fs/proc/task_mmu.c), so the name is decoded, never matched as a substring."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        try:
            start = int(parts[0], 16)
        except ValueError:
            continue
        path, per_node, kb = None, {}, 4
        for field in parts[2:]:
            key, _, value = field.partition("=")
            if key == "file":
                path = _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), value)
            elif key.startswith("N") and key[1:].isdigit() and value.isdigit():
                per_node[int(key[1:])] = int(value)
            elif key == "kernelpagesize_kB" and value.isdigit():
                kb = int(value)
        out.append(Mapping(start, parts[1], path, per_node, kb))
    return out


def pages_by_node(mappings: list[Mapping], path: str) -> dict[int, int]:
    """Pages of `path` present in these mappings, per node (summed over its mappings)."""
    total: dict[int, int] = {}
    for m in mappings:
        if m.path == path:
            for node, n in m.pages.items():
                total[node] = total.get(node, 0) + n
    return total
