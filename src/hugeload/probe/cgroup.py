"""cgroup hugetlb limits for this process's cgroup, and container detection."""

from collections.abc import Sequence
from typing import NamedTuple

from hugeload.pages import HUGE
from hugeload.probe.files import listdir, read_text
from hugeload.units import GiB, KiB, MiB

CGROUP_ROOT = "sys/fs/cgroup"
# cgroup v2 says "max"; v1 says "no limit" with PAGE_COUNTER_MAX in bytes, rounded down
# to whole huge pages since Linux 4.7 (9223372035781033984 for 1 GB pages), so any value
# this close to 2**63 is no limit.
_V1_UNLIMITED = 1 << 62


class HugetlbLimit(NamedTuple):
    page_size_kb: int
    limit_bytes: int | None  # None: unlimited
    rsvd_limit_bytes: int | None
    usage_bytes: int | None
    version: int  # 1 or 2
    path: str  # file the limit was read from, relative to root


class CgroupInfo(NamedTuple):
    version: int | None  # 1, 2, or None when no cgroup file system
    path: str | None  # this process's cgroup (hugetlb controller for v1)
    limits: list[HugetlbLimit]
    container: str | None  # docker / podman / kubernetes / lxc / container, or None


def cgroup_size_name(kb: int) -> str:
    """The kernel's file-name form of a page size: 2048 -> '2MB', 1048576 -> '1GB'."""
    b = kb * KiB
    if b >= GiB and b % GiB == 0:
        return f"{b // GiB}GB"
    if b >= MiB and b % MiB == 0:
        return f"{b // MiB}MB"
    return f"{kb}KB"


def _parse_limit(text: str | None) -> int | None:
    if text is None:
        return None
    t = text.strip()
    if t == "max" or not t.isdigit():
        return None
    v = int(t)
    return None if v >= _V1_UNLIMITED else v


def _own_cgroup(root, pid: str) -> tuple[int | None, str | None]:
    text = read_text(root, f"proc/{pid}/cgroup", "") or ""
    v2_path = None
    for line in text.splitlines():
        hid, _, rest = line.partition(":")
        controllers, _, cpath = rest.partition(":")
        if "hugetlb" in controllers.split(","):
            return 1, cpath
        if hid == "0" and controllers == "":
            v2_path = cpath
    if v2_path is not None:
        return 2, v2_path
    return None, None


HUGE_KB = tuple(sorted(p.kb for p in HUGE))


def read_cgroup(root="/", page_sizes_kb: Sequence[int] = HUGE_KB, pid: str = "self") -> CgroupInfo:
    version, cpath = _own_cgroup(root, pid)
    limits = []
    if version is not None:
        if version == 1:
            base = f"{CGROUP_ROOT}/hugetlb{cpath}".rstrip("/")
        else:
            # On a hybrid v1/v2 host the v2 tree is at /sys/fs/cgroup/unified.
            unified = "unified" in listdir(root, CGROUP_ROOT) and "cgroup.controllers" not in listdir(root, CGROUP_ROOT)
            base = f"{CGROUP_ROOT}{'/unified' if unified else ''}{cpath}".rstrip("/")
        for kb in page_sizes_kb:
            name = cgroup_size_name(kb)
            if version == 1:
                limit_file = f"{base}/hugetlb.{name}.limit_in_bytes"
                rsvd_file = f"{base}/hugetlb.{name}.rsvd.limit_in_bytes"
                usage_file = f"{base}/hugetlb.{name}.usage_in_bytes"
            else:
                limit_file = f"{base}/hugetlb.{name}.max"
                rsvd_file = f"{base}/hugetlb.{name}.rsvd.max"
                usage_file = f"{base}/hugetlb.{name}.current"
            limit_text = read_text(root, limit_file)
            if limit_text is None:
                continue
            usage = read_text(root, usage_file)
            limits.append(
                HugetlbLimit(
                    kb,
                    _parse_limit(limit_text),
                    _parse_limit(read_text(root, rsvd_file)),
                    int(usage) if usage and usage.strip().isdigit() else None,
                    version,
                    limit_file,
                )
            )
    return CgroupInfo(version, cpath, limits, detect_container(root))


def detect_container(root="/") -> str | None:
    if read_text(root, ".dockerenv") is not None:
        return "docker"
    if read_text(root, "run/.containerenv") is not None:
        return "podman"
    env = read_text(root, "proc/1/environ", "") or ""
    for item in env.split("\0"):
        if item.startswith("container="):
            return item.partition("=")[2] or "container"
    init_cgroup = read_text(root, "proc/1/cgroup", "") or ""
    for marker, name in (("kubepods", "kubernetes"), ("docker", "docker"), ("libpod", "podman"), ("lxc", "lxc")):
        if marker in init_cgroup:
            return name
    return None
