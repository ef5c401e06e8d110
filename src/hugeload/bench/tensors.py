"""The same NumPy matrix-vector product over weights in 4K, THP, 2M and 1G pages.

`run()` is a pure function of its arguments (plus the machine): it reserves
the huge pages each backing needs, reading the pool back, always gives them
back (also on failure or Ctrl-C), times interleaved rounds in a shuffled order
and returns medians with bootstrap 95% intervals and ratios against 4K.

Times are wall-clock measurements (time.perf_counter): virtual machines expose
no CPU performance counters, so TLB misses are inferred, not counted.  The
shared machinery is bench/reservations.py, verify.py and stats.py.
"""

import time
from dataclasses import dataclass
from typing import NamedTuple

from hugeload.bench.backings import MEMORY_BACKINGS, parse_memory_backings
from hugeload.bench.common import envelope
from hugeload.bench.reservations import PageReservations, PoolUse, Reservation
from hugeload.bench.stats import paired_ratio, round_orders, stat
from hugeload.bench.verify import prepare_backing
from hugeload.errors import UsageError
from hugeload.units import MiB

COLS = 4096  # floats per row: 16 KiB rows

__all__ = ["run", "TensorOptions", "BackingResult", "Reservation", "MEMORY_BACKINGS"]


@dataclass(frozen=True)
class TensorOptions:
    size: int = 512 * MiB  # of the weight matrix
    backings: tuple[str, ...] = MEMORY_BACKINGS
    rounds: int = 10
    reps: int = 3  # products per measurement
    warmup: int = 2  # untimed products per backing first
    pool: PoolUse = PoolUse.RESERVE
    seed: int = 0
    confidence: float = 0.95


class BackingResult(NamedTuple):
    backing: str
    status: str  # "ok" or "skipped"
    reason: str | None
    page_size_kb: int | None  # verified in /proc/self/smaps
    times_ms: list[float]  # one per round: mean of `reps` products
    median_ms: float | None
    ci_low_ms: float | None
    ci_high_ms: float | None
    ratio: float | None  # median of per-round ratios time / time on 4K
    ratio_low: float | None
    ratio_high: float | None


def run(options: TensorOptions = TensorOptions(), *, root="/", log=lambda msg: None) -> dict:
    """Time y = W @ x with W (float32, `options.size` bytes) in each backing.

    Returns {"size", "shape", "rounds", "reps", "note", "results": [BackingResult],
    "reservations": [Reservation]}.  A backing whose pages cannot be had is
    skipped with the reason.  Pools are back at their counts on return."""
    try:
        import numpy as np
    except ImportError:
        raise UsageError("the tensors benchmark needs NumPy: pip install 'hugeload[numpy]'") from None
    o = options
    backings = parse_memory_backings(o.backings)
    size, rounds, reps, warmup, seed, confidence = o.size, o.rounds, o.reps, o.warmup, o.seed, o.confidence
    if rounds < 1 or reps < 1 or warmup < 0:
        raise UsageError("rounds and reps must be at least 1, warmup at least 0")
    rows = max(1, size // (COLS * 4))
    nbytes = rows * COLS * 4
    rng = np.random.default_rng(seed)
    source = rng.standard_normal((rows, COLS), dtype=np.float32)
    x = rng.standard_normal(COLS, dtype=np.float32)

    skipped: dict[str, str] = {}
    mappings, weights, page_kb = {}, {}, {}

    def fill(m):
        view = np.frombuffer(m.buffer, dtype=np.float32).reshape(rows, COLS)
        view[...] = source  # touches every page
        return view

    pages = PageReservations(root, o.pool, log)
    with pages:
        try:
            for b in backings:
                got = prepare_backing(pages, b, nbytes, fill)
                if isinstance(got, str):
                    skipped[b] = got  # never time a fallback
                    continue
                m, v, w = got
                got = None  # the view lives in `weights` only: close() must find no other
                mappings[b], weights[b] = m, w
                page_kb[b] = v.page_size_kb
                log(f"{b}: {nbytes >> 20} MiB in {page_kb[b]} kB pages")
            source = None  # the weights are in the backings now

            order = [b for b in backings if b in weights]
            y = np.empty(rows, dtype=np.float32)
            for b in order:  # warm-up: caches, page tables, BLAS threads
                for _ in range(warmup):
                    np.dot(weights[b], x, out=y)
            times: dict[str, list[float]] = {b: [] for b in order}
            for this_round in round_orders(order, rounds, seed):
                for b in this_round:
                    w = weights[b]
                    t0 = time.perf_counter()
                    for _ in range(reps):
                        np.dot(w, x, out=y)
                    times[b].append((time.perf_counter() - t0) / reps * 1e3)
        finally:
            w = None  # the last view: mappings unmap only when no view is left
            weights.clear()
            for m in mappings.values():
                m.close()
            mappings.clear()

    results = []
    base = times.get("4k")
    for b in backings:
        if b in skipped:
            results.append(BackingResult(b, "skipped", skipped[b], None, [], None, None, None, None, None, None))
            continue
        t = times[b]
        s = stat(t, confidence, seed)
        r = paired_ratio(t, base, confidence, seed) if base else None
        ratio = (r.ratio, r.low, r.high) if r else (None, None, None)
        results.append(BackingResult(b, "ok", None, page_kb[b], t, s.median, s.low, s.high, *ratio))
    return {
        "size": nbytes,
        "shape": [rows, COLS],
        "rounds": rounds,
        "reps": reps,
        "confidence": confidence,
        "results": results,
        **envelope(root, "time.perf_counter", pages),
    }
