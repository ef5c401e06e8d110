"""Where the store keeps things, the names it allows, and how it walks its own directories.

Layout under the state directory (act/state.py gives the modes):
  store/mnt-1g, store/mnt-2m       hugetlbfs mounts the store makes when it needs them
  store/mnt-*/<name>/<file>...     a staged model's first copy: the source files, each padded
                                   to a page multiple
  store/mnt-*/<name>@node<N>/...   further copies on other NUMA nodes ('@' is not allowed in
                                   names, so no model's directory can be another's copy)
  store/mnt-*/.staging-<name>-<pid> a copy being made, by that process under the model's lock;
                                   renamed to <name> only when complete
  store/models/<name>.json         the manifest, written last: a model without one is not ready
  store/redirects                  the preload library's index of ready files (act/redirects.py)
  store/locks/<name>.lock          one stager or unstager per model at a time
  store/locks/.store               the store lock: the shared files above change under it

Walking: the store is root's, but hugeload never trusts that nothing was put in it.  Like
systemd's chase(), every directory is opened relative to its parent with O_NOFOLLOW, so a
symbolic link where a directory should be is refused instead of followed, and removal
(`remove_tree`) unlinks names inside directory descriptors it opened itself, never crossing
into another file system.
"""

import contextlib
import errno
import os
import re
from pathlib import Path

from hugeload import pages
from hugeload.act import crashpoint, state
from hugeload.act.state import UntrustedState
from hugeload.errors import UsageError

SPLIT_RE = re.compile(r"^(?P<prefix>.*)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
COPY_RE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._+-]{0,127})(?:@node(?P<node>\d+))?$")
STAGING_PREFIX = ".staging-"
STORE_LOCK = ".store"
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


# ---------------------------------------------------------------- paths


def store_dir(state_dir=None) -> Path:
    return state.state_dir(state_dir) / "store"


def mount_dir(kb: int, state_dir=None) -> Path:
    return store_dir(state_dir) / mount_name(kb)


def mount_name(kb: int) -> str:
    return f"mnt-{pages.by_kb(kb).name}"


def models_dir(state_dir=None) -> Path:
    return store_dir(state_dir) / "models"


def manifest_path(name: str, state_dir=None) -> Path:
    return models_dir(state_dir) / f"{name}.json"


def locks_dir(state_dir=None) -> Path:
    return store_dir(state_dir) / "locks"


def lock_path(name: str, state_dir=None) -> Path:
    return locks_dir(state_dir) / f"{name}.lock"


def store_lock_path(state_dir=None) -> Path:
    return locks_dir(state_dir) / STORE_LOCK


def copy_name(name: str, node: int, first: bool) -> str:
    """The first copy keeps the plain name; further copies sit beside it as <name>@node<N>."""
    return name if first else f"{name}@node{node}"


def copy_owner(dirname: str) -> str | None:
    """The model a copy directory belongs to ('m' for 'm' and 'm@node1'), or None."""
    m = COPY_RE.match(dirname)
    return m.group("name") if m else None


def staging_name(name: str, pid: int | None = None) -> str:
    return f"{STAGING_PREFIX}{name}-{os.getpid() if pid is None else pid}"


def staging_owner(dirname: str) -> str:
    """The model name in '.staging-<name>-<pid>'."""
    return dirname[len(STAGING_PREFIX) :].rsplit("-", 1)[0]


def mount_kb(path) -> int:
    """The page size of a store mount directory, from its name."""
    name = Path(path).name
    for page in pages.HUGE:
        if name == mount_name(page.kb):
            return page.kb
    return pages.PAGE_2M.kb


# ---------------------------------------------------------------- names and sources


def check_name(name: str) -> str:
    if not NAME_RE.match(name) or name.startswith(STAGING_PREFIX):
        raise UsageError(f"model name {name!r} is not allowed: use letters, digits, '.', '_', '+', '-' (no '/')")
    return name


def default_name(path: str) -> str:
    base = os.path.basename(path)
    m = SPLIT_RE.match(base)
    base = m.group("prefix") if m else os.path.splitext(base)[0] or base
    return re.sub(r"[^A-Za-z0-9._+-]", "_", base).lstrip("._+-")[:128] or "model"


def source_files(path: str) -> list[str]:
    """The files that make up a model: all parts of a split GGUF, else the file itself."""
    if not os.path.exists(path):
        raise UsageError(f"no such file: {path}")
    if os.path.isdir(path):
        raise UsageError(f"{path} is a directory, not a model file")
    if not os.path.isfile(path):
        raise UsageError(f"{path} is not a regular file")
    m = SPLIT_RE.match(os.path.basename(path))
    if not m:
        return [os.path.abspath(path)]
    count = int(m.group("count"))
    d = os.path.dirname(os.path.abspath(path))
    parts = [os.path.join(d, f"{m.group('prefix')}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]
    missing = [p for p in parts if not os.path.isfile(p)]
    if missing:
        raise UsageError(f"split model is missing {len(missing)} of {count} parts, first: {missing[0]}")
    return parts


def inside_store(staged: str, kb: int, name: str, state_dir=None) -> bool:
    """Whether a manifest's staged path is where the layout puts a copy of `name` in `kb` pages:
    <store>/mnt-<page>/<name or name@nodeN>/<one plain file name>."""
    p = Path(os.path.abspath(staged))
    return (
        p.parent.parent == mount_dir(kb, state_dir)
        and copy_owner(p.parent.name) == name
        and p.name not in ("", ".", "..")
        and str(p) == staged
    )


# ---------------------------------------------------------------- the store's own directories


def make_store(state_dir=None) -> Path:
    """Create (or check) the state directory and the store's directories, with their modes."""
    state.make_state_dir(state_dir)
    top = state.make_dir(store_dir(state_dir), state.PUBLIC_DIR_MODE)
    state.make_dir(models_dir(state_dir), state.PRIVATE_DIR_MODE)
    state.make_dir(locks_dir(state_dir), state.PRIVATE_DIR_MODE)
    for page in pages.HUGE:  # refused before anything is reserved or mounted, not half-way
        p = top / mount_name(page.kb)
        if p.is_symlink() or (p.exists() and not p.is_dir()):
            raise UntrustedState(
                f"refusing the store {top}: {p.name} in it is a symbolic link or not a directory, where hugeload "
                "mounts its hugetlbfs; remove it"
            )
    return top


def open_dir(name, dir_fd: int | None = None, what: str | None = None) -> int:
    """A directory descriptor, never through a symbolic link (UntrustedState when one is there)."""
    try:
        return os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UntrustedState(
                f"refusing {what or name}: it is a symbolic link or not a directory, where hugeload's store "
                "keeps a directory of its own; remove it"
            ) from None
        raise


@contextlib.contextmanager
def opened(name, dir_fd: int | None = None, what: str | None = None):
    fd = open_dir(name, dir_fd, what)
    try:
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def open_mount(kb: int, state_dir=None):
    """The store's mount directory for `kb` pages as a descriptor (None when it does not exist),
    opened from the store directory down without following a link."""
    top = store_dir(state_dir)
    try:
        fd = open_dir(top, what=str(top))
    except FileNotFoundError:
        yield None
        return
    try:
        try:
            mfd = open_dir(mount_name(kb), fd, what=str(top / mount_name(kb)))
        except FileNotFoundError:
            yield None
            return
        try:
            yield mfd
        finally:
            os.close(mfd)
    finally:
        os.close(fd)


def list_dir(fd: int) -> list[str]:
    return sorted(os.listdir(fd))


def is_dir_at(fd: int, name: str) -> bool:
    import stat

    try:
        return stat.S_ISDIR(os.lstat(name, dir_fd=fd).st_mode)
    except FileNotFoundError:
        return False


def remove_tree(dir_fd: int, name: str) -> list[str]:
    """Remove `name` inside the directory `dir_fd`: a file or link is unlinked (a link's target
    is never touched), a directory is emptied through descriptors and removed; a directory on
    another file system (a mount inside the store) is left alone.  Returns the names removed."""
    import stat

    try:
        st = os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return []
    if not stat.S_ISDIR(st.st_mode):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dir_fd)
        crashpoint.point(f"unlinked {name}")
        return [name]
    if st.st_dev != os.fstat(dir_fd).st_dev:
        return []
    removed = []
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return []
    try:
        if os.fstat(fd).st_ino != st.st_ino:
            return []  # replaced between the lstat and the open: not what was asked for
        for entry in list_dir(fd):
            removed += [f"{name}/{r}" for r in remove_tree(fd, entry)]
    finally:
        os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(name, dir_fd=dir_fd)
    crashpoint.point(f"removed directory {name}")
    return removed + [name]
