"""act/store/stage.reserve_for with --reserve and a kernel that gives fewer 1 GB pages than
asked (it does, and says so only in the count read back): the copy keeps the 1 GB pages it got
and takes 2 MB for the rest; all-or-nothing stays available (bench's `1g`).  The pools are
faked here; the real kernel's side is tests/test_preload_mixed.py."""

import importlib
from types import SimpleNamespace

import pytest

from hugeload.errors import PoolError
from hugeload.pages import PAGE_1G
from hugeload.plan import stage as plan_stage
from hugeload.plan.numa import Placement
from hugeload.units import GiB, MiB

# the module, not the package's function of the same name
stage_mod = importlib.import_module("hugeload.act.store.stage")
GB, SIZE = 1048576, 9 * GiB - 100 * MiB  # 9 x 1G pages


@pytest.fixture
def kernel(monkeypatch):
    """A 1G pool with `free` pages that grows by at most `gives` per reservation."""
    k = SimpleNamespace(free={GB: 2, 2048: 0}, gives=3, reserved=[], ensured=[])

    def reserve(root, kb, count, node=None, partial=False, owner="", state_dir=None, **_):
        got = min(count, k.gives)
        k.reserved.append((kb, count, partial, got))
        if got < count and not partial:
            raise PoolError("short")
        k.free[kb] += got
        return SimpleNamespace(obtained=got)

    monkeypatch.setattr(stage_mod.act_pools, "reserve", reserve)
    monkeypatch.setattr(stage_mod.probe_pools, "system_pool", lambda root, kb: SimpleNamespace(available=k.free[kb]))
    monkeypatch.setattr(stage_mod, "ensure_pages", lambda kb, n, *a, **kw: k.ensured.append((kb, n)))
    return k


def whole_1g():
    (p,) = plan_stage.plan_copies([SIZE], PAGE_1G, [2048, GB], Placement(), True, 2, [], "m")
    assert (p.page_size_kb, p.pages, p.tail_pages) == (GB, 9, 0)
    return p


def test_reserve_keeps_what_the_kernel_gave_and_takes_2m_for_the_rest(kernel):
    got = stage_mod.reserve_for(whole_1g(), [SIZE], "m", True, "/", None, stage_mod.Mixed.WHEN_SHORT)
    assert kernel.reserved == [(GB, 7, True, 3)]  # asked for what the pool lacked, read back 5 in all
    assert got.parts() == [(GB, 5), (2048, 1998)] and "holds 5 of 9" in got.reason
    assert kernel.ensured == [(GB, 5), (2048, 1998)]  # the tail's 2M pages reserved as any copy's


def test_no_1g_page_at_all_is_a_2m_copy(kernel):
    kernel.free[GB], kernel.gives = 0, 0
    got = stage_mod.reserve_for(whole_1g(), [SIZE], "m", True, "/", None, stage_mod.Mixed.WHEN_SHORT)
    assert got.parts() == [(2048, 4558)] and "gave no 1G page" in got.reason


def test_never_mixed_is_all_or_nothing(kernel):
    got = stage_mod.reserve_for(whole_1g(), [SIZE], "m", True, "/", None, stage_mod.Mixed.NEVER)
    assert got.parts() == [(GB, 9)] and kernel.reserved == [] and kernel.ensured == [(GB, 9)]


def test_a_copy_bound_to_one_node_keeps_the_1g_pages_that_node_gave(kernel, monkeypatch):
    """The same read-back on one node's pools (stage --node N --reserve, and each --replicate
    copy): the 1G pages the node gave, then its 2M pages for the rest, reserved on that node."""
    from hugeload.plan.numa import Mode
    from hugeload.probe import numa as probe_numa
    from hugeload.probe.pools import Pool

    free = {0: {GB: 0, 2048: 0}, 1: {GB: 2, 2048: 0}}
    gives = {GB: 3, 2048: 5000}
    asked = []

    def reserve(root, kb, count, node=None, partial=False, owner="", state_dir=None, **_):
        got = min(count, gives[kb])
        asked.append((kb, count, node, partial, got))
        if got < count and not partial:
            raise PoolError("short")
        free[node][kb] += got
        return SimpleNamespace(obtained=got)

    def nodes(root="/"):
        return [
            probe_numa.Node(
                n, (n,), 8 << 30, 6 << 30, {kb: Pool(kb, n, f, f, None, 0, None) for kb, f in free[n].items()}
            )
            for n in (0, 1)
        ]

    monkeypatch.setattr(stage_mod.act_pools, "reserve", reserve)
    monkeypatch.setattr(stage_mod.probe_numa, "read_nodes", nodes)
    (p,) = plan_stage.plan_copies([SIZE], PAGE_1G, [2048, GB], Placement(Mode.NODE, (1,)), True, 0, nodes(), "m")
    assert (p.page_size_kb, p.pages, p.tail_pages, p.bind) == (GB, 9, 0, (1,))
    got = stage_mod.reserve_for(p, [SIZE], "m", True, "/", None, stage_mod.Mixed.WHEN_SHORT)
    # node 1 was asked for what it lacked (7) and gave 3: five 1G pages, the rest in 2M pages of node 1
    assert got.parts() == [(GB, 5), (2048, 1998)] and "node 1's 1G pool holds 5 of 9" in got.reason
    assert [(n.node, n.page_size_kb, n.pages) for n in got.needs] == [(1, GB, 5), (1, 2048, 1998)]
    assert asked == [(GB, 7, 1, True, 3), (2048, 1998, 1, False, 1998)]
    assert kernel.reserved == []  # nothing from the system's pool
