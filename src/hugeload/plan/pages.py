"""Page counts, waste and TLB reach per page size, and which page size to use: the size
rule of hugeload.pages with what the machine can give on top."""

from typing import NamedTuple

from hugeload import pages as vocab
from hugeload.pages import DEFAULT_POLICY, PAGE_1G, PAGE_2M, PAGE_4K, Policy
from hugeload.probe import cpu as probe_cpu
from hugeload.units import KiB, ceil_div, format_bytes

BASE_PAGE_KB = PAGE_4K.kb


class PageOption(NamedTuple):
    page_size_kb: int
    pages: int
    bytes: int  # after rounding each file up to whole pages
    waste_bytes: int
    tlb_entries: int  # translations needed to cover the model
    cpu_tlb_entries: dict[int, int]  # TLB level -> entries the CPU has for this size (data side)
    pool_free: int | None  # free pages in the pool now (None: no pool, 4 KB)

    @property
    def fits_l1_tlb(self) -> bool | None:
        n = self.cpu_tlb_entries.get(1)
        return None if n is None else self.tlb_entries <= n

    @property
    def fits_tlb(self) -> bool | None:
        """Whether the model's translations fit in the CPU's largest TLB level for this size."""
        if not self.cpu_tlb_entries:
            return None
        return self.tlb_entries <= max(self.cpu_tlb_entries.values())


class Recommendation(NamedTuple):
    page_size_kb: int
    reason: str


def pages_for(sizes: list[int], page_size_kb: int) -> int:
    """Each file is staged on its own, so each rounds up separately."""
    page = page_size_kb * KiB
    return sum(ceil_div(s, page) for s in sizes)


def options(
    sizes: list[int],
    page_sizes_kb: list[int],
    cpu_tlb: dict[int, dict[int, int]] | None = None,
    pool_free: dict[int, int] | None = None,
) -> list[PageOption]:
    """One option per page size: 4 KB plus every huge page size the kernel offers."""
    cpu_tlb = cpu_tlb or {}
    pool_free = pool_free or {}
    total = sum(sizes)
    out = []
    for kb in sorted({BASE_PAGE_KB, *page_sizes_kb}):
        n = pages_for(sizes, kb)
        rounded = n * kb * KiB
        out.append(
            PageOption(
                kb,
                n,
                rounded,
                rounded - total,
                n,
                dict(cpu_tlb.get(kb, {})),
                None if kb == BASE_PAGE_KB else pool_free.get(kb),
            )
        )
    return out


def recommend(
    total_bytes: int | list[int],
    page_sizes_kb: list[int],
    *,
    supports_1g: bool,
    obtainable: dict[int, bool],
    threshold_1g: int | None = None,
    requested_kb: int | None = None,
    policy: Policy = DEFAULT_POLICY,
) -> Recommendation:
    """The page size for a model: the first size hugeload.pages.first_page() gives (the
    preload library's rule), when the kernel and CPU support it and it is obtainable; then
    2 MB when obtainable; else 4 KB.

    `total_bytes` is the model's size, or its files' sizes (each rounds up on its own).
    `obtainable[kb]` says whether the pool can hold the model now or can be grown to
    (the caller decides how it knows: free pages, a trial reservation, or free memory).
    `threshold_1g` overrides `policy.auto_1g_min`.  `requested_kb` is a page size the
    user forced (the rule still applies to 1g: from `policy.forced_1g_min`).
    """
    if threshold_1g is not None:
        policy = policy._replace(auto_1g_min=threshold_1g)
    requested = None if requested_kb is None else vocab.by_kb(requested_kb)
    if requested == PAGE_4K:
        return Recommendation(PAGE_4K.kb, "4K requested")
    first = vocab.first_page(total_bytes, requested, policy)
    rule = vocab.why(total_bytes, requested, policy)
    if requested is not None:
        if first.kb not in page_sizes_kb:
            return Recommendation(PAGE_4K.kb, f"{rule} but the kernel offers no such pages; 4K")
        return Recommendation(first.kb, rule)
    gb = PAGE_1G.kb
    if first == PAGE_1G:
        if gb in page_sizes_kb and supports_1g and obtainable.get(gb):
            return Recommendation(gb, f"{rule}, and 1G pages are supported and obtainable")
        why_not_1g = (
            "the CPU or kernel has no 1G pages"
            if not (gb in page_sizes_kb and supports_1g)
            else "1G pages cannot be obtained now"
        )
    else:
        why_not_1g = rule
    if PAGE_2M.kb in page_sizes_kb and obtainable.get(PAGE_2M.kb):
        return Recommendation(PAGE_2M.kb, f"{why_not_1g}; 2M pages are obtainable")
    return Recommendation(PAGE_4K.kb, f"{why_not_1g}; no 2M pages obtainable either: 4K")


def plan_for(
    machine,
    sizes: list[int],
    requested_kb: int | None = None,
    threshold: int | None = None,
    policy: Policy = DEFAULT_POLICY,
) -> dict:
    """`hugeload plan` for a model of `sizes` (its files) on `machine` (probe.machine.Machine):
    every page size's pages, waste and TLB reach, the recommendation and notes.  Pure."""
    sizes_kb = machine.page_sizes_kb
    cpu_tlb = {kb: probe_cpu.data_tlb_entries(machine.cpu, kb) for kb in [BASE_PAGE_KB, *sizes_kb]}
    pool_free = {p.page_size_kb: p.free for p in machine.pools if p.node is None}
    opts = options(sizes, sizes_kb, cpu_tlb, pool_free)
    supports_1g = machine.cpu.pdpe1gb or PAGE_1G.kb in sizes_kb and not machine.cpu.vendor
    # For planning, a size is obtainable when its pool has free pages or can be grown by us;
    # whether today's free memory holds the whole model is a separate note.
    obtainable = {kb: pool_free.get(kb, 0) > 0 or machine.is_root for kb in sizes_kb}
    rec = recommend(
        sizes,
        sizes_kb,
        supports_1g=supports_1g,
        obtainable=obtainable,
        threshold_1g=threshold,
        requested_kb=requested_kb,
        policy=policy,
    )
    notes = []
    chosen = next(o for o in opts if o.page_size_kb == rec.page_size_kb)
    avail = machine.meminfo.get("MemAvailable", 0) * KiB
    if chosen.page_size_kb != BASE_PAGE_KB:
        missing = max(0, chosen.pages - (chosen.pool_free or 0)) * chosen.page_size_kb * KiB
        if missing > avail:
            notes.append(
                f"needs {format_bytes(missing)} more huge pages than are free but only {format_bytes(avail)} "
                "of memory is available"
            )
    return {
        "sizes": sizes,
        "total_bytes": sum(sizes),
        "options": opts,
        "recommended_page_size_kb": rec.page_size_kb,
        "reason": rec.reason,
        "notes": notes,
        "tlb_source": machine.cpu.tlb_source,
        "tlb_detail": machine.cpu.tlb_detail,
    }
