"""Writes to /proc and /sys, with errors turned into one clear message."""

import errno
import os

from hugeload.errors import HugeloadError, NotSupported, PermissionNeeded


def write_text(path: str | os.PathLike, value: str) -> None:
    """Write a control file.  Some kernel writes fail only partially (a pool that
    comes back short still returns success), so callers read back what they need."""
    try:
        with open(path, "w") as f:
            f.write(value)
    except PermissionError:
        raise PermissionNeeded(f"permission denied writing {path}: run as root") from None
    except FileNotFoundError:
        raise NotSupported(f"{path} does not exist: this kernel lacks that huge page control") from None
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise PermissionNeeded(
                f"cannot write {path}: {e.strerror} (run as root, outside a read-only container)"
            ) from None
        raise HugeloadError(f"writing {value.strip()!r} to {path} failed: {e.strerror}") from None
