"""mount / umount on the real kernel."""

import json
import os

import pytest

pytestmark = [pytest.mark.kernel]


def mounts():
    with open("/proc/mounts") as f:
        return {line.split()[1]: line.split()[3] for line in f if line.split()[2] == "hugetlbfs"}


@pytest.fixture(autouse=True)
def _root(needs_root, state_dir):
    yield


def test_mount_both_sizes_then_umount(hugeload_cli, tmp_path):
    before = mounts()
    d1, d2 = tmp_path / "g", tmp_path / "m"
    assert hugeload_cli("mount", "--page-size", "1g", "--dir", d1, "--size", "2G", "--mode", "1770").returncode == 0
    assert hugeload_cli("mount", "--page-size", "2m", "--dir", d2).returncode == 0
    now = mounts()
    assert "pagesize=1024M" in now[str(d1)] and "size=2147483648" in now[str(d1)] and "mode=1770" in now[str(d1)]
    assert "pagesize=2M" in now[str(d2)]
    # Mounting twice is a no-op.
    out = hugeload_cli("mount", "--page-size", "1g", "--dir", d1, "--json")
    assert json.loads(out.stdout)["mounts"][0]["changed"] is False
    assert list(mounts()).count(str(d1)) == 1
    assert hugeload_cli("umount", "--dir", d1).returncode == 0
    assert hugeload_cli("umount", "--dir", d2).returncode == 0
    assert mounts() == before


def test_default_layout(hugeload_cli):
    before = mounts()
    if "/mnt/hugepages-1gb" in before or "/mnt/hugepages-2mb" in before:
        pytest.skip("default mount points already in use on this machine")
    existed = {p: os.path.exists(p) for p in ("/mnt/hugepages-1gb", "/mnt/hugepages-2mb")}
    assert hugeload_cli("mount").returncode == 0
    try:
        assert {"/mnt/hugepages-1gb", "/mnt/hugepages-2mb"} <= set(mounts())
    finally:
        assert hugeload_cli("umount").returncode == 0
    assert mounts() == before
    for p, e in existed.items():
        assert os.path.exists(p) == e  # directories hugeload created are removed again


def test_umount_refuses_with_files_unless_forced(hugeload_cli, tmp_path):
    d = tmp_path / "m"
    assert hugeload_cli("mount", "--page-size", "2m", "--dir", d).returncode == 0
    try:
        (d / "staged").touch()
        out = hugeload_cli("umount", "--dir", d)
        assert out.returncode != 0 and "holds 1 file" in out.stderr
        assert str(d) in mounts()
    finally:
        assert hugeload_cli("umount", "--dir", d, "--force").returncode == 0
    assert str(d) not in mounts()


def test_refuses_non_empty_directory_and_regular_file(hugeload_cli, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep").write_text("x")
    out = hugeload_cli("mount", "--page-size", "2m", "--dir", tmp_path / "full")
    assert out.returncode != 0 and "non-empty" in out.stderr
    (tmp_path / "file").write_text("x")
    out = hugeload_cli("mount", "--page-size", "2m", "--dir", tmp_path / "file")
    assert out.returncode != 0 and "not a directory" in out.stderr and len(out.stderr.splitlines()) == 1
    assert (tmp_path / "full" / "keep").read_text() == "x"
