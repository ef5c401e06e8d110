"""plan/stage.py: the one page-size decision for placed and unplaced copies (fixture trees)."""

from pathlib import Path

import pytest

from hugeload.errors import HugeloadError, PoolError, UsageError
from hugeload.pages import PAGE_1G, PAGE_2M
from hugeload.plan import stage as plan_stage
from hugeload.plan.numa import Mode, Placement
from hugeload.probe import numa as probe_numa
from hugeload.units import GiB, MiB

NUMA2 = Path(__file__).resolve().parent.parent / "fixtures" / "machines" / "numa2-1g"
BOTH = [2048, 1048576]


def plan(size, placement, reserve=False, requested=None, system_1g=0, offered=BOTH):
    nodes = probe_numa.read_nodes(NUMA2)  # node 0: 4 free 1G pages, node 1: 16
    return plan_stage.plan_copies([size], requested, offered, placement, reserve, system_1g, nodes, "m")


def test_small_models_take_2m_anywhere():
    assert [p.page_size_kb for p in plan(20 * MiB, Placement(Mode.NODE, (1,)), reserve=True)] == [2048]
    assert [p.page_size_kb for p in plan(20 * MiB, Placement(), system_1g=16)] == [2048]


def test_a_placed_copy_takes_1g_when_its_node_holds_it():
    assert plan(3 * GiB, Placement(Mode.NODE, (0,)))[0].page_size_kb == 1048576  # 3 of node 0's 4
    # 5 > 4 free on node 0: its four 1G pages, and 2M pages of node 0 for the last GiB
    p = plan_stage.plan_copies([5 * GiB], None, BOTH, Placement(Mode.NODE, (0,)), False, 0, nodes_with_2m(), "m")[0]
    assert (p.page_size_kb, p.pages, p.tail_pages) == (GB, 4, 512) and "node 0's 1G pool holds 4 of 5" in p.reason
    assert [(n.node, n.page_size_kb, n.pages, n.missing) for n in p.needs] == [(0, GB, 4, 0), (0, 2048, 512, 0)]
    with pytest.raises(PoolError, match="node 0's 2M pool"):  # empty in the fixture: refused before anything
        plan(5 * GiB, Placement(Mode.NODE, (0,)))
    # all or nothing when asked: 2M (whose pool, empty in the fixture, --reserve grows), and it says why
    p = plan_stage.plan_copies(
        [5 * GiB], None, BOTH, Placement(Mode.NODE, (0,)), False, 0, nodes_with_2m(), "m", mixed=False
    )[0]
    assert p.page_size_kb == 2048 and "node(s) 0 cannot hold 5 page(s)" in p.reason
    assert plan(5 * GiB, Placement(Mode.NODE, (1,)))[0].page_size_kb == 1048576
    assert plan(5 * GiB, Placement(Mode.NODE, (0,)), reserve=True)[0].page_size_kb == 1048576


def test_the_waste_rule_applies_to_placed_copies_too():
    # 1.2 GiB in whole 1 GB pages wastes 40 %: 2M, as `stage`, `plan` and the preload library choose.
    assert plan(int(1.2 * GiB), Placement(Mode.NODE, (1,)), reserve=True)[0].page_size_kb == 2048
    assert plan(int(1.2 * GiB), Placement(), reserve=True)[0].page_size_kb == 2048


def test_replicate_plans_one_copy_per_node_and_interleave_one_split_copy():
    copies = plan(2 * GiB, Placement(Mode.REPLICATE, (0, 1)))
    assert [(c.node, c.bind, c.page_size_kb, c.pages) for c in copies] == [(0, (0,), GB, 2), (1, (1,), GB, 2)]
    (one,) = plan(6 * GiB, Placement(Mode.INTERLEAVE, (0, 1)))  # 3 + 3: node 0 holds its 3
    assert (one.node, one.page_size_kb, [n.pages for n in one.needs]) == (-1, GB, [3, 3])


def test_requested_sizes_are_kept_or_refused_in_one_line():
    assert plan(20 * MiB, Placement(), requested=PAGE_1G, system_1g=1)[0].page_size_kb == GB
    with pytest.raises(UsageError, match="no 1G huge pages"):
        plan(3 * GiB, Placement(), requested=PAGE_1G, offered=[2048])
    with pytest.raises(HugeloadError, match="no 2M huge pages"):
        plan(3 * GiB, Placement(), offered=[1048576])
    assert plan(3 * GiB, Placement(), requested=PAGE_2M, system_1g=16)[0].page_size_kb == 2048


def test_a_node_that_cannot_hold_its_copy_is_refused_before_anything_is_reserved():
    with pytest.raises(PoolError, match="node 0's 2M pool"):
        plan(20 * MiB, Placement(Mode.NODE, (0,)), requested=PAGE_2M)


GB = 1048576


def nodes_with_2m():
    """The fixture's nodes with 4096 free 2M pages each."""
    out = []
    for n in probe_numa.read_nodes(NUMA2):
        pools = dict(n.pools)
        pools[2048] = pools[2048]._replace(free=4096, total=4096)
        out.append(n._replace(pools=pools))
    return out


def test_a_short_1g_pool_gives_a_copy_in_mixed_page_sizes():
    """The rule (or the user) wants 1G, the pool holds k of the n pages: the first k GiB in 1G
    pages and the rest in 2M, never 2M for all of it (issue 23)."""
    size = 7 * GiB + 900 * MiB  # the rule's 1G (8 pages, 1.2 % waste)
    (p,) = plan(size, Placement(), system_1g=5)
    assert (p.page_size_kb, p.pages, p.tail_pages, p.split_at) == (GB, 5, 1474, 5 * GiB)
    assert p.parts() == [(GB, 5), (2048, 1474)] and "holds 5 of 8" in p.reason
    (p,) = plan(GiB + 6 * MiB, Placement(), requested=PAGE_1G, system_1g=1)  # asked for 1G: the same
    assert (p.page_size_kb, p.pages, p.tail_pages) == (GB, 1, 3)
    # not split: the pool holds it all, or none of it, or 2M was asked for, or the rule says 2M
    assert plan(size, Placement(), system_1g=8)[0].tail_pages == 0
    assert plan(size, Placement(), system_1g=0)[0][2:4] == (2048, 4034)
    assert plan(size, Placement(), requested=PAGE_2M, system_1g=5)[0].tail_pages == 0
    assert plan(int(1.2 * GiB), Placement(), system_1g=1)[0][2:4] == (2048, 615)
    # with --reserve the plan is whole 1G: act/store reads the pool back and splits then
    assert plan(size, Placement(), reserve=True, system_1g=5)[0].tail_pages == 0
    # a copy bound to one node is split by that node's pool, not the system's
    placed = plan_stage.plan_copies([5 * GiB], None, BOTH, Placement(Mode.NODE, (0,)), False, 1, nodes_with_2m(), "m")
    assert placed[0].parts() == [(GB, 4), (2048, 512)]
    # each copy of --replicate on its own node: node 1 holds all 9 pages of its copy, node 0 four
    copies = plan_stage.plan_copies(
        [9 * GiB], None, BOTH, Placement(Mode.REPLICATE, (0, 1)), False, 0, nodes_with_2m(), "m"
    )
    assert [c.parts() for c in copies] == [[(GB, 4), (2048, 2560)], [(GB, 9)]]
    # an interleaved copy, and a model of several files, are not split
    (inter,) = plan_stage.plan_copies(
        [9 * GiB], None, BOTH, Placement(Mode.INTERLEAVE, (0, 1)), False, 0, nodes_with_2m(), "m"
    )
    assert inter.tail_pages == 0 and inter.page_size_kb == 2048
    multi = plan_stage.plan_copies([3 * GiB, 3 * GiB], None, BOTH, Placement(), False, 5, [], "m")
    assert multi[0].tail_pages == 0


def test_split_copy_reads_back_what_the_kernel_gave():
    (whole,) = plan(3 * GiB + 10 * MiB, Placement(), requested=PAGE_1G, reserve=True)
    assert plan_stage.split_copy(whole, [3 * GiB + 10 * MiB], 2).parts() == [(GB, 2), (2048, 517)]
    assert plan_stage.split_copy(whole, [3 * GiB + 10 * MiB], 4) == whole  # it all fits
    assert plan_stage.split_copy(whole, [3 * GiB + 10 * MiB], 0) == whole  # nothing to split around


def test_reserve_on_a_node_that_cannot_grow_1g_is_planned_whole_and_refused_only_when_too_small():
    """--reserve on one node: the 1G pages it gives are read back and the rest is taken in 2M
    (act/store reserve_for), so a node whose memory cannot grow the 1G pool is not refused for
    that; one that cannot hold the copy in any page size is, in one line, before anything."""
    small = [n._replace(mem_free_kb=2 * GiB // 1024) for n in nodes_with_2m()]  # 2 GiB of memory left, 4 GB free 1G
    (p,) = plan_stage.plan_copies([5 * GiB], PAGE_1G, BOTH, Placement(Mode.NODE, (0,)), True, 0, small, "m")
    assert (p.page_size_kb, p.pages) == (GB, 5)
    tiny = [n._replace(mem_free_kb=0, pools={**n.pools, 2048: n.pools[2048]._replace(free=0)}) for n in small]
    with pytest.raises(PoolError, match="node 0 is too small"):
        plan_stage.plan_copies([5 * GiB], PAGE_1G, BOTH, Placement(Mode.NODE, (0,)), True, 0, tiny, "m")
