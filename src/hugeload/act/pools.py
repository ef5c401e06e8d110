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

from hugeload.act import crashpoint, hvo, ledger
from hugeload.act.sysfs import write_text
from hugeload.errors import HugeloadError, PoolError, UsageError
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


def persistent(pool: probe_pools.Pool) -> int:
    """The pool's persistent pages: what a write of nr_hugepages sets, and what the ledger counts.
    Reading nr_hugepages gives them plus the surplus pages, which come and go by themselves (a
    surplus page in use is freed, not kept, when it is unmapped)."""
    return pool.total - pool.surplus


def read_count(root, kb: int, node: int | None = None) -> int:
    """The persistent pages of the pool (see persistent())."""
    return persistent(read_pool(root, kb, node))


def set_count(root, kb: int, count: int, node: int | None = None) -> int:
    """Ask the kernel for `count` persistent pages and return the count it settled on.

    A shrink below the pages in use or promised makes the kernel turn those into surplus pages,
    freed when unmapped: pages that go back by themselves later, where no ledger transaction
    would see them go (measured here: a release racing a stage's mmap left 5 of them).  Such a
    shrink is undone at once, so a pool only ever gives back pages that are idle now."""
    path = pool_dir(root, kb, node) / "nr_hugepages"
    before = read_pool(root, kb, node)
    write_text(path, f"{count}\n")
    after = read_pool(root, kb, node)
    made_surplus = after.surplus - before.surplus
    if count < persistent(before) and made_surplus > 0:
        write_text(path, f"{persistent(after) + made_surplus}\n")
        after = read_pool(root, kb, node)
    return persistent(after)


def try_one_page(root, kb: int, state_dir=None) -> tuple[int, bool, str | None]:
    """Grow the pool by one page and put it back: (pages obtained, restored, error).

    Used by `doctor --try` to learn whether runtime reservation works without keeping
    anything.  Both writes go through the ledger, so a kill between them leaves the page
    recorded under this process (doctor:<pid>@<start>), and `gc` gives it back."""
    owner = str(ledger.Owner.process("doctor", root=root))
    obtained, error = 0, None
    try:
        obtained = max(0, grow_step(root, kb, None, 1, owner, state_dir, "try")[2])
    except Exception as e:  # noqa: BLE001 - reported as the check's detail
        error = str(e)
    restored = obtained == 0
    if obtained:
        with contextlib.suppress(Exception):
            restored = shrink(root, kb, None, owner, obtained, state_dir, "try") == obtained
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
    hvo: str = ""  # HVO while the pages were allocated, in words (act/hvo.py)

    @property
    def obtained(self) -> int:
        return self.after - self.before


def _free_memory_steps(root):
    """What the seed does by hand before a 1 GB reservation: write back dirty pages,
    drop clean caches, compact memory.  Each is a request the kernel may ignore."""
    yield "sync", os.sync
    yield "drop_caches", lambda: write_text(Path(root) / "proc/sys/vm/drop_caches", "3\n")
    yield "compact_memory", lambda: write_text(Path(root) / "proc/sys/vm/compact_memory", "1\n")


def write_step(
    data: dict, root, kb: int, node: int | None, owners: list[str], before: int, target: int, state_dir, action: str
) -> int:
    """One nr_hugepages write inside a ledger transaction, write-ahead: the intent (owners,
    pool, count before, target) is durable before the write, the outcome is recorded after it,
    whatever the write did (also when it raised).  Returns the pages it moved for the owners."""
    intent = ledger.begin(
        data, state_dir, "pool", owners[0], page_size_kb=kb, node=node, before=before, target=target, owners=owners
    )
    crashpoint.point(f"{kb} kB pool: intent durable, not written")
    try:
        now = set_count(root, kb, target, node)
        crashpoint.point(f"{kb} kB pool written, outcome not recorded")
    except BaseException:
        with contextlib.suppress(Exception):
            ledger.record_moved(data, kb, node, owners, before, target, read_count(root, kb, node), action)
            ledger.finish(data, intent)
        raise
    moved = ledger.record_moved(data, kb, node, owners, before, target, now, action)
    ledger.finish(data, intent)
    return moved


class Grow(NamedTuple):
    before: int
    after: int
    gained: int
    hvo: str  # HVO when the pages were allocated (act/hvo.before_grow's words)


def grow_step(
    root, kb: int, node: int | None, count: int, owner: str, state_dir, action="reserve", hvo_mode=hvo.Hvo.LEAVE
) -> Grow:
    """Ask the kernel for `count` more pages for `owner`, as one transaction, HVO turned on
    first in the same transaction (unless `hvo_mode` says leave)."""
    with ledger.edit(state_dir, root) as data:
        hvo_state = hvo.before_grow(data, root, state_dir, owner, hvo_mode)
        before = read_count(root, kb, node)
        gained = write_step(data, root, kb, node, [owner], before, before + count, state_dir, action)
        return Grow(before, before + gained, gained, hvo_state)


def shrink(root, kb: int, node: int | None, owner: str, count: int, state_dir, action="rollback") -> int:
    """Give back up to `count` of `owner`'s pages that nothing uses or has promised, as one
    transaction; returns the pages given back."""
    with ledger.edit(state_dir, root) as data:
        pool = read_pool(root, kb, node)
        total = persistent(pool)
        give = max(0, min(count, ledger.share(data, kb, node, owner), idle_pages(pool), total))
        if not give:
            return 0
        given = -write_step(data, root, kb, node, [owner], total, total - give, state_dir, action)
        hvo.after_shrink(data, root, state_dir)
        return given


def idle_pages(pool: probe_pools.Pool) -> int:
    """Free pages nobody has promised to a mapping (the kernel keeps no per-node promise count)."""
    return pool.free - (pool.reserved or 0) if pool.node is None else pool.free


def reserve(
    root,
    kb: int,
    count: int,
    node: int | None = None,
    partial: bool = False,
    owner="reserve",
    state_dir=None,
    retry_seconds: float = RETRY_SECONDS,
    prefault: bool = True,
    hvo_mode: hvo.Hvo | str | None = None,
) -> ReserveResult:
    """Raise the pool by `count` pages for `owner` (a ledger.Owner or its text), reading back
    what the kernel gave.  Short 1 GB results are retried after freeing memory while retries
    still gain pages; a short final result is given back unless `partial`, and so is what was
    gained when it is interrupted (Ctrl-C, an error).  Every write is one ledger transaction
    (write-ahead, see act/ledger.py): the lock is never held across the retries' sync,
    drop_caches and compaction, and a kill at any point leaves every page gained recorded.
    HVO is turned on before the first write unless `hvo_mode` (default: act/hvo.mode()) says
    leave, and put back when hugeload's last page goes (release, shrink, gc).
    Then the new pages are faulted in once (see prefault_pages())."""
    if count <= 0:
        raise UsageError(f"page count must be positive, got {count}")
    validate(root, kb, node)
    how = hvo.mode(hvo_mode)
    owner = str(owner)
    gained = 0
    steps: list[Step] = []
    try:
        before, after, got, hvo_state = grow_step(root, kb, node, count, owner, state_dir, hvo_mode=how)
        gained += got
        steps.append(Step("write", after, got))
        if gained < count and kb >= PAGE_1G.kb:
            deadline = time.monotonic() + retry_seconds
            for attempt in range(1, MAX_RETRIES + 1):
                for name, action in _free_memory_steps(root):
                    try:
                        action()
                        steps.append(Step(name, read_count(root, kb, node), 0))
                    except HugeloadError as e:  # advisory: a read-only /proc/sys in a container
                        steps.append(Step(f"{name} skipped ({e})", read_count(root, kb, node), 0))
                _, now, got, _ = grow_step(root, kb, node, count - gained, owner, state_dir, hvo_mode=how)
                gained += got
                steps.append(Step(f"retry {attempt}", now, got))
                if gained >= count or got <= 0 or time.monotonic() > deadline:
                    break
    except BaseException:
        with contextlib.suppress(Exception):
            if gained and not partial:
                shrink(root, kb, node, owner, gained, state_dir)
            hvo.settle(state_dir, root)  # HVO back off when nothing stayed (shrink did it otherwise)
        raise
    rolled_back = False
    if gained < count and not partial:
        gained -= shrink(root, kb, node, owner, gained, state_dir) if gained else 0
        rolled_back = True
    if not gained:
        hvo.settle(state_dir, root)
    result = ReserveResult(kb, node, before, count, before + gained, steps, rolled_back, hvo=hvo_state)
    if result.rolled_back:
        raise ShortReservation(result)
    return prefaulted(root, result) if prefault else result


def prefaulted(root, result: ReserveResult) -> ReserveResult:
    """The new pages of `result` faulted in once (see prefault_pages()), on the live machine."""
    if result.after <= result.before or str(root) != "/":
        return result
    # Advisory, like llama.cpp's madvise calls: the pages are reserved and in the ledger
    # already, and the caller must get them back to release them, whatever went wrong here.
    with contextlib.suppress(Exception):  # a failed pre-fault only leaves the faults for later
        return result._replace(prefault_s=prefault_pages(result.page_size_kb, result.after - result.before))
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


def release(root, kb: int | None = None, owner="reserve", state_dir=None) -> list[ReleaseResult]:
    """Give back pages hugeload added (per the ledger), never pages reserved by someone
    else and never pages in use.  `owner=None` releases every owner's share."""
    owner = None if owner is None else str(owner)
    results = []
    with ledger.edit(state_dir, root) as data:
        for key in sorted(data["shares"]):
            pkb, node = ledger.parse_pool_key(key)
            if kb is not None and pkb != kb:
                continue
            owners = [o for o in data["shares"][key] if owner is None or o == owner]
            want = sum(data["shares"][key][o] for o in owners)
            if not want:
                continue
            pool = read_pool(root, pkb, node)
            total = persistent(pool)
            if sum(data["shares"][key].values()) > total:
                # Someone shrank the pool below hugeload's share: those pages are gone already.
                ledger.forget_excess(data, pkb, node, total)
                if key not in data["shares"]:
                    continue
                owners = [o for o in data["shares"][key] if owner is None or o == owner]
                want = sum(data["shares"][key][o] for o in owners)
            give = max(0, min(want, idle_pages(pool), total))
            released = 0
            if give:
                released = -write_step(data, root, pkb, node, owners, total, total - give, state_dir, "release")
            kept = want - released
            results.append(
                ReleaseResult(
                    pkb,
                    node,
                    total,
                    total - released,
                    released,
                    kept,
                    describe_holders(root, pkb) if kept else "",
                )
            )
        hvo.after_shrink(data, root, state_dir)
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
