"""Random dependent reads and sequential reads over a working set in 4K, THP, 2M and 1G pages.

`run()` reserves the huge pages each backing needs (reading the pool back) and
always gives them back (also on failure or Ctrl-C).  Per backing it maps the
working set, times the first touch of every page (fill), checks in
/proc/self/smaps that the memory is in the pages the backing claims (a backing
that cannot get them is skipped with the reason, never timed on a fallback),
builds one random cyclic pointer chain through it (64-byte slots) and warms up.
Then rounds visit every backing once each, in a shuffled order, so drift falls
on all alike: a pointer chase (ns per dependent access: every load waits for
the previous one, so each TLB miss costs a full page walk) and a sequential
read (GB/s).  The timing loops are in the native library (clock_gettime around
the loop), not Python.

Results are medians over rounds with bootstrap intervals, and per-round paired
speedups against 4K and 2M (> 1: this backing is faster), flagged when within
noise (bench/stats.py).
"""

import ctypes
import time
from dataclasses import dataclass
from typing import NamedTuple

from hugeload.bench import perf
from hugeload.bench.backings import MEMORY_BACKINGS, parse_memory_backings
from hugeload.bench.common import (
    VM_NOTE,
    bar_charts,
    cpu_vendor,
    envelope,
    mem_available,
    native_loops,
)
from hugeload.bench.reservations import PageReservations, PoolUse, Reservation
from hugeload.bench.stats import Stat, median_counts, paired_ratio, round_orders, stat
from hugeload.bench.verify import prepare_backing
from hugeload.errors import HugeloadError, UsageError
from hugeload.units import GiB, MiB, format_bytes

__all__ = ["run", "plot", "TlbOptions", "TlbResult", "Ratio", "Stat", "Reservation", "MEMORY_BACKINGS", "VM_NOTE"]

STRIDE = 64  # one chain slot per cache line: the chase touches a random line of a random page
DEFAULT_ACCESSES = 2_000_000
MIN_SIZE = 4 * MiB
SEQ_BYTES_PER_ROUND = 1 * GiB  # a sequential measurement reads at least this much (best of passes)
MEMORY_HEADROOM = 0.9  # never ask for more than this share of MemAvailable at once
METRICS = {
    "random_ns": "random dependent reads, ns/access (lower is better)",
    "seq_gbps": "sequential reads, GB/s (higher is better)",
}


@dataclass(frozen=True)
class TlbOptions:
    size: int = 1 * GiB  # working set per backing
    backings: tuple[str, ...] = MEMORY_BACKINGS
    rounds: int = 10
    accesses: int = DEFAULT_ACCESSES  # dependent reads per random measurement
    pool: PoolUse = PoolUse.RESERVE
    seed: int = 0
    confidence: float = 0.95


class Ratio(NamedTuple):
    metric: str  # random_ns / seq_gbps
    against: str  # 4k / 2m
    speedup: float  # median of per-round ratios; > 1: this backing is faster
    low: float
    high: float
    within_noise: bool  # the interval of the paired ratio includes 1 (bench/stats.py)


class TlbResult(NamedTuple):
    backing: str
    status: str  # "ok" or "skipped"
    reason: str | None
    page_size_kb: int | None  # verified in /proc/self/smaps
    huge_fraction: float | None  # share of the working set in huge pages per smaps
    fill_ms: float | None  # first touch of every page (faults + zeroing), timed once
    fill_gbps: float | None
    setup_ms: float | None  # building the pointer chain (untimed for the results)
    random_ns: Stat | None
    seq_gbps: Stat | None
    ratios: list[Ratio]


def _skipped(b: str, reason: str) -> TlbResult:
    return TlbResult(b, "skipped", reason, None, None, None, None, None, None, None, [])


def _ratios(b: str, random_ns: dict, seq: dict, confidence: float, seed: int) -> list[Ratio]:
    """Speedups (> 1: faster) of `b` against 4K and 2M: ns/access is lower-is-better, so against
    the base it is base/b; GB/s is b/base."""
    out = []
    for base in ("4k", "2m"):
        if base == b or base not in random_ns:
            continue
        for metric, faster, slower in (("random_ns", random_ns[base], random_ns[b]), ("seq_gbps", seq[b], seq[base])):
            r = paired_ratio(faster, slower, confidence, seed)
            if r:
                out.append(Ratio(metric, base, r.ratio, r.low, r.high, r.within_noise))
    return out


def _fill(m) -> float:
    """The first touch of every page (libc's memset): faults and zeroing, timed once."""
    t0 = time.perf_counter()
    ctypes.memset(m.address, 0x5A, len(m))
    return time.perf_counter() - t0


def run(options: TlbOptions = TlbOptions(), *, root="/", log=lambda msg: None) -> dict:
    """Measure each backing over a working set of `options.size` bytes.

    Returns {"size", "rounds", "accesses", "stride", "confidence", "note",
    "hypervisor", "vm_note", "results": [TlbResult], "reservations":
    [Reservation], "pools_restored"}.  Pools are back at their counts on return."""
    o = options
    backings = parse_memory_backings(o.backings)
    size, rounds, accesses, seed, confidence = o.size, o.rounds, o.accesses, o.seed, o.confidence
    if rounds < 1 or accesses < 1:
        raise UsageError("--rounds and --accesses must be at least 1")
    if size < MIN_SIZE:
        raise UsageError(f"size {format_bytes(size)} is too small: at least {format_bytes(MIN_SIZE)}")
    size -= size % STRIDE
    avail = mem_available(root)
    if avail is not None and size * len(backings) > avail * MEMORY_HEADROOM:
        raise UsageError(
            f"{len(backings)} working sets of {format_bytes(size)} exceed the memory available "
            f"({format_bytes(avail)}): use a smaller --size or fewer --backings"
        )
    lib = native_loops()
    seq_repeats = max(1, -(-SEQ_BYTES_PER_ROUND // size))

    skipped: dict[str, str] = {}
    mappings: dict = {}
    facts: dict[str, tuple] = {}
    random_ns: dict[str, list[float]] = {}
    seq: dict[str, list[float]] = {}
    pages = PageReservations(root, o.pool, log)
    counters, counted = None, {}
    with pages:
        try:
            for b in backings:
                got = prepare_backing(pages, b, size, _fill)
                if isinstance(got, str):
                    skipped[b] = got
                    continue
                m, v, fill = got
                mappings[b] = m
                t0 = time.perf_counter()
                if lib.hugeload_chase_init(m.address, size, STRIDE, seed + 1) != 0:
                    raise HugeloadError(f"hugeload_chase_init rejected {size} bytes at stride {STRIDE}")
                setup = time.perf_counter() - t0
                lib.hugeload_chase_ns(m.address, max(1, accesses // 4))  # warm-up: caches, page-walk caches
                lib.hugeload_seq_read_gbps(m.address, size, 1)
                facts[b] = (v.page_size_kb, v.huge_fraction, fill * 1e3, size / fill / 1e9, setup * 1e3)
                log(f"{b}: {format_bytes(size)} in {v.page_size_kb} kB pages, filled in {fill * 1e3:.0f} ms")

            order = [b for b in backings if b in mappings]
            counters = perf.open_counters(0, cpu_vendor(root))  # None: perf.why_none() says why
            counted = {b: [] for b in order}
            random_ns = {b: [] for b in order}
            seq = {b: [] for b in order}
            for i, this_round in enumerate(round_orders(order, rounds, seed)):
                for b in this_round:
                    addr = mappings[b].address
                    if counters:
                        counters.start()
                    random_ns[b].append(lib.hugeload_chase_ns(addr, accesses))
                    if counters:
                        counted[b].append(counters.stop())
                    seq[b].append(lib.hugeload_seq_read_gbps(addr, size, seq_repeats))
                log(f"round {i + 1}/{rounds} done")
        finally:
            for m in mappings.values():
                m.close()
            mappings.clear()
            if counters:
                counters.close()

    results = []
    for b in backings:
        if b in skipped:
            results.append(_skipped(b, skipped[b]))
            continue
        kb, fraction, fill_ms, fill_gbps, setup_ms = facts[b]
        results.append(
            TlbResult(
                b,
                "ok",
                None,
                kb,
                fraction,
                fill_ms,
                fill_gbps,
                setup_ms,
                stat(random_ns[b], confidence, seed),
                stat(seq[b], confidence, seed),
                _ratios(b, random_ns, seq, confidence, seed),
            )
        )
    return {
        "size": size,
        "rounds": rounds,
        "accesses": accesses,
        "stride": STRIDE,
        "seq_passes": seq_repeats,
        "confidence": confidence,
        "metrics": METRICS,
        "results": results,
        "tlb_counters": {b: median_counts(v) for b, v in counted.items() if v},
        "tlb_note": "" if counted and any(counted.values()) else perf.why_none(),
        **envelope(root, "clock_gettime around loops in the native library", pages),
    }


def plot(data: dict, path: str) -> None:
    """Two bar charts (random ns/access, sequential GB/s) with the intervals as error bars."""
    ok = [r for r in data["results"] if r.status == "ok"]
    panels = []
    for key, label in (
        ("random_ns", "random reads, ns/access (lower is better)"),
        ("seq_gbps", "sequential reads, GB/s (higher is better)"),
    ):
        panels.append(
            (
                label,
                [(r.backing.upper(), getattr(r, key).median, getattr(r, key).low, getattr(r, key).high) for r in ok],
            )
        )
    pct = int(data["confidence"] * 100)
    bar_charts(
        panels,
        f"hugeload bench tlb: {format_bytes(data['size'])}, median of {data['rounds']} rounds, "
        f"{pct}% intervals" + (" (VM)" if data["hypervisor"] else ""),
        path,
    )
