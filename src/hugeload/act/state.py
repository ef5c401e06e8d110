"""hugeload's state directory, the trust hugeload puts in it, and atomic JSON files in it.

The state directory (default /run/hugeload: tmpfs, so it empties on reboot just
as pools and hugetlbfs files do) holds the ledger of pool changes and the model
store.  Tests point HUGELOAD_STATE_DIR at a temporary directory.

Modes (hugeload runs as root on shared machines; engines may run as other users):
  <state>              0755 root   others may reach the store's index and staged copies
  <state>/ledger.json  0600        pools and mounts hugeload changed: root's business
  <state>/store        0755        store/redirects 0644 (the preload library's index),
                                   store/mnt-* 0755 (hugetlbfs), a model's copies 0644
                                   (0640 and its group with `stage --group`)
  <state>/store/models 0700        manifests (source paths): root only
  <state>/store/locks  0700
  other subdirectories 0700 (ensure_dir)
A state directory (or one above it) that another user could write, that is not root's
(not the caller's, for a non-root caller), or that is a symbolic link is refused in one
line: whoever can write there could make root delete, unmount or serve what they like.
"""

import contextlib
import fcntl
import json
import os
import stat
import tempfile
import time
from pathlib import Path

from hugeload.act import crashpoint
from hugeload.errors import HugeloadError, PermissionNeeded

DEFAULT_STATE_DIR = "/run/hugeload"
PUBLIC_DIR_MODE = 0o755
PRIVATE_DIR_MODE = 0o700


class UntrustedState(HugeloadError):
    """The state directory (or the store in it) could be written by another user."""


def state_dir(override: str | os.PathLike | None = None) -> Path:
    """Absolute: the store records absolute paths, which must not depend on the working directory."""
    return Path(os.path.abspath(override or os.environ.get("HUGELOAD_STATE_DIR") or DEFAULT_STATE_DIR))


def _why_untrusted(st: os.stat_result, final: bool) -> str | None:
    """Why a directory on the way to (or at) hugeload's state could have been changed by
    another user, or None.  Above the final directory, a symbolic link of root's (/var/run) is
    fine, and so is a sticky directory (/tmp): others cannot rename what is not theirs."""
    uid = os.geteuid()
    if st.st_uid not in (0, uid):
        return f"is owned by uid {st.st_uid}, not root"
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link" if final else None
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and (final or not st.st_mode & stat.S_ISVTX):
        return f"is writable by others (permissions {stat.S_IMODE(st.st_mode):04o})"
    return None


def check_dir(path: Path, what: str = "state directory", ancestors: bool = True) -> None:
    """Raise UntrustedState unless `path` (a directory, or one still to be made) and every
    directory above it, both as named and as resolved, could only have been written by root (or
    this user): a link planted on the way counts as much as one at the end."""
    path = Path(os.path.abspath(path))
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None  # to be made: what is above it must still be safe
    if st is not None:
        why = _why_untrusted(st, final=True)
        if why:
            raise UntrustedState(
                f"refusing the {what} {path}: it {why}; it must be a directory of root's that only root can write"
            )
    if not ancestors:
        return
    real = Path(os.path.realpath(path.parent))
    for d in dict.fromkeys([*reversed(path.parents), *reversed(real.parents), real]):
        try:
            st = os.lstat(d)
        except FileNotFoundError:
            continue  # made below, by us
        why = _why_untrusted(st, final=False)
        if why:
            raise UntrustedState(f"refusing the {what} {path}: {d} above it {why}")


def check_state_dir(override=None) -> Path:
    d = state_dir(override)
    check_dir(d)
    return d


def make_state_dir(override=None) -> Path:
    """The state directory, created 0755 root when missing, checked when present."""
    d = state_dir(override)
    check_dir(d)
    try:
        d.mkdir(mode=PUBLIC_DIR_MODE, parents=True)
        os.chmod(d, PUBLIC_DIR_MODE)
    except PermissionError:
        raise PermissionNeeded(f"cannot create the state directory {d}: run as root") from None
    except FileExistsError:
        st = os.lstat(d)
        if stat.S_IMODE(st.st_mode) == PRIVATE_DIR_MODE and st.st_uid == os.geteuid():
            os.chmod(d, PUBLIC_DIR_MODE)  # made by an older hugeload: let others reach the index
    except OSError as e:
        raise HugeloadError(f"cannot create the state directory {d}: {e.strerror}") from None
    check_dir(d, ancestors=False)
    return d


def make_dir(path: Path, mode: int) -> Path:
    """One directory of the state directory's own (its parent exists and is trusted), created
    with `mode`; an existing one must be ours, a directory, no symbolic link, no other writer."""
    try:
        os.mkdir(path, mode)
        os.chmod(path, mode)
    except FileExistsError:
        pass
    except PermissionError:
        raise PermissionNeeded(f"cannot create {path}: run as root") from None
    except OSError as e:
        raise HugeloadError(f"cannot create {path}: {e.strerror}") from None
    check_dir(path, "directory", ancestors=False)
    return path


def ensure_dir(path: Path) -> Path:
    """A private directory (0700) and any missing parents.  Refused in one line when it, or
    anything on the way to it, is a link or a directory another user made or can change (a
    state directory pointed into /tmp, where someone made it first)."""
    path = Path(path)
    check_dir(path, "directory")
    try:
        path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    except PermissionError:
        raise PermissionNeeded(f"cannot create {path}: run as root") from None
    except OSError as e:
        raise HugeloadError(f"cannot create {path}: {e.strerror}") from None
    check_dir(path, "directory", ancestors=False)
    owner = os.lstat(path).st_uid
    if owner != os.geteuid():
        raise UntrustedState(f"refusing the directory {path}: it is owned by uid {owner}, not by this user")
    os.chmod(path, PRIVATE_DIR_MODE)
    return path


def ensure_parent(path: Path) -> None:
    """Before a file is made in path's directory: the directory is checked (and made 0700 when
    missing), without changing the mode of one that exists (the state directory is 0755)."""
    if path.parent.is_dir():
        check_dir(path.parent, "directory")
    else:
        ensure_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str, mode: int = 0o600) -> None:
    """Temp file in the same directory, fsync, rename, fsync of the directory: readers see the
    old or the new file, never half, and the new one survives a crash once this returns."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), mode)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        crashpoint.point(f"{path.name} written, not renamed")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    crashpoint.point(f"{path.name} renamed")
    fsync_dir(path.parent)


def write_json(path: Path, data, mode: int = 0o600) -> None:
    ensure_parent(path)
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n", mode)


def read_json(path: Path, default):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return default
    except (json.JSONDecodeError, UnicodeDecodeError):
        # A torn file cannot happen with write_json; treat a hand-edited broken one as a clear error.
        raise HugeloadError(f"{path} is not valid JSON: fix or remove it") from None


@contextlib.contextmanager
def locked(path: Path, timeout: float | None = None, shared: bool = False):
    """An flock on `path` (created 0600), exclusive unless `shared`; waits up to `timeout`
    seconds (None: forever).  The kernel drops it when the process dies, kill -9 included."""
    ensure_parent(path)
    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        how = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, how | (fcntl.LOCK_NB if deadline is not None else 0))
                break
            except BlockingIOError:  # only without a deadline's None: LOCK_NB is set then
                if deadline is None or time.monotonic() >= deadline:
                    raise TimeoutError(str(path)) from None
                time.sleep(0.05)
        yield fd
    finally:
        os.close(fd)


def lock_held(path: Path) -> bool:
    """Whether another process holds the flock on `path` now (False when there is no such file)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
