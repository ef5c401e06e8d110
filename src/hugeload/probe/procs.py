"""Processes' huge page use: /proc/PID/status and /proc/PID/smaps."""

import os
from typing import NamedTuple

from hugeload.probe.files import listdir, read_text
from hugeload.units import MiB

LARGE_MAPPING = 64 * MiB


class Mapping(NamedTuple):
    start: int
    end: int
    path: str  # file, [heap], [anon], ...
    kernel_page_kb: int
    rss_kb: int
    file_pmd_mapped_kb: int
    anon_huge_kb: int
    hugetlb_kb: int  # Shared_Hugetlb + Private_Hugetlb
    flags: str  # rwxp / rwxs

    @property
    def size(self) -> int:
        return self.end - self.start


class ProcessHugePages(NamedTuple):
    pid: int
    comm: str
    hugetlb_kb: int  # HugetlbPages in /proc/PID/status
    vmpte_kb: int
    mappings: list[Mapping]  # mappings of at least min_size


def read_status(root, pid: int) -> dict[str, str]:
    out = {}
    for line in (read_text(root, f"proc/{pid}/status", "") or "").splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def _kb(value: str | None) -> int:
    try:
        return int((value or "0").split()[0])
    except (ValueError, IndexError):
        return 0


def parse_smaps(text: str, min_size: int = 0) -> list[Mapping]:
    out = []
    head = None
    fields: dict[str, int] = {}

    def flush():
        if head is None:
            return
        start, end, perms, path = head
        if end - start >= min_size:
            out.append(Mapping(
                start, end, path,
                fields.get("KernelPageSize", 4), fields.get("Rss", 0),
                fields.get("FilePmdMapped", 0), fields.get("AnonHugePages", 0),
                fields.get("Shared_Hugetlb", 0) + fields.get("Private_Hugetlb", 0), perms,
            ))

    for line in text.splitlines():
        first = line.split(None, 1)[0] if line.strip() else ""
        if "-" in first and not first.endswith(":"):
            flush()
            parts = line.split(None, 5)
            lo, _, hi = parts[0].partition("-")
            path = parts[5].strip() if len(parts) > 5 else "[anon]"
            head = (int(lo, 16), int(hi, 16), parts[1], path)
            fields = {}
        elif first.endswith(":"):
            key = first[:-1]
            rest = line.split()[1:]
            if rest and rest[0].isdigit():
                fields[key] = int(rest[0])
    flush()
    return out


def read_smaps(root, pid: int, min_size: int = LARGE_MAPPING) -> list[Mapping]:
    return parse_smaps(read_text(root, f"proc/{pid}/smaps", "") or "", min_size)


def read_process(root, pid: int, min_size: int = LARGE_MAPPING) -> ProcessHugePages | None:
    status = read_status(root, pid)
    if not status:
        return None
    return ProcessHugePages(
        pid=pid,
        comm=status.get("Name", ""),
        hugetlb_kb=_kb(status.get("HugetlbPages")),
        vmpte_kb=_kb(status.get("VmPTE")),
        mappings=read_smaps(root, pid, min_size),
    )


def pids(root="/") -> list[int]:
    return sorted(int(p) for p in listdir(root, "proc") if p.isdigit())


def huge_page_users(root="/", min_size: int = LARGE_MAPPING) -> list[ProcessHugePages]:
    """Processes with hugetlb pages mapped (HugetlbPages > 0) or large THP mappings."""
    out = []
    for pid in pids(root):
        status = read_status(root, pid)
        if _kb(status.get("HugetlbPages")) > 0 or _thp_kb(root, pid) * 1024 >= max(min_size, 1):
            proc = read_process(root, pid, min_size)
            if proc:
                out.append(proc)
    return out


def _thp_kb(root, pid: int) -> int:
    """AnonHugePages + FilePmdMapped from smaps_rollup (one line per field, cheap), else smaps."""
    text = read_text(root, f"proc/{pid}/smaps_rollup")
    if text is None:
        return sum(m.anon_huge_kb + m.file_pmd_mapped_kb for m in read_smaps(root, pid, 0))
    total = 0
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("AnonHugePages", "FilePmdMapped"):
            total += _kb(value)
    return total


def mapping_page_sizes(root, pid: int, path: str) -> set[int]:
    """KernelPageSize (kB) of every mapping of `path` in process `pid`."""
    target = os.path.realpath(path) if str(root) == "/" else path
    return {m.kernel_page_kb for m in read_smaps(root, pid, 0) if m.path in (path, target)}
