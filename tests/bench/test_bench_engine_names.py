"""`bench engine` backings by name: NUMA placements (the names, the copies each needs, the
one-node refusal; the placements themselves run in the two-node guest,
tests/numa/test_numa_guest.py), allocations in a chosen page size, and the 1 GB against
2 MB pairing of the summary.  No engine runs here."""

import pytest

from hugeload.bench import backings, engine, summary, verify
from hugeload.bench.backings import Placement, backing
from hugeload.bench.copies import CopyKey, CopyKind, needs
from hugeload.errors import UsageError
from hugeload.pages import PAGE_1G, PAGE_2M


def test_staged_backings_run_once_per_placement_the_others_once():
    names = backings.with_placements(
        ["default", "default#2", "2m", "1g+alloc", "private"], [Placement.LOCAL, Placement.REMOTE]
    )
    assert names == ["default", "default#2", "2m@local", "2m@remote", "1g+alloc@local", "1g+alloc@remote", "private"]
    assert backings.parse_backings("2m@local,2m@local") == ["2m@local", "2m@local#2"]  # an A/A of one placement


def test_a_placed_backing_keeps_its_base_and_needs_its_own_copy():
    b = backing("2m@remote")
    assert (b.name, b.kind, b.placement, b.staged_page) == ("2m@remote", "2m@remote", Placement.REMOTE, PAGE_2M)
    aa = backing("2m@remote#2")
    assert (aa.name, aa.kind, aa.placement) == ("2m@remote#2", "2m@remote", Placement.REMOTE)
    size = 100 << 20
    assert needs(b, size) == [CopyKey(CopyKind.STAGED, PAGE_2M, placement=Placement.REMOTE)]
    assert [str(k) for k in needs(backing("2m@local"), size)] == ["stage-2048@local"]
    assert [str(k) for k in needs(backing("2m"), size)] == ["stage-2048"]
    assert CopyKey(CopyKind.STAGED, PAGE_1G, placement=Placement.LOCAL).stage_name == "bench-1048576-local"
    assert CopyKey(CopyKind.STAGED, PAGE_2M).bytes(size + 1) == 51 * (2 << 20)


@pytest.mark.parametrize(
    "text, message",
    [
        ("far", "unknown node placement far"),
        ("", "unknown node placement (none)"),
    ],
)
def test_unknown_placements_are_refused(text, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        backings.parse_placements(text)


@pytest.mark.parametrize("name", ["default@local", "private@remote", "2m@far"])
def test_only_staged_backings_take_a_placement(name):
    with pytest.raises(UsageError, match="unknown backing"):
        backings.parse_backings(name)


def test_one_node_machine_refuses_before_staging_anything(tmp_path, monkeypatch):
    from hugeload.probe import numa as probe_numa

    nodes = probe_numa.read_nodes("/")
    if len([n for n in nodes if n.has_memory]) > 1:
        pytest.skip("this machine has several memory nodes")
    model = tmp_path / "m.gguf"
    model.write_bytes(b"\0" * 4096)
    monkeypatch.setenv("HUGELOAD_STATE_DIR", str(tmp_path / "state"))
    with pytest.raises(UsageError, match="at least two NUMA nodes with memory"):
        options = engine.EngineOptions(bandwidth=False, node_placement=(Placement.LOCAL, Placement.REMOTE))
        engine.run(str(model), ["true"], ["default", "2m"], options)
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").rglob("*.gguf"))


def test_alloc_in_a_chosen_page_size_reserves_that_pool():
    size = 8 << 30
    assert [str(k) for k in needs(backing("alloc-1g"), size)] == ["pool-1048576-8"]
    assert [str(k) for k in needs(backing("alloc-2m"), size)] == ["pool-2048-4096"]
    assert [str(k) for k in needs(backing("2m+alloc"), size)] == ["stage-2048", "pool-2048-4096"]
    assert backing("alloc-2m").page_size == PAGE_2M
    assert backing("alloc").page_size is None  # auto: the size rule


def test_an_alloc_backing_whose_heap_fell_back_is_not_timed():
    v = verify.Verification(alloc_kb={4, 2048})
    assert "expected 1048576 kB" in verify.fell_back(backing("alloc-1g"), v, 1 << 30)
    assert verify.fell_back(backing("alloc-2m"), v, 1 << 30) is None


def test_1g_is_paired_with_the_2m_backing_that_differs_only_in_page_size():
    runs = [
        summary.Run(name, r, 0, 1.0, None, {"tg8": rate})
        for r in range(4)
        for name, rate in (("alloc-1g", 2.0), ("alloc-2m", 1.0), ("1g", 3.0), ("2m", 3.0), ("1g#2", 5.0))
    ]
    results = [{"backing": n, "status": "ok"} for n in ("alloc-1g", "alloc-2m", "1g", "2m", "1g#2")]
    pairs = summary.gigantic_vs_huge(results, runs, ["tg8"])
    assert set(pairs) == {"alloc-1g vs alloc-2m", "1g vs 2m"}
    assert pairs["alloc-1g vs alloc-2m"]["tg8"]["ratio"] == 2.0
    assert pairs["1g vs 2m"]["tg8"]["within_noise"]


def test_1g_plus_2m_stages_its_own_mixed_copy_and_accepts_both_page_sizes():
    """`1g` measures only 1 GB pages (skipped when the pool is short, as before); `1g+2m` stages
    the model with the 1 GB pages the kernel gives and 2 MB pages for the rest (issue 23)."""
    mixed, whole = backing("1g+2m"), backing("1g")
    (key,) = needs(mixed, 3 << 30)
    assert (str(key), key.stage_name, key.mixed) == ("stage-1048576+2048", "bench-1048576-mixed", True)
    assert needs(whole, 3 << 30) == [CopyKey(CopyKind.STAGED, PAGE_1G)]  # its own copy, never split
    ok = verify.Verification()
    for got, fell_back in (({PAGE_1G.kb, PAGE_2M.kb}, False), ({PAGE_1G.kb}, False), ({PAGE_2M.kb}, True)):
        ok.weights_kb = got
        assert (verify.fell_back(mixed, ok, 3 << 30) is not None) is fell_back, got
    ok.weights_kb = {PAGE_1G.kb, PAGE_2M.kb}
    assert "expected 1048576 kB" in verify.fell_back(whole, ok, 3 << 30)
