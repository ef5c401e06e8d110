"""Pure checks before changing a pool."""

from typing import NamedTuple

from hugeload.errors import UsageError
from hugeload.pages import name as page_size_name
from hugeload.units import KiB, format_bytes

DEFAULT_FLOOR_FRACTION = 0.10


class FloorCheck(NamedTuple):
    ok: bool
    message: str


def pages_for_size(size_bytes: int, kb: int) -> int:
    page = kb * KiB
    if size_bytes <= 0:
        raise UsageError("size must be positive")
    if size_bytes % page:
        raise UsageError(
            f"{size_bytes} bytes is not a multiple of the {page_size_name(kb)} page size; "
            f"use --count or a multiple such as {format_bytes((size_bytes // page + 1) * page)}"
        )
    return size_bytes // page


def check_floor(
    pages: int, kb: int, mem_available_kb: int, mem_total_kb: int, floor_bytes: int | None = None
) -> FloorCheck:
    """Refuse a reservation that would leave less than the floor of MemAvailable (default 10% of RAM):
    huge pages are taken out of ordinary memory and the rest of the machine must still run."""
    need = pages * kb * KiB
    floor = int(mem_total_kb * KiB * DEFAULT_FLOOR_FRACTION) if floor_bytes is None else floor_bytes
    left = mem_available_kb * KiB - need
    if left >= floor:
        return FloorCheck(True, "")
    return FloorCheck(
        False,
        f"reserving {format_bytes(need)} would leave {format_bytes(max(left, 0))} available, "
        f"below the floor of {format_bytes(floor)}; free memory first, lower the count, "
        f"or pass --force (or --min-available) to go ahead",
    )


def parse_floor(text: str | None, mem_total_kb: int) -> int | None:
    """`10%` of RAM, or a size; None keeps the default."""
    from hugeload.units import parse_size

    if text is None:
        return None
    t = text.strip()
    if t.endswith("%"):
        try:
            pct = float(t[:-1])
        except ValueError:
            raise UsageError(f"cannot parse {text!r}: use a percentage like 10% or a size like 2G") from None
        return int(mem_total_kb * KiB * pct / 100)
    return parse_size(t)
