"""Small file readers shared by the probe modules."""

import os
from pathlib import Path


def path(root: str | os.PathLike, rel: str) -> Path:
    return Path(root) / rel.lstrip("/")


def read_text(root, rel: str, default: str | None = None) -> str | None:
    try:
        return path(root, rel).read_text()
    except (FileNotFoundError, NotADirectoryError, PermissionError, ProcessLookupError, OSError):
        return default


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
