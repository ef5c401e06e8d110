"""`plan`, `stage` and `run` pick the same page size for every model size from 1 to 4 GiB.

The run path is what `hugeload run` computes before it starts the engine (the pages it
reserves) and what it tells the preload library: HUGELOAD_PAGE_SIZE and HUGELOAD_POLICY as
runner.environment() sets them, read back here the way the library reads them.  That the C
library applies them like Python does is tests/test_page_choice.py.
"""

import pytest

from hugeload import pages, runner
from hugeload.act import store
from hugeload.pages import PAGE_1G, PAGE_2M
from hugeload.plan.pages import plan_for
from hugeload.probe.machine import read_machine
from hugeload.units import GiB, MiB

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
