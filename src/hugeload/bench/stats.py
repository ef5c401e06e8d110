"""The statistics of every benchmark, and the one meaning of "within noise".

Every bench measures its cases in rounds, each round visiting every case once in a fresh
shuffled order (`round_orders`), so slow drift (other load, thermal, the page cache) falls on
all cases alike.  A measured quantity is summarised by its median over the rounds with a
percentile-bootstrap interval (`stat`).  Two cases are compared by the median of their
per-round ratios (`paired_ratio`): pairing by round cancels drift that hits a whole round.

**Within noise** means, in every bench and every table: the bootstrap interval of the paired
ratio includes 1, so these rounds cannot tell the two cases apart.  A ratio of 1.03 whose
interval is 0.98-1.07 is within noise; 1.03 with 1.01-1.05 is a difference.  The A/A check of
`bench engine` (a backing run twice as two cases) must come out within noise, and its interval
is the noise floor of the run.
"""

import random
from collections.abc import Iterable, Mapping
from typing import NamedTuple, TypeVar

CONFIDENCE = 0.95
RESAMPLES = 2000
T = TypeVar("T")


def median(values: Iterable[float]) -> float:
    s = sorted(values)
    if not s:
        raise ValueError("no values")
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def bootstrap_median_ci(
    values: list[float], confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = 0
) -> tuple[float, float, float]:
    """(median, low, high): percentile bootstrap interval of the median."""
    if not values:
        raise ValueError("no values")
    med = median(values)
    if len(values) == 1:
        return med, med, med
    rng = random.Random(seed)
    n = len(values)
    meds = sorted(median([values[rng.randrange(n)] for _ in range(n)]) for _ in range(resamples))
    alpha = (1 - confidence) / 2
    lo = meds[int(alpha * (resamples - 1))]
    hi = meds[int(round((1 - alpha) * (resamples - 1)))]
    return med, lo, hi


class Stat(NamedTuple):
    """One measured quantity over rounds: the median and its bootstrap interval."""

    values: list[float]
    median: float
    low: float
    high: float

    def as_dict(self) -> dict:
        return {"median": self.median, "low": self.low, "high": self.high, "values": self.values}


def stat(values: list[float], confidence: float = CONFIDENCE, seed: int = 0) -> Stat:
    med, lo, hi = bootstrap_median_ci(values, confidence, seed=seed)
    return Stat(list(values), med, lo, hi)


def stat_dict(values: list[float]) -> dict | None:
    """stat() as the JSON the benches print; None when nothing was measured."""
    return stat(values).as_dict() if values else None


def within_noise(low: float, high: float) -> bool:
    """The one noise rule (see the module doc): the interval of a ratio includes 1."""
    return low <= 1.0 <= high


class PairedRatio(NamedTuple):
    """Median of per-round ratios a/b with its bootstrap interval."""

    ratio: float
    low: float
    high: float

    @property
    def within_noise(self) -> bool:
        return within_noise(self.low, self.high)

    def as_dict(self) -> dict:
        return {"ratio": self.ratio, "ratio_low": self.low, "ratio_high": self.high, "within_noise": self.within_noise}


NO_RATIO = {"ratio": None, "ratio_low": None, "ratio_high": None, "within_noise": False}


def paired_ratio(
    values: Mapping[int, float] | list[float],
    base: Mapping[int, float] | list[float],
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> PairedRatio | None:
    """values[r] / base[r] over the rounds r both have (dicts by round, or lists in round order),
    summarised as median and bootstrap interval; None when they share no round."""
    a = values if isinstance(values, Mapping) else dict(enumerate(values))
    b = base if isinstance(base, Mapping) else dict(enumerate(base))
    ratios = [a[k] / b[k] for k in sorted(set(a) & set(b)) if b[k]]
    if not ratios:
        return None
    return PairedRatio(*bootstrap_median_ci(ratios, confidence, seed=seed))


def median_counts(samples: list[dict]) -> dict:
    """Per counter (TLB events), the median over the samples that have it; None when none has."""
    out = {}
    for k in samples[0]:
        vals = sorted(x[k] for x in samples if x.get(k) is not None)
        out[k] = vals[len(vals) // 2] if vals else None
    return out


def round_orders(cases: list[T], rounds: int, seed: int = 0) -> list[list[T]]:
    """Every round visits every case once, in a fresh shuffled order."""
    rng = random.Random(seed)
    out = []
    for _ in range(rounds):
        order = list(cases)
        rng.shuffle(order)
        out.append(order)
    return out
