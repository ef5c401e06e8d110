"""The file readers every probe module reads through, and the one error policy of the probe.

Error policy: a file that is missing, unreadable (another user's process without root), or
gone while it is read (a process that exited) reads as the caller's default, never as an
exception; the caller's parser then treats a field it cannot parse as absent.  /proc and /sys
are read nowhere else (DEVELOPERS.md names the exceptions)."""

import os
from pathlib import Path
from typing import overload


def path(root: str | os.PathLike, rel: str) -> Path:
    return Path(root) / rel.lstrip("/")


@overload
def read_text(root, rel: str, default: str) -> str: ...
@overload
def read_text(root, rel: str, default: None = None) -> str | None: ...
def read_text(root, rel: str, default: str | None = None) -> str | None:
    try:
        return path(root, rel).read_text()
    except (OSError, UnicodeDecodeError):  # gone, unreadable, or not text: the default
        return default


@overload
def read_int(root, rel: str, default: int) -> int: ...
@overload
def read_int(root, rel: str, default: None = None) -> int | None: ...
def read_int(root, rel: str, default: int | None = None) -> int | None:
    text = read_text(root, rel)
    if text is None:
        return default
    try:
        return int(text.split()[0])
    except (ValueError, IndexError):
        return default


def listdir(root, rel: str) -> list[str]:
    try:
        return sorted(os.listdir(path(root, rel)))
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []
