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


def raw_tlb_reported(vendor: str) -> bool:
    """Whether this CPU's own CPUID leaves report any 4K/2M/1G TLB, read here from the raw
    registers (not through probe/cpu.py's decoding), so "none" is accepted only when true."""
    from hugeload import native

    if vendor == "AuthenticAMD":
        # entry-count fields of EAX/EBX: [23:16] and [7:0] in the L1 leaf, [27:16] and [11:0] in the others
        masks = {0x80000005: 0x00FF00FF, 0x80000006: 0x0FFF0FFF, 0x80000019: 0x0FFF0FFF}
        regs = {leaf: native.cpuid(leaf) for leaf in masks}
        return any(r and (r[0] & masks[leaf] or r[1] & masks[leaf]) for leaf, r in regs.items())
    top = native.cpuid(0)[0]
    if top >= 0x18:
        last = native.cpuid(0x18, 0)[0]
        for sub in range(min(last, 64) + 1):
            _, ebx, ecx, edx = native.cpuid(0x18, sub)
            if edx & 0x1F and ebx & 0b1011 and (ebx >> 16) * ecx:
                return True
    regs = native.cpuid(2) or (0, 0, 0, 0)
    descriptors = {(r >> (8 * b)) & 0xFF for i, r in enumerate(regs) if not r & 1 << 31 for b in range(i == 0, 4)}
    return bool(descriptors & {d for d, (_, _, sizes) in cpu.LEAF2_TLB.items() if sizes})


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
        tlb_line = any(line.startswith("TLB size") and "4K" in line for line in text.splitlines())
        if raw_tlb_reported(info.vendor):
            assert info.tlb_source == "cpuid", info.tlb_detail
            assert info.tlb, info.tlb_detail
        elif tlb_line:
            assert info.tlb_source == "cpuinfo", info.tlb_detail
        else:
            # e.g. an Intel VM: leaf 0x18 zeros, leaf 2 only 0xFF, no TLB line
            assert (info.tlb_source, info.tlb) == ("none", []), info.tlb_detail
            assert "no TLB size line" in info.tlb_detail


def test_doctor_try_restores_pool(hugeload_cli, needs_root, state_dir):  # the trial page goes through the ledger
    before = act_pools.read_count("/", 1048576)
    out = hugeload_cli("doctor", "--try", "--json")
    data = json.loads(out.stdout)
    names = {c["name"]: c for c in data["checks"]}
    assert set(names) >= {"kernel", "cpu_1g", "hugetlbfs", "privileges", "pool_1g", "cgroup", "thp"}
    assert all(c["status"] in ("pass", "warn", "fail") for c in data["checks"])
    assert act_pools.read_count("/", 1048576) == before
    # Exit status follows usability: 0 exactly when no blocking check failed.
    assert (out.returncode == 0) == data["usable_1g"]
