"""plan/doctor.py: checks over each fixture machine."""

import dataclasses

import pytest

from hugeload.plan import doctor
from hugeload.probe.cgroup import CgroupInfo, HugetlbLimit
from hugeload.probe.machine import read_machine
from hugeload.probe.pools import Pool
from hugeload.probe.thp import Thp

G, GiB = 1048576, 1 << 30


def checks_of(root, **kw):
    m = read_machine(root, **kw)
    return {c.name: c for c in doctor.run_checks(m)}, m


def test_check_names_and_order(tree):
    checks = doctor.run_checks(read_machine(tree("zen-vm")))
    assert [c.name for c in checks] == [
        "kernel",
        "cpu_1g",
        "hugetlbfs",
        "privileges",
        "pool_1g",
        "mount_1g",
        "boot_params",
        "cgroup",
        "thp",
        "memory",
        "virtualization",
        "llama_buffers",
        "hvo",
        "hugetlb_cma",
    ]
    for c in checks:
        assert c.status in ("pass", "warn", "fail")
        assert (c.fix == "") == (c.status == "pass")
        assert not c.blocks_1g or c.status == "fail"


def test_no1g(tree):
    checks, _ = checks_of(tree("no1g"))
    assert (checks["cpu_1g"].status, checks["cpu_1g"].blocks_1g) == ("fail", True)
    assert "pdpe1gb" in checks["cpu_1g"].detail
    assert checks["cpu_1g"].fix.startswith("use 2M pages")
    assert checks["hugetlbfs"].status == "fail"
    assert "2048 kB" in checks["hugetlbfs"].detail
    assert checks["pool_1g"].status == "fail"
    assert not doctor.usable_1g(list(checks.values()))


def test_container_v2(tree):
    checks, _ = checks_of(tree("container-v2"))
    c = checks["cgroup"]
    assert (c.status, c.blocks_1g) == ("warn", False)
    assert "2 x 1G" in c.detail and "docker" in c.detail
    assert "sys/fs/cgroup/docker/abc/hugetlb.1GB.max" in c.fix
    assert checks["privileges"].status == "fail"  # no CAP_SYS_ADMIN in CapEff
    assert checks["memory"].status == "warn" and "pressure 3.5%" in checks["memory"].detail
    assert checks["boot_params"].status == "pass"
    assert checks["virtualization"].status == "pass"


def test_numa2_boot_params_match_pool(tree):
    checks, _ = checks_of(tree("numa2-1g"))
    c = checks["boot_params"]
    assert c.status == "pass"
    assert "32 x 1G, pool has 32" in c.detail
    assert doctor.usable_1g(list(checks.values()))


def test_numa2_every_check_passes(tree):
    checks, _ = checks_of(tree("numa2-1g"))
    assert {n: c.status for n, c in checks.items() if c.status != "pass"} == {}


def test_numa2_other_checks_pass(tree):
    checks, _ = checks_of(tree("numa2-1g"))
    assert {n: c.status for n, c in checks.items() if c.status != "pass" and n != "cgroup"} == {}
    assert "has pdpe1gb" in checks["cpu_1g"].detail
    assert "/dev/hugepages" in checks["mount_1g"].detail


def test_zen_vm(tree):
    checks, _ = checks_of(tree("zen-vm"))
    assert checks["virtualization"].status == "warn"
    assert checks["pool_1g"].status == "pass" and "4 x 1G reserved, 2 free" in checks["pool_1g"].detail
    assert checks["mount_1g"].status == "pass"
    assert checks["boot_params"].status == "pass"  # runtime reservation, nothing on the command line
    assert checks["cgroup"].status == "pass"
    assert doctor.usable_1g(list(checks.values()))


def test_boot_params_not_met(tree):
    m = read_machine(tree("numa2-1g"))
    m.pools = [Pool(G, None, 20, 20, 0, 0, 0) if p.page_size_kb == G and p.node is None else p for p in m.pools]
    c = doctor.check_boot(m)
    assert (c.status, c.blocks_1g) == ("warn", False)
    assert "asks for 32 x 1G, pool has 20" in c.detail


def test_pool_1g_empty(tree):
    m = read_machine(tree("numa2-1g"))
    m.pools = [Pool(G, None, 0, 0, 0, 0, 0)]
    assert doctor.check_pool_1g(m, None).status == "warn"
    assert doctor.check_pool_1g(m, doctor.TryResult(1, True, None)).status == "pass"
    c = doctor.check_pool_1g(m, doctor.TryResult(0, True, "Cannot allocate memory"))
    assert (c.status, c.blocks_1g) == ("fail", True)
    assert "Cannot allocate memory" in c.detail


def test_cgroup_limit_under_one_page_blocks(tree):
    m = read_machine(tree("container-v2"))
    m.cgroup = CgroupInfo(2, "/x", [HugetlbLimit(G, GiB // 2, None, 0, 2, "sys/fs/cgroup/x/hugetlb.1GB.max")], None)
    c = doctor.check_cgroup(m)
    assert (c.status, c.blocks_1g) == ("fail", True)
    assert "echo max > /sys/fs/cgroup/x/hugetlb.1GB.max" in c.fix


@pytest.mark.parametrize("release,status", [("3.8.0", "pass"), ("3.7.10", "fail"), ("", "fail"), ("2.6.32", "fail")])
def test_kernel_version(tree, release, status):
    m = dataclasses.replace(read_machine(tree("zen-vm")), kernel_release=release)
    assert doctor.check_kernel(m).status == status


@pytest.mark.parametrize(
    "thp,status",
    [(Thp("always", None, None), "pass"), (Thp("never", "never", "never"), "warn"), (Thp(None, None, None), "warn")],
)
def test_thp(tree, thp, status):
    m = dataclasses.replace(read_machine(tree("zen-vm")), thp=thp)
    assert doctor.check_thp(m).status == status


def test_low_memory_warns(tree):
    m = read_machine(tree("no1g"))
    m.meminfo = {**m.meminfo, "MemAvailable": 512 * 1024}
    assert doctor.check_memory(m).status == "warn"


def test_not_root(tree):
    m = read_machine(tree("zen-vm"), is_root=False)
    c = doctor.check_privileges(m)
    assert (c.status, c.blocks_1g, c.fix) == ("fail", True, "run hugeload with sudo")


@pytest.mark.parametrize(
    "name,amx_built,words",
    [
        ("zen-vm", False, "Q4_0/Q4_K/IQ4_NL/MXFP4/Q2_K are repacked to a CPU_REPACK heap copy on this CPU (AVX-512)"),
        ("container-v2", False, "Q4_0/Q4_K/IQ4_NL/MXFP4 are repacked to a CPU_REPACK heap copy on this CPU (AVX2)"),
        ("intel-spr", True, "are converted to an AMX heap copy"),
        ("intel-spr-vm", None, "has AMX but the llama.cpp build does not use it"),
        ("intel-snb", False, "staging alone is enough"),
    ],
)
def test_llama_buffers_check_per_cpu(tree, name, amx_built, words):
    from hugeload.plan import buffers

    m = read_machine(tree(name))
    engine = buffers.engine_for(m.cpu.flags, amx_built) if amx_built is not None else None
    check = {c.name: c for c in doctor.run_checks(m, engine=engine)}["llama_buffers"]
    assert (check.status, check.fix, check.blocks_1g) == ("pass", "", False)
    assert words in check.detail
