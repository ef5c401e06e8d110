"""probe/machine.py: one read of everything, and has_admin from CapEff."""

import pytest

from hugeload.probe import machine

G = 1048576


@pytest.mark.parametrize(
    "name,is_root,sizes,nodes,n_mounts",
    [
        ("zen-vm", True, [2048, G], [0], 2),
        ("numa2-1g", True, [2048, G], [0, 1], 2),
        ("no1g", True, [2048], [0], 1),
        ("container-v2", False, [2048, G], [0], 0),  # root in a container without CAP_SYS_ADMIN
    ],
)
def test_read_machine(tree, name, is_root, sizes, nodes, n_mounts):
    m = machine.read_machine(tree(name))
    assert m.root == tree(name)
    assert m.is_root is is_root
    assert m.page_sizes_kb == sizes
    assert m.nodes == nodes
    assert len(m.mounts) == n_mounts
    assert m.hugetlbfs_supported
    assert m.kernel_release
    assert m.meminfo["MemTotal"] > 0


def test_system_pool(tree):
    m = machine.read_machine(tree("numa2-1g"))
    assert m.system_pool(G).total == 32
    assert m.system_pool(G).node is None
    assert machine.read_machine(tree("no1g")).system_pool(G) is None


def test_is_root_override(tree):
    assert machine.read_machine(tree("zen-vm"), is_root=False).is_root is False
    assert machine.read_machine(tree("container-v2"), is_root=True).is_root is True


def test_cgroup_uses_the_kernel_page_sizes(tree):
    m = machine.read_machine(tree("no1g"))
    assert [x.page_size_kb for x in m.cgroup.limits] == [2048]


@pytest.mark.parametrize(
    "cap,expected",
    [
        ("0000000000200000", True),  # CAP_SYS_ADMIN alone
        ("000001ffffdfffff", False),  # everything but CAP_SYS_ADMIN
        ("0000000000000000", False),
        ("zz", False),
    ],
)
def test_has_admin(tmp_path, cap, expected):
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/status").write_text(f"Name:\thugeload\nCapEff:\t{cap}\n")
    assert machine.has_admin(tmp_path) is expected


def test_has_admin_without_status(tmp_path):
    assert machine.has_admin(tmp_path) is False
