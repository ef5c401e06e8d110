"""hugeload's state directory and atomic JSON files in it.

The state directory (default /run/hugeload: tmpfs, so it empties on reboot just
as pools and hugetlbfs files do) holds the ledger of pool changes and the model
store's manifests.  Tests point HUGELOAD_STATE_DIR at a temporary directory.
"""

import contextlib
import fcntl
import json
import os
import stat
import tempfile
from pathlib import Path

DEFAULT_STATE_DIR = "/run/hugeload"


def state_dir(override: str | os.PathLike | None = None) -> Path:
    return Path(override or os.environ.get("HUGELOAD_STATE_DIR") or DEFAULT_STATE_DIR)


def _check_chain(path: Path) -> None:
    """Every component from / to `path`, as named and as resolved, must belong to root or to
    this user, and no directory among them may be writable by others (sticky ones, as /tmp,
    aside): otherwise another user could have planted a link or a directory on the way."""
    from hugeload.errors import HugeloadError

    named = Path(os.path.abspath(path))
    real = Path(os.path.realpath(path))
    for p in dict.fromkeys([*reversed(named.parents), named, *reversed(real.parents), real]):
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            continue
        if st.st_uid not in (0, os.geteuid()):
            raise HugeloadError(
                f"{p} belongs to uid {st.st_uid}: hugeload keeps its state only where no other user can plant files"
            )
        if stat.S_ISDIR(st.st_mode) and st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            raise HugeloadError(
                f"{p} is writable by others (mode {stat.S_IMODE(st.st_mode):o}): not for hugeload's state"
            )


def ensure_dir(path: Path) -> Path:
    """The directory, made 0700 if missing.  Refused when it, or anything on the way to it, is
    a link or directory another user made or can change (a state directory pointed into /tmp,
    where someone made it first): root keeps its ledger, locks and reports only in its own."""
    from hugeload.errors import HugeloadError

    path = Path(path)
    existing = path
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    _check_chain(existing)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    _check_chain(path)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise HugeloadError(
            f"{path} is a link or not a directory: hugeload keeps its state only in a directory of its own"
        )
    if st.st_uid != os.geteuid():
        raise HugeloadError(f"{path} belongs to uid {st.st_uid}, not to this user: remove it or choose another")
    os.chmod(path, 0o700)
    return path


def write_text_atomic(path: Path, text: str, mode: int = 0o600) -> None:
    """Temp file in the same directory, fsync, rename: readers see the old or the new file, never half."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), mode)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: Path, data) -> None:
    ensure_dir(path.parent)
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: Path, default):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return default
    except json.JSONDecodeError:
        # A torn file cannot happen with write_json; treat a hand-edited broken one as a clear error.
        from hugeload.errors import HugeloadError

        raise HugeloadError(f"{path} is not valid JSON: fix or remove it") from None


@contextlib.contextmanager
def locked(path: Path, timeout: float | None = None):
    """An exclusive flock on `path` (created 0600); waits up to `timeout` seconds (None: forever)."""
    import time

    ensure_dir(path.parent)
    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (fcntl.LOCK_NB if deadline is not None else 0))
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(str(path)) from None
                time.sleep(0.05)
        yield fd
    finally:
        os.close(fd)
