"""The helpers every bench shares: statistics and the noise rule (bench/stats.py), memory
backings (bench/backings.py), notes (bench/common.py), and the smaps check on real mappings
(bench/verify.py)."""

import pytest

from hugeload.api import alloc
from hugeload.bench import backings, common, stats, verify
from hugeload.errors import UsageError
from hugeload.units import MiB


def test_bootstrap_and_stat():
    med, lo, hi = stats.bootstrap_median_ci([1.0, 2.0, 3.0, 4.0, 100.0])
    assert med == 3.0 and lo <= med <= hi <= 100.0
    assert stats.bootstrap_median_ci([5.0]) == (5.0, 5.0, 5.0)
    s = stats.stat([3.0, 1.0, 2.0])
    assert s.values == [3.0, 1.0, 2.0] and s.median == 2.0 and s.low <= 2.0 <= s.high


def test_within_noise_is_the_interval_of_the_paired_ratio_including_1():
    # Two cases whose medians' intervals overlap, but which differ by 10% in every round:
    # pairing by round sees the difference; the intervals of the medians alone would not.
    a = [10.0, 20.0, 30.0, 15.0]
    b = [11.0, 22.0, 33.0, 16.5]
    assert stats.stat(a).high > stats.stat(b).low  # the medians' intervals overlap
    r = stats.paired_ratio(b, a)
    assert r.ratio == pytest.approx(1.1) and not r.within_noise
    noisy = stats.paired_ratio([1.0, 1.2, 0.9, 1.1], [1.1, 1.0, 1.0, 1.0])
    assert noisy.low <= 1.0 <= noisy.high and noisy.within_noise
    assert stats.within_noise(0.98, 1.07) and not stats.within_noise(1.01, 1.05)
    assert stats.paired_ratio({0: 1.0}, {1: 1.0}) is None  # no round in common


def test_round_orders_visit_every_backing_once_per_round():
    orders = stats.round_orders(["4k", "thp", "2m", "1g"], 20, seed=3)
    assert len(orders) == 20 and all(sorted(o) == sorted(["4k", "thp", "2m", "1g"]) for o in orders)
    assert len({tuple(o) for o in orders}) > 1  # shuffled, so drift is not tied to a position


def test_parse_memory_backings():
    assert backings.parse_memory_backings("4K, 2m,4k") == ["4k", "2m"]
    assert backings.MEMORY_BACKINGS == ("4k", "thp", "2m", "1g")
    with pytest.raises(UsageError, match="unknown backing '8k'"):
        backings.parse_memory_backings("4k,8k")
    with pytest.raises(UsageError, match="no backing"):
        backings.parse_memory_backings(" , ")


def test_measured_note_names_counters(no1g_root):
    note = common.measured_note(no1g_root)
    assert "measured" in note and "no CPU performance counters" in note


def test_verify_backing_rejects_a_fallback():
    with alloc(4 * MiB, page_size="4k") as m:
        m.buffer[::4096] = b"x" * (4 * MiB // 4096)
        assert verify.verify_backing(m, "4k") == verify.Verified(4, 0.0, None)
        v = verify.verify_backing(m, "thp")  # 4K pages claimed as THP: never timed as THP
        assert v.problem and "THP backed only 0%" in v.problem
        v = verify.verify_backing(m, "2m")
        assert v.problem and "not 2048 kB" in v.problem
