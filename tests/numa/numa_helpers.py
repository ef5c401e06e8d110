"""Helpers for the NUMA tests: node pool counts, and pages per node from numa_maps, matched
by a mapping's address or by its whole file name (never by a substring of a path: the
library's own .so and other files in the page cache sit on whichever node read them first)."""

import json
import subprocess
import sys
from pathlib import Path

from hugeload.probe.numa import Mapping, pages_by_node, parse_numa_maps

NODES = Path("/sys/devices/system/node")
HUGELOAD = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "hugeload"


def node_count(node: int, kb: int = 2048) -> int:
    return int((NODES / f"node{node}/hugepages/hugepages-{kb}kB/nr_hugepages").read_text())


MAPPER = r"""
import mmap, os, sys, json
path, kb = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_RDONLY)
size = os.fstat(fd).st_size
mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
for off in range(0, size, kb * 1024):
    mm[off]
mapped = [p[5].rstrip("\n") for p in (l.split(None, 5) for l in open("/proc/self/maps")) if len(p) == 6]
print(json.dumps({"numa_maps": open("/proc/self/numa_maps").read(), "maps": mapped,
                  "env_node": os.environ.get("HUGELOAD_NODE"), "cpus": sorted(os.sched_getaffinity(0))}))
"""


def pages_on_nodes(numa_maps_text: str, path: str) -> dict[int, int]:
    """Pages per node of the mappings whose file is exactly `path`."""
    return pages_by_node(parse_numa_maps(numa_maps_text), path)


def vma_ranges(maps_text: str) -> list[tuple[int, int]]:
    """[start, end) of every mapping in a /proc/PID/maps text."""
    out = []
    for line in maps_text.splitlines():
        lo, _, hi = line.split(None, 1)[0].partition("-")
        out.append((int(lo, 16), int(hi, 16)))
    return out


def mappings_over(maps_text: str, numa_maps_text: str, lo: int, hi: int) -> list[Mapping]:
    """The numa_maps entries of the mappings that overlap [lo, hi): found by address."""
    starts = {s for s, e in vma_ranges(maps_text) if s < hi and e > lo}
    return [m for m in parse_numa_maps(numa_maps_text) if m.start in starts]


def staged_pages(path: str, kb: int = 2048) -> dict[int, int]:
    """Nodes of a staged file's pages, counted by a separate process from its numa_maps."""
    r = subprocess.run([sys.executable, "-c", MAPPER, path, str(kb)], capture_output=True, text=True, check=True)
    return pages_on_nodes(json.loads(r.stdout)["numa_maps"], path)
