"""hugeload bench tlb: verified backings, skips with reasons, JSON contract, pools given back."""

import json

import pytest
from bench_helpers import KB_1G, KB_2M, pool_counts, positive

from hugeload.bench import tlb
from hugeload.bench.reservations import PoolUse
from hugeload.units import MiB

PAGE_KB = {"4k": 4, "thp": 2048, "2m": KB_2M, "1g": KB_1G}
SMALL = dict(size=64 * MiB, rounds=2, accesses=100_000)


def options(**kw) -> tlb.TlbOptions:
    return tlb.TlbOptions(**{**SMALL, **kw})


def check_ok(r, rounds=2):
    assert r.status == "ok" and r.reason is None
    assert r.page_size_kb == PAGE_KB[r.backing]  # verified in smaps, never a fallback
    assert positive(r.fill_ms) and positive(r.fill_gbps) and positive(r.setup_ms)
    for s in (r.random_ns, r.seq_gbps):
        assert len(s.values) == rounds and all(positive(v) for v in s.values)
        assert s.low <= s.median <= s.high
    for q in r.ratios:
        assert q.metric in ("random_ns", "seq_gbps") and q.against in ("4k", "2m") and q.against != r.backing
        assert positive(q.speedup) and positive(q.low) and positive(q.high) and isinstance(q.within_noise, bool)


def test_all_backings(needs_root):
    before = pool_counts()
    data = tlb.run(options())
    assert pool_counts() == before and data["pools_restored"] is True
    assert "measured" in data["note"] and "counters" in data["note"]
    assert (data["vm_note"] is not None) == data["hypervisor"]
    by = {r.backing: r for r in data["results"]}
    assert list(by) == ["4k", "thp", "2m", "1g"]
    check_ok(by["4k"])
    assert by["4k"].huge_fraction == 0.0 and {q.against for q in by["4k"].ratios} <= {"2m"}
    for b in ("thp", "2m", "1g"):
        r = by[b]
        if r.status == "ok":
            check_ok(r)
            assert {(q.metric, q.against) for q in r.ratios} >= {("random_ns", "4k"), ("seq_gbps", "4k")}
        else:  # e.g. the kernel gave no 1G page, THP stayed 4K: skipped with the reason, not timed
            assert r.status == "skipped" and r.reason and r.random_ns is None


def test_empty_pool_without_reservation_is_skipped(no1g_root):
    """The fixture machine's 2M pool is empty and its kernel has no 1G pages; 4K still runs here."""
    before = pool_counts()
    data = tlb.run(options(backings=("4k", "2m", "1g"), pool=PoolUse.FREE), root=no1g_root)
    assert pool_counts() == before and data["reservations"] == []
    r4, r2, r1 = data["results"]
    check_ok(r4)
    assert r4.ratios == []  # nothing to compare with
    assert r2.status == "skipped" and "pool has 0 unclaimed" in r2.reason and "reserve" in r2.reason
    assert r1.status == "skipped" and "no 1G pages" in r1.reason


class _Interrupting:
    """The native library, except that the chase raises Ctrl-C."""

    def __init__(self, lib):
        self._lib = lib

    def __getattr__(self, name):
        if name == "hugeload_chase_ns":

            def chase(*args):
                raise KeyboardInterrupt

            return chase
        return getattr(self._lib, name)


def test_pools_given_back_on_ctrl_c(needs_root, monkeypatch):
    before = pool_counts()
    real = tlb.native_loops()
    monkeypatch.setattr(tlb, "native_loops", lambda: _Interrupting(real))
    with pytest.raises(KeyboardInterrupt):
        tlb.run(options(backings=("4k", "2m")))
    assert pool_counts() == before


def test_cli_json(hugeload_cli, no1g_root):
    r = hugeload_cli(
        "--root",
        no1g_root,
        "bench",
        "tlb",
        "--size",
        "64M",
        "--rounds",
        "2",
        "--accesses",
        "100000",
        "--backings",
        "4k,2m",
        "--no-reserve",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert {
        "size",
        "rounds",
        "accesses",
        "stride",
        "confidence",
        "note",
        "hypervisor",
        "vm_note",
        "results",
        "reservations",
        "pools_restored",
    } <= set(data)
    assert data["size"] == 64 * MiB and data["rounds"] == 2 and data["pools_restored"] is True
    r4, r2 = data["results"]
    assert r4["backing"] == "4k" and r4["status"] == "ok" and r4["page_size_kb"] == 4
    for key in ("random_ns", "seq_gbps"):
        s = r4[key]
        assert len(s["values"]) == 2 and all(positive(v) for v in s["values"])
        assert s["low"] <= s["median"] <= s["high"]
    assert r2["status"] == "skipped" and r2["reason"] and r2["random_ns"] is None


def test_cli_table_with_ratios(hugeload_cli, needs_root):
    r = hugeload_cli("bench", "tlb", "--size", "64M", "--rounds", "2", "--accesses", "100000", "--backings", "4k,2m")
    assert r.returncode == 0, r.stderr
    assert "random ns/access" in r.stdout and "measured" in r.stdout
    if "2M skipped" not in r.stdout:
        assert "random vs 4K" in r.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--backings", "4k,8k"], "unknown backing '8k'"),
        (["--size", "12X"], "cannot parse size"),
        (["--size", "1M"], "too small"),
        (["--rounds", "0"], "at least 1"),
        (["--size", "64T"], "exceed the memory available"),
    ],
)
def test_cli_bad_input(hugeload_cli, args, message):
    r = hugeload_cli("bench", "tlb", *args)
    assert r.returncode == 2 and message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stdout == ""


def test_cli_plot(hugeload_cli, tmp_path, no1g_root):
    out = tmp_path / "tlb.png"
    r = hugeload_cli(
        "--root",
        no1g_root,
        "bench",
        "tlb",
        "--size",
        "64M",
        "--rounds",
        "2",
        "--accesses",
        "100000",
        "--backings",
        "4k",
        "--no-reserve",
        "--plot",
        out,
    )
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert r.returncode == 2 and "pip install 'hugeload[plot]'" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and not out.exists()
        return
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
