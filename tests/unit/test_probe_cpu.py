"""probe/cpu.py: identity and flags from /proc/cpuinfo, TLB geometry from CPUID (AMD, Intel) or cpuinfo."""

import json

import pytest

from hugeload.probe import cpu
from hugeload.probe.cpu import TlbLevel

K4, M2, G1 = 4, 2048, 1048576


@pytest.mark.parametrize("name,vendor,family,model,model_name,hypervisor,pdpe1gb", [
    ("zen-vm", "AuthenticAMD", 25, 17, "AMD EPYC", True, True),
    ("numa2-1g", "GenuineIntel", 6, 106, "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz", False, True),
    ("no1g", "AuthenticAMD", 23, 49, "AMD EPYC 7402P 24-Core Processor", True, False),
    ("container-v2", "AuthenticAMD", 25, 1, "AMD EPYC 7763 64-Core Processor", False, True),
])
def test_identity_and_flags(tree, name, vendor, family, model, model_name, hypervisor, pdpe1gb):
    c = cpu.read_cpu(tree(name))
    assert (c.vendor, c.family, c.model, c.model_name) == (vendor, family, model, model_name)
    assert c.hypervisor is hypervisor
    assert c.pdpe1gb is pdpe1gb
    assert c.pse is True
    assert {"fpu", "pae", "lm"} <= c.flags


@pytest.mark.parametrize("name,source,by_size", [
    # AMD EPYC VM: 0x80000005/6 are passed through, 0x80000019 (1G TLB) reads as zeros.
    ("zen-vm", "cpuid", {K4: {1: 72, 2: 3072}, M2: {1: 72, 2: 3072}, G1: {}}),
    # Intel leaf 0x18: L1 DTLB 64 x 4K, 32 x 2M/4M, 8 x 1G; STLB 2048 x 4K/2M, 1024 x 1G.
    ("numa2-1g", "cpuid", {K4: {1: 64, 2: 2048}, M2: {1: 32, 2: 2048}, G1: {1: 8, 2: 1024}}),
    # No cpuid.json: cpuinfo's "TLB size : 2560 4K pages" (the L2, data and instruction together).
    ("no1g", "cpuinfo", {K4: {2: 2560}, M2: {}, G1: {}}),
    # Bare-metal Zen 3: 0x80000019 reports 64 L1 data entries for 1G pages.
    ("container-v2", "cpuid", {K4: {1: 64, 2: 2048}, M2: {1: 64, 2: 2048}, G1: {1: 64}}),
])
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
    assert sorted(tlb) == sorted([
        # sub-leaf 0: L1 ITLB 4K/2M/4M, 8 ways x 16 sets (4M has no level of its own here)
        TlbLevel(1, "instruction", K4, 128), TlbLevel(1, "instruction", M2, 128),
        TlbLevel(1, "data", K4, 64),
        TlbLevel(1, "data", M2, 32),
        TlbLevel(1, "data", G1, 8),
        # sub-leaf 4 is null (type 0) and is skipped
        TlbLevel(2, "unified", K4, 2048), TlbLevel(2, "unified", M2, 2048),
        TlbLevel(2, "unified", G1, 1024),
    ])


def test_numa2_cpuid_json_encodes_leaf_18_per_sdm(tree):
    """The fixture's own encoding, checked field by field against the SDM layout."""
    table = json.loads(open(f"{tree('numa2-1g')}/cpuid.json").read())
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
    (tmp_path / "proc/cpuinfo").write_text("processor\t: 0\nvendor_id\t: CentaurHauls\ncpu family\t: 6\n\n"
                                           "processor\t: 1\nvendor_id\t: other\n")
    c = cpu.read_cpu(tmp_path, cpuid=lambda leaf, sub=0: (1, 2, 3, 4))
    assert (c.vendor, c.family, c.model, c.tlb_source) == ("CentaurHauls", 6, None, "none")


def test_only_the_first_processor_is_read(tmp_path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cpuinfo").write_text("\nprocessor\t: 0\nflags\t\t: pse\n\nprocessor\t: 1\nflags\t\t: pse pdpe1gb\n")
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
