"""Sizes: parsing and formatting.  Pure functions.  Page sizes are hugeload.pages' (which imports
this module; this one imports nothing of hugeload but its errors)."""

import argparse
import re

from hugeload.errors import UsageError

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB

_SUFFIX = {"": 1, "b": 1, "k": KiB, "m": MiB, "g": GiB, "t": TiB}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


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


def arg_type(minimum: int = 0):
    """An argparse `type=` that parses a size at parse time (`--size 2G`), so a bad size is one
    line from argparse before any work starts, and handlers get bytes."""

    def convert(text: str) -> int:
        try:
            value = parse_size(text)
        except UsageError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"size {text!r} is too small: at least {format_bytes(minimum)}")
        return value

    convert.__name__ = "size"  # argparse names the type in its messages
    return convert


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
