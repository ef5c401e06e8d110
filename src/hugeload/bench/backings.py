"""What a benchmark can put memory in: the backings by name, and the parsing of `--backings`.

Two vocabularies, one per kind of bench:
- memory backings (`bench tlb`, `bench tensors`): hugeload.pages.Backing, the cascade's own
  names (4k, thp, 2m, 1g), listed smallest first;
- engine backings (`bench engine`): how an engine's weights and heap are backed, by hugeload or
  by an alternative a user could pick without it (the catalogue below, `bench engine --help`).

Engine backings, alternatives (what a user could choose without hugeload):
  default         the engine as it is: the model file mapped from the page cache (on kernels
                  with large page-cache folios, ext4 on 6.16+, partly in 2 MB PMDs already)
  pagecache-4k    a copy of the model on tmpfs with huge=never: a 4 KB page cache, what older
                  kernels and most distributions give
  mlock           llama.cpp's -lm mmap+mlock (--mlock)
  private         llama.cpp's -lm none (--no-mmap): weights read into a private heap buffer
  thp             private, with glibc.malloc.hugetlb=1: the heap buffer in transparent huge pages
  glibc-hugetlb1  GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (large mallocs madvised for THP)
  glibc-hugetlb2  GLIBC_TUNABLES=glibc.malloc.hugetlb=2 (large mallocs from the 2 MB pool)
hugeload:
  alloc           preload library, large allocations (llama.cpp's repack buffer) in huge pages
  alloc-2m, alloc-1g  the same, in 2 MB or 1 GB pages (the model mapped from the page cache)
  2m, 1g          the model staged into hugetlbfs with that page size, mapped zero-copy
                  (1g only in 1 GB pages: skipped when the pool cannot hold the model)
  1g+2m           staged in the 1 GB pages the pool gives and 2 MB pages for the rest (one
                  range; all 1 GB when the pool holds it all)
  2m+alloc, 1g+alloc  staged, plus large allocations in huge pages
  copy            preload library copying the model into private huge pages at start
A backing named twice (`default,default`) runs twice as `default` and `default#2`: the A/A
check (bench/stats.py says what it must show).  A staged backing may name the NUMA placement of
its copy: `2m@local`, `2m@remote`, `2m@interleave` (bench/engine.py).
"""

import dataclasses
from dataclasses import dataclass
from enum import Enum, StrEnum

from hugeload import pages
from hugeload.errors import UsageError
from hugeload.pages import PAGE_1G, PAGE_2M, PageSize

# --------------------------------------------------------------------------- memory backings

MEMORY_BACKINGS = tuple(reversed(pages.BACKINGS))  # 4k, thp, 2m, 1g: smallest first, as tables show them


def parse_memory_backings(spec) -> list[str]:
    """'4k,thp,2m,1g' (or a list) -> unique backings in order; UsageError on an unknown one."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out = list(dict.fromkeys(str(b).strip().lower() for b in items if str(b).strip()))
    unknown = [b for b in out if b not in MEMORY_BACKINGS]
    if unknown:
        raise UsageError(f"unknown backing {unknown[0]!r}: choose from {', '.join(MEMORY_BACKINGS)}")
    if not out:
        raise UsageError(f"no backing given: choose from {', '.join(MEMORY_BACKINGS)}")
    return out


def hugetlb_page(backing: str) -> PageSize | None:
    """The hugetlb page size a memory backing takes from a pool (2m, 1g), else None."""
    b = pages.Backing(backing)
    return b.page if b.hugetlb else None


# --------------------------------------------------------------------------- engine backings


class Weights(Enum):
    """Where the engine reads the model file from."""

    SOURCE = "source"  # the file as given: the page cache
    TMPFS = "tmpfs"  # a copy on tmpfs with huge=never: a 4 KB page cache
    STAGED = "staged"  # a copy staged into hugetlbfs (hugeload stage), mapped zero-copy
    PRIVATE_COPY = "copy"  # the preload library copies it into private huge pages at start


class Heap(Enum):
    """What backs the engine's large allocations (llama.cpp's repack buffer, -lm none's copy)."""

    LIBC = "libc"  # the C library's malloc as it is
    GLIBC_THP = "glibc.malloc.hugetlb=1"  # large mallocs madvised for THP
    GLIBC_HUGETLB = "glibc.malloc.hugetlb=2"  # large mallocs from the 2 MB pool
    HUGELOAD = "hugeload"  # the preload library's allocation path


class Placement(StrEnum):
    """Where a staged copy's pages are, relative to the node every run is bound to."""

    LOCAL = "local"
    REMOTE = "remote"
    INTERLEAVE = "interleave"


@dataclass(frozen=True)
class EngineBacking:
    name: str
    weights: Weights = Weights.SOURCE
    heap: Heap = Heap.LIBC
    staged_page: PageSize | None = None  # Weights.STAGED: the page size of the copy
    alloc_page: PageSize | None = None  # Heap.HUGELOAD: this page size (None: the size rule)
    load_mode: str | None = None  # llama.cpp -lm
    placement: Placement | None = None  # NUMA placement of the staged copy
    base: str = ""  # for an A/A duplicate: the backing it repeats
    mixed: bool = False  # Weights.STAGED in 1G: 2M pages for what the 1G pool cannot give

    @property
    def kind(self) -> str:
        return self.base or self.name

    @property
    def hugeload(self) -> bool:
        """A hugeload backing: runs under the preload library (the others without it)."""
        return self.weights in (Weights.STAGED, Weights.PRIVATE_COPY) or self.heap is Heap.HUGELOAD

    @property
    def page_size(self) -> PageSize | None:
        """The page size the library is told for the run (None: auto, the size rule)."""
        return self.staged_page or self.alloc_page


_STAGED, _HL = Weights.STAGED, Heap.HUGELOAD
CATALOGUE = {
    b.name: b
    for b in (
        EngineBacking("default"),
        EngineBacking("pagecache-4k", Weights.TMPFS),
        EngineBacking("mlock", load_mode="mmap+mlock"),
        EngineBacking("private", load_mode="none"),
        EngineBacking("thp", heap=Heap.GLIBC_THP, load_mode="none"),
        EngineBacking("glibc-hugetlb1", heap=Heap.GLIBC_THP),
        EngineBacking("glibc-hugetlb2", heap=Heap.GLIBC_HUGETLB),
        EngineBacking("alloc", heap=_HL),
        EngineBacking("alloc-2m", heap=_HL, alloc_page=PAGE_2M),
        EngineBacking("alloc-1g", heap=_HL, alloc_page=PAGE_1G),
        EngineBacking("2m", _STAGED, staged_page=PAGE_2M),
        EngineBacking("1g", _STAGED, staged_page=PAGE_1G),
        EngineBacking("1g+2m", _STAGED, staged_page=PAGE_1G, mixed=True),
        EngineBacking("2m+alloc", _STAGED, _HL, staged_page=PAGE_2M),
        EngineBacking("1g+alloc", _STAGED, _HL, staged_page=PAGE_1G),
        EngineBacking("copy", Weights.PRIVATE_COPY, _HL),
    )
}
ALTERNATIVES = tuple(n for n, b in CATALOGUE.items() if not b.hugeload)
DEFAULT_BACKINGS = ("default", "default", "pagecache-4k", "2m", "1g")
PLACEMENTS = tuple(p.value for p in Placement)
PLACEMENT_BACKINGS = ("default", "2m")  # with --node-placement and no --backings


def _known(name: str) -> bool:
    base, at, where = name.partition("@")
    return base in CATALOGUE and (not at or (where in PLACEMENTS and CATALOGUE[base].staged_page is not None))


def parse_backings(text: str) -> list[str]:
    """Names in order; a name given again becomes `name#2` (the A/A check).  A staged
    backing may name its NUMA placement: `2m@local`, `2m@remote`, `2m@interleave`."""
    names = [b.strip().lower() for b in text.split(",") if b.strip()]
    unknown = [b for b in names if not _known(b)]
    if unknown or not names:
        raise UsageError(
            f"unknown backing {', '.join(unknown) or '(none)'}: choose from {', '.join(CATALOGUE)} "
            f"(a staged one may add @{'|@'.join(PLACEMENTS)})"
        )
    out, seen = [], {}
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out


def parse_placements(text: str) -> list[Placement]:
    out = list(dict.fromkeys(p.strip().lower() for p in text.split(",") if p.strip()))
    bad = [p for p in out if p not in PLACEMENTS]
    if bad or not out:
        raise UsageError(f"unknown node placement {', '.join(bad) or '(none)'}: choose from {', '.join(PLACEMENTS)}")
    return [Placement(p) for p in out]


def with_placements(names: list[str], placements: list[Placement]) -> list[str]:
    """Each staged backing once per placement (`2m` -> `2m@local`, `2m@remote`, ...); the
    others as they are (they run bound to the engine node too)."""
    out: list[str] = []
    for n in names:
        base = n.partition("#")[0]
        if "@" in base or CATALOGUE[base].staged_page is None:
            out.append(n)
        else:
            out += [f"{base}@{p.value}" for p in placements if f"{base}@{p.value}" not in out]
    return out


def backing(name: str) -> EngineBacking:
    """The backing a parsed name stands for (`2m@remote#2`: the A/A twin of 2m placed remote)."""
    full, _, nth = name.partition("#")
    base, _, where = full.partition("@")
    b = CATALOGUE[base]
    if where:
        b = dataclasses.replace(b, name=full, placement=Placement(where))
    return dataclasses.replace(b, name=name, base=full) if nth else b
