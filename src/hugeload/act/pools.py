"""Huge page pools: reserve and release, reading the count back after every write.

The kernel often grants fewer pages than asked (seen: 8 x 1 GB asked, 2 given)
and still reports the write as successful, so every write is followed by a read.
"""

import contextlib
import ctypes
import os
import threading
import time
from pathlib import Path
from typing import NamedTuple

from hugeload.act import ledger
from hugeload.act.sysfs import write_text
from hugeload.errors import PoolError, UsageError
from hugeload.pages import PAGE_1G
from hugeload.pages import name as page_size_name
from hugeload.probe import pools as probe_pools
from hugeload.probe import procs
from hugeload.probe.memory import read_buddyinfo, read_meminfo
from hugeload.probe.mounts import read_mounts

MAX_RETRIES = 5
RETRY_SECONDS = 60.0


def pool_dir(root, kb: int, node: int | None = None) -> Path:
    if node is None:
        return Path(root) / probe_pools.HUGEPAGES_DIR / f"hugepages-{kb}kB"
    return Path(root) / probe_pools.NODES_DIR / f"node{node}" / "hugepages" / f"hugepages-{kb}kB"


def read_pool(root, kb: int, node: int | None = None) -> probe_pools.Pool:
    return probe_pools.system_pool(root, kb) if node is None else probe_pools.node_pool(root, kb, node)


def read_count(root, kb: int, node: int | None = None) -> int:
    return read_pool(root, kb, node).total


def set_count(root, kb: int, count: int, node: int | None = None) -> int:
    """Ask the kernel for `count` persistent pages and return the count it settled on."""
    write_text(pool_dir(root, kb, node) / "nr_hugepages", f"{count}\n")
    return read_count(root, kb, node)


def try_one_page(root, kb: int) -> tuple[int, bool, str | None]:
    """Grow the pool by one page and put it back: (pages obtained, restored, error).

    Used by `doctor --try` to learn whether runtime reservation works without
    keeping anything."""
    before = read_count(root, kb)
    obtained, error = 0, None
    try:
        obtained = max(0, set_count(root, kb, before + 1) - before)
    except Exception as e:  # reported as the check's detail
        error = str(e)
    finally:
        restored = read_count(root, kb) == before or set_count(root, kb, before) == before
    return obtained, restored, error


def validate(root, kb: int, node: int | None) -> None:
    sizes = probe_pools.page_sizes(root)
    if kb not in sizes:
        offered = ", ".join(page_size_name(k) for k in sizes) or "none"
        raise UsageError(f"this kernel has no {page_size_name(kb)} huge pages (offered: {offered})")
    if node is not None and node not in probe_pools.nodes(root):
        raise UsageError(
            f"NUMA node {node} does not exist (nodes: {', '.join(map(str, probe_pools.nodes(root))) or 'none'})"
        )


class Step(NamedTuple):
    name: str
    count: int  # pool size after the step
    gained: int


class ReserveResult(NamedTuple):
    page_size_kb: int
    node: int | None
    before: int
    requested: int  # pages asked for on top of `before`
    after: int
    steps: list[Step]
    rolled_back: bool
    prefault_s: float | None = None  # time spent faulting the new pages in once (None: not done)

    @property
    def obtained(self) -> int:
        return self.after - self.before


def _free_memory_steps(root):
    """What the seed does by hand before a 1 GB reservation: write back dirty pages,
    drop clean caches, compact memory.  Each is a request the kernel may ignore."""
    yield "sync", os.sync
    yield "drop_caches", lambda: write_text(Path(root) / "proc/sys/vm/drop_caches", "3\n")
    yield "compact_memory", lambda: write_text(Path(root) / "proc/sys/vm/compact_memory", "1\n")


def grow(
    root, kb: int, count: int, node: int | None = None, partial: bool = False, retry_seconds: float = RETRY_SECONDS
) -> ReserveResult:
    """Raise the pool by `count` pages.  Short 1 GB results are retried after freeing
    memory while retries still gain pages; a short final result is rolled back to the
    starting count unless `partial`."""
    if count <= 0:
        raise UsageError(f"page count must be positive, got {count}")
    validate(root, kb, node)
    before = read_count(root, kb, node)
    target = before + count
    steps = [Step("write", c := set_count(root, kb, target, node), c - before)]
    if c < target and kb >= PAGE_1G.kb:
        deadline = time.monotonic() + retry_seconds
        for attempt in range(1, MAX_RETRIES + 1):
            for name, action in _free_memory_steps(root):
                action()
                steps.append(Step(name, read_count(root, kb, node), 0))
            prev = c
            c = set_count(root, kb, target, node)
            steps.append(Step(f"retry {attempt}", c, c - prev))
            if c >= target or c <= prev or time.monotonic() > deadline:
                break
    after = c
    rolled_back = False
    if after < target and not partial:
        after = set_count(root, kb, before, node) if after != before else after
        rolled_back = True
    return ReserveResult(kb, node, before, count, after, steps, rolled_back)


def reserve(
    root,
    kb: int,
    count: int,
    node: int | None = None,
    partial: bool = False,
    owner: str = "reserve",
    state_dir=None,
    retry_seconds: float = RETRY_SECONDS,
    prefault: bool = True,
) -> ReserveResult:
    """grow() and record what was gained in the ledger under `owner`; then fault the new
    pages in once (see prefault())."""
    with ledger.edit(state_dir) as data:
        result = grow(root, kb, count, node, partial, retry_seconds)
        if result.after != result.before:
            ledger.record_pool_change(data, kb, node, result.before, result.after, owner, "reserve")
    if result.rolled_back:
        raise ShortReservation(result)
    if prefault and result.after > result.before and str(root) == "/":
        # Advisory, like llama.cpp's madvise calls: the pages are reserved and in the ledger
        # already, and the caller must get them back to release them, whatever went wrong here.
        with contextlib.suppress(Exception):  # a failed pre-fault only leaves the faults for later
            result = result._replace(prefault_s=prefault_pages(kb, result.after - result.before))
    return result


# ---------------------------------------------------------------- prefault

MAP_HUGE_SHIFT = 26
MADV_POPULATE_WRITE = 23  # Linux 5.14
_PROT_RW, _MAP_PRIVATE, _MAP_ANONYMOUS, _MAP_HUGETLB = 0x3, 0x02, 0x20, 0x40000


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc


def prefault_pages(kb: int, pages: int, threads: int | None = None) -> float | None:
    """Map `pages` free pages of the pool, write-fault them with several threads
    (MADV_POPULATE_WRITE on slices; ctypes drops the GIL), and unmap them: seconds taken,
    or None when the pool could not lend them (nothing is changed then).

    Why: on a VM that hands free memory back to its host (page_reporting), the first
    touch of freshly reserved pages waits for the host (measured: 0.41 GB/s for 1 GB
    pages, against 8.6 GB/s for the same pages touched again after going back to the
    pool).  Doing it here, in parallel, keeps that cost out of the engine's start-up.
    The pages go back to the pool when unmapped; the host keeps backing them."""
    if pages <= 0:
        return None
    libc = _libc()
    page = kb * 1024
    length = pages * page
    flags = _MAP_PRIVATE | _MAP_ANONYMOUS | _MAP_HUGETLB | ((page.bit_length() - 1) << MAP_HUGE_SHIFT)
    t0 = time.perf_counter()
    addr = libc.mmap(None, length, _PROT_RW, flags, -1, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        return None  # someone else holds free pages meanwhile: faults stay where they are
    try:
        n = max(1, min(threads or os.cpu_count() or 1, pages if kb >= PAGE_1G.kb else 64))
        per = -(-pages // n) * page
        failed = []

        def work(off: int) -> None:
            if libc.madvise(addr + off, min(per, length - off), MADV_POPULATE_WRITE) != 0:
                failed.append(ctypes.get_errno())

        workers = [threading.Thread(target=work, args=(off,)) for off in range(0, length, per)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    finally:
        libc.munmap(addr, length)
    return None if failed else time.perf_counter() - t0


class ShortReservation(PoolError):
    def __init__(self, result: ReserveResult):
        self.result = result
        got = max(r.count for r in result.steps) - result.before
        kb = result.page_size_kb
        boot = f"hugeload boot-config --pages-{page_size_name(kb).lower()} {result.before + result.requested} --apply"
        super().__init__(
            f"asked for {result.requested} x {page_size_name(kb)} pages but the kernel gave {got}; rolled back to "
            f"{result.after}. Use --partial to keep what it gives, or reserve at boot: {boot}"
        )


class ReleaseResult(NamedTuple):
    page_size_kb: int
    node: int | None
    before: int
    after: int
    released: int
    kept: int  # pages of hugeload's share it could not give back
    reason: str  # why `kept` pages stay ("" when none)


def describe_holders(root, kb: int) -> str:
    """Who holds pages of this size, in words: processes that map them, and files on
    hugetlbfs mounts of this size."""
    parts = [f"process {name}" for name in procs.holder_names(procs.holders(root, kb=kb))]
    for m in read_mounts(root):
        if m.page_size_kb != kb:
            continue
        try:
            names = sorted(os.listdir(m.path))
        except OSError:
            continue
        for n in names[:5]:
            parts.append(f"file {os.path.join(m.path, n)}")
    return ", ".join(parts) or "pages promised to mappings (reserved)"


def release(root, kb: int | None = None, owner: str | None = "reserve", state_dir=None) -> list[ReleaseResult]:
    """Give back pages hugeload added (per the ledger), never pages reserved by someone
    else and never pages in use.  `owner=None` releases every owner's share."""
    results = []
    with ledger.edit(state_dir) as data:
        for key in sorted(data["shares"]):
            pkb, node = ledger.parse_pool_key(key)
            if kb is not None and pkb != kb:
                continue
            owners = [o for o in data["shares"][key] if owner is None or o == owner]
            want = sum(data["shares"][key][o] for o in owners)
            if not want:
                continue
            pool = read_pool(root, pkb, node)
            if sum(data["shares"][key].values()) > pool.total:
                # Someone shrank the pool below hugeload's share: those pages are gone already.
                ledger.forget_excess(data, pkb, node, pool.total)
                if key not in data["shares"]:
                    continue
                owners = [o for o in data["shares"][key] if owner is None or o == owner]
                want = sum(data["shares"][key][o] for o in owners)
            # Free pages not promised to a mapping (system resv counts are not kept per node).
            idle = pool.free - (pool.reserved or 0) if node is None else pool.free
            give = max(0, min(want, idle, pool.total))
            after = set_count(root, pkb, pool.total - give, node) if give else pool.total
            released = pool.total - after
            count = pool.total
            for o in owners:
                take = min(count - after, data["shares"][key].get(o, 0))
                if take:
                    ledger.record_pool_change(data, pkb, node, count, count - take, o, "release")
                    count -= take
            kept = want - released
            results.append(
                ReleaseResult(pkb, node, pool.total, after, released, kept, describe_holders(root, pkb) if kept else "")
            )
    return results


def fragmentation_note(root) -> str:
    """Why a 1 GB reservation may come back short, in numbers from /proc."""
    zones = read_buddyinfo(root)
    free_kb = read_meminfo(root).get("MemFree", 0)
    top = sum(z.free_blocks[-1] for z in zones if z.free_blocks)
    top_mib = (4 << (len(zones[0].free_blocks) - 1)) // 1024 if zones and zones[0].free_blocks else 4
    return (
        f"fragmentation: {free_kb // 1024} MiB free, {top} free blocks of {top_mib} MiB (the largest the buddy "
        f"allocator tracks); each 1 GB page needs {1024 // top_mib} of them contiguous and aligned"
    )
