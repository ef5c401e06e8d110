"""NUMA probe and placement planning on fixture trees (no kernel needed)."""

from pathlib import Path

import pytest

from hugeload.errors import PoolError, UsageError
from hugeload.plan import numa as plan_numa
from hugeload.plan.numa import Mode, Placement
from hugeload.probe import numa as probe_numa
from hugeload.units import GiB

MACHINES = Path(__file__).resolve().parent.parent / "fixtures" / "machines"
NUMA2 = MACHINES / "numa2-1g"


def test_the_two_node_fixture_reads_cpus_memory_and_pools_per_node():
    nodes = probe_numa.read_nodes(NUMA2)
    assert [n.node for n in nodes] == [0, 1]
    assert nodes[0].cpus[:3] == (0, 1, 2) and 56 in nodes[0].cpus and 28 in nodes[1].cpus and len(nodes[1].cpus) == 56
    assert nodes[0].mem_free_kb == 215000000 and nodes[1].mem_total_kb == 263974092
    assert nodes[0].pools[1048576].free == 4 and nodes[1].pools[1048576].free == 16
    assert probe_numa.cpu_nodes(NUMA2)[84] == 1


def test_a_single_node_machine_and_a_kernel_without_nodes():
    assert [n.node for n in probe_numa.read_nodes(MACHINES / "zen-vm")] in ([0], [])
    assert probe_numa.read_nodes(MACHINES / "does-not-exist") == []


@pytest.mark.parametrize("text, cpus", [("0-3,8,10-11\n", (0, 1, 2, 3, 8, 10, 11)), ("", ()), ("5", (5,))])
def test_cpulist_round_trip(text, cpus):
    assert probe_numa.parse_cpulist(text) == cpus
    assert plan_numa.format_cpulist(cpus) == text.strip()


def test_numa_maps_pages_per_node(tmp_path):
    (tmp_path / "proc/42").mkdir(parents=True)
    (tmp_path / "proc/42/numa_maps").write_text(
        "7f0000000000 bind:1 file=/run/hugeload/store/mnt-2m/m/m.gguf huge dirty=10 N1=10 kernelpagesize_kB=2048\n"
        "7f1000000000 interleave:0-1 file=/x/y.gguf huge dirty=5 N0=3 N1=2 kernelpagesize_kB=2048\n"
        "7f2000000000 default anon=3 dirty=3 N0=3 kernelpagesize_kB=4\n"
    )
    maps = probe_numa.read_numa_maps(tmp_path, 42)
    assert maps[0].policy == "bind:1" and maps[0].page_kb == 2048
    assert probe_numa.pages_by_node(maps, "/x/y.gguf") == {0: 3, 1: 2}
    assert probe_numa.pages_by_node(maps, "/nope") == {}


def test_numa_maps_file_names_are_decoded_and_matched_whole():
    """A name with a space or '=' comes octal-escaped; a longer name that merely starts
    with the wanted one is another file."""
    maps = probe_numa.parse_numa_maps(
        "7f0000000000 default file=/m/a\\040b\\075c.gguf huge dirty=2 N0=2 kernelpagesize_kB=2048\n"
        "7f1000000000 default file=/m/a.gguf.bak huge dirty=4 N1=4 kernelpagesize_kB=2048\n"
        "7f2000000000 default file=/m/a.gguf huge dirty=1 N1=1 kernelpagesize_kB=2048\n"
    )
    assert maps[0].path == "/m/a b=c.gguf"
    assert probe_numa.pages_by_node(maps, "/m/a b=c.gguf") == {0: 2}
    assert probe_numa.pages_by_node(maps, "/m/a.gguf") == {1: 1}


def test_placement_from_options():
    assert plan_numa.placement(None, None, False, False, [0, 1]) == Placement()
    assert plan_numa.placement(1, None, False, False, [0, 1]) == Placement(Mode.NODE, (1,))
    assert plan_numa.placement(None, None, True, False, [0, 1]).nodes == (0, 1)
    assert plan_numa.placement(None, "1,0", False, False, [0, 1]) == Placement(Mode.REPLICATE, (1, 0))
    assert plan_numa.placement(None, "0-1", False, True, [0, 1]) == Placement(Mode.INTERLEAVE, (0, 1))
    assert [c.node for c in Placement(Mode.INTERLEAVE, (0, 1)).copies()] == [-1]
    for bad in [(0, "1", False, False), (None, None, True, True), (None, "a,b", True, False)]:
        with pytest.raises(UsageError):
            plan_numa.placement(*bad, [0, 1])


def test_check_nodes_names_the_bad_node():
    nodes = probe_numa.read_nodes(NUMA2)
    plan_numa.check_nodes(Placement(Mode.REPLICATE, (0, 1)), nodes)
    with pytest.raises(UsageError, match="NUMA node 2 does not exist"):
        plan_numa.check_nodes(Placement(Mode.NODE, (2,)), nodes)
    no_memory = [nodes[0], nodes[1]._replace(mem_total_kb=0)]
    with pytest.raises(UsageError, match="node 1 has no memory"):
        plan_numa.check_nodes(Placement(Mode.NODE, (1,)), no_memory)
    with pytest.raises(UsageError, match="at least two nodes"):
        plan_numa.check_nodes(Placement(Mode.REPLICATE, (0,)), nodes)


def test_fit_and_needs_per_node():
    nodes = probe_numa.read_nodes(NUMA2)
    fits = plan_numa.fit_nodes(10 * GiB, nodes, 1048576)
    assert [(f.pages, f.pool_free, f.fits_now, f.fits) for f in fits] == [(10, 4, False, True), (10, 16, True, True)]
    huge = plan_numa.fit_nodes(230 * GiB, nodes, 1048576)
    assert [f.fits for f in huge] == [False, True] and "too small" in huge[0].note
    needs = plan_numa.node_needs(plan_numa.CopySpec(0, (0,)), 1048576, 10, nodes)
    assert needs[0].missing == 6 and needs[0].can_reserve
    with pytest.raises(PoolError, match="node 0's 1G pool has 4 free"):
        plan_numa.check_fits(needs, False, "m")
    plan_numa.check_fits(needs, True, "m")
    small = [n._replace(mem_free_kb=1024) for n in nodes]
    with pytest.raises(PoolError, match="node 0 is too small for its copy of m.*nothing was staged"):
        plan_numa.check_fits(plan_numa.node_needs(plan_numa.CopySpec(0, (0,)), 1048576, 10, small), True, "m")
    assert plan_numa.split(7, (0, 1)) == {0: 4, 1: 3}


def test_doctor_says_how_many_nodes_and_whether_a_model_fits_one():
    nodes = probe_numa.read_nodes(NUMA2)
    assert "2 nodes" in plan_numa.doctor_check(nodes).detail
    assert "fits node(s) 0,1" in plan_numa.doctor_check(nodes, 100 * GiB).detail
    c = plan_numa.doctor_check(nodes, 300 * GiB)
    assert c.status == "warn" and "fits no single node" in c.detail and "--interleave" in c.fix
    assert plan_numa.doctor_check([]).status == "pass"


def test_plan_nodes_cli_on_the_fixture(hugeload_cli):
    import json

    r = hugeload_cli("--root", NUMA2, "plan", "--size", "40G", "--nodes", "--json")
    assert r.returncode == 0, r.stderr
    nodes = json.loads(r.stdout)["nodes"]
    assert [(n["node"], n["pages"], n["fits"]) for n in nodes] == [(0, 40, True), (1, 40, True)]
    r = hugeload_cli("--root", NUMA2, "plan", "--size", "40G", "--nodes")
    assert "One copy per NUMA node" in r.stdout and "0-27,56-83" in r.stdout
