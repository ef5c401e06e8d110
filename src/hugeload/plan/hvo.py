"""What HVO (vm.hugetlb_optimize_vmemmap) saves, from the sizes.  Pure.

Every base page of memory is described by one `struct page` in the vmemmap.  A huge page of
H bytes on B-byte base pages has H/B of them, S bytes each: H/B*S/B vmemmap pages.  HVO keeps
one of those (the kernel remaps the rest onto it, read-only; Linux 5.18+ keeps one, 5.14-5.17
kept two, and the sysctl exists from 5.19) and gives the others back.  With B = 4 KiB and
S = 64 bytes: 4095 of 4096 per 1 GB page (16 MiB less 4 KiB), 7 of 8 per 2 MB page
(28 KiB: 14 MiB per GiB).  HVO needs sizeof(struct page) to be a power of two; 64 bytes is
what x86-64 and arm64 kernels have without debug options."""

from collections.abc import Iterable
from typing import NamedTuple

from hugeload.pages import PAGE_4K
from hugeload.units import GiB, KiB

STRUCT_PAGE_BYTES = 64
KEPT_VMEMMAP_PAGES = 1


def vmemmap_pages(page_kb: int, base_bytes: int = PAGE_4K.bytes, struct_page: int = STRUCT_PAGE_BYTES) -> int:
    """Base pages of `struct page`s that describe one huge page of `page_kb` kB."""
    return page_kb * KiB // base_bytes * struct_page // base_bytes


def saved_per_page(page_kb: int, base_bytes: int = PAGE_4K.bytes, struct_page: int = STRUCT_PAGE_BYTES) -> int:
    """Bytes HVO gives back for one huge page allocated while it is on."""
    return max(0, vmemmap_pages(page_kb, base_bytes, struct_page) - KEPT_VMEMMAP_PAGES) * base_bytes


def saved(pools: Iterable[tuple[int, int]]) -> int:
    """Bytes saved for (page kB, pages) pairs, every page allocated with HVO on."""
    return sum(saved_per_page(kb) * n for kb, n in pools)


def saved_per_gib(page_kb: int) -> int:
    return saved_per_page(page_kb) * (GiB // (page_kb * KiB)) if page_kb * KiB <= GiB else saved_per_page(page_kb)


def used_kb(meminfo: dict[str, int], pcp_pages: int, base_kb: int = PAGE_4K.kb) -> int:
    """Memory in use, in kB, as a measurement of what a reservation takes: MemTotal less MemFree
    less the free pages on per-CPU lists (probe.memory.read_pcp_pages: MemFree alone moves by
    tens of MiB when they are drained, more than HVO saves per page)."""
    return meminfo.get("MemTotal", 0) - meminfo.get("MemFree", 0) - pcp_pages * base_kb


def memmap_kb(vmstat: dict[str, int], base_kb: int = PAGE_4K.kb) -> int | None:
    """The kernel's own count of `struct page` memory (/proc/vmstat nr_memmap_pages and
    nr_memmap_boot_pages, Linux 6.11+; HVO lowers it by exactly what it gives back), in kB;
    None on older kernels."""
    if "nr_memmap_pages" not in vmstat:
        return None
    return (vmstat["nr_memmap_pages"] + vmstat.get("nr_memmap_boot_pages", 0)) * base_kb


class Measure(NamedTuple):
    """Two readings taken before and after a reservation (used_kb, memmap_kb)."""

    used_kb: int
    memmap_kb: int | None


def saving_line(state: str, page_kb: int, pages: int, before: Measure, after: Measure | None) -> str:
    """One line for `reserve`: what HVO saved on the pages just reserved, computed from the
    sizes and measured twice: the fall of the kernel's struct page count, and what the pages
    took from free memory against their size (`after` None: not measured, a retry dropped
    caches in between)."""
    from hugeload.pages import name
    from hugeload.units import format_bytes

    if not state.startswith("on") or pages <= 0:
        return f"HVO {state}"
    size = pages * page_kb * KiB
    text = (
        f"HVO {state}: {format_bytes(saved_per_page(page_kb) * pages)} of struct page memory given back for "
        f"{pages} x {name(page_kb)} (computed)"
    )
    if after is None:
        return text
    if before.memmap_kb is not None and after.memmap_kb is not None:
        fell = (before.memmap_kb - after.memmap_kb) * KiB
        text += (
            f"; measured: struct page memory fell by {format_bytes(fell)} ({format_bytes(fell * GiB // size)} per GiB)"
        )
    took = (after.used_kb - before.used_kb) * KiB
    text += f"; used memory rose by {format_bytes(took)} for {format_bytes(size)} reserved"
    return text
