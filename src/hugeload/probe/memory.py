"""Memory facts: /proc/meminfo, fragmentation (/proc/buddyinfo), pressure (PSI)."""

from typing import NamedTuple

from hugeload.probe.files import read_text


def read_meminfo(root="/") -> dict[str, int]:
    """Fields of /proc/meminfo; values in kB (page counts for HugePages_*)."""
    out = {}
    for line in (read_text(root, "proc/meminfo", "") or "").splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[key.strip()] = int(parts[0])
    return out


class BuddyZone(NamedTuple):
    node: int
    zone: str
    free_blocks: tuple[int, ...]  # free blocks of order 0, 1, 2, ...

    def free_bytes_at_least(self, order: int, page_bytes: int = 4096) -> int:
        """Bytes in free blocks of `order` or larger."""
        return sum(n * (page_bytes << o) for o, n in enumerate(self.free_blocks) if o >= order)


def read_buddyinfo(root="/") -> list[BuddyZone]:
    out = []
    for line in (read_text(root, "proc/buddyinfo", "") or "").splitlines():
        # "Node 0, zone   Normal    289    206 ..."
        head, _, counts = line.partition("zone")
        parts = counts.split()
        try:
            node = int(head.replace("Node", "").strip(" ,"))
            out.append(BuddyZone(node, parts[0], tuple(int(x) for x in parts[1:])))
        except (ValueError, IndexError):
            continue
    return out


class Pressure(NamedTuple):
    some_avg10: float
    some_avg60: float
    full_avg10: float
    full_avg60: float


def read_pressure(root="/") -> Pressure | None:
    """Memory PSI, or None when the kernel has no PSI (psi=0 or old kernel)."""
    text = read_text(root, "proc/pressure/memory")
    if not text:
        return None
    vals = {}
    for line in text.splitlines():
        kind, *fields = line.split()
        for f in fields:
            k, _, v = f.partition("=")
            if k in ("avg10", "avg60"):
                vals[f"{kind}_{k}"] = float(v)
    return Pressure(
        vals.get("some_avg10", 0.0),
        vals.get("some_avg60", 0.0),
        vals.get("full_avg10", 0.0),
        vals.get("full_avg60", 0.0),
    )


def read_vmstat(root="/") -> dict[str, int]:
    """Counters of /proc/vmstat (pages, or events)."""
    out = {}
    for line in (read_text(root, "proc/vmstat", "") or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def read_pcp_pages(root="/") -> int:
    """Free pages held on the per-CPU lists (/proc/zoneinfo `count:`).  The kernel does not count
    them in MemFree until they go back to the buddy lists, and a bulk free (HVO's vmemmap pages)
    or a drain (alloc_contig_range, which every runtime 1 GB page goes through) moves megabytes
    at once: a measurement of freed memory adds them to MemFree."""
    total = 0
    for line in (read_text(root, "proc/zoneinfo", "") or "").splitlines():
        key, _, value = line.strip().partition(":")
        if key == "count" and value.strip().isdigit():
            total += int(value)
    return total
