"""The mount table (/proc/mounts): every mount, hugetlbfs mounts with their options, and the
file system a path lives on."""

import os
import re
from typing import NamedTuple

from hugeload.probe.files import read_text
from hugeload.probe.memory import read_meminfo
from hugeload.units import KiB, parse_size


class HugetlbfsMount(NamedTuple):
    path: str
    page_size_kb: int
    size_bytes: int | None  # the mount's size= limit; None when unlimited
    uid: int
    gid: int
    mode: int
    options: str


_OCTAL = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    # /proc/mounts escapes space, tab, newline and backslash as octal; other bytes pass as UTF-8.
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def default_page_size_kb(root="/") -> int | None:
    """The kernel's default huge page size (Hugepagesize in /proc/meminfo)."""
    return read_meminfo(root).get("Hugepagesize")


def parse_mount_options(options: str, default_kb: int | None) -> dict:
    opts = {}
    for item in options.split(","):
        key, _, value = item.partition("=")
        opts[key] = value
    page_kb = parse_size(opts["pagesize"]) // KiB if "pagesize" in opts else default_kb
    size = parse_size(opts["size"]) if opts.get("size", "").isdigit() else None
    return {
        "page_size_kb": page_kb or 0,
        "size_bytes": size,
        "uid": int(opts.get("uid", 0)),
        "gid": int(opts.get("gid", 0)),
        # The kernel leaves mode= out exactly when it is 0755 (hugetlbfs_show_options).
        "mode": int(opts.get("mode", "755"), 8),
    }


class Mount(NamedTuple):
    source: str
    path: str
    fstype: str
    options: str


def read_mount_table(root="/") -> list[Mount]:
    """Every line of /proc/mounts, paths unescaped; malformed lines are left out."""
    out = []
    for line in (read_text(root, "proc/mounts", "") or "").splitlines():
        fields = line.split()
        if len(fields) >= 4:
            out.append(Mount(_unescape(fields[0]), _unescape(fields[1]), fields[2], fields[3]))
    return out


def read_mounts(root="/") -> list[HugetlbfsMount]:
    default_kb = None
    out = []
    for m in read_mount_table(root):
        if m.fstype != "hugetlbfs":
            continue
        if default_kb is None:
            default_kb = default_page_size_kb(root)
        info = parse_mount_options(m.options, default_kb)
        out.append(HugetlbfsMount(path=m.path, options=m.options, **info))
    return out


def filesystem_of(root, path: str) -> str:
    """Type of the file system holding `path` (the mount with the longest prefix of its real
    path; the last such mount when several are stacked); "unknown" when none matches."""
    real = os.path.realpath(path)
    best, kind = "", "unknown"
    for m in read_mount_table(root):
        mnt = m.path
        if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
            best, kind = mnt, m.fstype
    return kind


def hugetlbfs_supported(root="/") -> bool:
    """True when the kernel knows the hugetlbfs file system."""
    text = read_text(root, "proc/filesystems", "")
    return any(line.split()[-1:] == ["hugetlbfs"] for line in text.splitlines())
