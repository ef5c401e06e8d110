"""The same NumPy matrix-vector product over weights in 4K, THP, 2M and 1G pages.

`run()` is a pure function of its arguments (plus the machine): it reserves
the huge pages each backing needs, reading the pool back, always gives them
back (also on failure or Ctrl-C), times interleaved rounds in a shuffled order
and returns medians with bootstrap 95% intervals and ratios against 4K.

Times are wall-clock measurements (time.perf_counter): virtual machines expose
no CPU performance counters, so TLB misses are inferred, not counted.
"""

import random
import time
from typing import NamedTuple

from hugeload.api import alloc
from hugeload.errors import HugeloadError, UsageError
from hugeload.probe import pools as probe_pools
from hugeload.units import MiB, ceil_div

BACKINGS = ("4k", "thp", "2m", "1g")
HUGETLB_KB = {"2m": 2048, "1g": 1048576}
COLS = 4096  # floats per row: 16 KiB rows
MEASURED_NOTE = ("times are measured wall-clock (time.perf_counter), median of interleaved rounds; "
                 "VMs expose no CPU counters, so TLB misses are not counted")


class Reservation(NamedTuple):
    page_size_kb: int
    before: int
    asked: int  # pages added on top of `before`
    got: int  # pages the kernel really added (read back)
    restored: bool | None  # None until given back


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


def bootstrap_median_ci(values: list[float], confidence: float = 0.95, resamples: int = 2000,
                        seed: int = 0) -> tuple[float, float, float]:
    """(median, low, high): percentile bootstrap interval of the median."""
    if not values:
        raise ValueError("no values")
    med = _median(values)
    if len(values) == 1:
        return med, med, med
    rng = random.Random(seed)
    n = len(values)
    meds = sorted(_median([values[rng.randrange(n)] for _ in range(n)]) for _ in range(resamples))
    alpha = (1 - confidence) / 2
    lo = meds[int(alpha * (resamples - 1))]
    hi = meds[int(round((1 - alpha) * (resamples - 1)))]
    return med, lo, hi


def _median(values: list[float]) -> float:
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def _reserve(root, kb: int, need: int, log) -> Reservation:
    """Add `need` pages to the pool and read back what the kernel gave."""
    from hugeload.act import pools as act_pools

    before = act_pools.read_count(root, kb)
    try:
        after = act_pools.set_count(root, kb, before + need)
    except HugeloadError as e:
        log(f"could not reserve {need} pages of {kb} kB: {e}")
        return Reservation(kb, before, need, 0, None)
    return Reservation(kb, before, need, max(0, after - before), None)


def _give_back(root, r: Reservation) -> Reservation:
    from hugeload.act import pools as act_pools

    try:
        now = act_pools.read_count(root, r.page_size_kb)
        if now != r.before:
            now = act_pools.set_count(root, r.page_size_kb, r.before)
        return r._replace(restored=now == r.before)
    except HugeloadError:
        return r._replace(restored=False)


def run(size: int = 512 * MiB, backings=BACKINGS, rounds: int = 10, reps: int = 3, warmup: int = 2,
        reserve: bool = True, root="/", seed: int = 0, confidence: float = 0.95, log=lambda msg: None) -> dict:
    """Time y = W @ x with W (float32, `size` bytes) in each backing.

    Returns {"size", "shape", "rounds", "reps", "note", "results": [BackingResult],
    "reservations": [Reservation]}.  A backing whose pages cannot be had is
    skipped with the reason.  Pools are back at their counts on return."""
    try:
        import numpy as np
    except ImportError:
        raise UsageError("the tensors benchmark needs NumPy: pip install 'hugeload[numpy]'") from None
    backings = list(dict.fromkeys(backings))
    unknown = [b for b in backings if b not in BACKINGS]
    if unknown:
        raise UsageError(f"unknown backing {unknown[0]!r}: choose from {', '.join(BACKINGS)}")
    if rounds < 1 or reps < 1 or warmup < 0:
        raise UsageError("rounds and reps must be at least 1, warmup at least 0")
    rows = max(1, size // (COLS * 4))
    nbytes = rows * COLS * 4
    rng = np.random.default_rng(seed)
    source = rng.standard_normal((rows, COLS), dtype=np.float32)
    x = rng.standard_normal(COLS, dtype=np.float32)

    skipped: dict[str, str] = {}
    notes: dict[str, str] = {}
    mappings, weights, page_kb = {}, {}, {}
    reservations: list[Reservation] = []
    try:
        for b in backings:
            if b in HUGETLB_KB:
                kb = HUGETLB_KB[b]
                if kb not in probe_pools.page_sizes(root):
                    skipped[b] = f"the kernel offers no {b.upper()} pages"
                    continue
                need = ceil_div(nbytes, kb * 1024)
                if reserve:
                    r = _reserve(root, kb, need, log)
                    reservations.append(r)
                    if r.got < need:
                        pool = probe_pools.system_pool(root, kb)
                        if pool.available < need:
                            skipped[b] = (f"needs {need} free {b.upper()} pages; reserved {r.got} of {need} "
                                          f"(the kernel gave fewer), the pool has {pool.available} unclaimed")
                            continue
            try:
                m = alloc(nbytes, page_size=b, fallback=False)
            except HugeloadError as e:
                skipped[b] = str(e)
                continue
            w = np.frombuffer(m.buffer, dtype=np.float32).reshape(rows, COLS)
            w[...] = source  # touches every page
            mappings[b], weights[b] = m, w
            page_kb[b] = m.page_size
            if b == "thp" and page_kb[b] <= 4:
                notes[b] = "THP asked for, but smaps shows no huge pages backing it"
            log(f"{b}: {nbytes >> 20} MiB in {page_kb[b]} kB pages")
        del source

        order = [b for b in backings if b in weights]
        y = np.empty(rows, dtype=np.float32)
        for b in order:  # warm-up: caches, page tables, BLAS threads
            for _ in range(warmup):
                np.dot(weights[b], x, out=y)
        times: dict[str, list[float]] = {b: [] for b in order}
        shuffle = random.Random(seed)
        for _ in range(rounds):
            this_round = order[:]
            shuffle.shuffle(this_round)
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
        reservations = [_give_back(root, r) for r in reservations]

    results = []
    base = times.get("4k")
    for b in backings:
        if b in skipped:
            results.append(BackingResult(b, "skipped", skipped[b], None, [], None, None, None, None, None, None))
            continue
        t = times[b]
        med, lo, hi = bootstrap_median_ci(t, confidence, seed=seed)
        ratio = ratio_lo = ratio_hi = None
        if base:
            ratio, ratio_lo, ratio_hi = bootstrap_median_ci([a / c for a, c in zip(t, base)], confidence, seed=seed)
        results.append(BackingResult(b, "ok", notes.get(b), page_kb[b], t, med, lo, hi, ratio, ratio_lo, ratio_hi))
    return {
        "size": nbytes,
        "shape": [rows, COLS],
        "rounds": rounds,
        "reps": reps,
        "confidence": confidence,
        "note": MEASURED_NOTE,
        "results": results,
        "reservations": reservations,
        "pools_restored": all(r.restored for r in reservations),
    }
