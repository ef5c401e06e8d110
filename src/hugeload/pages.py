"""The one page-size vocabulary and the one size rule.  Pure; standard library only.

Every part of hugeload names page sizes through this module (CLI options, the
store, the Python API, the benchmarks, the report), and every part that picks a
page size for a given number of bytes asks `first_page()`.  The preload library
applies the same rule in C with the parameters `policy_env()` passes to it
(HUGELOAD_POLICY); `hugeload_page_choice_kb` in libhugeload.so exists so a test
can check that the two agree at the boundary sizes.

The rule, in whole numbers so that C computes exactly the same:
  auto   1G when bytes >= auto_1g_min and the rounding waste
         (bytes rounded up to whole 1 GiB pages, minus bytes) times 1 000 000
         is at most bytes times auto_1g_max_waste_ppm; else 2M.
  1g     1G when bytes >= forced_1g_min; else 2M (a 1 GB page for a 10 MB
         buffer wastes 99 %; the preload library applies `1g` to every mapping
         and allocation of a run, whatever their sizes).
  2m     2M.
Whether the pages can be had (free pages, a reservation) is decided in plan/
on top of this rule, and the cascade falls back 1G -> 2M -> THP -> 4K.

An explicit size on one object the caller names (`hugeload stage FILE
--page-size 1g`, `map_file(path, "1g")`, `alloc(n, "1g")`) is taken as given:
`forced_1g_min` protects the objects a run's `1g` was not chosen for.
"""

import argparse
from enum import StrEnum
from typing import NamedTuple

from hugeload.errors import UsageError
from hugeload.units import GiB, KiB, MiB, ceil_div, parse_size

# mmap(2) flags, as <linux/mman.h> has them on every architecture hugeload builds for.
MAP_HUGETLB = 0x40000
MAP_HUGE_SHIFT = 26


class PageSize(NamedTuple):
    name: str  # "1g": the spelling options take and hugeload prints in commands
    kb: int  # what the kernel counts in (hugepages-<kb>kB, KernelPageSize)
    hugetlb: bool  # comes from a hugetlb pool (4K does not)

    @property
    def bytes(self) -> int:
        return self.kb * KiB

    @property
    def label(self) -> str:
        """ "1G": how tables and messages show it."""
        return self.name.upper()

    @property
    def mmap_flags(self) -> int:
        """MAP_HUGETLB with the page size encoded (log2 of the bytes << MAP_HUGE_SHIFT); 0 for 4K."""
        return MAP_HUGETLB | (self.bytes.bit_length() - 1) << MAP_HUGE_SHIFT if self.hugetlb else 0

    def pages_for(self, nbytes: int) -> int:
        return ceil_div(nbytes, self.bytes)

    def round_up(self, nbytes: int) -> int:
        return self.pages_for(nbytes) * self.bytes

    def __str__(self) -> str:
        return self.label


PAGE_4K = PageSize("4k", 4, False)
PAGE_2M = PageSize("2m", 2048, True)
PAGE_1G = PageSize("1g", 1048576, True)
ALL = (PAGE_1G, PAGE_2M, PAGE_4K)  # largest first
HUGE = (PAGE_1G, PAGE_2M)  # the sizes hugeload stages into and reserves

_BY_KB = {p.kb: p for p in ALL}
_ALIASES = {alias: p for p in ALL for alias in (p.name, f"{p.name}b", f"{p.name}ib", f"{p.kb}kb")}


class Backing(StrEnum):
    """What may back memory, in the cascade's fallback order (THP: transparent huge
    pages, 2M when the kernel manages to, no pool)."""

    G1 = "1g"
    M2 = "2m"
    THP = "thp"
    K4 = "4k"

    @property
    def page(self) -> PageSize:
        """The page size it gives at best."""
        return PAGE_4K if self is Backing.K4 else PAGE_2M if self is Backing.THP else by_name(self.value)

    @property
    def hugetlb(self) -> bool:
        return self in (Backing.G1, Backing.M2)


BACKINGS = tuple(b.value for b in Backing)  # "1g", "2m", "thp", "4k"


def by_kb(kb: int) -> PageSize:
    """The PageSize of `kb` kB; the kernel may offer sizes hugeload has no name for
    (16 GB on some machines): those get a generic name."""
    known = _BY_KB.get(kb)
    if known:
        return known
    return PageSize(name(kb).lower(), kb, True)


def by_name(text: str) -> PageSize:
    page = parse(text, auto=False)
    assert page is not None  # parse() returns None for "auto" only, and auto is off
    return page


def name(kb: int) -> str:
    """4 -> '4K', 2048 -> '2M', 1048576 -> '1G', 16777216 -> '16G'."""
    for unit, factor in (("G", 1048576), ("M", 1024), ("K", 1)):
        if kb % factor == 0 and kb >= factor:
            return f"{kb // factor}{unit}"
    return f"{kb}K"


def parse(text, allow: tuple[str, ...] = ("1g", "2m", "4k"), auto: bool = True) -> PageSize | None:
    """`1g`, `1G`, `1GB`, `1GiB`, `1048576kB`, `1073741824` (bytes) -> PAGE_1G; `auto` -> None
    when `auto`.  UsageError names the accepted choices."""
    found: PageSize | None
    if isinstance(text, PageSize):
        found = text
    else:
        t = str(text).strip().lower()
        if auto and t == "auto":
            return None
        found = _ALIASES.get(t)
        if found is None:
            try:
                size = parse_size(t)
            except UsageError:
                size = 0
            found = _BY_KB.get(size // KiB) if size and size % KiB == 0 else None
    if found is None or found.name not in allow:
        choices = ", ".join((("auto",) if auto else ()) + tuple(allow))
        if found is None:
            raise UsageError(f"unknown page size {text!r}: choose one of {choices}")
        raise UsageError(f"page size {text!r} is not allowed here: choose one of {choices}")
    return found


def arg_type(allow: tuple[str, ...] = ("1g", "2m"), auto: bool = True):
    """An argparse `type=` that parses a page size at parse time (None for auto)."""

    def convert(text: str) -> PageSize | None:
        try:
            return parse(text, allow, auto)
        except UsageError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = "page size"  # argparse names the type in its messages
    return convert


def parse_backing(text, auto: bool = True) -> Backing | None:
    """A backing: `thp`, or a page size in any spelling parse() takes (`1GiB` -> Backing.G1);
    `auto` -> None when `auto`.  UsageError names the accepted choices."""
    t = str(text).strip().lower()
    if t == Backing.THP.value:
        return Backing.THP
    try:
        page = parse(t, ("1g", "2m", "4k"), auto)
    except UsageError:
        choices = ", ".join((("auto",) if auto else ()) + BACKINGS)
        raise UsageError(f"unknown page size {text!r}: choose one of {choices}") from None
    return None if page is None else Backing(page.name)


def env_name(page: PageSize | None) -> str:
    """HUGELOAD_PAGE_SIZE's value: auto, 1g or 2m."""
    return "auto" if page is None else page.name


# --------------------------------------------------------------------------- the size rule


class Policy(NamedTuple):
    auto_1g_min: int = 1 * GiB  # bytes; auto never picks 1G below this
    auto_1g_max_waste_ppm: int = 125000  # rounding waste auto accepts, in millionths of the size (1/8)
    forced_1g_min: int = 256 * MiB  # bytes; an explicit 1g for a run applies from this size

    def env(self) -> str:
        """HUGELOAD_POLICY's value (parsed by the preload library)."""
        return ",".join(f"{k}={int(v)}" for k, v in self._asdict().items())

    @classmethod
    def from_env(cls, text: str | None) -> "Policy":
        """The inverse of env(); unknown or malformed keys are ignored, as C ignores them."""
        out = cls()
        for item in (text or "").split(","):
            key, _, value = item.partition("=")
            if key.strip() in cls._fields and value.strip().isdigit():
                out = out._replace(**{key.strip(): int(value)})
        return out


DEFAULT_POLICY = Policy()


def waste_1g(sizes: int | list[int]) -> int:
    """Bytes lost by putting each file (or the one size) in whole 1 GB pages."""
    sizes = [sizes] if isinstance(sizes, int) else list(sizes)
    return sum(PAGE_1G.round_up(s) - s for s in sizes)


def _total(sizes: int | list[int]) -> int:
    return sizes if isinstance(sizes, int) else sum(sizes)


def auto_wants_1g(sizes: int | list[int], policy: Policy = DEFAULT_POLICY) -> bool:
    total = _total(sizes)
    return total >= policy.auto_1g_min and waste_1g(sizes) * 1_000_000 <= total * policy.auto_1g_max_waste_ppm


def first_page(sizes: int | list[int], requested: PageSize | None = None, policy: Policy = DEFAULT_POLICY) -> PageSize:
    """The first page size the cascade tries for `sizes` bytes (one size, or the files of one
    model, each rounded up on its own): PAGE_1G or PAGE_2M for `requested` None (auto), 1g or 2m;
    4k stays 4k."""
    if requested is None:
        return PAGE_1G if auto_wants_1g(sizes, policy) else PAGE_2M
    if requested == PAGE_1G:
        return PAGE_1G if _total(sizes) >= policy.forced_1g_min else PAGE_2M
    return requested


def why(sizes: int | list[int], requested: PageSize | None = None, policy: Policy = DEFAULT_POLICY) -> str:
    """The reason for first_page()'s answer, in words."""
    total = _total(sizes)
    chosen = first_page(sizes, requested, policy)
    if requested is not None:
        if chosen == requested:
            return f"{requested.label} requested"
        return f"1G requested, but the model is under {size_words(policy.forced_1g_min)}: 2M"
    if chosen == PAGE_1G:
        return (
            f"model is at least {size_words(policy.auto_1g_min)} and 1G pages waste at most "
            f"{ppm_words(policy.auto_1g_max_waste_ppm)}"
        )
    if total < policy.auto_1g_min:
        return f"model is under {size_words(policy.auto_1g_min)}"
    waste = waste_1g(sizes)
    return (
        f"1G pages would waste {waste * 100 / total:.0f} % (more than {ppm_words(policy.auto_1g_max_waste_ppm)}) "
        f"of the model"
    )


def policy_env(policy: Policy = DEFAULT_POLICY) -> str:
    """HUGELOAD_POLICY=auto_1g_min=<bytes>,auto_1g_max_waste_ppm=<int>,forced_1g_min=<bytes>: the
    value the runner always sets, so the preload library applies this rule, not a copy of it."""
    return policy.env()


def size_words(n: int) -> str:
    """1 GiB, 256 MiB: thresholds read as the user typed them."""
    from hugeload.units import format_bytes

    for unit, factor in (("GiB", GiB), ("MiB", MiB)):
        if n >= factor and n % factor == 0:
            return f"{n // factor} {unit}"
    return format_bytes(n)


def ppm_words(ppm: int) -> str:
    """125000 -> '1/8'; others as a percentage."""
    if ppm and 1_000_000 % ppm == 0:
        return f"1/{1_000_000 // ppm}"
    return f"{ppm / 10_000:g} %"
