"""plan/pages.py: page counts, waste, TLB reach and the auto policy."""

import pytest

from hugeload.plan import pages
from hugeload.probe.machine import read_machine

GiB, MiB = 1 << 30, 1 << 20
G, M, K = 1048576, 2048, 4


def by_size(opts):
    return {o.page_size_kb: o for o in opts}


def test_30g_model():
    o = by_size(pages.options([30 * GiB], [M, G]))
    assert sorted(o) == [K, M, G]
    assert (o[G].pages, o[M].pages, o[K].pages) == (30, 15360, 7864320)
    assert all(x.waste_bytes == 0 and x.bytes == 30 * GiB for x in o.values())
    assert all(x.tlb_entries == x.pages for x in o.values())


def test_waste_for_a_1_5_gib_model():
    o = by_size(pages.options([3 * GiB // 2], [M, G]))
    assert (o[G].pages, o[G].bytes, o[G].waste_bytes) == (2, 2 * GiB, GiB // 2)
    assert (o[M].pages, o[M].waste_bytes) == (768, 0)
    assert o[K].waste_bytes == 0


def test_files_round_up_separately():
    sizes = [3 * GiB // 2, 3 * GiB // 2]
    assert pages.pages_for(sizes, G) == 4  # not ceil(3 GiB / 1 GiB) = 3
    o = by_size(pages.options(sizes, [M, G]))
    assert (o[G].pages, o[G].waste_bytes) == (4, GiB)
    assert pages.pages_for([1, 1, 1], K) == 3
    assert pages.pages_for([2 * MiB + 1], M) == 2


def test_only_offered_sizes_and_4k():
    assert [o.page_size_kb for o in pages.options([GiB], [M])] == [K, M]
    assert [o.page_size_kb for o in pages.options([GiB], [])] == [K]


def test_pool_free_and_cpu_tlb_are_carried():
    o = by_size(pages.options([30 * GiB], [M, G], cpu_tlb={G: {1: 8, 2: 1024}, M: {1: 32}}, pool_free={G: 20, M: 0}))
    assert (o[G].pool_free, o[M].pool_free, o[K].pool_free) == (20, 0, None)
    assert o[G].cpu_tlb_entries == {1: 8, 2: 1024}
    assert (o[G].fits_l1_tlb, o[G].fits_tlb) == (False, True)  # 30 pages: more than 8, fewer than 1024
    assert (o[M].fits_l1_tlb, o[M].fits_tlb) == (False, False)
    assert (o[K].fits_l1_tlb, o[K].fits_tlb) == (None, None)
    assert by_size(pages.options([4 * GiB], [G], cpu_tlb={G: {1: 8}}))[G].fits_l1_tlb is True


# --- recommend: the auto policy --------------------------------------------------------

BOTH = {M: True, G: True}


def test_recommend_1g_for_large_model():
    r = pages.recommend(30 * GiB, [M, G], supports_1g=True, obtainable=BOTH)
    assert r.page_size_kb == G
    assert (
        r.reason == "model is at least 1 GiB and 1G pages waste at most 1/8, and 1G pages are supported and obtainable"
    )


def test_recommend_2m_under_threshold():
    r = pages.recommend(512 * MiB, [M, G], supports_1g=True, obtainable=BOTH)
    assert r == pages.Recommendation(M, "model is under 1 GiB; 2M pages are obtainable")


def test_recommend_threshold_parameter():
    assert pages.recommend(30 * GiB, [M, G], supports_1g=True, obtainable=BOTH, threshold_1g=64 * GiB).page_size_kb == M
    assert pages.recommend(2 * GiB, [M, G], supports_1g=True, obtainable=BOTH, threshold_1g=2 * GiB).page_size_kb == G
    assert (
        pages.recommend(2 * GiB - 1, [M, G], supports_1g=True, obtainable=BOTH, threshold_1g=2 * GiB).page_size_kb == M
    )
    assert (
        pages.recommend(960 * MiB, [M, G], supports_1g=True, obtainable=BOTH, threshold_1g=256 * MiB).page_size_kb == G
    )
    # above the threshold the waste still counts: 512 MiB in a 1 GiB page wastes half
    assert (
        pages.recommend(512 * MiB, [M, G], supports_1g=True, obtainable=BOTH, threshold_1g=256 * MiB).page_size_kb == M
    )


def test_recommend_waste_rule():
    r = pages.recommend(int(1.5 * GiB), [M, G], supports_1g=True, obtainable=BOTH)
    assert r == pages.Recommendation(
        M, "1G pages would waste 33 % (more than 1/8) of the model; 2M pages are obtainable"
    )
    assert pages.recommend(2 * GiB, [M, G], supports_1g=True, obtainable=BOTH).page_size_kb == G
    assert pages.recommend([GiB, GiB], [M, G], supports_1g=True, obtainable=BOTH).page_size_kb == G
    assert (
        pages.recommend([GiB, 1], [M, G], supports_1g=True, obtainable=BOTH).page_size_kb == M
    )  # each file rounds up on its own


def test_recommend_reason_for_sub_gib_threshold():
    assert (
        "0 GiB"
        not in pages.recommend(512 * MiB, [M, G], supports_1g=True, obtainable=BOTH, threshold_1g=256 * MiB).reason
    )
    assert (
        "0 GiB"
        not in pages.recommend(128 * MiB, [M, G], supports_1g=True, obtainable=BOTH, threshold_1g=256 * MiB).reason
    )


def test_recommend_without_1g_support():
    r = pages.recommend(30 * GiB, [M, G], supports_1g=False, obtainable=BOTH)
    assert r == pages.Recommendation(M, "the CPU or kernel has no 1G pages; 2M pages are obtainable")
    assert pages.recommend(30 * GiB, [M], supports_1g=True, obtainable=BOTH).page_size_kb == M


def test_recommend_1g_not_obtainable():
    r = pages.recommend(30 * GiB, [M, G], supports_1g=True, obtainable={M: True, G: False})
    assert r == pages.Recommendation(M, "1G pages cannot be obtained now; 2M pages are obtainable")


def test_recommend_falls_back_to_4k():
    r = pages.recommend(30 * GiB, [M, G], supports_1g=True, obtainable={M: False, G: False})
    assert r == pages.Recommendation(K, "1G pages cannot be obtained now; no 2M pages obtainable either: 4K")
    assert pages.recommend(30 * GiB, [], supports_1g=False, obtainable={}).page_size_kb == K


@pytest.mark.parametrize(
    "requested,sizes,expected,reason",
    [
        (K, [M, G], K, "4K requested"),
        (M, [M, G], M, "2M requested"),
        (G, [M, G], G, "1G requested"),
        (G, [M], K, "1G requested but the kernel offers no such pages; 4K"),
    ],
)
def test_recommend_forced_size(requested, sizes, expected, reason):
    # a forced size wins over threshold and obtainability
    r = pages.recommend(GiB, sizes, supports_1g=False, obtainable={}, requested_kb=requested)
    assert r == pages.Recommendation(expected, reason)


def test_recommend_forced_1g_for_a_small_model_is_2m():
    # as the preload library does with HUGELOAD_PAGE_SIZE=1g: under forced_1g_min a 1 GB page is mostly waste
    r = pages.recommend(MiB, [M, G], supports_1g=True, obtainable=BOTH, requested_kb=G)
    assert r == pages.Recommendation(M, "1G requested, but the model is under 256 MiB: 2M")


# --- plan_for over fixture machines ---------------------------------------------------


@pytest.mark.parametrize(
    "name,recommended,source",
    [
        ("zen-vm", G, "cpuid"),
        ("numa2-1g", G, "cpuid"),
        ("no1g", M, "cpuinfo"),
        ("container-v2", G, "cpuid"),
    ],
)
def test_plan_for_30g(tree, name, recommended, source):
    plan = pages.plan_for(read_machine(tree(name)), [30 * GiB], None, GiB)
    assert plan["recommended_page_size_kb"] == recommended
    assert plan["tlb_source"] == source
    assert plan["total_bytes"] == 30 * GiB


def test_plan_for_without_free_pages_or_root(tree):
    # no1g: empty 2M pool and not allowed to grow it -> 4K
    plan = pages.plan_for(read_machine(tree("no1g"), is_root=False), [30 * GiB], None, GiB)
    assert plan["recommended_page_size_kb"] == K


def test_plan_for_notes_memory_shortfall(tree):
    plan = pages.plan_for(read_machine(tree("zen-vm")), [30 * GiB], None, GiB)
    assert plan["notes"] and "more huge pages than are free" in plan["notes"][0]
    assert pages.plan_for(read_machine(tree("zen-vm")), [2 * GiB], None, GiB)["notes"] == []


def test_plan_for_uses_cpu_tlb(tree):
    plan = pages.plan_for(read_machine(tree("numa2-1g")), [30 * GiB], None, GiB)
    o = by_size(plan["options"])
    assert o[G].cpu_tlb_entries == {1: 8, 2: 1024}
    assert o[G].pool_free == 20
