"""CPU identity, huge page support and TLB geometry.

TLB entries come from CPUID where the CPU reports them (AMD leaves 0x80000005,
0x80000006, 0x80000019; Intel leaf 0x18), else from /proc/cpuinfo's `TLB size`
(AMD, 4 KB only).  `tlb_source` says which was used.  A hypervisor may hide
leaves (seen: 0x80000019 reads as zeros in a VM): missing is reported as
missing, never guessed.
"""

import json
from typing import Callable, NamedTuple

from hugeload.probe.files import path, read_text

CpuidFn = Callable[[int, int], tuple[int, int, int, int] | None]


class TlbLevel(NamedTuple):
    level: int
    kind: str  # data / instruction / unified
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

    @property
    def pdpe1gb(self) -> bool:
        return "pdpe1gb" in self.flags

    @property
    def pse(self) -> bool:
        return "pse" in self.flags


def _cpuinfo_first(root) -> dict[str, str]:
    out = {}
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

    l1 = cpuid(0x80000005, 0)
    if l1:
        eax, ebx = l1[0], l1[1]
        # L1: [23:16] data entries, [7:0] instruction entries.
        for reg, kb in ((ebx, 4), (eax, 2048)):
            add(1, "data", kb, (reg >> 16) & 0xFF)
            add(1, "instruction", kb, reg & 0xFF)
    l2 = cpuid(0x80000006, 0)
    if l2:
        eax, ebx = l2[0], l2[1]
        # L2: [27:16] data (or unified) entries, [11:0] instruction entries.
        for reg, kb in ((ebx, 4), (eax, 2048)):
            add(2, "data", kb, (reg >> 16) & 0xFFF)
            add(2, "instruction", kb, reg & 0xFFF)
    g1 = cpuid(0x80000019, 0)
    if g1:
        for level, reg in ((1, g1[0]), (2, g1[1])):
            add(level, "data", 1048576, (reg >> 16) & 0xFFF)
            add(level, "instruction", 1048576, reg & 0xFFF)
    return out


_INTEL_KIND = {1: "data", 2: "instruction", 3: "unified", 4: "data", 5: "data"}


def _intel_tlb(cpuid: CpuidFn) -> list[TlbLevel]:
    first = cpuid(0x18, 0)
    if not first:
        return []
    out = []
    for sub in range(0, min(first[0], 64) + 1):
        regs = cpuid(0x18, sub)
        if not regs:
            continue
        _, ebx, ecx, edx = regs
        kind = _INTEL_KIND.get(edx & 0x1F)
        if kind is None:
            continue
        level = (edx >> 5) & 0x7
        entries = ((ebx >> 16) & 0xFFFF) * ecx
        for bit, kb in ((0, 4), (1, 2048), (3, 1048576)):
            if ebx & (1 << bit):
                out.append(TlbLevel(level, kind, kb, entries))
    return out


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
    if cpuid is not None:
        if vendor == "AuthenticAMD" or vendor == "HygonGenuine":
            tlb = _amd_tlb(cpuid)
        elif vendor == "GenuineIntel":
            tlb = _intel_tlb(cpuid)
    source = "cpuid" if tlb else "none"
    if not tlb:
        tlb = _cpuinfo_tlb(info)
        source = "cpuinfo" if tlb else "none"
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
    )


def data_tlb_entries(cpu: CpuInfo, page_size_kb: int) -> dict[int, int]:
    """Per TLB level, the entries that can hold data translations of this page size."""
    out: dict[int, int] = {}
    for t in cpu.tlb:
        if t.page_size_kb == page_size_kb and t.kind in ("data", "unified"):
            out[t.level] = max(out.get(t.level, 0), t.entries)
    return out
