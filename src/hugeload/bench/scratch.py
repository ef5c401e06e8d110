"""Temporary files and directories of the benchmarks, safe where other users can write.

The benchmarks run as root and write into shared places (/dev/shm, the system's temporary
directory).  A local user may plant a symlink or a directory of their own under the name a
bench is about to use, to make root write through it or to swap in the file root then runs.
So: a directory is created by the bench itself, exclusively and 0700 (never reused unless it is
a leftover this user owns); a file is created O_EXCL|O_NOFOLLOW, 0600, inside such a directory.
"""

import errno
import os
import shutil
import stat
import tempfile
from pathlib import Path

from hugeload.errors import HugeloadError

COPY_BLOCK = 16 << 20


def _ours(st: os.stat_result) -> bool:
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()


def private_dir(parent: str | os.PathLike, name: str) -> Path:
    """A fresh directory `parent/name`, 0700, created here; `hugeload gc` finds it by that name.

    A leftover of this user's under the name (a killed run of the same pid) is removed first.
    When someone else holds the name (another user's directory, a symlink), the name is not used:
    the directory is `parent/name-XXXXXXXX` from mkdtemp instead."""
    path = Path(parent) / name
    for _ in range(2):
        try:
            os.mkdir(path, 0o700)
            if _ours(os.lstat(path)):
                os.chmod(path, 0o700)  # a umask never widens it, but be explicit
                return path
        except FileExistsError:
            pass
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if not _ours(st):
            break
        shutil.rmtree(path, ignore_errors=True)  # ours, and no symlink: rmtree does not follow links inside
    return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=parent))


def create_private(path: str | os.PathLike) -> int:
    """A new file at `path`, 0600, open for writing; never an existing file, never through a symlink
    in its last component (the directories above are the caller's: a private_dir())."""
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise HugeloadError(f"{path} exists already: refusing to write over it") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise HugeloadError(f"{path} is a symbolic link: refusing to write through it") from None
        raise


def touch_private(path: str | os.PathLike) -> Path:
    """An empty private file (a report the preload library then appends to)."""
    os.close(create_private(path))
    return Path(path)


def copy_private(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy `src` to a new private file `dst` (see create_private)."""
    fd = create_private(dst)
    try:
        with open(src, "rb") as fin, os.fdopen(fd, "wb", closefd=False) as fout:
            shutil.copyfileobj(fin, fout, COPY_BLOCK)
    except BaseException:
        os.close(fd)
        Path(dst).unlink(missing_ok=True)
        raise
    os.close(fd)
