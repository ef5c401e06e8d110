"""Staging throughput: `hugeload load` of a file into hugetlbfs, from a cold and a
warm page cache, against this machine's memcpy bandwidth measured in the same run.

`run()` writes its own temporary file, reserves the huge pages one staged copy
needs (reading the pool back) and stages through the store's real load path
(hugeload.act.store.stage, with a temporary state directory, so its hugetlbfs
mount is private to the run).  Rounds visit the three cases in a shuffled
order: cold (the file dropped from the page cache with posix_fadvise
DONTNEED, checked with mincore), warm (the file read into the page cache
first, untimed) and memcpy (native hugeload_memcpy_gbps between two buffers
already touched, best of a few copies).  A staged copy is unloaded after each
round.  Afterwards every model is unloaded, the mount unmounted, the pages
given back and the temporary files deleted, also on failure or Ctrl-C.

A load's time is the whole product path: mount, ftruncate and mmap on
hugetlbfs, faulting and zeroing the huge pages, the threaded copy, the
manifest.  memcpy is one thread between warm buffers: the ceiling a copy
could reach, not a like-for-like rival.
"""

import contextlib
import ctypes
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from hugeload import pages
from hugeload.act import mounts as act_mounts
from hugeload.act import store
from hugeload.api import alloc
from hugeload.bench.common import envelope, mem_available, native_loops
from hugeload.bench.pagecache import drop_from_cache, read_into_cache, resident_fraction
from hugeload.bench.reservations import PageReservations, PoolUse, Reservation, sigint_deferred
from hugeload.bench.scratch import create_private
from hugeload.bench.stats import Stat, round_orders, stat
from hugeload.errors import HugeloadError, PermissionNeeded, PoolError, UsageError
from hugeload.pages import PAGE_1G, PAGE_2M, PageSize
from hugeload.probe.mounts import filesystem_of, read_mounts
from hugeload.units import GiB, MiB, format_bytes

__all__ = ["run", "StageBenchOptions", "StagingResult", "Stat", "Reservation", "resident_fraction"]

CASES = ("cold", "warm", "memcpy")
MIN_SIZE = 1 * MiB
MEMCPY_MAX = 512 * MiB  # large enough to leave every cache, small enough to spare memory
MEMCPY_REPEATS = 3
WRITE_BLOCK = 16 * MiB
MODEL_NAME = "bench-stage"
COLD_MAX_RESIDENT = 0.05  # above this share still cached, "cold" is noted as not cold
RAM_FILESYSTEMS = {"tmpfs", "ramfs"}


@dataclass(frozen=True)
class StageBenchOptions:
    size: int = 1 * GiB  # of the generated file
    page_size: PageSize | None = None  # None: auto (the size rule, when the pages can be had), else 1g or 2m
    rounds: int = 3
    directory: str | None = None  # where the file is written (default: the system's temporary directory)
    pool: PoolUse = PoolUse.RESERVE
    seed: int = 0
    confidence: float = 0.95


class StagingResult(NamedTuple):
    case: str  # cold / warm / memcpy
    gbps: Stat  # GB/s (1e9 bytes per second)
    seconds: list[float] | None  # per round, the whole load (None for memcpy)
    resident_before: list[float] | None  # share of the file in the page cache just before each load
    vs_memcpy: Stat | None  # per-round ratio gbps / memcpy gbps


def write_file(path: str, size: int, seed: int) -> None:
    """`size` bytes of pseudo-random data in a new private file, synced to disk."""
    block = random.Random(seed).randbytes(min(size, WRITE_BLOCK))
    with os.fdopen(create_private(path), "wb", buffering=0) as f:
        left = size
        while left:
            n = f.write(memoryview(block)[: min(left, len(block))])
            left -= n
        os.fsync(f.fileno())


# --------------------------------------------------------------------------- run


def _choose(page_size: PageSize | None, size: int, reservations: PageReservations, log) -> tuple[PageSize, str]:
    """(page size, why): auto follows hugeload.pages' size rule when the pages can be had, else 2M."""
    if page_size is not None:
        reason = reservations.ensure(page_size.name, size)
        if reason:
            raise PoolError(f"cannot stage into {page_size.label} pages: {reason}")
        return page_size, f"{page_size.label} requested"
    why = pages.why(size)
    if pages.first_page(size) == PAGE_1G:
        reason = reservations.ensure(PAGE_1G.name, size)
        if not reason:
            return PAGE_1G, f"{why}, and 1G pages could be had"
        log(f"1G: {reason}; staging into 2M pages")
        why = f"1G pages could not be had ({reason}); 2M used"
    reason = reservations.ensure(PAGE_2M.name, size)
    if reason:
        raise PoolError(f"cannot stage into 2M pages: {reason}")
    return PAGE_2M, why


def run(options: StageBenchOptions = StageBenchOptions(), *, root="/", log=lambda msg: None) -> dict:
    """Stage a generated file of `options.size` bytes `rounds` times cold and warm; see the module doc."""
    o = options
    size, rounds, seed, confidence = o.size, o.rounds, o.seed, o.confidence
    if rounds < 1:
        raise UsageError("--rounds must be at least 1")
    if size < MIN_SIZE:
        raise UsageError(f"size {format_bytes(size)} is too small: at least {format_bytes(MIN_SIZE)}")
    if o.directory is not None and not os.path.isdir(o.directory):
        raise UsageError(f"--dir {o.directory} is not a directory")
    if o.page_size is not None and o.page_size not in pages.HUGE:
        raise UsageError(f"page size {o.page_size.label} is not allowed here: choose one of auto, 1g, 2m")
    copy_bytes = min(size, MEMCPY_MAX)
    avail = mem_available(root)
    if avail is not None and 2 * size + 2 * copy_bytes > avail * 0.9:
        raise UsageError(
            f"staging {format_bytes(size)} needs about {format_bytes(2 * size + 2 * copy_bytes)} of "
            f"memory (staged copy, page cache, memcpy buffers), {format_bytes(avail)} is available"
        )
    if os.geteuid() != 0:
        raise PermissionNeeded("bench stage mounts hugetlbfs and reserves huge pages: run it as root")
    lib = native_loops()
    tmp = Path(tempfile.mkdtemp(prefix="hugeload-bench-stage-", dir=o.directory))
    fs = filesystem_of(root, str(tmp))
    free = shutil.disk_usage(tmp).free
    if free < size + 64 * MiB:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UsageError(
            f"{tmp.parent} has {format_bytes(free)} free, the test file needs {format_bytes(size)}: "
            f"use --dir on a larger filesystem"
        )
    state_dir = tmp / "state"
    path = str(tmp / "bench-stage.bin")
    reservations = PageReservations(root, o.pool, log)
    buffers = []
    seconds = {"cold": [], "warm": []}
    resident = {"cold": [], "warm": []}
    memcpy: list[float] = []
    threads = min(4, os.cpu_count() or 1)  # the store's default
    cleaned = False
    try:
        with reservations:
            try:
                page, why = _choose(o.page_size, size, reservations, log)
                kb = page.kb
                log(f"writing {format_bytes(size)} to a temporary file on {fs}")
                write_file(path, size, seed)
                for _ in range(2):
                    m = alloc(copy_bytes, page_size="thp", fallback=True)
                    ctypes.memset(m.address, 0x5A, copy_bytes)  # touched: memcpy measures copying, not faults
                    buffers.append(m)
                for i, order in enumerate(round_orders(list(CASES), rounds, seed)):
                    for case in order:
                        if case == "memcpy":
                            memcpy.append(
                                lib.hugeload_memcpy_gbps(
                                    buffers[0].address, buffers[1].address, copy_bytes, MEMCPY_REPEATS
                                )
                            )
                            continue
                        if case == "cold":
                            drop_from_cache(path)
                        else:
                            read_into_cache(path)
                        resident[case].append(resident_fraction(path))
                        t0 = time.perf_counter()
                        store.stage(
                            path,
                            store.StageOptions(page_size=page, name=MODEL_NAME, reserve=True, threads=threads),
                            state_dir=state_dir,
                            root=root,
                        )
                        seconds[case].append(time.perf_counter() - t0)
                        store.unstage(MODEL_NAME, force=True, state_dir=state_dir, root=root)
                    log(f"round {i + 1}/{rounds} done")
            finally:
                with sigint_deferred():
                    for m in buffers:
                        m.close()
                    cleaned = _clean(tmp, state_dir, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        cleaned = cleaned and not tmp.exists()

    gbps = {c: [size / s / 1e9 for s in seconds[c]] for c in ("cold", "warm")}
    results = []
    for c in ("cold", "warm"):
        results.append(
            StagingResult(
                c,
                stat(gbps[c], confidence, seed),
                seconds[c],
                resident[c],
                stat([g / m for g, m in zip(gbps[c], memcpy, strict=True)], confidence, seed),
            )
        )
    results.append(StagingResult("memcpy", stat(memcpy, confidence, seed), None, None, None))
    notes = [
        f"a load is the whole `hugeload load` path (mount, fault and zero {pages.name(kb)} pages, "
        f"copy with {threads} threads, manifest); memcpy is one thread between buffers already touched"
    ]
    if fs in RAM_FILESYSTEMS:
        notes.append(f"the file was on {fs}, which lives in memory: 'cold' reads are not from a disk (use --dir)")
    cold_left = [r for r in resident["cold"] if r is not None and r > COLD_MAX_RESIDENT]
    if cold_left:
        notes.append(
            f"the kernel kept up to {max(cold_left):.0%} of the file cached after DONTNEED: 'cold' was partly warm"
        )
    warm_short = [r for r in resident["warm"] if r is not None and r < 0.95]
    if warm_short:
        notes.append(f"only {min(warm_short):.0%} of the file stayed cached before a warm load (memory pressure)")
    return {
        "size": size,
        "page_size_kb": kb,
        "page_size_reason": why,
        "rounds": rounds,
        "threads": threads,
        "filesystem": fs,
        "memcpy_bytes": copy_bytes,
        "confidence": confidence,
        "notes": notes,
        "results": results,
        **envelope(
            root, "time.perf_counter around store.stage; memcpy timed in the native library", reservations, False
        ),
        "cleaned": cleaned,
    }


def _clean(tmp: Path, state_dir: Path, root) -> bool:
    """Unload what is staged, remove leftovers, unmount the run's mounts; True when nothing is left mounted."""
    if not state_dir.exists():
        return True
    for m in store.manifests(state_dir):
        with contextlib.suppress(HugeloadError, OSError):
            store.unstage(m.name, force=True, state_dir=state_dir, root=root)
    with contextlib.suppress(HugeloadError, OSError):
        store.gc(state_dir, root)
    prefix = str(tmp) + "/"
    for m in read_mounts(root):
        if m.path.startswith(prefix):
            with contextlib.suppress(HugeloadError, OSError):
                for entry in Path(m.path).iterdir():
                    shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink()
                act_mounts.umount(root, m.path, force=True, state_dir=state_dir)
    return not any(m.path.startswith(prefix) for m in read_mounts(root))
