"""hugeload bench tensors: results per backing, pools always given back."""

import json
import os

import pytest
from api_helpers import KB_1G, KB_2M

from hugeload.act import pools as act_pools
from hugeload.bench import stats, tensors
from hugeload.bench.reservations import PoolUse
from hugeload.units import MiB


def counts():
    return act_pools.read_count("/", KB_2M), act_pools.read_count("/", KB_1G)


def test_bootstrap_interval():
    med, lo, hi = stats.bootstrap_median_ci([1.0, 2.0, 3.0, 4.0, 100.0])
    assert med == 3.0 and lo <= med <= hi and hi <= 100.0
    assert stats.bootstrap_median_ci([5.0]) == (5.0, 5.0, 5.0)


def test_all_backings(needs_root):
    before = counts()
    data = tensors.run(tensors.TensorOptions(size=4 * MiB, rounds=3, reps=1, warmup=1))
    assert counts() == before and data["pools_restored"]
    assert "measured" in data["note"] and "counters" in data["note"]
    by = {r.backing: r for r in data["results"]}
    assert list(by) == ["4k", "thp", "2m", "1g"]
    assert by["4k"].status == "ok" and by["4k"].page_size_kb == 4 and by["4k"].ratio == 1.0
    for b, kb in (("2m", KB_2M), ("1g", KB_1G)):
        r = by[b]
        if r.status == "ok":
            assert r.page_size_kb == kb and len(r.times_ms) == 3
            assert r.ci_low_ms <= r.median_ms <= r.ci_high_ms and r.ratio_low <= r.ratio <= r.ratio_high
        else:
            assert r.reason  # skipped with the reason (e.g. the kernel gave no 1G page)


def test_pools_restored_on_failure(needs_root, monkeypatch):
    before = counts()
    monkeypatch.setattr(tensors.time, "perf_counter", lambda: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        tensors.run(tensors.TensorOptions(size=2 * MiB, backings=("4k", "2m"), rounds=1, reps=1))
    assert counts() == before


def test_skips_backing_without_pages():
    options = tensors.TensorOptions(size=2 * MiB, backings=("4k", "2m"), rounds=2, reps=1, pool=PoolUse.FREE)
    data = tensors.run(options)
    r2 = data["results"][1]
    if r2.status == "skipped":
        assert "reserve" in r2.reason


def test_cli_json(hugeload_cli):
    r = hugeload_cli(
        "bench",
        "tensors",
        "--size",
        "2M",
        "--rounds",
        "2",
        "--reps",
        "1",
        "--backings",
        "4k,2m",
        "--json",
        *([] if os.geteuid() == 0 else ["--no-reserve"]),
    )
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert [x["backing"] for x in data["results"]] == ["4k", "2m"]
    assert data["pools_restored"] is True


def test_cli_table_and_group(hugeload_cli):
    r = hugeload_cli(
        "bench", "tensors", "--size", "2M", "--rounds", "2", "--reps", "1", "--backings", "4k,thp", "--no-reserve"
    )
    assert r.returncode == 0, r.stderr
    assert "vs 4K" in r.stdout and "measured" in r.stdout
    r = hugeload_cli("bench")
    assert r.returncode == 2 and "tensors" in r.stdout
    r = hugeload_cli("bench", "tensors", "--backings", "8k", "--size", "2M")
    assert r.returncode == 2 and "unknown backing" in r.stderr
