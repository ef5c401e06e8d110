"""probe/cgroup.py: hugetlb limits (cgroup v1 and v2) and container detection."""

import pytest

from hugeload.probe import cgroup
from hugeload.probe.cgroup import HugetlbLimit

G, M, GiB = 1048576, 2048, 1 << 30


def test_zen_vm_hybrid_v2_without_limits(tree):
    # systemd hybrid layout: v1 controllers plus cgroup2 at /sys/fs/cgroup/unified; no v1 hugetlb
    info = cgroup.read_cgroup(tree("zen-vm"))
    assert (info.version, info.path, info.limits, info.container) == (2, "/", [], None)


def test_numa2_v1_hugetlb_controller(tree):
    info = cgroup.read_cgroup(tree("numa2-1g"))
    assert (info.version, info.path, info.container) == (1, "/", None)
    assert [(x.page_size_kb, x.version, x.path, x.usage_bytes, x.rsvd_limit_bytes) for x in info.limits] == [
        (M, 1, "sys/fs/cgroup/hugetlb/hugetlb.2MB.limit_in_bytes", 0, None),
        (G, 1, "sys/fs/cgroup/hugetlb/hugetlb.1GB.limit_in_bytes", 12 * GiB, None),
    ]


def test_no1g_v1_only_the_sizes_present(tree):
    info = cgroup.read_cgroup(tree("no1g"), page_sizes_kb=(2048,))
    assert (info.version, info.path) == (1, "/")
    assert [x.page_size_kb for x in info.limits] == [M]
    # asking for a size the kernel lacks finds no file and no limit
    assert [x.page_size_kb for x in cgroup.read_cgroup(tree("no1g")).limits] == [M]


@pytest.mark.parametrize("name", ["numa2-1g", "no1g"])
def test_v1_default_limit_reads_as_unlimited(tree, name):
    assert [x.limit_bytes for x in cgroup.read_cgroup(tree(name)).limits] == [None] * len(
        cgroup.read_cgroup(tree(name)).limits
    )


def test_container_v2_limits(tree):
    info = cgroup.read_cgroup(tree("container-v2"))
    assert (info.version, info.path, info.container) == (2, "/docker/abc", "docker")
    assert info.limits == [
        HugetlbLimit(M, None, None, 0, 2, "sys/fs/cgroup/docker/abc/hugetlb.2MB.max"),
        HugetlbLimit(G, 2 * GiB, 2 * GiB, GiB, 2, "sys/fs/cgroup/docker/abc/hugetlb.1GB.max"),
    ]


def test_other_pid(tree):
    info = cgroup.read_cgroup(tree("no1g"), pid="1")
    assert info.version == 1  # pid 1 is in the same hugetlb cgroup


@pytest.mark.parametrize(
    "kb,name", [(4, "4KB"), (64, "64KB"), (2048, "2MB"), (32768, "32MB"), (1048576, "1GB"), (16777216, "16GB")]
)
def test_cgroup_size_name(kb, name):
    assert cgroup.cgroup_size_name(kb) == name


@pytest.mark.parametrize(
    "text,value",
    [
        ("max\n", None),
        (None, None),
        ("", None),
        ("junk", None),
        ("2147483648\n", 2147483648),
        ("0", 0),
        (str(0x7FFFFFFFFFFFF000), None),  # v1 before 4.7: PAGE_COUNTER_MAX pages
    ],
)
def test_parse_limit(text, value):
    assert cgroup._parse_limit(text) == value


def _write(root, rel, text):
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def test_v1_explicit_limit(tmp_path):
    _write(tmp_path, "proc/self/cgroup", "5:hugetlb:/batch/job7\n1:name=systemd:/\n")
    _write(tmp_path, "sys/fs/cgroup/hugetlb/batch/job7/hugetlb.1GB.limit_in_bytes", "4294967296\n")
    _write(tmp_path, "sys/fs/cgroup/hugetlb/batch/job7/hugetlb.1GB.usage_in_bytes", "1073741824\n")
    _write(tmp_path, "sys/fs/cgroup/hugetlb/batch/job7/hugetlb.1GB.rsvd.limit_in_bytes", "4294967296\n")
    info = cgroup.read_cgroup(tmp_path)
    assert (info.version, info.path) == (1, "/batch/job7")
    assert info.limits == [
        HugetlbLimit(G, 4 * GiB, 4 * GiB, GiB, 1, "sys/fs/cgroup/hugetlb/batch/job7/hugetlb.1GB.limit_in_bytes")
    ]


def test_pure_v2_with_cgroup_namespace(tmp_path):
    # cgroupns=private: the container's own cgroup is the root it sees
    _write(tmp_path, "proc/self/cgroup", "0::/\n")
    _write(tmp_path, "sys/fs/cgroup/cgroup.controllers", "cpu memory hugetlb pids\n")
    _write(tmp_path, "sys/fs/cgroup/unified/README", "a directory named unified must not matter on pure v2\n")
    _write(tmp_path, "sys/fs/cgroup/hugetlb.2MB.max", "1073741824\n")
    info = cgroup.read_cgroup(tmp_path)
    assert [(x.page_size_kb, x.limit_bytes, x.path) for x in info.limits] == [(M, GiB, "sys/fs/cgroup/hugetlb.2MB.max")]


def test_no_cgroup_file(tmp_path):
    assert cgroup.read_cgroup(tmp_path) == cgroup.CgroupInfo(None, None, [], None)


@pytest.mark.parametrize(
    "rel,text,expected",
    [
        (".dockerenv", "", "docker"),
        ("run/.containerenv", 'engine="podman-4.9"\n', "podman"),
        ("proc/1/environ", "PATH=/bin\0container=lxc\0HOME=/\0", "lxc"),
        ("proc/1/environ", "container=\0", "container"),
        ("proc/1/cgroup", "0::/kubepods.slice/kubepods-burstable.slice/cri-containerd-1.scope\n", "kubernetes"),
        ("proc/1/cgroup", "0::/machine.slice/libpod-0123.scope\n", "podman"),
        ("proc/1/cgroup", "0::/init.scope\n", None),
    ],
)
def test_detect_container(tmp_path, rel, text, expected):
    _write(tmp_path, rel, text)
    assert cgroup.detect_container(tmp_path) == expected


@pytest.mark.parametrize(
    "name,expected", [("zen-vm", None), ("numa2-1g", None), ("no1g", None), ("container-v2", "docker")]
)
def test_detect_container_per_tree(tree, name, expected):
    assert cgroup.detect_container(tree(name)) == expected
