"""The preload library's report, read back: one parser for `hugeload run` and every benchmark.

The format is csrc/preload/log.c's (its header comment is the specification):

    hugeload: report pid=<pid> regions=<n> dropped=<n>
    hugeload: region pid=<pid> what=<name> bytes=<n> mapped=<n> page=<1G|2M|THP|4K>
              fill=<staged|direct|copy|alloc|none> ms=<float> addr=0x<hex> live=<0|1>

`what` is a file's base name (or the allocating function), each byte <= ' ', '%', '=' or
>= 0x7f written as %XX, and the encoded name cut to fit 64 bytes.  `encode_what` is log.c's
`hl_encode_what` restated, `decode_what` its exact inverse, and `Region.is_file` compares a
file with a region by the encoded form, so a name with spaces, '%', '=' or non-ASCII bytes, or
one long enough to be cut, matches exactly the regions the library recorded for it.
"""

import os
from typing import NamedTuple

from hugeload import pages

WHAT_SIZE = 64  # log.c: char what[64], terminating NUL included
_PREFIX = "hugeload: region "
_HEX = "0123456789ABCDEF"


def encode_what(path: str | bytes) -> str:
    """The `what=` token log.c writes for a file at `path` (its base name, escaped and cut)."""
    raw = os.fsencode(path)
    base = raw.rsplit(b"/", 1)[-1] if raw.rsplit(b"/", 1)[-1] else raw
    base = base or b"?"
    out: list[str] = []
    size = 0
    for byte in base:
        if size + 4 >= WHAT_SIZE:  # log.c: `o + 4 < outsz` before each byte
            break
        if byte <= 0x20 or byte >= 0x7F or byte in b"%=":
            out.append(f"%{_HEX[byte >> 4]}{_HEX[byte & 15]}")
            size += 3
        else:
            out.append(chr(byte))
            size += 1
    return "".join(out)


def decode_what(token: str) -> str:
    """The name a `what=` token stands for: every %XX back to its byte, then the bytes decoded as
    the file system's names are (os.fsdecode), so a non-UTF-8 name round-trips too."""
    raw = bytearray()
    i = 0
    data = token.encode("ascii", "surrogateescape")
    while i < len(data):
        if data[i] == 0x25 and _is_hex(data[i + 1 : i + 3]):
            raw.append(int(data[i + 1 : i + 3], 16))
            i += 3
        else:
            raw.append(data[i])
            i += 1
    return os.fsdecode(bytes(raw))


def _is_hex(two: bytes) -> bool:
    return len(two) == 2 and all(c in b"0123456789abcdefABCDEF" for c in two)


class Region(NamedTuple):
    """One `hugeload: region` line.  Numbers that do not parse read as 0, a missing field as ""."""

    pid: int
    what: str  # as written: escaped (decoded: .name)
    bytes: int  # what the program asked for
    mapped: int  # what was mapped
    page: str  # 1G / 2M / THP / 4K
    fill: str  # staged / direct / copy / alloc / none
    ms: float
    addr: int
    live: bool

    @property
    def name(self) -> str:
        return decode_what(self.what)

    @property
    def page_kb(self) -> int:
        """The page size in kB (THP counts as 2M); 0 when the label is unknown."""
        try:
            return pages.Backing(self.page.lower()).page.kb
        except ValueError:
            return 0

    @property
    def allocation(self) -> bool:
        return self.fill == "alloc"

    def is_file(self, path: str | os.PathLike) -> bool:
        """Whether this region is a mapping of the file at `path` (by its real path's base name,
        which is what the library reads from /proc/self/fd)."""
        return not self.allocation and self.what == encode_what(os.path.realpath(path))


def _int(text: str, base: int = 10) -> int:
    try:
        return int(text, base)
    except ValueError:
        return 0


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0


def parse_line(line: str) -> Region | None:
    """The region of one report line, or None when it is not a region line."""
    if not line.startswith(_PREFIX):
        return None
    fields: dict[str, str] = {}
    for item in line[len(_PREFIX) :].split():
        key, eq, value = item.partition("=")
        if eq:
            fields.setdefault(key, value)
    addr = fields.get("addr", "")
    return Region(
        pid=_int(fields.get("pid", "")),
        what=fields.get("what", ""),
        bytes=_int(fields.get("bytes", "")),
        mapped=_int(fields.get("mapped", "")),
        page=fields.get("page", ""),
        fill=fields.get("fill", ""),
        ms=_float(fields.get("ms", "")),
        addr=_int(addr[2:], 16) if addr.startswith("0x") else 0,
        live=fields.get("live") == "1",
    )


def parse(text: str) -> list[Region]:
    """Every region line of a report (other lines, the engine's own output included, are skipped)."""
    return [r for r in map(parse_line, text.splitlines()) if r is not None]


def blocks(regions: list[Region]) -> list[Region]:
    """`regions` with each allocation the library made in two parts (csrc/preload/hugemem.c: the
    1 GB pages the pool had, then 2 MB pages, one line each) joined into one region of page
    "1G+2M": its second part is the 2M allocation of the same process and name that starts where
    the first one's mapping ends."""
    tails = {(r.pid, r.what, r.addr): i for i, r in enumerate(regions) if r.allocation and r.page == "2M" and r.addr}
    # pair every first part with its second before emitting anything: a second part may come
    # before its first part in the report (another thread's allocation recorded between them)
    pairs: dict[int, int] = {}
    taken: set[int] = set()
    for i, r in enumerate(regions):
        j = tails.get((r.pid, r.what, r.addr + r.mapped)) if r.allocation and r.page == "1G" and r.addr else None
        if j is not None and j not in taken:
            pairs[i] = j
            taken.add(j)
    out = []
    for i, r in enumerate(regions):
        if i in pairs:
            t = regions[pairs[i]]
            r = r._replace(bytes=r.bytes + t.bytes, mapped=r.mapped + t.mapped, page="1G+2M")
        elif i in taken:
            continue
        out.append(r)
    return out


def read(path: str | os.PathLike, start: int = 0) -> str:
    """The report file's text from byte `start` (the library appends: a caller that noted the size
    before the run reads only that run's lines); "" when it cannot be read."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def weights_page_kb(regions: list[Region], path: str | os.PathLike) -> set[int]:
    """Page sizes (kB) of the regions mapping the file at `path`."""
    return {r.page_kb for r in regions if r.is_file(path) and r.page_kb}
