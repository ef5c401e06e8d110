"""Differential tester for the preload library: the kernel is the specification.

A seeded generator (syzkaller-style: typed resources, slots and files, that later calls
refer to, and a model of what the program may still touch, so every sequence is a correct
program without the library) writes a random sequence of memory and file calls; prog.c runs
it once without the library and once under it, set up as `hugeload run` sets it up
(runner.environment, --copy, small thresholds so small maps are managed), and prints what the
program observes: return values and errno, memory contents and protections page by page,
which pages are mapped, file contents, children's exit statuses, whether a thread finished
before its pending cancellation.  The outputs must be equal, except where the kernel itself
leaves the answer open or where page size is the point; those exceptions are rules applied
mechanically, never per case:

  - addresses: prog.c never prints one (slots, offsets, "same address or not" only where the
    call promises it: MAP_FIXED, MREMAP_FIXED, mremap without MREMAP_MAYMOVE);
  - a 4 KB page the program unmapped may stay mapped inside a hugetlb page of which the program
    still maps another page (a huge page cannot lose part of itself); its contents and
    protection are then not compared;
  - contents the kernel leaves unspecified are masked ("taint" ops, emitted by the generator):
    after MADV_FREE, and a private map of a file written after the map was made (POSIX leaves
    it open whether the map shows the change; a private copy is a snapshot);
  - a page past the end of its file (SIGBUS without the library) is compared only as mapped,
    and the program never reads, writes or populates it (MADV_POPULATE_*, mlock);
  - nor does it write past the end of a file through a shared map in the file's last page
    (prog.c skips those bytes): POSIX zero-fills them at map time and never writes them to the
    file, Linux keeps them in the page cache where a later private map shows them, and a private
    copy read from the file does not (seed 1302); so that tail stays zero in every reading;
  - errno only after a failure (POSIX: a successful call may change it; free keeps it);
  - malloc_usable_size only as ">= the size asked for"; malloc'd bytes only once written; a
    block is freed only as malloc gave it (protections and fork inheritance restored first);
  - generated sequences avoid what depends on where the kernel puts maps: mremap without
    MREMAP_MAYMOVE grows only into the slot's own just-freed tail (regrow), MAP_FIXED and
    mremap only over the program's own pages, MADV_COLLAPSE not at all, and mremap only over
    a map no call has split (the library hands units to ordinary memory at huge page
    boundaries, where the kernel splits at the program's 4 KB ones).
Anything else that differs is a divergence: the sequence is shrunk (ddmin over ops and fork
blocks, keeping the annotations) to the shortest one that diverges at the same kind of op,
and printed with its seed.  Keep it in regressions/.

Modes: "2m" (2 MB pages reserved), "1g" (1 GB pages where the pool gives them, page size 1g
from 2 MiB up), "empty" (both pools empty: the fallbacks, THP).

    python tests/difftest/difftest.py --seeds 200 --mode 2m [--first 1000]
    scripts/difftest.sh --seeds N [--jobs J] (holds the test lock while it reserves pages and runs programs)
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO / "src"))

from hugeload import pages, runner  # noqa: E402

KB4 = 4096
MB = 1 << 20
MB2 = 2 * MB
HUGEPAGES = Path("/sys/kernel/mm/hugepages")
LOCK_PATH = "/tmp/hugeload-tests.lock"
MODES = ("2m", "1g", "empty")
POOL_2M = 160  # 320 MB: more than any sequence maps at once, so most maps get pages
POOL_1G = 2

# madvise advice numbers the generator uses: never MADV_HWPOISON/SOFT_OFFLINE (they act on the machine),
# nor MADV_COLLAPSE (its answer depends on where the kernel put the map: huge-page alignment).
ADVICE = [0, 1, 2, 3, 4, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 77]
MADV_FREE, MADV_REMOVE, MADV_DONTFORK, MADV_DOFORK, MADV_POPULATE_READ, MADV_POPULATE_WRITE = 8, 9, 10, 11, 22, 23
MADV_KEEPONFORK = 19
ANNOTATIONS = ("taint ", "forget ")  # what the program knows, not calls: never shrunk away


# ---------------------------------------------------------------- building


def build(out_dir: Path | None = None) -> Path:
    """prog.c compiled once per source version into out_dir (default: a cache under /tmp)."""
    src = HERE / "prog.c"
    out_dir = out_dir or Path(tempfile.gettempdir()) / f"hugeload-difftest-{os.getuid()}"
    out_dir.mkdir(mode=0o700, exist_ok=True)
    st = out_dir.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        # Someone else made the cache (or a link in its place): a binary found there could be
        # theirs, and this runs it as root.  Build into a directory of our own instead.
        out_dir = Path(tempfile.mkdtemp(prefix="hugeload-difftest-"))
    exe = out_dir / f"prog-{int(src.stat().st_mtime_ns)}-{src.stat().st_size}"
    if not exe.exists():
        cc = shutil.which("cc") or shutil.which("gcc")
        tmp = exe.with_suffix(".tmp")
        subprocess.run([cc, "-O1", "-g", "-Wall", "-pthread", str(src), "-o", str(tmp)], check=True)
        tmp.rename(exe)
    return exe


# ---------------------------------------------------------------- generation


@dataclass
class FileModel:
    size: int = 0
    gen: int = 0  # bumped when the file is recreated: old maps keep the old inode


# A page of a slot: mapped; unmapped and nothing mapped since; unmapped, maybe reused; mapped but past the
# end of its file (SIGBUS without the library: the program does not touch it).
# DONTFORK: mapped here, not in a child; BEYOND_DF: past the end of its file and not in a child
# (MADV_DONTFORK marks the mapping, whatever the file's size: a page that went past the end keeps it,
# seed 2579).
MAPPED, FRESH, STALE, BEYOND, DONTFORK, BEYOND_DF = 1, 0, 2, 3, 4, 5
LIVE = (MAPPED, DONTFORK)
PAST_END = (BEYOND, BEYOND_DF)
NOT_INHERITED = (DONTFORK, BEYOND_DF)


@dataclass
class SlotModel:
    """What the program knows of a slot, so that it stays a correct program: it never touches
    address space it gave back once anything else may have been mapped there."""

    kind: str  # "map" | "malloc"
    length: int
    aligned: bool = True  # page ops allowed (maps, and posix_memalign(4096) blocks)
    pristine: bool = True  # one VMA as mapped: mremap's result is predictable
    pages: bytearray = field(default_factory=bytearray)
    file: tuple | None = None  # (file, gen, offset) when the whole slot maps one file
    block: int = 0  # a malloc slot's size (length is the whole pages in it, for page ops)
    shm: bool = False  # shared anonymous: its object cannot grow (SIGBUS past its size)
    tainted: bool = False
    paged: bool = False  # a page op touched this allocation: realloc would move its protections too
    shared_of: set = field(default_factory=set)  # (file, gen) this slot writes through
    private_of: set = field(default_factory=set)  # (file, gen) mapped privately here

    def __post_init__(self):
        if not self.pages:
            self.pages = bytearray([MAPPED]) * max(1, -(-self.length // KB4))

    def copy(self) -> SlotModel:
        return dataclasses.replace(
            self, pages=bytearray(self.pages), shared_of=set(self.shared_of), private_of=set(self.private_of)
        )

    def set(self, off: int, n: int, state: int) -> None:
        a, b = off // KB4, min(len(self.pages), -(-(off + n) // KB4))
        self.pages[a:b] = bytes([state]) * max(0, b - a)

    def all_unmapped(self) -> bool:
        return all(v in (FRESH, STALE) for v in self.pages)


class Gen:
    """One random sequence; `program()` returns its items (op strings and fork blocks)."""

    def __init__(self, seed: int, mode: str):
        self.r = random.Random(seed)
        self.mode = mode
        self.files: dict[int, FileModel] = {}
        self.fd_mode: dict[int, str] = {}  # how this process has each file open: rw ro wo path closed
        self.slots: dict[int, SlotModel] = {}
        self.items: list = []
        self.used_stderr = False
        self.written: set = set()  # (file, gen) changed since the last fork began
        self.truncated: list = []  # (file, gen, size) ... ftruncate'd

    # -- helpers
    def size(self, lo=KB4, hi=8 * MB) -> int:
        if self.r.random() < 0.3:
            return self.r.choice(
                [x for x in (MB2, 2 * MB2, 3 * MB2, MB2 + KB4, 3 * MB2 - KB4) if lo <= x <= hi] or [lo]
            )
        return max(lo, min(hi, self.r.randrange(lo, hi + 1) // KB4 * KB4))

    def sub_range(self, m: SlotModel, only_mapped: bool = False, populates: bool = False) -> tuple[int, int] | None:
        """A page-aligned piece of the slot that avoids pages that may belong to someone else now:
        whole huge pages, the whole span, or any run of pages.  `populates`: the call faults the
        pages in, so it stays off pages past the end of their file as a read would."""
        n = len(m.pages)
        bad = (FRESH, STALE, *PAST_END) if only_mapped else (STALE, *PAST_END) if populates else (STALE,)
        ok = [i for i in range(n) if m.pages[i] not in bad]
        if not ok:
            return None
        x = self.r.random()
        if x < 0.2 and ok[0] == 0 and len(ok) == n:
            return 0, n * KB4
        if x < 0.45 and n >= 512:
            starts = [i for i in ok if i % 512 == 0]
            if starts:
                a = self.r.choice(starts)
                b = a
                want = self.r.randrange(1, max(2, (n - a) // 512 + 1)) * 512
                while b < n and b - a < want and m.pages[b] not in bad:
                    b += 1
                return a * KB4, (b - a) * KB4
        a = self.r.choice(ok)
        want = self.r.choice([1, 2, 3, 16, 100, 511, 513, 1024, n])
        b = a
        while b < n and b - a < want and m.pages[b] not in bad:
            b += 1
        return a * KB4, (b - a) * KB4

    def prot(self) -> str:
        return self.r.choice(["rw", "rw", "r", "r", "-", "rx", "w", "rwx"])

    def free_slot(self) -> int | None:
        free = [s for s in range(24) if s not in self.slots]
        return self.r.choice(free) if free else None

    def emit(self, op: str, into: list):
        into.append(op)

    def new_mappings(self, into: list):
        """Something new may now be mapped in any hole: holes are off limits, and not observed, from here on."""
        for s, m in sorted(self.slots.items()):
            i = 0
            while i < len(m.pages):
                if m.pages[i] != FRESH:
                    i += 1
                    continue
                j = i
                while j < len(m.pages) and m.pages[j] == FRESH:
                    m.pages[j] = STALE
                    j += 1
                self.emit(f"forget {s} {i * KB4} {(j - i) * KB4}", into)
                i = j

    def taint_private_of(self, f: int, gen: int, into: list):
        """File (f, gen) changed: private maps of it may or may not show it (POSIX leaves it open)."""
        self.written.add((f, gen))
        for s, m in self.slots.items():
            if (f, gen) in m.private_of:
                m.tainted = True
                self.emit(f"taint {s}", into)

    def mark_beyond(self, f: int, gen: int, size: int):
        """Pages past the end of file (f, gen) raise SIGBUS: the program stays away from them."""
        end = -(-size // KB4) * KB4
        for m in self.slots.values():
            if m.file and m.file[:2] == (f, gen):
                for i in range(len(m.pages)):
                    if m.pages[i] in LIVE and m.file[2] + i * KB4 >= end:
                        m.pages[i] = BEYOND_DF if m.pages[i] == DONTFORK else BEYOND
            elif (f, gen) in m.shared_of | m.private_of:
                m.pages[:] = bytes(BEYOND_DF if v == DONTFORK else BEYOND if v in LIVE else v for v in m.pages)

    def forget(self, s: int, into: list):
        """The program stops knowing slot s (unmapped, or moved it cannot tell where)."""
        del self.slots[s]
        self.emit(f"forget {s}", into)

    def drop_if_gone(self, s: int, into: list):
        if s in self.slots and self.slots[s].kind == "map" and self.slots[s].all_unmapped():
            self.forget(s, into)

    # -- the op mix
    def gen_op(self, into: list, in_child: bool = False):
        kinds = [
            ("file", 3 if not in_child else 0),
            ("open", 2),
            ("mmap", 10 if not in_child else 2),
            ("anon", 3),
            ("malloc", 6),
            ("write", 10),
            ("read", 3),
            ("munmap", 6),
            ("mprotect", 5),
            ("madvise", 8),
            ("pmadvise", 1),
            ("mlock", 2),
            ("msync", 2),
            ("mremap", 4),
            ("fixed", 3),
            ("noreplace", 1),
            ("realloc", 4),
            ("free", 3),
            ("pwrite", 2),
            ("ftruncate", 1),
            ("fork", 4 if not in_child else 0),
            ("raise", 1),
            ("sigquery", 1),
            ("stderr", 1 if not (in_child or self.used_stderr) else 0),
            ("obs", 1),
        ]
        x = self.r.randrange(sum(w for _, w in kinds))
        for kind, w in kinds:
            if x < w:
                getattr(self, "g_" + kind)(into, in_child)
                return
            x -= w

    def prefix(self, into: list) -> str:
        x = self.r.random()
        p = "cancel " if x < 0.08 else "small " if x < 0.16 else "small cancel " if x < 0.18 else ""
        if p:
            self.new_mappings(into)  # a thread's stack
        return p

    def pick(self, pred) -> int | None:
        c = [s for s, m in sorted(self.slots.items()) if pred(m)]
        return self.r.choice(c) if c else None

    def any_file(self) -> int | None:
        return self.r.choice(sorted(self.files)) if self.files else None

    # -- files
    def g_file(self, into, in_child):
        f = self.r.randrange(4)
        size = self.r.choice([MB2, 2 * MB2 + 12345, 3 * MB2, 5 * MB2 + 7, self.r.randrange(MB2, 10 * MB)])
        m = self.files.setdefault(f, FileModel())
        m.size, m.gen = size, m.gen + 1
        self.fd_mode[f] = "rw"
        self.emit(f"file {f} {size}", into)

    def g_open(self, into, in_child):
        f = self.any_file()
        if f is None:
            return self.g_file(into, in_child)
        self.fd_mode[f] = self.r.choice(["ro", "ro", "rw", "wo", "path"])
        self.emit(f"open {f} {self.fd_mode[f]}", into)
        if self.r.random() < 0.2:
            self.fd_mode[f] = "closed"
            self.emit(f"close {f}", into)

    def g_pwrite(self, into, in_child):
        f = self.any_file()
        if f is None:
            return
        fm = self.files[f]
        self.emit(
            f"pwrite {f} {self.r.randrange(0, fm.size + 1)} {self.r.randrange(1, 3 * KB4)} {self.r.randrange(256)}",
            into,
        )
        self.taint_private_of(f, fm.gen, into)

    def g_ftruncate(self, into, in_child):
        f = self.any_file()
        if f is None:
            return
        fm = self.files[f]
        fm.size = self.r.randrange(0, fm.size + MB2)
        self.emit(f"ftruncate {f} {fm.size}", into)
        self.taint_private_of(f, fm.gen, into)
        self.mark_beyond(f, fm.gen, fm.size)
        self.truncated.append((f, fm.gen, fm.size))

    # -- making slots
    def g_mmap(self, into, in_child):
        f, s = self.any_file(), self.free_slot()
        if f is None or s is None:
            return self.g_file(into, in_child)
        fm = self.files[f]
        whole = max(KB4, -(-fm.size // KB4) * KB4)
        length = self.r.choice([max(1, fm.size), whole, self.size(MB2, whole) if whole > MB2 else whole])
        typ = self.r.choice(["pr", "pr", "sh"])
        prot = self.r.choice(["r", "r", "rw", "rx", "-", "w"])
        off = 0 if self.r.random() < 0.85 else self.r.randrange(0, max(1, fm.size // KB4)) * KB4
        pre = self.prefix(into)
        self.new_mappings(into)
        self.emit(f"{pre}mmap {s} {f} {length} {prot} {typ} {off}", into)
        m = SlotModel("map", length, file=(f, fm.gen, off))
        (m.shared_of if typ == "sh" else m.private_of).add((f, fm.gen))
        end = -(-fm.size // KB4) * KB4
        for i in range(len(m.pages)):
            if off + i * KB4 >= end:
                m.pages[i] = BEYOND
        self.slots[s] = m

    def g_anon(self, into, in_child):
        s = self.free_slot()
        if s is None:
            return
        length = self.size()
        pre = self.prefix(into)
        self.new_mappings(into)
        typ = self.r.choice(["pr", "pr", "sh"])
        self.emit(f"{pre}anon {s} {length} {self.prot()} {typ}", into)
        self.slots[s] = SlotModel("map", length, shm=typ == "sh")

    def g_malloc(self, into, in_child):
        s = self.free_slot()
        if s is None:
            return
        n = self.r.choice([self.size(MB2, 10 * MB), self.r.randrange(1, MB2 * 2), MB2, 3 * MB + 123])
        pre = self.prefix(into)
        self.new_mappings(into)
        x = self.r.random()
        if x < 0.3:
            self.emit(f"{pre}memalign {s} 4096 {n}", into)
            # page ops only on the whole pages inside the block: the last one may hold the next block
            full = n // KB4 * KB4
            self.slots[s] = SlotModel("malloc", full, aligned=True) if full else SlotModel("malloc", n, aligned=False)
            self.slots[s].block = n
        else:
            self.emit(f"{pre}{'calloc' if x < 0.45 else 'malloc'} {s} {n}", into)
            self.slots[s] = SlotModel("malloc", n, aligned=False)

    def g_realloc(self, into, in_child):
        s = self.pick(lambda m: m.kind == "malloc" and not m.paged)
        if s is None:
            return self.g_malloc(into, in_child)
        m = self.slots[s]
        n = self.r.choice([0, self.r.randrange(1, 4096), self.size(MB2, 12 * MB), max(m.length, m.block) // 2 + 1])
        pre = self.prefix(into)
        self.new_mappings(into)
        self.emit(f"{pre}realloc {s} {n}", into)
        if n == 0:
            del self.slots[s]
        else:
            self.slots[s] = SlotModel("malloc", n, aligned=False)

    def g_free(self, into, in_child):
        # malloc writes its own bookkeeping into a freed block and hands its pages to later
        # allocations, so a correct program gives back a block only as malloc gave it: every page
        # there (not a hole that MADV_DONTFORK left in a child), writable, inherited by children
        # as they were (seed 1312, empty pools: a PROT_NONE page freed into glibc's heap made a
        # later calloc fault without the library).
        s = self.pick(lambda m: m.kind == "malloc" and all(v in LIVE for v in m.pages))
        if s is None:
            return
        m = self.slots[s]
        if m.paged:
            self.emit(f"mprotect {s} 0 {m.length} rw", into)
            self.emit(f"madvise {s} 0 {m.length} {MADV_DOFORK}", into)
            self.emit(f"madvise {s} 0 {m.length} {MADV_KEEPONFORK}", into)
        self.emit(f"{self.prefix(into)}free {s}", into)
        del self.slots[s]
        other = self.pick(lambda m: m.kind == "malloc")
        if other is not None and self.r.random() < 0.3:
            self.emit(f"usable {other}", into)

    # -- memory
    def g_write(self, into, in_child):
        s = self.pick(lambda m: True)
        if s is None:
            return self.g_malloc(into, in_child)
        m = self.slots[s]
        if m.aligned:
            rng = self.sub_range(m, only_mapped=True)
            if rng is None:
                return
            off, n = rng
        else:
            off = self.r.randrange(m.length)
            n = self.r.randrange(1, m.length - off + 1)
        self.emit(f"write {s} {off} {n} {self.r.randrange(256)}", into)
        for f, g in m.shared_of:
            self.taint_private_of(f, g, into)

    def g_read(self, into, in_child):
        s = self.pick(lambda m: m.aligned)
        if s is None:
            return
        rng = self.sub_range(self.slots[s], only_mapped=True)
        if rng:
            self.emit(f"read {s} {rng[0]} {rng[1]}", into)

    def range_op(self, into, name, pred, extra=lambda: "", only_mapped=False, populates=False):
        s = self.pick(pred)
        if s is None:
            return None, None
        pre = self.prefix(into)  # first: a thread's stack may take a hole, which the range then avoids
        m = self.slots[s]
        rng = self.sub_range(m, only_mapped=only_mapped, populates=populates)
        if rng is None:
            return None, None
        off, n = rng
        self.emit(f"{pre}{name} {s} {off} {n}{extra()}", into)
        if name != "msync":
            m.pristine = False  # the kernel may split the mapping there
            m.paged = True
        return s, (off, n)

    def g_munmap(self, into, in_child):
        if self.r.random() < 0.05:
            s = self.pick(lambda m: m.kind == "map")
            if s is not None:
                self.emit(f"munmap {s} 123 4096", into)  # EINVAL: not page-aligned
            return
        s, rng = self.range_op(into, "munmap", lambda m: m.kind == "map")
        if s is not None:
            m = self.slots[s]
            for i in range(rng[0] // KB4, min(len(m.pages), (rng[0] + rng[1]) // KB4)):
                if m.pages[i] in (MAPPED, DONTFORK, *PAST_END):
                    m.pages[i] = FRESH
            m.pristine = False
            self.drop_if_gone(s, into)

    def g_mprotect(self, into, in_child):
        s, _ = self.range_op(into, "mprotect", lambda m: m.aligned, lambda: f" {self.prot()}")
        if s is not None:
            self.slots[s].pristine = False

    def g_madvise(self, into, in_child):
        adv = self.r.choice(ADVICE)
        # MADV_POPULATE_* past the end of a file fail (EFAULT) where a private copy has the pages:
        # only on pages inside the file (a copy is a snapshot; it never raises SIGBUS)
        s, rng = self.range_op(
            into,
            "madvise",
            lambda m: m.aligned,
            lambda: f" {adv}",
            only_mapped=adv in (MADV_POPULATE_READ, MADV_POPULATE_WRITE),
        )
        if s is not None:
            self.slots[s].pristine = False
            if adv == MADV_FREE:
                self.slots[s].tainted = True
                self.emit(f"taint {s}", into)
            if adv in (MADV_DONTFORK, MADV_DOFORK):
                off, n = rng
                m = self.slots[s]
                for i in range(off // KB4, min(len(m.pages), (off + n) // KB4)):
                    if m.pages[i] in LIVE:
                        m.pages[i] = DONTFORK if adv == MADV_DONTFORK else MAPPED
                    elif m.pages[i] in PAST_END:
                        m.pages[i] = BEYOND_DF if adv == MADV_DONTFORK else BEYOND
            if adv == MADV_REMOVE:  # punches a hole in a file mapped shared: the file changes
                for f, g in self.slots[s].shared_of:
                    self.taint_private_of(f, g, into)

    def g_pmadvise(self, into, in_child):
        self.range_op(into, "pmadvise", lambda m: m.aligned, lambda: f" {self.r.randrange(5)}")

    def g_mlock(self, into, in_child):
        # mlock faults its pages in: past the end of a file that is SIGBUS's ENOMEM without the
        # library, where a private copy (a snapshot) has the pages (seed 455, empty pools)
        name = self.r.choice(["mlock", "munlock"])
        self.range_op(into, name, lambda m: m.aligned, populates=name == "mlock")

    def g_msync(self, into, in_child):
        self.range_op(into, "msync", lambda m: m.kind == "map", lambda: f" {self.r.choice(['as', 'ss', 'inv'])}")

    def g_fixed(self, into, in_child):
        s = self.pick(lambda m: m.kind == "map")
        if s is None:
            return
        pre = self.prefix(into)
        m = self.slots[s]
        rng = self.sub_range(m)
        if rng is None:
            return
        off, n = rng
        f, typ, prot = self.any_file(), self.r.choice(["pr", "sh"]), self.prot()
        if f is not None and self.r.random() < 0.5:
            foff = self.r.randrange(0, max(1, self.files[f].size // KB4)) * KB4
            self.emit(f"{pre}fixed {s} {off} {n} {prot} {typ} {f} {foff}", into)
            mode = self.fd_mode.get(f, "rw")
            if not (mode == "rw" or mode == "ro" and not (typ == "sh" and "w" in prot)):
                # the kernel refuses the fd (EBADF, EACCES) before it unmaps anything: a hole in
                # the range stays a hole, where a later map may land (seed 843, 2 MB pages)
                m.pristine = False
                return
            (m.shared_of if typ == "sh" else m.private_of).add((f, self.files[f].gen))
        else:
            self.emit(f"{pre}fixed {s} {off} {n} {prot} {typ}", into)
        m.set(off, n, MAPPED)
        m.pristine = False

    def g_noreplace(self, into, in_child):
        s = self.pick(lambda m: m.kind == "map")
        if s is None:
            return
        m = self.slots[s]
        rng = self.sub_range(m)
        if rng:
            self.emit(f"noreplace {s} {rng[0]} {rng[1]}", into)
            m.set(rng[0], rng[1], MAPPED)
            m.pristine = False

    def resized(self, m: SlotModel, new: int) -> SlotModel:
        """A pristine map slot after mremap to `new` bytes: one mapping, past the file's end maybe."""
        n = SlotModel("map", new, file=m.file, shared_of=m.shared_of, private_of=m.private_of, shm=m.shm)
        n.tainted = m.tainted
        if m.shm:  # the object behind a shared anonymous map keeps its size
            for i in range(len(n.pages)):
                if i * KB4 >= m.length:
                    n.pages[i] = BEYOND
        if m.file and m.file[0] in self.files and self.files[m.file[0]].gen == m.file[1]:
            end = -(-self.files[m.file[0]].size // KB4) * KB4
            for i in range(len(n.pages)):
                if m.file[2] + i * KB4 >= end:
                    n.pages[i] = BEYOND
        elif m.file:
            n.pages[:] = bytes([BEYOND]) * len(n.pages)  # a replaced file: its size is not known here
        return n

    def g_mremap(self, into, in_child):
        # One VMA only: mremap of a range that spans several fails without the library (EFAULT) while
        # a shrinking one unmaps whatever lies past the slot (maybe someone else's memory by now).
        s = self.pick(lambda m: m.kind == "map" and m.pristine)
        if s is None:
            return
        m = self.slots[s]
        x = self.r.random()
        if x < 0.4:
            # the object behind a shared anonymous map keeps its size: past it, SIGBUS (not grown)
            new = self.size(KB4, m.length if m.shm else 2 * m.length + MB2)
            pre = self.prefix(into)
            self.new_mappings(into)
            self.emit(f"{pre}mremap {s} {new} maymove", into)
            self.slots[s] = self.resized(m, new)
        elif x < 0.6:
            new = max(KB4, (m.length // 2) // KB4 * KB4)
            self.emit(f"mremap {s} {new} 0", into)
            self.slots[s] = self.resized(m, new)
        elif x < 0.8:
            half = max(KB4, self.r.randrange(KB4, m.length + 1) // KB4 * KB4)
            self.emit(f"regrow {s} {half}", into)
        else:
            big = [t for t, o in sorted(self.slots.items()) if o.kind == "map" and t != s and o.length >= m.length]
            if not big:
                return
            t = self.r.choice(big)
            npg = -(-m.length // KB4)
            offs = [  # never over pages of t that may be someone else's by now
                i for i in range(len(self.slots[t].pages) - npg + 1) if STALE not in self.slots[t].pages[i : i + npg]
            ]
            if not offs:
                return
            off = self.r.choice(offs) * KB4
            tm = self.slots[t]
            if m.tainted and not tm.tainted:  # what moves there is unspecified already
                tm.tainted = True
                self.emit(f"taint {t}", into)
            self.emit(f"mremap_to {s} {t} {off}", into)
            tm.set(off, m.length, MAPPED)
            tm.private_of |= m.private_of
            tm.shared_of |= m.shared_of
            tm.pristine = False
            self.forget(s, into)

    # -- processes, threads, signals, fds
    def g_fork(self, into, in_child):
        body: list = []
        saved = {s: m.copy() for s, m in self.slots.items()}
        saved_fds = dict(self.fd_mode)  # a child's open and close are its own
        self.written, self.truncated = set(), []
        for m in self.slots.values():  # what MADV_DONTFORK kept from the child is a hole there
            for i, v in enumerate(m.pages):
                if v in NOT_INHERITED:
                    m.pages[i] = FRESH
        for s in [s for s, m in self.slots.items() if m.kind == "map" and m.all_unmapped()]:
            self.forget(s, body)
        for _ in range(self.r.randrange(1, 6)):
            self.gen_op(body, in_child=True)
        self.slots, self.fd_mode = saved, saved_fds  # files are shared: what the child did to them stays
        # The child's writes to files reach the parent's private maps of them, as soon as it ran.
        for f, g in sorted(self.written):
            self.taint_private_of(f, g, into)
        for f, g, size in self.truncated:
            self.mark_beyond(f, g, size)
        into.append(("fork", body, self.r.choice([0, 0, 3])))

    def g_raise(self, into, in_child):
        self.emit(f"raise {self.r.choice([10, 10, 12])}", into)

    def g_sigquery(self, into, in_child):
        self.emit("sigquery", into)

    def g_stderr(self, into, in_child):
        f = self.any_file()
        if f is not None:
            self.used_stderr = True
            self.emit(f"stderr {f}", into)

    def g_obs(self, into, in_child):
        self.emit("obs", into)

    def program(self, n_ops: int | None = None) -> list:
        n_ops = n_ops or self.r.randrange(15, 45)
        self.g_file(self.items, False)
        for _ in range(n_ops):
            self.gen_op(self.items)
        return self.items


def render(items: list) -> str:
    out = []
    for it in items:
        if isinstance(it, tuple):
            out.append("fork")
            out.append(render(it[1]).rstrip("\n"))
            out.append(f"endfork {it[2]}")
        else:
            out.append(it)
    return "\n".join(x for x in out if x) + "\n"


def generate(seed: int, mode: str) -> list:
    return Gen(seed, mode).program()


# ---------------------------------------------------------------- running


@dataclass(frozen=True)
class Config:
    mode: str
    lib: str | None = None  # another libhugeload.so (e.g. main's) instead of the installed one

    def env(self, state_dir: Path, preload: bool) -> dict:
        base = {k: v for k, v in os.environ.items() if not k.startswith("HUGELOAD_") and k != "LD_PRELOAD"}
        base["LC_ALL"] = "C"
        if not preload:
            return base
        page = pages.PAGE_1G if self.mode == "1g" else pages.PAGE_2M
        policy = pages.Policy(forced_1g_min=MB2) if self.mode == "1g" else pages.DEFAULT_POLICY
        opts = runner.PreloadOptions(
            page_size=page,
            copy=True,
            alloc_threshold=MB2,
            files=("*.dat",),
            log=runner.LogLevel.QUIET,
            policy=policy,
        )
        env = runner.environment(opts, state_dir=state_dir, base=base)
        if self.lib:
            env["LD_PRELOAD"] = self.lib
        return env


@dataclass
class Run:
    rc: int
    out: list[str]
    err: str


def run_program(exe: Path, text: str, env: dict, timeout: float = 60) -> Run:
    with tempfile.TemporaryDirectory(prefix="difftest-") as d:
        ops = Path(d) / "ops"
        ops.write_text(text)
        files = Path(d) / "files"
        files.mkdir()
        try:
            p = subprocess.run(
                [str(exe), str(files), str(ops)], capture_output=True, text=True, env=env, timeout=timeout
            )
            return Run(p.returncode, p.stdout.splitlines(), p.stderr)
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            return Run(-999, out.splitlines(), "timeout")


# ---------------------------------------------------------------- comparing


def _rle(text: str) -> list[str]:
    out: list[str] = []
    for tok in text.split(","):
        if not tok:
            continue
        v, _, n = tok.partition("*")
        out.extend([v] * (int(n) if n else 1))
    return out


def _obs_fields(line: str) -> dict[str, str]:
    return dict(t.split("=", 1) for t in line.split() if "=" in t)


def compare_obs(ref: str, lib: str) -> str | None:
    """None when the lib observation of a slot is one the kernel could have given; else why not."""
    rf, lf = _obs_fields(ref), _obs_fields(lib)
    if ref.split()[:3] != lib.split()[:3] or ("tainted" in ref.split()) != ("tainted" in lib.split()):
        return "slot differs"
    if "st" not in rf:
        return None if "st" not in lf else "slot differs"
    tainted = "tainted" in ref.split()
    rst, lst, lhuge = _rle(rf["st"]), _rle(lf["st"]), _rle(lf["huge"])
    rh, lh = _rle(rf["hash"]), _rle(lf["hash"])
    groups_mapped = {lhuge[j] for j in range(len(rst)) if rst[j] != "." and lhuge[j] != "0"}
    for i, (want, got) in enumerate(zip(rst, lst, strict=True)):
        if want == ".":
            if got == ".":
                continue
            if lhuge[i] != "0" and lhuge[i] in groups_mapped:
                continue  # inside a huge page the program still maps part of
            return f"page {i}: unmapped without the library, mapped ({got}) with it"
        if want == "B":
            if got == ".":
                return f"page {i}: mapped past the file's end without the library, unmapped with it"
            continue
        if got != want:
            return f"page {i}: protection {want} without the library, {got} with it"
        if not tainted and rh[i] != lh[i]:
            return f"page {i}: contents differ"
    return None


def compare(ref: Run, lib: Run) -> str | None:
    """The first divergence, as text, or None."""
    n = max(len(ref.out), len(lib.out))
    for i in range(n):
        a = ref.out[i] if i < len(ref.out) else "<nothing>"
        b = lib.out[i] if i < len(lib.out) else "<nothing>"
        if a == b:
            continue
        core_a = a[6:] if a.startswith("child ") else a
        core_b = b[6:] if b.startswith("child ") else b
        if core_a.startswith("obs ") and core_b.startswith("obs ") and a[:6] == b[:6]:
            why = compare_obs(core_a, core_b)
            if why is None:
                continue
            return f"line {i + 1}: {why}\n  without: {a[:400]}\n  with:    {b[:400]}"
        return f"line {i + 1}:\n  without: {a[:400]}\n  with:    {b[:400]}"
    if ref.rc != lib.rc:
        return f"exit status {ref.rc} without the library, {lib.rc} with it\n{lib.err[-2000:]}"
    return None


def context(run: Run, line: str) -> str:
    return "\n".join(run.out[:5])


class Tester:
    def __init__(self, config: Config, exe: Path | None = None):
        self.config = config
        self.exe = exe or build()
        self.cache: dict[str, tuple[Run, Run, str | None]] = {}

    def check(self, text: str) -> tuple[Run, Run, str | None]:
        if text not in self.cache:
            with tempfile.TemporaryDirectory(prefix="difftest-state-") as st:
                ref = run_program(self.exe, text, self.config.env(Path(st), preload=False))
                lib = run_program(self.exe, text, self.config.env(Path(st), preload=True))
            self.cache[text] = (ref, lib, compare(ref, lib))
        return self.cache[text]

    def signature(self, text: str) -> str | None:
        """What a divergence is about: the op (name) whose results or observations differ first."""
        ref, lib, why = self.check(text)
        if why is None:
            return None
        line = int(why.split(":")[0].split()[1]) if why.startswith("line ") else len(ref.out) + 1
        last = "start"
        for x in ref.out[:line]:
            t = x.split()[1:] if x.startswith("child ") else x.split()
            if t[:1] == ["op"] and len(t) > 2:
                last = " ".join(w for w in t[2:4] if not w.isdigit())
        return last

    def shrink(self, items: list, budget_s: float = 300) -> list:
        """ddmin over the items (and inside fork blocks): the shortest sequence that still diverges
        the same way (at the same kind of op)."""
        deadline = time.monotonic() + budget_s
        want = self.signature(render(items))

        def fails(its):
            return time.monotonic() < deadline and self.signature(render(its)) == want

        def reduce(its, rebuild):
            keep = lambda it: isinstance(it, str) and it.startswith(ANNOTATIONS)  # noqa: E731
            n = 2
            while time.monotonic() < deadline:
                ops = [i for i, it in enumerate(its) if not keep(it)]
                if not ops:
                    break
                chunk = max(1, len(ops) // n)
                removed = False
                for start in range(0, len(ops), chunk):
                    gone = set(ops[start : start + chunk])
                    cand = [it for i, it in enumerate(its) if i not in gone]
                    if fails(rebuild(cand)):
                        its, removed = cand, True
                        n = max(n - 1, 2)
                        break
                if not removed:
                    if chunk == 1:
                        break
                    n = min(len(ops), n * 2)
            return its

        items = reduce(list(items), lambda c: c)
        # inside fork blocks, and simpler prefixes
        for idx in range(len(items)):
            it = items[idx]
            if isinstance(it, tuple):
                body = reduce(
                    list(it[1]), lambda c, idx=idx, it=it: items[:idx] + [(it[0], c, it[2])] + items[idx + 1 :]
                )
                items = items[:idx] + [(it[0], body, it[2])] + items[idx + 1 :]
            elif isinstance(it, str):
                for pre in ("small cancel ", "cancel ", "small "):
                    if it.startswith(pre):
                        cand = items[:idx] + [it[len(pre) :]] + items[idx + 1 :]
                        if fails(cand):
                            items = cand
                        break
        return items


@dataclass
class Failure:
    seed: int
    mode: str
    why: str
    program: str


def run_seeds(seeds, mode: str, lib: str | None = None, shrink: bool = True, log=print, exe: Path | None = None):
    """Failures (seed, why, the shortest sequence) of these seeds; each divergence is logged."""
    t = Tester(Config(mode, lib), exe)
    failures = []
    for seed in seeds:
        items = generate(seed, mode)
        ref, libr, why = t.check(render(items))
        if ref.rc != 0:
            failures.append(Failure(seed, mode, f"the program failed without the library:\n{ref.err}", render(items)))
            log(f"seed={seed} mode={mode}: the program failed without the library (rc {ref.rc})")
            continue
        if why is None:
            continue
        small = t.shrink(items) if shrink else items
        _, _, why2 = t.check(render(small))
        failures.append(Failure(seed, mode, why2 or why, render(small)))
        log(f"DIVERGENCE seed={seed} mode={mode}: {why2 or why}\n--- shortest sequence:\n{render(small)}---")
    return failures


# ---------------------------------------------------------------- pools


def _pool_path(kb: int) -> Path:
    return HUGEPAGES / f"hugepages-{kb}kB" / "nr_hugepages"


@contextmanager
def pools_for(mode: str, lock: bool = True, jobs: int = 1):
    """Reserves what the mode needs for `jobs` programs at once (under the machine-wide test lock
    when `lock`), and puts every pool back as it was; yields what was reserved {kb: pages}."""
    fd = None
    if lock:
        # O_NOFOLLOW as the conftest's: a link planted in /tmp would make root create what it names.
        fd = os.open(LOCK_PATH, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        fcntl.flock(fd, fcntl.LOCK_EX)
    before = {kb: int(_pool_path(kb).read_text()) for kb in (2048, 1048576) if _pool_path(kb).exists()}
    want = {
        "2m": {2048: POOL_2M * jobs},
        "1g": {1048576: POOL_1G * jobs, 2048: POOL_2M * jobs},
        "empty": {2048: 0, 1048576: 0},
    }[mode]
    try:
        got = {}
        for kb, n in want.items():
            if kb in before:
                _pool_path(kb).write_text(str(n))
                got[kb] = int(_pool_path(kb).read_text())
        yield got
    finally:
        for kb, n in before.items():
            _pool_path(kb).write_text(str(n))
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--mode", choices=MODES + ("all",), default="all")
    ap.add_argument("--chunk", type=int, default=25, help="seeds per reservation (the lock is held that long)")
    ap.add_argument("--lib", help="a libhugeload.so to test instead of the installed one")
    ap.add_argument(
        "--jobs", type=int, default=1, help="programs run at once (each seed stays sequential; pools are sized for all)"
    )
    ap.add_argument("--no-shrink", action="store_true")
    ap.add_argument("--show", type=int, help="print the sequence of this seed and exit")
    args = ap.parse_args(argv)
    # A stopped run still puts the pools back (pools_for's finally): SIGTERM, and SIGINT even where
    # a shell started it in the background with SIGINT ignored.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    modes = MODES if args.mode == "all" else (args.mode,)
    if args.show is not None:
        print(render(generate(args.show, modes[0])), end="")
        return 0
    total_fail = 0
    jobs = max(1, args.jobs)
    exe = build()
    for mode in modes:
        done, t0 = 0, time.monotonic()
        for start in range(args.first, args.first + args.seeds, args.chunk):
            seeds = range(start, min(start + args.chunk, args.first + args.seeds))
            with pools_for(mode, jobs=jobs) as got:
                if mode == "1g" and got.get(1048576, 0) == 0:
                    print(f"mode 1g: the kernel gave no 1 GB page; seeds {seeds.start}-{seeds.stop - 1} run on 2 MB")
                # The time is in the programs (two per seed), so threads are enough to keep `jobs`
                # of them running; each thread has its own Tester, the build is shared.
                with ThreadPoolExecutor(jobs) as ex:
                    parts = ex.map(
                        lambda part, mode=mode: run_seeds(part, mode, lib=args.lib, shrink=not args.no_shrink, exe=exe),
                        [seeds[i::jobs] for i in range(jobs)],
                    )
                    fails = [f for part in parts for f in part]
            done += len(seeds)
            total_fail += len(fails)
            print(
                f"mode {mode}: seeds {args.first}-{seeds.stop - 1} ({done}), {total_fail} divergences, "
                f"{time.monotonic() - t0:.0f} s",
                flush=True,
            )
    return 1 if total_fail else 0


if __name__ == "__main__":
    sys.exit(main())
