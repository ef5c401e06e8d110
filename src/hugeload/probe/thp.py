"""Transparent huge pages settings."""

from typing import NamedTuple

from hugeload.probe.files import read_text

THP_DIR = "sys/kernel/mm/transparent_hugepage"


class Thp(NamedTuple):
    enabled: str | None  # always / madvise / never; None without THP
    defrag: str | None
    shmem_enabled: str | None


def selected(text: str | None) -> str | None:
    """'always [madvise] never' -> 'madvise'."""
    if not text:
        return None
    for word in text.split():
        if word.startswith("[") and word.endswith("]"):
            return word[1:-1]
    return text.strip() or None


def read_thp(root="/") -> Thp:
    return Thp(
        enabled=selected(read_text(root, f"{THP_DIR}/enabled")),
        defrag=selected(read_text(root, f"{THP_DIR}/defrag")),
        shmem_enabled=selected(read_text(root, f"{THP_DIR}/shmem_enabled")),
    )
