"""The redirect index: the store -> preload library protocol (contract C1, versions 2 and 3).

The one writer of `$STATE_DIR/store/redirects`; the preload library
(csrc/preload/redirect.c) is its one reader, and tests and probes use read().

    hugeload-redirects 2
    <src_dev> <src_ino> <src_size> <src_mtime_ns> <src_ctime_ns> <node> <page_kb> <path>

Version 3 (written only when a copy is in parts, so that an older library keeps reading an
index without them) adds, after <path>, one ` <offset> <page_kb> <path>` per further part of
a copy in mixed page sizes: the source's bytes from <offset> on (a multiple of the first
part's page size, offsets increasing) are in that staged file, from its start; the first part
holds the bytes before.  The library maps the parts side by side as one range, so a line has
at most MAX_PARTS parts in all; a line with more does not parse.

One line per staged copy; several lines may name the same source (one per NUMA
node copy; node -1 = interleaved or not placed).  <path> is the staged file's
path as bytes, with bytes <= 0x20, '%' and >= 0x7f written as %XX (uppercase
hex), so no file name can add, split or forge a line.  The file is owned by
root, mode 0644, written atomically (temp + rename); the library ignores it
(one log line) when it is group/other-writable or not root's, and matches a
mapped file on all five source fields: ctime is in the key so a file rewritten
and given back its old mtime is not served the stale copy.
"""

import os
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from hugeload.act import state
from hugeload.errors import HugeloadError

HEADER = "hugeload-redirects 2"
HEADER_PARTS = "hugeload-redirects 3"
NAME = "redirects"
MAX_PARTS = 2  # csrc/preload/hl.h HL_MAX_PARTS


class Part(NamedTuple):
    offset: int  # the source's bytes from here on are in `staged_path`
    page_kb: int
    staged_path: str


class RedirectEntry(NamedTuple):
    src_dev: int
    src_ino: int
    src_size: int
    src_mtime_ns: int
    src_ctime_ns: int
    node: int  # -1: interleaved or not placed
    page_kb: int
    staged_path: str
    parts: tuple[Part, ...] = ()  # further parts (version 3)


def index_path(state_dir=None) -> Path:
    return state.state_dir(state_dir) / "store" / NAME


def escape(path: str) -> str:
    """The path's bytes (filesystem encoding), with <= 0x20, '%' and >= 0x7f as %XX."""
    out = []
    for b in os.fsencode(path):
        out.append(f"%{b:02X}" if b <= 0x20 or b >= 0x7F or b == 0x25 else chr(b))
    return "".join(out)


def unescape(text: str) -> str:
    raw, i = bytearray(), 0
    while i < len(text):
        if text[i] == "%":
            raw.append(int(text[i + 1 : i + 3], 16))
            i += 3
        else:
            raw.append(ord(text[i]))
            i += 1
    return os.fsdecode(bytes(raw))


def entry_for(source, staged_path, node: int = -1, page_kb: int = 0, st: os.stat_result | None = None) -> RedirectEntry:
    """The entry for a source file as it is now (or as `st` saw it)."""
    st = st or os.stat(source)
    return RedirectEntry(
        st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, node, page_kb, str(staged_path)
    )


def format_line(e: RedirectEntry) -> str:
    for path in [e.staged_path] + [p.staged_path for p in e.parts]:
        if "\0" in path or not path:
            raise ValueError(f"staged path {path!r} cannot be written to the redirect index")
    if len(e.parts) >= MAX_PARTS:
        raise ValueError(f"a copy in {len(e.parts) + 1} parts cannot be written to the redirect index")
    parts = "".join(f" {p.offset} {p.page_kb} {escape(p.staged_path)}" for p in e.parts)
    return (
        f"{e.src_dev} {e.src_ino} {e.src_size} {e.src_mtime_ns} {e.src_ctime_ns} {e.node} {e.page_kb} "
        f"{escape(e.staged_path)}{parts}\n"
    )


def write(state_dir, entries: Iterable[RedirectEntry]) -> Path:
    """Publishes the index atomically, mode 0644 (the library refuses group/other-writable ones),
    in the store directory (0755: engines run by other users read it)."""
    path = index_path(state_dir)
    if not path.parent.is_dir():
        state.make_state_dir(state_dir)
        state.make_dir(path.parent, state.PUBLIC_DIR_MODE)
    entries = list(entries)
    header = HEADER_PARTS if any(e.parts for e in entries) else HEADER
    text = header + "\n" + "".join(format_line(e) for e in entries)
    state.write_text_atomic(path, text, mode=0o644)
    return path


def read(state_dir=None, trusted: bool = False) -> list[RedirectEntry]:
    """The entries of the index ([] when there is none); lines that do not parse are skipped, as in C.
    With `trusted`, as the library reads it: an index that is not root's, or that group or
    others may write, raises HugeloadError instead of being believed."""
    path = index_path(state_dir)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return []
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if trusted and (st.st_uid != 0 or st.st_mode & 0o022):
            raise HugeloadError(f"{path} is not owned by root or is writable by group or others")
        text = f.read(64 << 20).decode("ascii", errors="replace")
    lines = text.split("\n")
    if lines[0] not in (HEADER, HEADER_PARTS):
        return []
    return [e for e in (parse_line(line, lines[0] == HEADER_PARTS) for line in lines[1:]) if e is not None]


def parse_line(line: str, with_parts: bool = True) -> RedirectEntry | None:
    """One line of the index, or None when it does not parse (as in C: redirect.c)."""
    fields = line.split(" ")
    extra = len(fields) - 8
    if extra < 0 or extra % 3 or (extra and not with_parts) or extra // 3 >= MAX_PARTS:
        return None
    try:
        nums = [int(p, 10) for p in fields[:7]]
        if any(not f.lstrip("-").isdigit() for f in fields[:7]) or min(nums[:5] + [nums[6]]) < 0:
            return None
        parts = []
        last = 0
        for i in range(8, len(fields), 3):
            off, kb = int(fields[i], 10), int(fields[i + 1], 10)
            if not fields[i].isdigit() or not fields[i + 1].isdigit() or off <= last or off >= nums[2]:
                return None
            if off % (max(1, nums[6]) * 1024):
                return None
            parts.append(Part(off, kb, unescape(fields[i + 2])))
            last = off
        return RedirectEntry(*nums, unescape(fields[7]), tuple(parts))
    except (ValueError, IndexError):
        return None
