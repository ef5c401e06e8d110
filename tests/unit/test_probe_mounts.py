"""probe/mounts.py: hugetlbfs mounts as /proc/mounts prints them."""

import pytest

from hugeload.probe import mounts
from hugeload.probe.mounts import HugetlbfsMount

G, M = 1048576, 2048


def test_zen_vm_mounts(tree):
    got = mounts.read_mounts(tree("zen-vm"))
    assert [(m.path, m.page_size_kb, m.size_bytes, m.uid, m.gid) for m in got] == [
        ("/mnt/hugepages-1gb", G, 4294967296, 0, 0),
        ("/mnt/hugepages-2mb", M, None, 1000, 1000),
    ]
    assert got[1].mode == 0o1770
    assert got[0].options == "rw,relatime,pagesize=1024M,size=4294967296"


def test_numa2_mounts_escaped_path_and_min_size(tree):
    got = mounts.read_mounts(tree("numa2-1g"))
    assert [(m.path, m.page_size_kb, m.size_bytes) for m in got] == [
        ("/dev/hugepages", G, None),
        ("/srv/huge 2m", M, None),  # \040 in /proc/mounts; min_size= is not a size limit
    ]
    assert (got[1].uid, got[1].gid, got[1].mode) == (0, 1001, 0o1770)
    assert "seclabel" in got[0].options.split(",")


def test_no1g_mounts(tree):
    assert [(m.path, m.page_size_kb) for m in mounts.read_mounts(tree("no1g"))] == [("/dev/hugepages", M)]


def test_container_has_no_hugetlbfs_mount(tree):
    assert mounts.read_mounts(tree("container-v2")) == []


@pytest.mark.parametrize("name,path", [("zen-vm", "/mnt/hugepages-1gb"), ("numa2-1g", "/dev/hugepages")])
def test_mount_without_mode_option_is_0755(tree, name, path):
    got = {m.path: m for m in mounts.read_mounts(tree(name))}
    assert got[path].mode == 0o755


@pytest.mark.parametrize("name", ["zen-vm", "numa2-1g", "no1g", "container-v2"])
def test_hugetlbfs_supported(tree, name):
    assert mounts.hugetlbfs_supported(tree(name)) is True


def test_hugetlbfs_not_supported(tmp_path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/filesystems").write_text("nodev\tsysfs\nnodev\ttmpfs\n\text4\n")
    assert mounts.hugetlbfs_supported(tmp_path) is False
    assert mounts.hugetlbfs_supported(tmp_path / "missing") is False


@pytest.mark.parametrize("name,kb", [("zen-vm", M), ("numa2-1g", G), ("no1g", M), ("container-v2", G)])
def test_default_page_size_from_meminfo(tree, name, kb):
    assert mounts.default_page_size_kb(tree(name)) == kb


def test_parse_mount_options():
    got = mounts.parse_mount_options("rw,relatime,uid=1000,gid=100,mode=770,pagesize=1024M,size=2147483648", None)
    assert got == {"page_size_kb": G, "size_bytes": 2147483648, "uid": 1000, "gid": 100, "mode": 0o770}


def test_parse_mount_options_without_pagesize_uses_the_default():
    assert mounts.parse_mount_options("rw,relatime", 2048)["page_size_kb"] == 2048
    assert mounts.parse_mount_options("rw,relatime", None)["page_size_kb"] == 0


def test_mount_without_pagesize_takes_hugepagesize(tmp_path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/mounts").write_text("none /huge hugetlbfs rw,relatime 0 0\ntmpfs /tmp tmpfs rw 0 0\n")
    (tmp_path / "proc/meminfo").write_text("Hugepagesize:    1048576 kB\n")
    assert mounts.read_mounts(tmp_path) == [HugetlbfsMount("/huge", G, None, 0, 0, 0o755, "rw,relatime")]


def test_no_proc_mounts(tmp_path):
    assert mounts.read_mounts(tmp_path) == []


def test_unescape_keeps_non_ascii(tmp_path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/mounts").write_text(
        "hugetlbfs /mnt/modèles\\0401g hugetlbfs rw,pagesize=1024M 0 0\n", encoding="utf-8"
    )
    assert mounts.read_mounts(tmp_path)[0].path == "/mnt/modèles 1g"


def test_mount_table_and_filesystem_of(tmp_path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/mounts").write_text(
        "/dev/vda1 / ext4 rw 0 0\ntmpfs /dev/shm tmpfs rw,nosuid 0 0\nnone /srv/my\\040dir tmpfs rw 0 0\nshort line\n"
    )
    table = mounts.read_mount_table(tmp_path)
    assert [(m.path, m.fstype) for m in table] == [("/", "ext4"), ("/dev/shm", "tmpfs"), ("/srv/my dir", "tmpfs")]
    assert mounts.filesystem_of(tmp_path, "/dev/shm/x") == "tmpfs"
    assert mounts.filesystem_of(tmp_path, "/srv/my dir/model.gguf") == "tmpfs"
    assert mounts.filesystem_of(tmp_path, "/dev/shmem") == "ext4"  # a prefix of the name is not the mount
    assert mounts.filesystem_of(tmp_path / "nothing", "/x") == "unknown"
