"""`plan`, `stage`, `stage --node N` and `run` pick the same page size for every model size
from 1 to 4 GiB.

The run path is what `hugeload run` computes before it starts the engine (the pages it
reserves) and what it tells the preload library: HUGELOAD_PAGE_SIZE and HUGELOAD_POLICY as
runner.environment() sets them, read back here the way the library reads them.  That the C
library applies them like Python does is tests/test_page_choice.py.
"""

import functools

import pytest

from hugeload import pages, runner
from hugeload.act import store
from hugeload.pages import PAGE_1G, PAGE_2M
from hugeload.plan.numa import Mode, Placement
from hugeload.plan.pages import plan_for
from hugeload.probe import numa as probe_numa
from hugeload.probe import pools as probe_pools
from hugeload.probe.machine import read_machine
from hugeload.units import GiB, MiB

GB = PAGE_1G.kb
BOUNDARIES = [GiB, GiB + 1, 1908874354, 2 * GiB, 2 * GiB + 1, 2863311531, 3 * GiB, 3 * GiB + 1, 3817748708, 4 * GiB]


def sizes():
    out = set(range(GiB, 4 * GiB + 1, MiB))
    for b in BOUNDARIES:
        out |= {b - 1, b, b + 1}
    return sorted(out)


def run_path(size: int, requested, tmp_path, root) -> int:
    options = runner.PreloadOptions(page_size=requested)
    env = runner.environment(options, state_dir=tmp_path, base={})
    told = pages.parse(env["HUGELOAD_PAGE_SIZE"])
    policy = pages.Policy.from_env(env["HUGELOAD_POLICY"])
    assert (told, policy) == (requested, pages.DEFAULT_POLICY)
    # What `run --copy` reserves for an unstaged file of that size: the page size of its copy.
    cands = [runner.Candidate("/models/m.gguf", size, False)]
    (need,) = runner.estimate_needs(cands, told, True, 0, {cands[0].path: None}, root, policy)
    return need.page_size_kb


@pytest.mark.parametrize("requested", [None, PAGE_1G, PAGE_2M], ids=["auto", "1g", "2m"])
def test_plan_stage_and_run_agree_from_1_to_4_gib(tree, tmp_path, requested):
    root = tree("zen-vm")  # 1G and 2M pages, root: both obtainable
    machine = read_machine(root)
    disagree = []
    for size in sizes():
        planned = plan_for(machine, [size], requested and requested.kb)["recommended_page_size_kb"]
        ran = run_path(size, requested, tmp_path, root)
        staged = store.choose_page_size(size, requested and requested.kb, True, root)[0]
        if not planned == ran == staged:
            disagree.append(f"{size}: plan {planned}, run {ran}, stage {staged}")
    assert not disagree, f"{len(disagree)} sizes disagree, first: {disagree[:5]}"


def test_the_boundaries_above_are_the_rules():
    for b in BOUNDARIES[2::3]:
        assert pages.first_page(b - 1) is PAGE_2M and pages.first_page(b) is PAGE_1G


@pytest.mark.parametrize("reserve", [True, False], ids=["reserve", "pools-hold-it"])
@pytest.mark.parametrize("requested", [None, PAGE_1G, PAGE_2M], ids=["auto", "1g", "2m"])
def test_stage_on_a_node_and_stage_agree_from_1_to_4_gib(tree, requested, reserve, monkeypatch):
    # The decision act.store.stage makes for both: one copy anywhere, or one copy on node N
    # (each node of this fixture holds at least 4 free 1G pages, the system 20: every size
    # up to 4 GiB fits without --reserve too).  A second rule for placed copies once took 1G
    # for any model of 1 GiB or more, where `stage` took 2M (1.2 GiB: 1G would waste 40 %).
    root = tree("numa2-1g")
    nodes = [
        n._replace(pools={2048: n.pools[2048]._replace(free=4096), GB: n.pools[GB]._replace(free=8)})
        for n in probe_numa.read_nodes(root)
    ]
    for name in ("page_sizes", "system_pool"):  # the fixture does not change: read it once
        monkeypatch.setattr(probe_pools, name, functools.cache(getattr(probe_pools, name)))
    disagree = []
    for size in sizes():
        anywhere = store.choose_page_size(size, requested and requested.kb, reserve, root)[0]
        on_node = []
        for n in (0, 1):
            options = store.StageOptions(page_size=requested, reserve=reserve, placement=Placement(Mode.NODE, (n,)))
            on_node.append(store.plan_copies([size], options, root, nodes, "m")[0].page_size_kb)
        if on_node != [anywhere, anywhere] or anywhere != pages.first_page(size, requested).kb:
            disagree.append(f"{size}: stage {anywhere}, stage --node 0/1 {on_node}")
    assert not disagree, f"{len(disagree)} sizes disagree, first: {disagree[:5]}"
