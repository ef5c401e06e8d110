"""The probe against the real kernel: what it reads must equal what the kernel says."""

import json
import mmap
import os
from pathlib import Path

import pytest

from hugeload.act import pools as act_pools
from hugeload.probe import cpu, memory, pools, procs

pytestmark = pytest.mark.kernel
MAP_HUGETLB = 0x40000
MAP_HUGE_SHIFT = 26


def meminfo_pool(field: str) -> int:
    return memory.read_meminfo("/")[field]


def test_default_pool_matches_meminfo():
    default_kb = meminfo_pool("Hugepagesize")
    pool = pools.system_pool("/", default_kb)
    assert pool.total == meminfo_pool("HugePages_Total")
    assert pool.free == meminfo_pool("HugePages_Free")
    assert pool.reserved == meminfo_pool("HugePages_Rsvd")
    assert pool.surplus == meminfo_pool("HugePages_Surp")


def test_hugetlb_total_matches_meminfo():
    total_kb = sum(p.total * p.page_size_kb for p in pools.read_pools("/") if p.node is None)
    assert total_kb == meminfo_pool("Hugetlb")


def test_reserved_pages_show_in_probe_and_meminfo(needs_root):
    before = act_pools.read_count("/", 2048)
    try:
        got = act_pools.set_count("/", 2048, before + 4)
        assert got == before + 4
        assert pools.system_pool("/", 2048).total == got
        assert meminfo_pool("Hugetlb") >= 4 * 2048
        node_total = sum(p.total for p in pools.read_pools("/") if p.node is not None and p.page_size_kb == 2048)
        assert node_total == got
    finally:
        act_pools.set_count("/", 2048, before)
    assert pools.system_pool("/", 2048).total == before


def test_status_json_matches_sys(hugeload_cli):
    out = hugeload_cli("status", "--json", check=True)
    data = json.loads(out.stdout)
    system = {p["page_size_kb"]: p for p in data["pools"] if p["node"] is None}
    for d in Path("/sys/kernel/mm/hugepages").iterdir():
        kb = int(d.name.split("-")[1][:-2])
        assert system[kb]["total"] == int((d / "nr_hugepages").read_text())
        assert system[kb]["free"] == int((d / "free_hugepages").read_text())
        assert system[kb]["reserved"] == int((d / "resv_hugepages").read_text())
        assert system[kb]["surplus"] == int((d / "surplus_hugepages").read_text())


def test_smaps_reports_a_real_2m_mapping(needs_root):
    before = act_pools.read_count("/", 2048)
    try:
        act_pools.set_count("/", 2048, before + 2)
        m = mmap.mmap(-1, 2 * 2**21, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_HUGETLB | (21 << MAP_HUGE_SHIFT))
        try:
            m[0] = 1
            m[2**21] = 1
            sizes = [x for x in procs.read_smaps("/", os.getpid(), 2 * 2**21) if x.kernel_page_kb == 2048]
            assert sizes and sizes[0].hugetlb_kb == 4096
            me = procs.read_process("/", os.getpid())
            assert me.hugetlb_kb == 4096
            assert os.getpid() in [p.pid for p in procs.huge_page_users("/")]
        finally:
            m.close()
    finally:
        act_pools.set_count("/", 2048, before)


def test_cpu_matches_cpuinfo():
    info = cpu.read_cpu("/")
    text = Path("/proc/cpuinfo").read_text()
    flags = next(line for line in text.splitlines() if line.startswith("flags")).split(":", 1)[1].split()
    assert info.flags == frozenset(flags)
    if info.vendor in ("AuthenticAMD", "GenuineIntel"):
        from hugeload import native

        _, ebx, ecx, edx = native.cpuid(0)
        vendor = b"".join(r.to_bytes(4, "little") for r in (ebx, edx, ecx)).decode()
        assert vendor == info.vendor
        assert info.tlb_source in ("cpuid", "cpuinfo")


def test_doctor_try_restores_pool(hugeload_cli, needs_root):
    before = act_pools.read_count("/", 1048576)
    out = hugeload_cli("doctor", "--try", "--json")
    data = json.loads(out.stdout)
    names = {c["name"]: c for c in data["checks"]}
    assert set(names) >= {"kernel", "cpu_1g", "hugetlbfs", "privileges", "pool_1g", "cgroup", "thp"}
    assert all(c["status"] in ("pass", "warn", "fail") for c in data["checks"])
    assert act_pools.read_count("/", 1048576) == before
    # Exit status follows usability: 0 exactly when no blocking check failed.
    assert (out.returncode == 0) == data["usable_1g"]
