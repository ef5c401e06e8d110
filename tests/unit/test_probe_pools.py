"""probe/pools.py against every fixture tree."""

import pytest

from hugeload.probe import pools
from hugeload.probe.pools import Pool

G, M = 1048576, 2048

EXPECTED = {
    "zen-vm": {
        "sizes": [M, G],
        "nodes": [0],
        "pools": [
            Pool(M, None, 512, 512, 0, 0, 0),
            Pool(G, None, 4, 2, 1, 0, 0),
            Pool(M, 0, 512, 512, None, 0, None),
            Pool(G, 0, 4, 2, None, 0, None),
        ],
    },
    "numa2-1g": {
        "sizes": [M, G],
        "nodes": [0, 1],
        "pools": [
            Pool(M, None, 0, 0, 0, 0, 0),
            Pool(G, None, 32, 20, 0, 0, 0),
            Pool(M, 0, 0, 0, None, 0, None),
            Pool(G, 0, 16, 4, None, 0, None),
            Pool(M, 1, 0, 0, None, 0, None),
            Pool(G, 1, 16, 16, None, 0, None),
        ],
    },
    "no1g": {
        "sizes": [M],
        "nodes": [0],
        "pools": [Pool(M, None, 0, 0, 0, 0, 0), Pool(M, 0, 0, 0, None, 0, None)],
    },
    "container-v2": {
        "sizes": [M, G],
        "nodes": [0],
        "pools": [
            Pool(M, None, 0, 0, 0, 0, 0),
            Pool(G, None, 8, 6, 0, 0, 0),
            Pool(M, 0, 0, 0, None, 0, None),
            Pool(G, 0, 8, 6, None, 0, None),
        ],
    },
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_page_sizes(tree, name):
    assert pools.page_sizes(tree(name)) == EXPECTED[name]["sizes"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_nodes(tree, name):
    assert pools.nodes(tree(name)) == EXPECTED[name]["nodes"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_read_pools_system_then_nodes(tree, name):
    assert pools.read_pools(tree(name)) == EXPECTED[name]["pools"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_node_pools_add_up_to_the_system_pool(tree, name):
    got = pools.read_pools(tree(name))
    for kb in EXPECTED[name]["sizes"]:
        system = next(p for p in got if p.page_size_kb == kb and p.node is None)
        per_node = [p for p in got if p.page_size_kb == kb and p.node is not None]
        assert sum(p.total for p in per_node) == system.total
        assert sum(p.free for p in per_node) == system.free


def test_system_and_node_pool_readers(tree):
    root = tree("numa2-1g")
    assert pools.system_pool(root, G) == Pool(G, None, 32, 20, 0, 0, 0)
    assert pools.node_pool(root, G, 1) == Pool(G, 1, 16, 16, None, 0, None)


def test_in_use_and_available_count_reserved_pages(tree):
    one_g = pools.system_pool(tree("zen-vm"), G)
    # 4 pages, 2 free, 1 of the free ones promised to a mapping.
    assert one_g.in_use == 3
    assert one_g.available == 1
    node = pools.node_pool(tree("zen-vm"), G, 0)
    assert node.reserved is None
    assert node.in_use == 2 and node.available == 2


def test_missing_size_reads_as_empty_pool(tree):
    assert pools.system_pool(tree("no1g"), G) == Pool(G, None, 0, 0, None, 0, None)


def test_empty_root(tmp_path):
    assert pools.page_sizes(tmp_path) == []
    assert pools.nodes(tmp_path) == []
    assert pools.read_pools(tmp_path) == []


def test_unrelated_entries_are_ignored(tmp_path):
    d = tmp_path / "sys/kernel/mm/hugepages"
    (d / "hugepages-2048kB").mkdir(parents=True)
    (d / "hugepages-2048kB/nr_hugepages").write_text("3\n")
    (d / "not-a-size").mkdir()
    (tmp_path / "sys/devices/system/node/node0").mkdir(parents=True)
    (tmp_path / "sys/devices/system/node/nodefoo").mkdir()
    (tmp_path / "sys/devices/system/node/possible").write_text("0\n")
    assert pools.page_sizes(tmp_path) == [2048]
    assert pools.nodes(tmp_path) == [0]
    # node0 has no hugepages directory: only the system pool is listed
    assert pools.read_pools(tmp_path) == [Pool(2048, None, 3, 0, None, 0, None)]
