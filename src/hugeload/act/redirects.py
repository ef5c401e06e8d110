"""The redirect index: the store -> preload library protocol (contract C1, version 2).

The one writer of `$STATE_DIR/store/redirects`; the preload library
(csrc/preload/redirect.c) is its one reader, and tests and probes use read().

    hugeload-redirects 2
    <src_dev> <src_ino> <src_size> <src_mtime_ns> <src_ctime_ns> <node> <page_kb> <path>

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

HEADER = "hugeload-redirects 2"
NAME = "redirects"


class RedirectEntry(NamedTuple):
    src_dev: int
    src_ino: int
    src_size: int
    src_mtime_ns: int
    src_ctime_ns: int
    node: int  # -1: interleaved or not placed
    page_kb: int
    staged_path: str


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
    if "\0" in e.staged_path or not e.staged_path:
        raise ValueError(f"staged path {e.staged_path!r} cannot be written to the redirect index")
    return (
        f"{e.src_dev} {e.src_ino} {e.src_size} {e.src_mtime_ns} {e.src_ctime_ns} {e.node} {e.page_kb} "
        f"{escape(e.staged_path)}\n"
    )


def write(state_dir, entries: Iterable[RedirectEntry]) -> Path:
    """Publishes the index atomically, mode 0644 (the library refuses group/other-writable ones)."""
    path = index_path(state_dir)
    state.ensure_dir(path.parent)
    text = HEADER + "\n" + "".join(format_line(e) for e in entries)
    state.write_text_atomic(path, text, mode=0o644)
    return path


def read(state_dir=None) -> list[RedirectEntry]:
    """The entries of the index ([] when there is none); lines that do not parse are skipped, as in C."""
    try:
        text = index_path(state_dir).read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return []
    lines = text.split("\n")
    if lines[0] != HEADER:
        return []
    out = []
    for line in lines[1:]:
        parts = line.split(" ")
        if len(parts) != 8:
            continue
        try:
            nums = [int(p) for p in parts[:7]]
            out.append(RedirectEntry(*nums, unescape(parts[7])))
        except ValueError:
            continue
    return out
