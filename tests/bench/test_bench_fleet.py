"""`bench fleet`: memory per engine under each layout plan/buffers recommends between (none,
staged file only, heap copy in huge pages only, both).  account() against fixed numbers; then
one bounded live run (2 engines, 1 round, a 40 MB Q4_K_M model whose repacked copy passes a
16 MiB allocation threshold) checked against the pools and the prediction."""

import os

import pytest

from hugeload import engines, runner
from hugeload.bench import fleet
from hugeload.probe import cpu

MiB = 1 << 20
SERVER = engines.find_llama("llama-server")


def test_account_counts_shared_once_and_own_per_engine():
    s = fleet.Sample(
        pss_kb=30_000,  # both engines' anonymous memory
        rss_kb=50_000,
        hugetlb_kb=400_000,
        vmlck_kb=0,
        pool_grew_kb=140_000,  # their heap copies in huge pages
        page_cache_kb=0,
        mem_available_drop_kb=20_000,
    )
    a = fleet.account(s, 2, staged_kb=90_000, held_kb=140_000)
    assert a["shared_kb"] == 90_000 and a["own_kb"] == 170_000
    assert a["memory_kb"] == 260_000 and a["per_engine_kb"] == 130_000 and a["own_per_engine_kb"] == 85_000
    assert a["pool_used_kb"] == 230_000 and a["pinned_per_engine_kb"] == 115_000
    assert a["mem_available_kb"] == 250_000 and a["mem_available_per_engine_kb"] == 125_000
    # a layout without the staged copy or the heap reservation: the page cache is what is shared
    b = fleet.account(s._replace(pool_grew_kb=0, page_cache_kb=90_000), 2)
    assert (b["shared_kb"], b["pool_used_kb"], b["mem_available_kb"]) == (90_000, 0, 20_000)
    assert b["per_engine_kb"] == (90_000 + 30_000) // 2


def test_summary_per_engine_is_from_the_medians(tmp_path):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    base = fleet.account(fleet.Sample(100, 0, 0, 0, 0, 50, 10), 2)
    runs = [{"case": "warm", "error": None, "loaded_s": [1.0], "first_token_s": [2.0], **base}]
    runs.append({**runs[0], **fleet.account(fleet.Sample(300, 0, 0, 0, 0, 50, 10), 2)})
    runs.append({**runs[0], **fleet.account(fleet.Sample(200, 0, 0, 0, 0, 50, 10), 2)})
    (e,) = fleet.summarize(str(model), fleet.FleetOptions(2), ["warm"], runs, {}, None)["results"]
    assert (e["pss_kb"], e["memory_kb"], e["per_engine_kb"]) == (200, 250, 125)


@pytest.fixture(scope="module")
def q4_k_m(tmp_path_factory):
    from hugeload.modelgen import ModelSpec, make_model

    p = tmp_path_factory.mktemp("fleet") / "fleet-q4_k_m.gguf"
    make_model(p, ModelSpec(40 * MiB, "Q4_K_M"))
    return p


@pytest.mark.llama
@pytest.mark.kernel
@pytest.mark.skipif(SERVER is None, reason="llama.cpp not built (scripts/get-llama.sh)")
def test_fleet_memory_per_layout(q4_k_m, state_dir, needs_root):
    if "avx2" not in cpu.read_cpu("/").flags:
        pytest.skip("without AVX2 llama.cpp makes no heap copy of Q4_K: heap and both are skipped")
    threshold = 16 * MiB
    p = runner.predict_buffers(str(q4_k_m), str(SERVER))
    heap = runner.heap_pages({"m": p}, None, threshold)
    assert set(heap) == {2048}, heap  # one engine's repacked copy, in 2 MB pages
    heap_kb = 2 * heap[2048] * 2048
    options = fleet.FleetOptions(
        2, ("warm", "staged", "heap", "both"), 1, server=str(SERVER), alloc_threshold=threshold
    )
    data = fleet.run(str(q4_k_m), options, state_dir=state_dir)
    by = {r["case"]: r for r in data["results"]}
    assert all(r["status"] == "ok" for r in by.values()), by
    assert data["pools_restored"] and data["heap_pages"] == [{"page_size_kb": 2048, "pages": heap[2048]}]
    # a Q4_K_M model on AVX2: both matter
    assert data["recommended_case"] == "both" and [c for c, r in by.items() if r["recommended"]] == ["both"]
    staged_kb = -(-os.path.getsize(q4_k_m) // (2 * MiB)) * 2048
    assert by["warm"]["pool_used_kb"] == 0 and by["warm"]["staged_kb"] == 0
    assert by["staged"]["pool_used_kb"] == by["staged"]["staged_kb"] == staged_kb
    assert by["staged"]["heap_hugetlb_kb"] == 0  # staged only: the heap copies stay anonymous
    assert by["heap"]["staged_kb"] == 0 and by["heap"]["heap_hugetlb_kb"] >= heap_kb
    assert by["both"]["pool_used_kb"] == staged_kb + by["both"]["heap_hugetlb_kb"] >= staged_kb + heap_kb
    # the heap copies moved out of the engines' anonymous memory into huge pages
    copies_kb = 2 * p.heap_bytes >> 10
    for c in ("heap", "both"):
        assert by["warm"]["pss_kb"] - by[c]["pss_kb"] > 0.9 * copies_kb, (by["warm"], by[c])
    for r in by.values():
        assert r["per_engine_kb"] == r["memory_kb"] // 2
        assert r["pinned_per_engine_kb"] == r["pool_used_kb"] // 2
        assert r["shared_kb"] == r["staged_kb"] + r["page_cache_kb"]
