"""Helpers for the NUMA tests: node pool counts and pages per node from numa_maps."""

import json
import subprocess
import sys
from pathlib import Path

NODES = Path("/sys/devices/system/node")
HUGELOAD = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "hugeload"


def node_count(node: int, kb: int = 2048) -> int:
    return int((NODES / f"node{node}/hugepages/hugepages-{kb}kB/nr_hugepages").read_text())


MAPPER = r'''
import mmap, os, sys, json
path, kb = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_RDONLY)
size = os.fstat(fd).st_size
mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
for off in range(0, size, kb * 1024):
    mm[off]
maps = [l for l in open("/proc/self/numa_maps") if "huge" in l or "file=" in l]
mapped = [l.split()[-1] for l in open("/proc/self/maps") if l.split()[-1:] and l.split()[-1].startswith("/") and ".gguf" in l]
print(json.dumps({"numa_maps": maps, "maps": mapped, "env_node": os.environ.get("HUGELOAD_NODE"),
                  "cpus": sorted(os.sched_getaffinity(0))}))
'''


def pages_on_nodes(numa_maps_lines: list[str], path: str) -> dict[int, int]:
    out: dict[int, int] = {}
    for line in numa_maps_lines:
        if f"file={path}" not in line:
            continue
        for field in line.split():
            k, _, v = field.partition("=")
            if k.startswith("N") and k[1:].isdigit():
                out[int(k[1:])] = out.get(int(k[1:]), 0) + int(v)
    return out


def staged_pages(path: str, kb: int = 2048) -> dict[int, int]:
    """Nodes of a staged file's pages, counted by a separate process from its numa_maps."""
    code = MAPPER
    r = subprocess.run([sys.executable, "-c", code, path, str(kb)], capture_output=True, text=True, check=True)
    return pages_on_nodes(json.loads(r.stdout)["numa_maps"], path)
