"""hugetlbfs mounts: the seed's dual layout, idempotent, recorded in the ledger."""

import contextlib
import ctypes
import ctypes.util
import errno
import os
from pathlib import Path
from typing import NamedTuple

from hugeload import pages
from hugeload.act import ledger
from hugeload.errors import HugeloadError, PermissionNeeded, UsageError
from hugeload.probe import procs
from hugeload.probe.mounts import HugetlbfsMount, hugetlbfs_supported, read_mounts
from hugeload.units import KiB

# The seed's layout; any other size gets the same shape of name.
DEFAULT_DIRS = {p.kb: f"/mnt/hugepages-{p.name}b" for p in pages.HUGE}
MNT_DETACH = 2

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def default_dir(kb: int) -> str:
    return DEFAULT_DIRS.get(kb, f"/mnt/hugepages-{pages.name(kb).lower()}b")


def mount_options(kb: int, size: int | None, uid: int | None, gid: int | None, mode: int | None) -> str:
    opts = [f"pagesize={kb * KiB}"]
    if size is not None:
        if size % (kb * KiB):
            raise UsageError(f"mount size {size} is not a multiple of the {pages.name(kb)} page size")
        opts.append(f"size={size}")
    if uid is not None:
        opts.append(f"uid={uid}")
    if gid is not None:
        opts.append(f"gid={gid}")
    if mode is not None:
        opts.append(f"mode={mode:o}")
    return ",".join(opts)


def find_mount(root, path: str) -> HugetlbfsMount | None:
    real = os.path.realpath(path)
    return next((m for m in read_mounts(root) if m.path in (path, real)), None)


class MountResult(NamedTuple):
    path: str
    page_size_kb: int
    changed: bool  # False: it was already mounted (a no-op)


def mount(
    root,
    kb: int,
    path: str | None = None,
    size: int | None = None,
    uid: int | None = None,
    gid: int | None = None,
    mode: int | None = None,
    owner: str = "mount",
    state_dir=None,
) -> MountResult:
    path = path or default_dir(kb)
    if not hugetlbfs_supported(root):
        raise HugeloadError("this kernel has no hugetlbfs file system (CONFIG_HUGETLBFS)")
    existing = find_mount(root, path)
    if existing:
        if existing.page_size_kb != kb:
            have, want = pages.name(existing.page_size_kb), pages.name(kb)
            raise UsageError(f"{path} is already a hugetlbfs mount of {have} pages, not {want}")
        return MountResult(existing.path, kb, False)
    p = Path(path)
    if p.is_symlink():  # mount(2) would follow it, wherever someone pointed it
        raise UsageError(f"mount point {path} is a symlink: give the directory itself")
    if p.exists() and not p.is_dir():
        raise UsageError(f"mount point {path} exists and is not a directory")
    if p.is_dir() and any(p.iterdir()):
        raise UsageError(f"mount point {path} is a non-empty directory; hugeload will not hide its files")
    options = mount_options(kb, size, uid, gid, mode)
    created = not p.exists()
    try:
        p.mkdir(parents=True, exist_ok=True)
    except PermissionError:
        raise PermissionNeeded(f"cannot create {path}: run as root") from None
    except OSError as e:
        raise HugeloadError(f"cannot create mount point {path}: {e.strerror}") from None
    if _libc.mount(b"hugetlbfs", str(p).encode(), b"hugetlbfs", 0, options.encode()) != 0:
        err = ctypes.get_errno()
        if created:
            p.rmdir()
        if err == errno.EPERM:
            raise PermissionNeeded(f"mounting hugetlbfs on {path} needs root (CAP_SYS_ADMIN)")
        raise HugeloadError(f"mount -t hugetlbfs -o {options} {path} failed: {os.strerror(err)}")
    with ledger.edit(state_dir) as data:
        data["mounts"] = [m for m in data["mounts"] if m["path"] != str(p)]
        data["mounts"].append({"path": str(p), "page_size_kb": kb, "created_dir": created, "owner": owner})
        data["events"].append({"action": "mount", "path": str(p), "page_size_kb": kb, "owner": owner})
    return MountResult(str(p), kb, True)


def open_files_under(root, path: str) -> list[str]:
    """Processes holding a file under `path` open or mapped: 'PID (comm) FILE'."""
    prefix = os.path.realpath(path) if str(root) == "/" else path
    return [f"{h} {h.path}" for h in procs.holders(root, prefix=prefix)]


def check_idle(root, path: str) -> None:
    """Raise unless the mount at `path` has no open, mapped or staged files."""
    m = find_mount(root, path)
    if m is None:
        return
    busy = open_files_under(root, m.path)
    if busy:
        raise HugeloadError(f"{m.path} is in use by {'; '.join(busy[:3])}: stop them first or pass --force")
    files = sorted(os.listdir(m.path))
    if files:
        raise HugeloadError(
            f"{m.path} holds {len(files)} file(s) ({', '.join(files[:3])}): "
            "unstage the models first (hugeload unstage) or pass --force"
        )


def umount(root, path: str, force: bool = False, state_dir=None) -> bool:
    """Unmount a hugetlbfs mount; refuses while files on it are open or present unless `force`.
    Removes the directory when hugeload created it.  Returns False when it was not mounted."""
    m = find_mount(root, path)
    if m is None:
        return False
    if not force:
        check_idle(root, m.path)
    flags = MNT_DETACH if force else 0
    if _libc.umount2(m.path.encode(), flags) != 0:
        err = ctypes.get_errno()
        if err == errno.EPERM:
            raise PermissionNeeded(f"unmounting {m.path} needs root")
        raise HugeloadError(f"umount {m.path} failed: {os.strerror(err)}")
    with ledger.edit(state_dir) as data:
        entry = next((e for e in data["mounts"] if e["path"] == m.path), None)
        data["mounts"] = [e for e in data["mounts"] if e["path"] != m.path]
        data["events"].append({"action": "umount", "path": m.path, "page_size_kb": m.page_size_kb})
    if entry and entry.get("created_dir"):
        with contextlib.suppress(OSError):
            os.rmdir(m.path)
    return True


def hugeload_mounts(state_dir=None) -> list[dict]:
    return ledger.load(state_dir)["mounts"]
