"""Sizes and page sizes: parsing and formatting.  Pure functions."""

import re

from hugeload.errors import UsageError

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB

_SUFFIX = {"": 1, "b": 1, "k": KiB, "m": MiB, "g": GiB, "t": TiB}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)

# Page sizes the CLI accepts by name; others come from the kernel as "<n>kB".
PAGE_SIZE_NAMES = {"4k": 4, "2m": 2048, "1g": 1048576}


def parse_size(text: str | int) -> int:
    """Parse `30G`, `30GiB`, `30GB`, `512M`, `4096` into bytes (binary units throughout).

    Memory is sold in binary units and the kernel counts pages in them, so `1G`
    means 2**30 here, as it does for hugetlbfs' `size=` option.
    """
    if isinstance(text, int):
        if text < 0:
            raise UsageError(f"size must not be negative: {text}")
        return text
    m = _SIZE_RE.match(str(text))
    if not m:
        raise UsageError(f"cannot parse size {text!r}: use bytes or a number with K, M, G or T (e.g. 30G, 512MiB)")
    number, suffix = m.groups()
    value = float(number) * _SUFFIX[suffix.lower()]
    if value != int(value):
        raise UsageError(f"size {text!r} is not a whole number of bytes")
    return int(value)


def parse_page_size(text: str, allow_auto: bool = False) -> int | None:
    """Parse `1g`, `2m`, `4k`, `1G`, `2MB`, `1048576kB` into kB; `auto` into None when allowed."""
    t = str(text).strip().lower()
    if allow_auto and t == "auto":
        return None
    if t in PAGE_SIZE_NAMES:
        return PAGE_SIZE_NAMES[t]
    try:
        size = parse_size(t)
    except UsageError:
        size = 0
    kb = size // KiB
    if kb in PAGE_SIZE_NAMES.values() and size % KiB == 0:
        return kb
    choices = "auto, 1g, 2m, 4k" if allow_auto else "1g, 2m, 4k"
    raise UsageError(f"unknown page size {text!r}: choose one of {choices}")


def page_size_name(kb: int) -> str:
    """4 -> '4K', 2048 -> '2M', 1048576 -> '1G'."""
    for unit, factor in (("G", 1048576), ("M", 1024), ("K", 1)):
        if kb % factor == 0 and kb >= factor:
            return f"{kb // factor}{unit}"
    return f"{kb}K"


def format_bytes(n: int | float) -> str:
    """Human-readable binary size: 1536 -> '1.5 KiB'."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)
