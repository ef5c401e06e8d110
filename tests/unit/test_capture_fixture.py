"""scripts/capture-fixture.py, run against fixture trees (--root) instead of the live machine."""

import importlib.util
import json
from pathlib import Path

import pytest

from hugeload.probe import cgroup, cpu, kernel, memory, mounts, pools, thp

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "capture-fixture.py"


@pytest.fixture(scope="module")
def capture():
    spec = importlib.util.spec_from_file_location("capture_fixture", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def probe_all(root):
    return {
        "sizes": pools.page_sizes(root),
        "pools": pools.read_pools(root),
        "mounts": mounts.read_mounts(root),
        "hugetlbfs": mounts.hugetlbfs_supported(root),
        "thp": thp.read_thp(root),
        "cpu": cpu.read_cpu(root),
        "release": kernel.read_kernel_release(root),
        "boot": kernel.read_boot_params(root),
        "cgroup": cgroup.read_cgroup(root),
        "meminfo": memory.read_meminfo(root),
        "buddy": memory.read_buddyinfo(root),
        "pressure": memory.read_pressure(root),
    }


@pytest.mark.parametrize("name", ["zen-vm", "numa2-1g", "no1g", "container-v2"])
def test_recapture_probes_the_same(tree, capture, tmp_path, capsys, name):
    dest = tmp_path / "copy"
    assert capture.main(["--root", tree(name), str(dest)]) == 0
    assert "captured" in capsys.readouterr().out
    assert probe_all(str(dest)) == probe_all(tree(name))


def test_capture_contents(tree, capture, tmp_path):
    dest = tmp_path / "copy"
    capture.main(["--root", tree("zen-vm"), str(dest)])
    files = {str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()}
    assert "sys/kernel/mm/hugepages/hugepages-1048576kB/resv_hugepages" in files
    assert "sys/devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages" in files
    assert {
        "proc/self/status",
        "proc/self/cgroup",
        "proc/1/cgroup",
        "proc/cmdline",
        "cpuid.json",
        "sys/kernel/mm/transparent_hugepage/shmem_enabled",
        "sys/fs/cgroup/unified/cgroup.controllers",
    } <= files
    assert not any(f.startswith("proc/4242") for f in files)  # other processes are not captured
    assert not (dest / ".dockerenv").exists()


def test_capture_container_markers_and_cgroup_files(tree, capture, tmp_path):
    dest = tmp_path / "copy"
    capture.main(["--root", tree("container-v2"), str(dest)])
    assert (dest / ".dockerenv").read_text() == ""
    names = sorted(p.name for p in (dest / "sys/fs/cgroup/docker/abc").iterdir())
    assert "hugetlb.1GB.max" in names and "hugetlb.2MB.rsvd.max" in names
    assert "cgroup.controllers" not in names  # only hugetlb.* of the process's cgroup


def test_capture_v1_cgroup_files(tree, capture, tmp_path):
    dest = tmp_path / "copy"
    capture.main(["--root", tree("numa2-1g"), str(dest)])
    assert (dest / "sys/fs/cgroup/hugetlb/hugetlb.1GB.limit_in_bytes").read_text() == "9223372035781033984\n"


def test_capture_intel_cpuid_subleaves(tree, capture, tmp_path):
    dest = tmp_path / "copy"
    capture.main(["--root", tree("numa2-1g"), str(dest)])
    table = json.loads((dest / "cpuid.json").read_text())
    assert {f"0x18:{n}" for n in range(7)} <= set(table)
    assert all(isinstance(r, str) and r.startswith("0x") for regs in table.values() for r in regs)


def test_no_cpuid_json_without_source(tree, capture, tmp_path):
    dest = tmp_path / "copy"
    capture.main(["--root", tree("no1g"), str(dest)])
    assert not (dest / "cpuid.json").exists()
    assert cpu.read_cpu(str(dest)).tlb_source == "cpuinfo"


def test_refuses_non_empty_dest(tree, capture, tmp_path, capsys):
    (tmp_path / "keep").write_text("x")
    assert capture.main(["--root", tree("zen-vm"), str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert (tmp_path / "keep").read_text() == "x"


def test_refuses_root_without_hugepages(capture, tmp_path, capsys):
    assert capture.main(["--root", str(tmp_path / "empty"), str(tmp_path / "dest")]) == 2
    assert not (tmp_path / "dest").exists()
    assert "sys/kernel/mm/hugepages" in capsys.readouterr().err


def test_verbose_lists_skipped(tree, capture, tmp_path, capsys):
    capture.main(["-v", "--root", tree("no1g"), str(tmp_path / "copy")])
    out = capsys.readouterr().out
    assert "skipped proc/pressure/memory (missing)" in out
    assert "  proc/meminfo" in out


def test_first_cpuinfo_block(capture):
    text = "processor\t: 0\nflags\t\t: pse\n\nprocessor\t: 1\nflags\t\t: pse\n\n"
    assert capture.first_cpuinfo_block(text) == "processor\t: 0\nflags\t\t: pse\n\n"
    assert capture.first_cpuinfo_block("\n\nprocessor\t: 0\n") == "processor\t: 0\n\n"


def test_container_environ_keeps_only_container(capture):
    assert capture.container_environ("HOME=/root\0container=podman\0SECRET=x\0") == "container=podman\0"
    assert capture.container_environ("HOME=/root\0") == ""


@pytest.mark.parametrize(
    "text,listing,expected",
    [
        ("12:hugetlb:/batch\n1:name=systemd:/\n", [], "sys/fs/cgroup/hugetlb/batch"),
        ("0::/docker/abc\n", ["cgroup.controllers", "docker"], "sys/fs/cgroup/docker/abc"),
        ("0::/\n", ["cgroup.controllers"], "sys/fs/cgroup"),
        ("4:memory:/x\n0::/\n", ["memory", "unified"], "sys/fs/cgroup/unified"),
        ("4:memory:/x\n", ["memory"], None),
    ],
)
def test_own_cgroup_dir(capture, text, listing, expected):
    assert capture.own_cgroup_dir(text, listing) == expected


def test_cpuid_table(capture):
    regs = {(0x0, 0): (0x1B, 1, 2, 3), (0x18, 0): (2, 0, 0, 0), (0x18, 1): (0, 1, 2, 3), (0x18, 2): (0, 4, 5, 6)}
    table = capture.cpuid_table(lambda leaf, sub=0: regs.get((leaf, sub)))
    assert set(table) == {"0x0:0", "0x18:0", "0x18:1", "0x18:2"}
    assert table["0x0:0"] == ["0x0000001b", "0x00000001", "0x00000002", "0x00000003"]
