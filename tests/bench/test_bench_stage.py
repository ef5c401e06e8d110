"""hugeload bench stage: the store's real load path, cold and warm, against memcpy; everything cleaned up."""

import json

import pytest
from bench_helpers import pool_counts, positive

from hugeload.act import store
from hugeload.bench import pagecache, stage
from hugeload.units import MiB


def check(data):
    assert data["pools_restored"] is True and data["cleaned"] is True
    assert data["page_size_kb"] in (2048, 1048576) and data["page_size_reason"]
    by = {r["case"] if isinstance(r, dict) else r.case: r for r in data["results"]}
    assert list(by) == ["cold", "warm", "memcpy"]
    return by


def test_run(needs_root, tmp_path):
    before = pool_counts()
    data = stage.run(stage.StageBenchOptions(size=64 * MiB, rounds=2, directory=str(tmp_path)))
    assert pool_counts() == before
    by = check(data)
    for case in ("cold", "warm"):
        r = by[case]
        assert len(r.seconds) == 2 and all(positive(s) for s in r.seconds)
        assert all(positive(v) for v in r.gbps.values) and r.gbps.low <= r.gbps.median <= r.gbps.high
        assert positive(r.vs_memcpy.median) and positive(r.vs_memcpy.low)
        assert all(0.0 <= x <= 1.0 for x in r.resident_before)
    assert by["memcpy"].vs_memcpy is None and all(positive(v) for v in by["memcpy"].gbps.values)
    assert "measured" in data["note"] and data["filesystem"]
    assert list(tmp_path.iterdir()) == []  # the temporary file and state directory are gone


def test_cleanup_on_ctrl_c_mid_run(needs_root, tmp_path, monkeypatch):
    """Interrupted right after a model was staged: it is unloaded, the mount removed, pools and files restored."""
    before = pool_counts()
    real_load = store.stage

    def load_then_interrupt(*args, **kwargs):
        real_load(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "stage", load_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        stage.run(stage.StageBenchOptions(size=8 * MiB, rounds=1, directory=str(tmp_path)))
    assert pool_counts() == before and list(tmp_path.iterdir()) == []


def test_resident_fraction(tmp_path):
    path = tmp_path / "f"
    stage.write_file(str(path), 4 * MiB, seed=1)
    pagecache.read_into_cache(str(path))
    warm = pagecache.resident_fraction(str(path))
    pagecache.drop_from_cache(str(path))
    cold = pagecache.resident_fraction(str(path))
    assert warm is not None and cold is not None and 0.0 <= cold < warm <= 1.0


def test_cli_json(hugeload_cli, needs_root, tmp_path):
    r = hugeload_cli("bench", "stage", "--size", "64M", "--rounds", "1", "--dir", tmp_path, "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert {
        "size",
        "page_size_kb",
        "page_size_reason",
        "rounds",
        "threads",
        "filesystem",
        "memcpy_bytes",
        "confidence",
        "note",
        "notes",
        "hypervisor",
        "vm_note",
        "results",
        "reservations",
        "pools_restored",
        "cleaned",
    } <= set(data)
    by = check(data)
    assert positive(by["cold"]["vs_memcpy"]["median"]) and positive(by["warm"]["vs_memcpy"]["median"])
    assert positive(by["memcpy"]["gbps"]["median"])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["--size", "lots"], "cannot parse size"),
        (["--page-size", "4k"], "page size '4k'"),
        (["--dir", "/nonexistent/hugeload"], "is not a directory"),
        (["--size", "64T"], "memory"),
    ],
)
def test_cli_bad_input(hugeload_cli, args, message):
    r = hugeload_cli("bench", "stage", *args)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stdout == ""
