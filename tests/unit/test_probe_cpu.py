"""probe/cpu.py: identity and flags from /proc/cpuinfo, TLB geometry from CPUID (AMD, Intel) or cpuinfo."""

import json
from pathlib import Path

import pytest

from hugeload.probe import cpu
from hugeload.probe.cpu import TlbLevel

K4, M2, G1 = 4, 2048, 1048576


@pytest.mark.parametrize(
    "name,vendor,family,model,model_name,hypervisor,pdpe1gb",
    [
        ("zen-vm", "AuthenticAMD", 25, 17, "AMD EPYC", True, True),
        ("numa2-1g", "GenuineIntel", 6, 106, "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz", False, True),
        ("no1g", "AuthenticAMD", 23, 49, "AMD EPYC 7402P 24-Core Processor", True, False),
        ("container-v2", "AuthenticAMD", 25, 1, "AMD EPYC 7763 64-Core Processor", False, True),
        ("intel-spr-vm", "GenuineIntel", 6, 167, "Intel(R) Xeon(R) Processor", True, True),
        ("intel-spr", "GenuineIntel", 6, 143, "Intel(R) Xeon(R) Platinum 8480+", False, True),
        ("intel-snb", "GenuineIntel", 6, 45, "Intel(R) Xeon(R) CPU E5-2670 0 @ 2.60GHz", False, True),
    ],
)
def test_identity_and_flags(tree, name, vendor, family, model, model_name, hypervisor, pdpe1gb):
    c = cpu.read_cpu(tree(name))
    assert (c.vendor, c.family, c.model, c.model_name) == (vendor, family, model, model_name)
    assert c.hypervisor is hypervisor
    assert c.pdpe1gb is pdpe1gb
    assert c.pse is True
    assert {"fpu", "pae", "lm"} <= c.flags


@pytest.mark.parametrize(
    "name,source,by_size",
    [
        # AMD EPYC VM: 0x80000005/6 are passed through, 0x80000019 (1G TLB) reads as zeros.
        ("zen-vm", "cpuid", {K4: {1: 72, 2: 3072}, M2: {1: 72, 2: 3072}, G1: {}}),
        # Intel leaf 0x18: L1 DTLB 64 x 4K, 32 x 2M/4M, 8 x 1G; STLB 2048 x 4K/2M, 1024 x 1G.
        ("numa2-1g", "cpuid", {K4: {1: 64, 2: 2048}, M2: {1: 32, 2: 2048}, G1: {1: 8, 2: 1024}}),
        # No cpuid.json: cpuinfo's "TLB size : 2560 4K pages" (the L2, data and instruction together).
        ("no1g", "cpuinfo", {K4: {2: 2560}, M2: {}, G1: {}}),
        # Bare-metal Zen 3: 0x80000019 reports 64 L1 data entries for 1G pages.
        ("container-v2", "cpuid", {K4: {1: 64, 2: 2048}, M2: {1: 64, 2: 2048}, G1: {1: 64}}),
        # Intel VM: leaf 0x18 all zeros, leaf 2 only 0xFF, no TLB line in cpuinfo: nothing to report.
        ("intel-spr-vm", "none", {K4: {}, M2: {}, G1: {}}),
        # Sapphire Rapids leaf 0x18: load-only L1 (96 x 4K, 32 x 2M, 8 x 1G) beside a store-only one
        # (16 of every size), STLB 2048 x 4K/2M and 1024 x 1G.
        ("intel-spr", "cpuid", {K4: {1: 96, 2: 2048}, M2: {1: 32, 2: 2048}, G1: {1: 8, 2: 1024}}),
        # Sandy Bridge: no leaf 0x18 (highest basic leaf 0xd); leaf 2 descriptors 0x03, 0x5A, 0xCA.
        ("intel-snb", "cpuid", {K4: {1: 64, 2: 512}, M2: {1: 32}, G1: {}}),
    ],
)
def test_data_tlb_entries(tree, name, source, by_size):
    c = cpu.read_cpu(tree(name))
    assert c.tlb_source == source
    for kb, expected in by_size.items():
        assert cpu.data_tlb_entries(c, kb) == expected, kb


def test_amd_tlb_levels_include_instruction_side(tree):
    tlb = cpu.read_cpu(tree("zen-vm")).tlb
    assert TlbLevel(1, "instruction", K4, 64) in tlb
    assert TlbLevel(1, "instruction", M2, 64) in tlb
    assert TlbLevel(2, "instruction", K4, 512) in tlb
    assert TlbLevel(2, "data", K4, 3072) in tlb
    assert not [t for t in tlb if t.page_size_kb == G1]  # zeros are missing, not guessed


def test_amd_1g_instruction_entries(tree):
    tlb = cpu.read_cpu(tree("container-v2")).tlb
    assert TlbLevel(1, "instruction", G1, 64) in tlb
    assert TlbLevel(1, "data", G1, 64) in tlb


def test_intel_leaf_18_subleaves(tree):
    tlb = cpu.read_cpu(tree("numa2-1g")).tlb
    assert sorted(tlb) == sorted(
        [
            # sub-leaf 0: L1 ITLB 4K/2M/4M, 8 ways x 16 sets (4M has no level of its own here)
            TlbLevel(1, "instruction", K4, 128),
            TlbLevel(1, "instruction", M2, 128),
            TlbLevel(1, "data", K4, 64),
            TlbLevel(1, "data", M2, 32),
            TlbLevel(1, "data", G1, 8),
            # sub-leaf 4 is null (type 0) and is skipped
            TlbLevel(2, "unified", K4, 2048),
            TlbLevel(2, "unified", M2, 2048),
            TlbLevel(2, "unified", G1, 1024),
        ]
    )


def test_numa2_cpuid_json_encodes_leaf_18_per_sdm(tree):
    """The fixture's own encoding, checked field by field against the SDM layout."""
    table = json.loads(Path(tree("numa2-1g"), "cpuid.json").read_text())
    regs = {k: [int(r, 16) for r in v] for k, v in table.items()}
    assert regs["0x18:0"][0] == 6  # EAX of sub-leaf 0: the last sub-leaf
    stlb_1g = regs["0x18:6"]
    ebx, ecx, edx = stlb_1g[1], stlb_1g[2], stlb_1g[3]
    assert ebx & 0b1111 == 0b1000  # 1G only
    assert (ebx >> 16) * ecx == 1024  # ways x sets
    assert edx & 0x1F == 3 and (edx >> 5) & 7 == 2  # unified, level 2
    l1_1g = regs["0x18:3"]
    assert l1_1g[3] & 0x100  # fully associative
    assert (l1_1g[1] >> 16) * l1_1g[2] == 8


def test_explicit_cpuid_overrides_the_tree(tree):
    def amd(leaf, sub=0):
        return {0x80000005: (0, 0x00400000, 0, 0)}.get(leaf)

    c = cpu.read_cpu(tree("no1g"), cpuid=amd)
    assert c.tlb_source == "cpuid"
    assert c.tlb == [TlbLevel(1, "data", K4, 64)]


def test_cpuid_without_leaves_falls_back_to_cpuinfo(tree):
    c = cpu.read_cpu(tree("zen-vm"), cpuid=lambda leaf, sub=0: None)
    assert c.tlb_source == "cpuinfo"
    assert c.tlb == [TlbLevel(2, "unified", K4, 3584)]


def test_intel_without_leaf_18_and_no_tlb_line(tree):
    c = cpu.read_cpu(tree("numa2-1g"), cpuid=lambda leaf, sub=0: None)
    assert (c.tlb_source, c.tlb) == ("none", [])


def test_unknown_vendor_has_no_cpuid_tlb(tmp_path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cpuinfo").write_text(
        "processor\t: 0\nvendor_id\t: CentaurHauls\ncpu family\t: 6\n\nprocessor\t: 1\nvendor_id\t: other\n"
    )
    c = cpu.read_cpu(tmp_path, cpuid=lambda leaf, sub=0: (1, 2, 3, 4))
    assert (c.vendor, c.family, c.model, c.tlb_source) == ("CentaurHauls", 6, None, "none")


def test_only_the_first_processor_is_read(tmp_path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cpuinfo").write_text(
        "\nprocessor\t: 0\nflags\t\t: pse\n\nprocessor\t: 1\nflags\t\t: pse pdpe1gb\n"
    )
    c = cpu.read_cpu(tmp_path)
    assert c.flags == frozenset({"pse"})
    assert not c.pdpe1gb


def test_no_cpuinfo(tmp_path):
    c = cpu.read_cpu(tmp_path)
    assert (c.vendor, c.family, c.model, c.flags, c.tlb, c.tlb_source) == ("", None, None, frozenset(), [], "none")


def test_fixture_cpuid(tmp_path):
    assert cpu.fixture_cpuid(tmp_path) is None
    (tmp_path / "cpuid.json").write_text('{"0x80000005:0": ["0xff48ff40", 1, "2", 3], "0x18:1": []}')
    f = cpu.fixture_cpuid(tmp_path)
    assert f(0x80000005, 0) == (0xFF48FF40, 1, 2, 3)
    assert f(0x80000005) == (0xFF48FF40, 1, 2, 3)
    assert f(0x18, 1) is None
    assert f(0x80000019, 0) is None


def test_cpuinfo_tlb_line_other_units_ignored(tmp_path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cpuinfo").write_text("vendor_id\t: AuthenticAMD\nTLB size\t: 1024 2M pages\n")
    assert cpu.read_cpu(tmp_path).tlb == []


def test_intel_vm_none_says_why(tree):
    c = cpu.read_cpu(tree("intel-spr-vm"))
    assert (c.tlb_source, c.tlb) == ("none", [])
    assert "leaf 0x18 reports no TLB" in c.tlb_detail
    assert "only 0xff" in c.tlb_detail
    assert "no TLB size line" in c.tlb_detail


def test_sources_are_named(tree):
    assert cpu.read_cpu(tree("intel-spr")).tlb_detail == "CPUID leaf 0x18"
    assert cpu.read_cpu(tree("intel-snb")).tlb_detail == "CPUID leaf 2 descriptors"
    assert cpu.read_cpu(tree("zen-vm")).tlb_detail.startswith("CPUID leaves 0x80000005")
    assert cpu.read_cpu(tree("no1g")).tlb_detail.startswith("/proc/cpuinfo TLB size")


def test_intel_load_and_store_tlbs(tree):
    tlb = cpu.read_cpu(tree("intel-spr")).tlb
    assert TlbLevel(1, "load", G1, 8) in tlb
    assert TlbLevel(1, "store", G1, 16) in tlb
    assert TlbLevel(1, "store", K4, 16) in tlb
    # 4M (EBX bit 2) is not a page size of 64-bit mode: never reported.
    assert {t.page_size_kb for t in tlb} == {K4, M2, G1}
    # the store-only TLB counts only where nothing else is at its level
    only_store = cpu.CpuInfo("GenuineIntel", 6, 1, "", frozenset(), False, [TlbLevel(1, "store", G1, 16)], "cpuid")
    assert cpu.data_tlb_entries(only_store, G1) == {1: 16}


def test_intel_sandy_bridge_leaf_2(tree):
    tlb = cpu.read_cpu(tree("intel-snb")).tlb
    assert sorted(tlb) == sorted(
        [
            TlbLevel(1, "data", M2, 32),  # 0x5A
            TlbLevel(1, "data", K4, 64),  # 0x03
            TlbLevel(1, "instruction", M2, 8),  # 0x76
            TlbLevel(1, "instruction", K4, 64),  # 0xB2
            TlbLevel(2, "unified", K4, 512),  # 0xCA
        ]
    )  # 0xFF (see leaf 4) and 0xF0 (prefetch) are not TLBs


def regs_of(table):
    return lambda leaf, sub=0: table.get((leaf, sub))


def test_leaf2_register_rules():
    # AL (01) is the count, not a descriptor; a register with bit 31 set is ignored.
    table = {(0, 0): (0xD, 0, 0, 0), (2, 0): (0x00000301, 0x80C30000, 0x000000C3, 0)}
    assert cpu.leaf2_descriptors(regs_of(table)) == [0x03, 0xC3]
    tlb, detail = cpu._intel_tlb(regs_of(table))
    assert detail == "CPUID leaf 2 descriptors"
    assert TlbLevel(2, "unified", G1, 16) in tlb and TlbLevel(1, "data", K4, 64) in tlb


def test_leaf2_4m_only_descriptors_give_nothing():
    table = {(0, 0): (0xD, 0, 0, 0), (2, 0): (0x00040B01, 0, 0, 0)}
    tlb, detail = cpu._intel_tlb(regs_of(table))
    assert tlb == [] and "0x0b, 0x04" in detail and "below 0x18" in detail


def test_leaf18_beyond_the_highest_leaf_is_not_read():
    # Some CPUs answer leaves above the maximum with the highest leaf's data: never trust it.
    table = {(0, 0): (0x17, 0, 0, 0), (0x18, 0): (0, 0x00080001, 0x10, 0x21)}
    assert cpu._intel_leaf18(regs_of(table)) == []


def test_leaf18_null_subleaf_is_a_hole_not_the_end():
    table = {
        (0, 0): (0x20, 0, 0, 0),
        (0x18, 0): (2, 0, 0, 0),
        (0x18, 1): (0, 0, 0, 0),
        (0x18, 2): (0, 0x00040002, 0x8, 0x21),
    }
    assert cpu._intel_leaf18(regs_of(table)) == [TlbLevel(1, "data", M2, 32)]


def test_leaf18_zero_entries_skipped():
    table = {(0, 0): (0x20, 0, 0, 0), (0x18, 0): (0, 0x00000001, 0, 0x21)}
    assert cpu._intel_leaf18(regs_of(table)) == []
