"""Processes' huge page use: /proc/PID/status, /proc/PID/smaps and /proc/PID/smaps_rollup, and who a
process is (/proc/PID/stat: start time; /proc/stat: btime), one reader
each (psutil's `_pslinux.py` habit), and who holds a file or pages (one walk over /proc).

The error policy of every reader here is probe/files.py's: a process that is gone, or whose files
this user may not read, reads as empty ({} or []), never as an exception; a field that does not
parse reads as 0."""

import contextlib
import os
import re
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


def read_status(root, pid: int | str) -> dict[str, str]:
    """/proc/PID/status by key: each line's text before its first colon is the key, and the
    first line with a key wins.  A value is never searched for a key, so a process cannot fake
    a field by naming itself `HugetlbPages: 99` (its Name line is key `Name`)."""
    out: dict[str, str] = {}
    for line in (read_text(root, f"proc/{pid}/status", "") or "").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out.setdefault(key, value.strip())
    return out


def read_status_fields(root, pid, keys) -> dict[str, str]:
    """Only `keys` of /proc/PID/status, each found by its whole line key, never by a substring
    (a process can name itself "HugetlbPages: 1 kB" with prctl(PR_SET_NAME); the kernel escapes
    a newline in a name), in one read of the small file: a third of read_status's cost, which
    counts for the exporter's walk over thousands of processes.  {} when the process is gone."""
    want = {k.encode() for k in keys}
    try:
        fd = os.open(os.path.join(str(root), "proc", str(pid), "status"), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return {}
    chunks = []
    try:
        while chunk := os.read(fd, 16384):
            chunks.append(chunk)
    except OSError:  # exited while read
        return {}
    finally:
        os.close(fd)
    out: dict[str, str] = {}
    for line in b"".join(chunks).split(b"\n"):
        key, sep, value = line.partition(b":")
        if sep and key in want:
            out.setdefault(key.decode(), value.strip().decode(errors="replace"))
    return out


def read_mapped_inodes(root, pid) -> frozenset:
    """(device, inode) of every file /proc/PID/maps shows mapped: fields by position, so the
    path (whatever it holds, in whichever mount namespace) plays no part."""
    out = set()
    for line in (read_text(root, f"proc/{pid}/maps", "") or "").splitlines():
        parts = line.split(None, 5)
        if len(parts) >= 5 and parts[4] != "0":
            major, _, minor = parts[3].partition(":")
            try:
                out.add((os.makedev(int(major, 16), int(minor, 16)), int(parts[4])))
            except ValueError:
                continue
    return frozenset(out)


def _kb(value: str | None) -> int:
    try:
        return int((value or "0").split()[0])
    except (ValueError, IndexError):
        return 0


def status_kb(status: dict[str, str], key: str) -> int:
    """A kB field of read_status() as an int (`HugetlbPages`, `VmPTE`, `VmLck`); 0 when absent."""
    return _kb(status.get(key))


def read_smaps_rollup(root, pid: int | str) -> dict[str, int]:
    """/proc/PID/smaps_rollup's kB fields by key (Rss, Pss, Pss_Anon, AnonHugePages, ...);
    {} when the process is gone or the kernel predates it (4.14)."""
    out: dict[str, int] = {}
    for line in (read_text(root, f"proc/{pid}/smaps_rollup", "") or "").splitlines():
        key, sep, value = line.partition(":")
        parts = value.split()
        if sep and key.isidentifier() and parts and parts[0].isdigit():  # not the range header line
            out.setdefault(key, int(parts[0]))
    return out


def parse_smaps(text: str, min_size: int = 0) -> list[Mapping]:
    out: list[Mapping] = []
    head = None
    fields: dict[str, int] = {}

    def flush():
        if head is None:
            return
        start, end, perms, path = head
        if end - start >= min_size:
            out.append(
                Mapping(
                    start,
                    end,
                    path,
                    fields.get("KernelPageSize", 4),
                    fields.get("Rss", 0),
                    fields.get("FilePmdMapped", 0),
                    fields.get("AnonHugePages", 0),
                    fields.get("Shared_Hugetlb", 0) + fields.get("Private_Hugetlb", 0),
                    perms,
                )
            )

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


def read_smaps(root, pid: int | str, min_size: int = LARGE_MAPPING) -> list[Mapping]:
    return parse_smaps(read_text(root, f"proc/{pid}/smaps", "") or "", min_size)


_VMA_HEAD = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) ", re.M)


def smaps_entry(root, pid: int | str, address: int) -> Mapping | None:
    """The /proc/PID/smaps entry that holds `address`, or None.  Only that entry is parsed: the
    smaps of a process with torch loaded runs to thousands of entries."""
    text = read_text(root, f"proc/{pid}/smaps", "") or ""
    heads = list(_VMA_HEAD.finditer(text))
    for i, h in enumerate(heads):
        if int(h.group(1), 16) <= address < int(h.group(2), 16):
            end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
            found = parse_smaps(text[h.start() : end])
            return found[0] if found else None
    return None


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
    rollup = read_smaps_rollup(root, pid)
    if not rollup:
        return sum(m.anon_huge_kb + m.file_pmd_mapped_kb for m in read_smaps(root, pid, 0))
    return rollup.get("AnonHugePages", 0) + rollup.get("FilePmdMapped", 0)


# --------------------------------------------------------------------------- who holds files and pages


class Holder(NamedTuple):
    pid: int
    comm: str
    path: str  # the file mapped or held open; "" for a process found only by its pages
    how: str  # "map" (in /proc/PID/maps), "fd" (an open descriptor) or "pages" (maps `kb` hugetlb pages)

    def __str__(self) -> str:
        return f"{self.pid} ({self.comm})"


def _maps_paths(text: str) -> set[str]:
    """The file names in /proc/PID/maps or smaps text (their header lines have 6 fields)."""
    out = set()
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) == 6 and "-" in parts[0] and not parts[0].endswith(":"):
            out.add(parts[5].strip())
    return out


def _fd_paths(root, pid: str) -> set[str]:
    out = set()
    base = os.path.join(str(root), "proc", pid, "fd")
    for fd in listdir(root, f"proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed since the listing
            out.add(os.readlink(os.path.join(base, fd)))
    return out


def holders(root="/", paths=None, prefix: str | None = None, kb: int | None = None) -> list[Holder]:
    """Processes that map or hold open one of `paths` or a file under `prefix`, and (with `kb`)
    processes that map hugetlb pages of `kb` kB, in one walk over /proc that reads each
    process's files at most once (psutil's "oneshot").  The caller's own process counts: Python
    code that calls unstage() may still map the model itself.

    One Holder per process and file (sorted by pid, then path); a process found only by its
    pages has path "".  Processes that exit during the walk, or that hide their files
    (another user's, without root), are left out."""
    targets = set(paths or ())
    under = prefix.rstrip("/") + "/" if prefix else None
    want_files = bool(targets or under)
    if not want_files and kb is None:
        return []  # nothing asked: no walk
    out: list[Holder] = []
    for pid in (p for p in listdir(root, "proc") if p.isdigit()):
        status = read_status(root, pid) if kb is not None else None
        smaps = None
        if status and _kb(status.get("HugetlbPages")) > 0:
            smaps = read_text(root, f"proc/{pid}/smaps", "") or ""
        found: dict[str, str] = {}
        if want_files:
            text = smaps if smaps is not None else read_text(root, f"proc/{pid}/maps", "") or ""
            files = {p: "map" for p in _maps_paths(text)}
            for p in _fd_paths(root, pid):
                files.setdefault(p, "fd")
            found = {p: how for p, how in files.items() if p in targets or (under and p.startswith(under))}
        by_pages = bool(smaps) and any(m.hugetlb_kb and m.kernel_page_kb == kb for m in parse_smaps(smaps or ""))
        if not found and not by_pages:
            continue
        comm = status.get("Name", "") if status else (read_text(root, f"proc/{pid}/comm", "") or "").strip()
        comm = comm or "?"
        out += [Holder(int(pid), comm, p, how) for p, how in sorted(found.items())]
        if by_pages and not found:
            out.append(Holder(int(pid), comm, "", "pages"))
    return sorted(out, key=lambda h: (h.pid, h.path))


def holder_names(found: list[Holder]) -> list[str]:
    """'PID (comm)' once per process, in pid order."""
    return list(dict.fromkeys(str(h) for h in found))


# --------------------------------------------------------------------------- who a process is


class ProcStat(NamedTuple):
    """The fields of /proc/PID/stat that identify a process: a pid is reused, a (pid, start)
    pair is not (start is in clock ticks since boot, and two processes cannot share a pid at
    the same time)."""

    pid: int
    comm: str
    state: str
    ppid: int
    start_ticks: int  # field 22, starttime


def parse_stat(text: str) -> ProcStat | None:
    """One /proc/PID/stat line.  comm may hold spaces and ')': it ends at the last ')'."""
    head, sep, rest = text.rpartition(")")
    pid_text, _, comm = head.partition(" (")
    fields = rest.split()
    if not sep or len(fields) < 20:
        return None
    try:
        return ProcStat(int(pid_text), comm, fields[0], int(fields[1]), int(fields[19]))
    except ValueError:
        return None


def read_stat(root, pid: int | str) -> ProcStat | None:
    """None when the process does not exist (or its stat cannot be read)."""
    text = read_text(root, f"proc/{pid}/stat")
    return parse_stat(text) if text else None


def start_ticks(root, pid: int | str) -> int | None:
    s = read_stat(root, pid)
    return None if s is None or s.state in ("Z", "X") else s.start_ticks


def boot_time(root="/") -> int | None:
    """btime of /proc/stat: the boot time in whole seconds since the epoch."""
    for line in (read_text(root, "proc/stat", "") or "").splitlines():
        key, _, value = line.partition(" ")
        if key == "btime" and value.strip().isdigit():
            return int(value)
    return None


def started_at(root, pid: int | str) -> float | None:
    """When the process started, in seconds since the epoch (to within a second: btime is whole
    seconds), or None when it does not run."""
    ticks, btime = start_ticks(root, pid), boot_time(root)
    if ticks is None or btime is None:
        return None
    return btime + ticks / os.sysconf("SC_CLK_TCK")
