"""Page counts, waste and TLB reach per page size, and the auto policy."""

from typing import NamedTuple

from hugeload.units import GiB, KiB, ceil_div, format_bytes, page_size_name

BASE_PAGE_KB = 4
GIGANTIC_KB = 1048576
DEFAULT_1G_THRESHOLD = 1 * GiB


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


def size_words(n: int) -> str:
    """1 GiB, 256 MiB: thresholds read as the user typed them."""
    for unit, factor in (("GiB", GiB), ("MiB", 1 << 20)):
        if n >= factor and n % factor == 0:
            return f"{n // factor} {unit}"
    return format_bytes(n)


def pages_for(sizes: list[int], page_size_kb: int) -> int:
    """Each file is staged on its own, so each rounds up separately."""
    page = page_size_kb * KiB
    return sum(ceil_div(s, page) for s in sizes)


def options(sizes: list[int], page_sizes_kb: list[int], cpu_tlb: dict[int, dict[int, int]] | None = None,
            pool_free: dict[int, int] | None = None) -> list[PageOption]:
    """One option per page size: 4 KB plus every huge page size the kernel offers."""
    cpu_tlb = cpu_tlb or {}
    pool_free = pool_free or {}
    total = sum(sizes)
    out = []
    for kb in sorted({BASE_PAGE_KB, *page_sizes_kb}):
        n = pages_for(sizes, kb)
        rounded = n * kb * KiB
        out.append(PageOption(kb, n, rounded, rounded - total, n, dict(cpu_tlb.get(kb, {})),
                              None if kb == BASE_PAGE_KB else pool_free.get(kb)))
    return out


def recommend(total_bytes: int, page_sizes_kb: list[int], supports_1g: bool, obtainable: dict[int, bool],
              threshold_1g: int = DEFAULT_1G_THRESHOLD, requested_kb: int | None = None) -> Recommendation:
    """The auto policy: 1 GB when the model is at least `threshold_1g` and 1 GB pages are
    supported and obtainable; else 2 MB when obtainable; else 4 KB.

    `obtainable[kb]` says whether the pool can hold the model now or can be grown to
    (the caller decides how it knows: free pages, a trial reservation, or free memory).
    `requested_kb` is a page size the user forced; it is kept when possible and the
    reason says so.
    """
    if requested_kb is not None:
        if requested_kb == BASE_PAGE_KB:
            return Recommendation(BASE_PAGE_KB, "4K requested")
        if requested_kb not in page_sizes_kb:
            return Recommendation(BASE_PAGE_KB, f"{page_size_name(requested_kb)} requested but the kernel offers no such pages; 4K")
        return Recommendation(requested_kb, f"{page_size_name(requested_kb)} requested")
    gb = GIGANTIC_KB
    if total_bytes >= threshold_1g and gb in page_sizes_kb and supports_1g and obtainable.get(gb):
        return Recommendation(gb, f"model is at least {size_words(threshold_1g)} and 1G pages are supported and obtainable")
    why_not_1g = (
        f"model is under {size_words(threshold_1g)}" if total_bytes < threshold_1g
        else "the CPU or kernel has no 1G pages" if not (gb in page_sizes_kb and supports_1g)
        else "1G pages cannot be obtained now"
    )
    if 2048 in page_sizes_kb and obtainable.get(2048):
        return Recommendation(2048, f"{why_not_1g}; 2M pages are obtainable")
    return Recommendation(BASE_PAGE_KB, f"{why_not_1g}; no 2M pages obtainable either: 4K")


def obtainable_from_memory(total_bytes_by_kb: dict[int, int], pool_free: dict[int, int], mem_available_bytes: int,
                           floor_bytes: int = 0) -> dict[int, bool]:
    """A page size is obtainable when its pool's free pages cover the need, or when the
    missing part fits in MemAvailable above the floor (a runtime reservation may still
    come back short on fragmented memory; `reserve` reads the count back)."""
    out = {}
    for kb, need_bytes in total_bytes_by_kb.items():
        page = kb * KiB
        free = pool_free.get(kb, 0) * page
        missing = max(0, need_bytes - free)
        out[kb] = missing == 0 or missing <= mem_available_bytes - floor_bytes
    return out
