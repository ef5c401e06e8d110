"""NUMA placement on a real two-node kernel (scripts/numa-vm.sh runs these in a guest)."""

import json
import os
import sys
from pathlib import Path

import pytest
from numa_helpers import mappings_over, node_count, pages_on_nodes, staged_pages

from hugeload.act import redirects, store

PAGES = 10  # the 20 MB model in 2 MB pages
MIB, GIB = 1 << 20, 1 << 30


def counts():
    return node_count(0), node_count(1)


def load(cli, *args):
    return cli("load", *args, "--json")


def test_the_guest_has_two_nodes_and_the_boot_1g_page_on_node_1(hugeload_cli):
    r = hugeload_cli("status", "--json")
    assert r.returncode == 0, r.stderr
    assert node_count(1, 1048576) == 1 and node_count(0, 1048576) == 0
    assert os.sched_getaffinity(0) == {0, 1}


@pytest.mark.parametrize("node", [0, 1])
def test_load_node_puts_every_page_on_that_node_and_unload_gives_them_back(hugeload_cli, state_dir, model, node):
    before = counts()
    r = load(hugeload_cli, model, "--node", node, "--reserve")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert [c["node"] for c in m["copies"]] == [node] and m["copies"][0]["pages"] == PAGES
    after = list(before)
    after[node] += PAGES
    assert counts() == tuple(after)  # reserved on that node only
    assert staged_pages(m["path"]) == {node: PAGES}
    r = hugeload_cli("unload", m["name"])
    assert r.returncode == 0, r.stderr
    assert counts() == before


def test_replicate_stages_one_copy_per_node_each_on_its_node(hugeload_cli, state_dir, model):
    before = counts()
    r = load(hugeload_cli, model, "--replicate", "--reserve")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    copies = {c["node"]: c for c in m["copies"]}
    assert sorted(copies) == [0, 1]
    assert len({c["path"] for c in m["copies"]}) == 2
    for node, c in copies.items():
        assert staged_pages(c["path"]) == {node: PAGES}, f"copy for node {node}"
    assert counts() == (before[0] + PAGES, before[1] + PAGES)
    listed = json.loads(hugeload_cli("loaded", "--json").stdout)["models"][0]["copies"]
    assert sorted((c["node"], c["pages"], c["page_size_kb"]) for c in listed) == [(0, PAGES, 2048), (1, PAGES, 2048)]
    index = redirects.read(state_dir)
    assert sorted((e.node, e.staged_path) for e in index) == sorted((c["node"], c["path"]) for c in m["copies"])
    assert hugeload_cli("unload", m["name"]).returncode == 0
    assert counts() == before


def test_interleave_spreads_pages_over_both_nodes(hugeload_cli, state_dir, model):
    before = counts()
    r = load(hugeload_cli, model, "--interleave", "--reserve")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert [c["node"] for c in m["copies"]] == [-1]
    where = staged_pages(m["path"])
    assert sorted(where) == [0, 1] and sum(where.values()) == PAGES and min(where.values()) >= PAGES // 2 - 1
    assert hugeload_cli("unload", m["name"]).returncode == 0
    assert counts() == before


def test_reserve_on_node_1_takes_nothing_from_node_0_and_release_gives_it_back(hugeload_cli, state_dir):
    before = counts()
    r = hugeload_cli("reserve", "--node", 1, "--count", 4, "--page-size", "2m", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["after"] == before[1] + 4
    assert counts() == (before[0], before[1] + 4)
    assert hugeload_cli("release").returncode == 0
    assert counts() == before


def test_reserve_1g_on_node_0_reads_back_short_and_rolls_back(hugeload_cli, state_dir):
    """Runtime 1 GB pages read back 0 in the guest: the rollback must leave node 1's boot page."""
    r = hugeload_cli("reserve", "--node", 0, "--count", 1, "--page-size", "1g")
    if r.returncode == 0:  # a kernel that could: give it back
        assert hugeload_cli("release").returncode == 0
    else:
        assert r.returncode == 3 and "rolled back" in r.stderr and "Traceback" not in r.stderr
    assert node_count(0, 1048576) == 0 and node_count(1, 1048576) == 1


def test_a_node_too_small_for_its_copy_fails_in_one_line_with_nothing_staged(hugeload_cli, state_dir, tmp_path):
    big = tmp_path / "big.gguf"
    with open(big, "wb") as f:  # sparse: its size is what counts, it takes no memory
        f.truncate(3 << 30)
    before = counts()
    r = hugeload_cli("load", big, "--node", 1, "--reserve", "--page-size", "2m")
    assert r.returncode == 3, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "node 1 is too small" in lines[0] and "nothing was staged" in lines[0]
    assert counts() == before
    assert json.loads(hugeload_cli("loaded", "--json").stdout)["models"] == []


def test_a_copy_its_node_cannot_hold_in_1g_is_staged_in_1g_then_2m_on_that_node(
    hugeload_cli, state_dir, tmp_path, mapper
):
    """Issue 23, mixed page sizes under a placement: node 1 holds one 1 GB page (the boot one) and
    gives no more at run time; a 1 GiB + 6 MiB model staged there in 1G keeps that page for its
    first GiB and takes node 1's 2 MB pages for the rest.  Both parts' pages are on node 1, an
    engine run on node 1 maps both, and unstage gives back every page it reserved."""
    big = tmp_path / "big.gguf"
    with open(big, "wb") as f:  # mostly sparse: copying it is quick under emulation
        f.truncate(GIB + 6 * MIB)
        for off in (0, GIB - 4, GIB, GIB + 6 * MIB - 4):
            f.seek(off)
            f.write((off + 1).to_bytes(4, "little"))
    before = counts()
    r = load(hugeload_cli, big, "--node", 1, "--page-size", "1g", "--reserve")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    try:
        (copy,) = m["copies"]
        assert copy["node"] == 1 and copy["split"] == [
            {"page_size_kb": 2048, "bytes": 6 * MIB, "pages": 3},
            {"page_size_kb": 1048576, "bytes": GIB, "pages": 1},
        ], copy
        pieces = store.resolve(m["name"], state_dir).copies[0].pieces()
        assert [(kb, off, n) for _, kb, off, n in pieces] == [(1048576, 0, GIB), (2048, GIB, 6 * MIB)]
        (first, *_), (second, *_) = pieces
        assert staged_pages(first, 1048576) == {1: 1} and staged_pages(second) == {1: 3}
        assert counts() == (before[0], before[1] + 3)  # the tail's pages, reserved on node 1 only
        r = hugeload_cli("run", "--node", 1, "--quiet", "--", sys.executable, mapper, big, 2048)
        assert r.returncode == 0, r.stderr
        got = json.loads(r.stdout.strip().splitlines()[-1])
        assert pages_on_nodes(got["numa_maps"], first) == {1: 1}, got["maps"]
        assert pages_on_nodes(got["numa_maps"], second) == {1: 3}, got["maps"]
    finally:
        assert hugeload_cli("unload", m["name"], "--force").returncode == 0
    assert counts() == before and node_count(1, 1048576) == 1


def test_without_free_pages_on_the_node_load_refuses_before_touching_anything(hugeload_cli, state_dir, model):
    before = counts()
    r = hugeload_cli("load", model, "--node", 1)
    assert r.returncode == 3 and "node 1's 2M pool has" in r.stderr and "nothing was staged" in r.stderr
    assert counts() == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["--node", "7"], "NUMA node 7 does not exist"),
        (["--nodes", "0,9"], "NUMA node 9 does not exist"),
        (["--node", "0", "--interleave"], "do not combine"),
    ],
)
def test_bad_nodes_fail_in_one_line(hugeload_cli, state_dir, model, args, message):
    before = counts()
    r = hugeload_cli("load", model, *args, "--reserve")
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert len([line for line in r.stderr.splitlines() if line.strip()]) == 1
    assert counts() == before


def test_gc_gives_back_every_nodes_pages_after_an_interrupted_replicated_load(hugeload_cli, state_dir, model):
    before = counts()
    r = load(hugeload_cli, model, "--replicate", "--reserve")
    assert r.returncode == 0, r.stderr
    name = json.loads(r.stdout)["name"]
    (state_dir / "store" / "models" / f"{name}.json").unlink()  # as if killed before the manifest
    r = hugeload_cli("gc", "--json")
    assert r.returncode == 0, r.stderr
    assert counts() == before
    assert len(json.loads(r.stdout)["removed"]) == 2


def test_run_node_binds_cpus_and_memory_like_numactl(hugeload_cli, state_dir):
    code = (
        "import ctypes, os, json; libc = ctypes.CDLL(None, use_errno=True); mode = ctypes.c_int(); "
        "mask = (ctypes.c_ulong * 16)(); libc.syscall(239, ctypes.byref(mode), mask, 1025, None, 0); "
        "print(json.dumps({'cpus': sorted(os.sched_getaffinity(0)), 'mode': mode.value, 'mask': mask[0], "
        "'node': os.environ.get('HUGELOAD_NODE')}))"
    )
    for node in (0, 1):
        r = hugeload_cli("run", "--node", node, "--quiet", "--", sys.executable, "-c", code)
        assert r.returncode == 0, r.stderr
        got = json.loads(r.stdout)
        assert got == {"cpus": [node], "mode": 2, "mask": 1 << node, "node": str(node)}  # MPOL_BIND


def test_run_node_that_does_not_exist_fails_in_one_line(hugeload_cli, state_dir):
    r = hugeload_cli("run", "--node", 4, "--", "true")
    assert r.returncode == 2 and "NUMA node 4 does not exist" in r.stderr and "Traceback" not in r.stderr


def test_run_on_a_node_without_a_copy_refuses(hugeload_cli, state_dir, model):
    assert load(hugeload_cli, model, "--node", 0, "--reserve").returncode == 0
    before = counts()
    r = hugeload_cli("run", "--node", 1, "--", sys.executable, "-c", "pass", model)
    assert r.returncode == 2 and "not on node 1" in r.stderr
    assert counts() == before
    assert hugeload_cli("unload", "tiny").returncode == 0


def test_large_allocations_under_run_node_come_from_that_nodes_pages(hugeload_cli, state_dir):
    """The preload library's large-allocation path maps anonymous huge pages; the memory
    policy inherited from `run --node 1` puts them on node 1.  Only the allocation's own
    mappings are counted (found by its address): the page cache of files read earlier sits
    on whichever node read them first."""
    size = 64 << 20
    assert hugeload_cli("reserve", "--node", 1, "--count", 40, "--page-size", "2m").returncode == 0
    code = (
        "import ctypes, json; libc = ctypes.CDLL(None); libc.malloc.restype = ctypes.c_void_p; "
        f"p = libc.malloc({size}); ctypes.memset(p, 1, {size}); "
        "print(json.dumps({'p': p, 'maps': open('/proc/self/maps').read(), "
        "'numa_maps': open('/proc/self/numa_maps').read()}))"
    )
    try:
        r = hugeload_cli(
            "run",
            "--node",
            1,
            "--page-size",
            "2m",
            "--alloc-threshold",
            "32M",
            "--quiet",
            "--",
            sys.executable,
            "-c",
            code,
        )
        assert r.returncode == 0, r.stderr
        got = json.loads(r.stdout)
        mine = mappings_over(got["maps"], got["numa_maps"], got["p"], got["p"] + size)
        assert mine and all(m.page_kb == 2048 for m in mine), mine  # the allocation is in 2 MB pages
        per_node: dict[int, int] = {}
        for m in mine:
            for node, n in m.pages.items():
                per_node[node] = per_node.get(node, 0) + n
        assert set(per_node) == {1} and per_node[1] >= size >> 21, mine
    finally:
        assert hugeload_cli("release").returncode == 0


def test_two_engines_pinned_to_nodes_0_and_1_each_map_their_own_nodes_copy(hugeload_cli, state_dir, model, mapper):
    """Needs the preload library's node-aware copy choice (contract C1, branch h11c):
    with an index reader that ignores nodes, both processes map the same copy and this fails."""
    r = load(hugeload_cli, model, "--replicate", "--reserve")
    assert r.returncode == 0, r.stderr
    copies = {c["node"]: c["path"] for c in json.loads(r.stdout)["copies"]}
    try:
        for node in (0, 1):  # one after the other: each is its own engine process, pinned by `run`
            r = hugeload_cli("run", "--node", node, "--quiet", "--", sys.executable, mapper, model, 2048)
            assert r.returncode == 0, r.stderr
            got = json.loads(r.stdout.strip().splitlines()[-1])
            assert got["cpus"] == [node] and got["env_node"] == str(node)
            assert copies[node] in got["maps"], f"node {node} engine mapped {got['maps']}, not {copies[node]}"
            assert pages_on_nodes(got["numa_maps"], copies[node]) == {node: PAGES}
    finally:
        assert hugeload_cli("unload", "tiny", "--force").returncode == 0


ENGINE = r"""
import json, mmap, os, sys, time
path, out = sys.argv[1], sys.argv[2]
fd = os.open(path, os.O_RDONLY)
size = os.fstat(fd).st_size
mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
t0 = time.perf_counter()
for off in range(0, size, 4096):
    mm[off]
rate = (size >> 12) / (time.perf_counter() - t0)
from hugeload.probe.numa import pages_by_node, read_numa_maps
nodes = {str(n): c for n, c in pages_by_node(read_numa_maps("/"), os.path.realpath(path)).items()}
with open(out, "a") as f:
    f.write(json.dumps({"path": path, "cpus": sorted(os.sched_getaffinity(0)), "nodes": nodes}) + "\n")
time.sleep(0.3)  # let the verification run's sampler see the mapping
print(f"{rate:.1f} t/s")
"""


def test_bench_engine_node_placement_runs_each_copy_where_it_says(hugeload_cli, state_dir, model, tmp_path):
    """`bench engine --node-placement local,remote,interleave`: every run bound to node 0,
    each placement's copy really on its nodes (numa_maps of the engine itself), nothing left
    staged or reserved.  Figures from this emulated guest mean nothing; placement does."""
    engine, seen = tmp_path / "engine.py", tmp_path / "seen.jsonl"
    engine.write_text(ENGINE)
    before = counts()
    r = hugeload_cli(
        "bench",
        "engine",
        "--model",
        model,
        "--node-placement",
        "local,remote,interleave",
        "--rounds",
        2,
        "--no-startup",
        "--no-bandwidth",
        "--json",
        "--",
        sys.executable,
        engine,
        "{model}",
        seen,
    )
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    status = {e["backing"]: e["status"] for e in data["results"]}
    assert status == {"default": "ok", "2m@local": "ok", "2m@remote": "ok", "2m@interleave": "ok"}, data["results"]
    numa = data["numa"]
    assert numa["engine_node"] == 0 and numa["cpus"] == [0]
    assert numa["copy_nodes"]["2m@local"] == {"0": PAGES}
    assert numa["copy_nodes"]["2m@remote"] == {"1": PAGES}
    assert set(numa["copy_nodes"]["2m@interleave"]) == {"0", "1"}
    assert set(numa["placement_ratios"]) == {"2m@remote", "2m@interleave"}
    runs = [json.loads(line) for line in seen.read_text().splitlines()]
    assert len(runs) == 4 * 3  # a verification run and two timed runs per backing
    assert all(x["cpus"] == [0] for x in runs), runs  # bound like `run --node 0`
    by_copy: dict[str, list] = {}
    for x in runs:  # the staged copies sit in a directory named after the bench's model
        by_copy.setdefault(Path(x["path"]).parent.name, []).append(x["nodes"])
    assert {k: len(v) for k, v in by_copy.items() if k.startswith("bench-")} == {
        "bench-2048-local": 3,
        "bench-2048-remote": 3,
        "bench-2048-interleave": 3,
    }, by_copy
    assert all(n == {"0": PAGES} for n in by_copy["bench-2048-local"]), by_copy
    assert all(n == {"1": PAGES} for n in by_copy["bench-2048-remote"]), by_copy
    assert all(set(n) == {"0", "1"} for n in by_copy["bench-2048-interleave"]), by_copy
    assert counts() == before  # every copy unstaged, every page given back
    assert json.loads(hugeload_cli("staged", "--json").stdout)["models"] == []


def test_bench_engine_node_placement_bad_input_is_one_line(hugeload_cli, state_dir, model):
    for args, message in (
        (["--node-placement", "far"], "unknown node placement far"),
        (["--node-placement", "local", "--node", 7], "NUMA node 7 does not exist"),
    ):
        r = hugeload_cli("bench", "engine", "--model", model, *args, "--", "true")
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
