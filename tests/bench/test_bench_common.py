"""bench/common.py: the pure helpers, and the smaps check on real mappings."""

import pytest

from hugeload.api import alloc
from hugeload.bench import common
from hugeload.errors import UsageError
from hugeload.units import MiB


def test_bootstrap_and_stat():
    med, lo, hi = common.bootstrap_median_ci([1.0, 2.0, 3.0, 4.0, 100.0])
    assert med == 3.0 and lo <= med <= hi <= 100.0
    assert common.bootstrap_median_ci([5.0]) == (5.0, 5.0, 5.0)
    s = common.stat([3.0, 1.0, 2.0])
    assert s.values == [3.0, 1.0, 2.0] and s.median == 2.0 and s.low <= 2.0 <= s.high


def test_overlap_is_the_noise_rule():
    a = common.Stat([], 10.0, 9.0, 11.0)
    assert common.overlap(a, common.Stat([], 11.5, 10.5, 12.0))
    assert not common.overlap(a, common.Stat([], 13.0, 12.0, 14.0))


def test_round_orders_visit_every_backing_once_per_round():
    orders = common.round_orders(["4k", "thp", "2m", "1g"], 20, seed=3)
    assert len(orders) == 20 and all(sorted(o) == sorted(["4k", "thp", "2m", "1g"]) for o in orders)
    assert len({tuple(o) for o in orders}) > 1  # shuffled, so drift is not tied to a position


def test_parse_backings():
    assert common.parse_backings("4K, 2m,4k") == ["4k", "2m"]
    with pytest.raises(UsageError, match="unknown backing '8k'"):
        common.parse_backings("4k,8k")
    with pytest.raises(UsageError, match="no backing"):
        common.parse_backings(" , ")


def test_measured_note_names_counters(no1g_root):
    note = common.measured_note(no1g_root)
    assert "measured" in note and "no CPU performance counters" in note


def test_verify_backing_rejects_a_fallback():
    with alloc(4 * MiB, page_size="4k") as m:
        m.buffer[::4096] = b"x" * (4 * MiB // 4096)
        assert common.verify_backing(m, "4k") == common.Verified(4, 0.0, None)
        v = common.verify_backing(m, "thp")  # 4K pages claimed as THP: never timed as THP
        assert v.problem and "THP backed only 0%" in v.problem
        v = common.verify_backing(m, "2m")
        assert v.problem and "not 2048 kB" in v.problem
