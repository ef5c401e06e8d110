"""CPU identity, huge page support and TLB geometry.

TLB entries come from CPUID where the CPU reports them (AMD leaves 0x80000005,
0x80000006, 0x80000019; Intel leaf 0x18, else Intel leaf 2's one-byte TLB
descriptors), else from /proc/cpuinfo's `TLB size` (AMD, 4 KB only).
`tlb_source` says which kind was used and `tlb_detail` which leaves, or, when
there is nothing, why.  A hypervisor may hide leaves (seen: AMD 0x80000019
reads as zeros in a VM; an Intel VM returns zeros for leaf 0x18 and only the
0xFF "no cache descriptors here" byte in leaf 2): missing is reported as
missing, never guessed.
"""

import json
from collections.abc import Callable
from typing import NamedTuple

from hugeload.pages import PAGE_1G, PAGE_2M, PAGE_4K
from hugeload.probe.files import path, read_text

CpuidFn = Callable[[int, int], tuple[int, int, int, int] | None]


class TlbLevel(NamedTuple):
    level: int
    kind: str  # data / instruction / unified / load / store (Intel's load-only and store-only data TLBs)
    page_size_kb: int
    entries: int


class CpuInfo(NamedTuple):
    vendor: str
    family: int | None
    model: int | None
    model_name: str
    flags: frozenset
    hypervisor: bool
    tlb: list[TlbLevel]
    tlb_source: str  # cpuid / cpuinfo / none
    tlb_detail: str = ""  # the leaves used, or why there is no TLB geometry

    @property
    def pdpe1gb(self) -> bool:
        return "pdpe1gb" in self.flags

    @property
    def pse(self) -> bool:
        return "pse" in self.flags


def _cpuinfo_first(root) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in (read_text(root, "proc/cpuinfo", "") or "").splitlines():
        if not line.strip():
            if out:
                break
            continue
        key, _, value = line.partition(":")
        out.setdefault(key.strip(), value.strip())
    return out


def _amd_tlb(cpuid: CpuidFn) -> list[TlbLevel]:
    out = []

    def add(level, kind, kb, entries):
        if entries:
            out.append(TlbLevel(level, kind, kb, entries))

    # L1 (0x80000005): [23:16] data entries, [7:0] instruction entries; L2 (0x80000006): [27:16]
    # data (or unified), [11:0] instruction; EBX holds 4K pages, EAX 2M.  0x80000019: 1G pages,
    # EAX for L1 and EBX for L2, 12-bit fields.
    for leaf, level, mask in ((0x80000005, 1, 0xFF), (0x80000006, 2, 0xFFF)):
        regs = cpuid(leaf, 0)
        if regs:
            for reg, kb in ((regs[1], PAGE_4K.kb), (regs[0], PAGE_2M.kb)):
                add(level, "data", kb, (reg >> 16) & mask)
                add(level, "instruction", kb, reg & mask)
    g1 = cpuid(0x80000019, 0)
    if g1:
        for level, reg in ((1, g1[0]), (2, g1[1])):
            add(level, "data", PAGE_1G.kb, (reg >> 16) & 0xFFF)
            add(level, "instruction", PAGE_1G.kb, reg & 0xFFF)
    return out


# Leaf 0x18 EDX[4:0]: 1 data, 2 instruction, 3 unified, 4 load-only, 5 store-only.
_INTEL_KIND = {1: "data", 2: "instruction", 3: "unified", 4: "load", 5: "store"}
# Leaf 0x18 EBX page-size bits.  Bit 2 (4 MB) is left out: 4 MB pages exist only
# without PAE, never in 64-bit mode, so no mapping hugeload makes can use them.
_LEAF18_PAGES = ((0, PAGE_4K.kb), (1, PAGE_2M.kb), (3, PAGE_1G.kb))
MAX_LEAF18_SUBLEAF = 64


def _max_basic_leaf(cpuid: CpuidFn) -> int | None:
    regs = cpuid(0, 0)
    return regs[0] if regs else None


def _intel_leaf18(cpuid: CpuidFn) -> list[TlbLevel]:
    """Deterministic address translation parameters: one TLB structure per sub-leaf
    (sub-leaf 0's EAX is the last sub-leaf; a sub-leaf of type 0 is a hole, not the end)."""
    top = _max_basic_leaf(cpuid)
    if top is not None and top < 0x18:
        return []
    first = cpuid(0x18, 0)
    if not first:
        return []
    out = []
    for sub in range(0, min(first[0], MAX_LEAF18_SUBLEAF) + 1):
        regs = cpuid(0x18, sub)
        if not regs:
            continue
        _, ebx, ecx, edx = regs
        kind = _INTEL_KIND.get(edx & 0x1F)
        if kind is None:
            continue
        level = (edx >> 5) & 0x7
        # ways x sets; a fully associative structure reports its entries as ways with 1 set.
        entries = ((ebx >> 16) & 0xFFFF) * ecx
        if not entries:
            continue
        for bit, kb in _LEAF18_PAGES:
            if ebx & (1 << bit):
                out.append(TlbLevel(level, kind, kb, entries))
    return out


# Leaf 2 TLB descriptors (Intel SDM vol. 2A, table "Encoding of CPUID Leaf 2 Descriptors"):
# byte -> (level, kind, {page kB: entries}).  "TLB0"/uTLB descriptors are level 1,
# "TLB1" and "shared 2nd-level" ones level 2; 2M-or-4M descriptors count as 2M (see above).
_K4, _M2, _G1 = PAGE_4K.kb, PAGE_2M.kb, PAGE_1G.kb
LEAF2_TLB: dict[int, tuple[int, str, dict[int, int]]] = {
    0x01: (1, "instruction", {_K4: 32}),
    0x03: (1, "data", {_K4: 64}),
    0x04: (1, "data", {}),  # 4 MB pages only
    0x05: (2, "data", {}),  # 4 MB pages only
    0x0B: (1, "instruction", {}),  # 4 MB pages only
    0x4F: (1, "instruction", {_K4: 32}),
    0x50: (1, "instruction", {_K4: 64, _M2: 64}),
    0x51: (1, "instruction", {_K4: 128, _M2: 128}),
    0x52: (1, "instruction", {_K4: 256, _M2: 256}),
    0x55: (1, "instruction", {_M2: 7}),
    0x56: (1, "data", {}),  # 4 MB pages only
    0x57: (1, "data", {_K4: 16}),
    0x59: (1, "data", {_K4: 16}),
    0x5A: (1, "data", {_M2: 32}),
    0x5B: (1, "data", {_K4: 64}),  # 4K and 4M
    0x5C: (1, "data", {_K4: 128}),
    0x5D: (1, "data", {_K4: 256}),
    0x61: (1, "instruction", {_K4: 48}),
    0x63: (1, "data", {_M2: 32, _G1: 4}),
    0x64: (1, "data", {_K4: 512}),
    0x6A: (1, "data", {_K4: 64}),
    0x6B: (1, "data", {_K4: 256}),
    0x6C: (1, "data", {_M2: 128}),
    0x6D: (1, "data", {_G1: 16}),
    0x76: (1, "instruction", {_M2: 8}),
    0xA0: (1, "data", {_K4: 32}),
    0xB0: (1, "instruction", {_K4: 128}),
    0xB1: (1, "instruction", {_M2: 8}),
    0xB2: (1, "instruction", {_K4: 64}),
    0xB3: (1, "data", {_K4: 128}),
    0xB4: (2, "data", {_K4: 256}),
    0xB5: (1, "instruction", {_K4: 64}),
    0xB6: (1, "instruction", {_K4: 128}),
    0xBA: (2, "data", {_K4: 64}),
    0xC0: (1, "data", {_K4: 8}),  # 4K and 4M
    0xC1: (2, "unified", {_K4: 1024, _M2: 1024}),
    0xC2: (1, "data", {_K4: 16, _M2: 16}),
    0xC3: (2, "unified", {_K4: 1536, _M2: 1536, _G1: 16}),
    0xC4: (1, "data", {_M2: 32}),
    0xCA: (2, "unified", {_K4: 512}),
}
LEAF2_NO_TLB = 0xFE  # "leaf 2 reports no TLB descriptors: use leaf 0x18"
LEAF2_NO_CACHE = 0xFF  # "leaf 2 reports no cache descriptors: use leaf 4"


def leaf2_descriptors(cpuid: CpuidFn) -> list[int]:
    """The descriptor bytes of leaf 2, in register order (AL, the count, is not one;
    a register with bit 31 set holds none)."""
    regs = cpuid(2, 0)
    if not regs:
        return []
    out = []
    for i, reg in enumerate(regs):
        if reg & 0x80000000:
            continue
        for byte in range(1 if i == 0 else 0, 4):
            d = (reg >> (8 * byte)) & 0xFF
            if d:
                out.append(d)
    return out


def _intel_leaf2(descriptors: list[int]) -> list[TlbLevel]:
    out = []
    for d in descriptors:
        level, kind, sizes = LEAF2_TLB.get(d, (0, "", {}))
        for kb, entries in sizes.items():
            out.append(TlbLevel(level, kind, kb, entries))
    return out


def _intel_tlb(cpuid: CpuidFn) -> tuple[list[TlbLevel], str]:
    """(entries, detail): leaf 0x18 first, leaf 2's descriptors next; the detail names the
    leaf used, or says what each leaf returned."""
    tlb = _intel_leaf18(cpuid)
    if tlb:
        return tlb, "CPUID leaf 0x18"
    descriptors = leaf2_descriptors(cpuid)
    tlb = _intel_leaf2(descriptors)
    if tlb:
        return tlb, "CPUID leaf 2 descriptors"
    top = _max_basic_leaf(cpuid)
    why18 = (
        f"the CPU's highest basic leaf is {top:#x}, below 0x18"
        if top is not None and top < 0x18
        else "CPUID leaf 0x18 reports no TLB"
    )
    if not descriptors:
        why2 = "leaf 2 has no descriptors"
    else:
        why2 = f"leaf 2 has no TLB descriptors (only {', '.join(f'{d:#04x}' for d in descriptors)})"
    return [], f"{why18} and {why2}"


def _amd_detail(tlb: list[TlbLevel]) -> str:
    return (
        "CPUID leaves 0x80000005/0x80000006/0x80000019"
        if tlb
        else "CPUID leaves 0x80000005, 0x80000006 and 0x80000019 report no TLB"
    )


def _cpuinfo_tlb(info: dict[str, str]) -> list[TlbLevel]:
    # AMD: "TLB size : 3584 4K pages" (the L2 4 KB TLB, data and instruction together).
    words = info.get("TLB size", "").split()
    if len(words) >= 2 and words[0].isdigit() and words[1].upper() == "4K":
        return [TlbLevel(2, "unified", 4, int(words[0]))]
    return []


def fixture_cpuid(root) -> CpuidFn | None:
    """A CPUID reader over a fixture tree's `cpuid.json` ({"0x80000005:0": [eax, ebx, ecx, edx]})."""
    p = path(root, "cpuid.json")
    if not p.exists():
        return None
    table = json.loads(p.read_text())

    def cpuid(leaf, subleaf=0):
        regs = table.get(f"{leaf:#x}:{subleaf}")
        return tuple(int(r, 0) if isinstance(r, str) else r for r in regs) if regs else None

    return cpuid


def native_cpuid() -> CpuidFn | None:
    try:
        from hugeload import native

        native.load()
        return native.cpuid
    except Exception:  # no native library: fall back to /proc/cpuinfo
        return None


def read_cpu(root="/", cpuid: CpuidFn | None = None) -> CpuInfo:
    """CPU facts.  CPUID is executed only for the live machine (root "/");
    fixture trees supply it as cpuid.json."""
    info = _cpuinfo_first(root)
    if cpuid is None:
        cpuid = native_cpuid() if str(root) == "/" else fixture_cpuid(root)
    vendor = info.get("vendor_id", "")
    tlb: list[TlbLevel] = []
    if cpuid is None:
        detail = "no CPUID (native library not loaded or no cpuid.json)"
    elif vendor in ("AuthenticAMD", "HygonGenuine"):
        tlb = _amd_tlb(cpuid)
        detail = _amd_detail(tlb)
    elif vendor == "GenuineIntel":
        tlb, detail = _intel_tlb(cpuid)
    else:
        detail = f"no CPUID TLB decoding for vendor {vendor or 'unknown'}"
    source = "cpuid" if tlb else "none"
    if not tlb:
        tlb = _cpuinfo_tlb(info)
        if tlb:
            source, detail = "cpuinfo", f"/proc/cpuinfo TLB size ({detail})"
        else:
            detail += "; /proc/cpuinfo has no TLB size line"
    flags = frozenset(info.get("flags", "").split())

    def as_int(key):
        v = info.get(key, "")
        return int(v, 0) if v.isdigit() else None

    return CpuInfo(
        vendor=vendor,
        family=as_int("cpu family"),
        model=as_int("model"),
        model_name=info.get("model name", ""),
        flags=flags,
        hypervisor="hypervisor" in flags,
        tlb=tlb,
        tlb_source=source,
        tlb_detail=detail,
    )


PMU_DIR = "sys/bus/event_source/devices/cpu"  # present when the kernel exposes hardware counters


def has_pmu(root="/") -> bool:
    """Whether the kernel offers CPU performance counters (a VM without a virtual PMU does not)."""
    return path(root, PMU_DIR).exists()


def data_tlb_entries(cpu: CpuInfo, page_size_kb: int) -> dict[int, int]:
    """Per TLB level, the entries that can hold data translations of this page size.
    Reading weights is loads: a store-only TLB counts only at a level that has no other."""
    out: dict[int, int] = {}
    stores: dict[int, int] = {}
    for t in cpu.tlb:
        if t.page_size_kb != page_size_kb:
            continue
        if t.kind in ("data", "unified", "load"):
            out[t.level] = max(out.get(t.level, 0), t.entries)
        elif t.kind == "store":
            stores[t.level] = max(stores.get(t.level, 0), t.entries)
    for level, n in stores.items():
        out.setdefault(level, n)
    return out
