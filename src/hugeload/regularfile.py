"""The one way hugeload opens a file it did not write (a model, a header): read-only, never
hanging on a FIFO, and refusing anything that is not a regular file in one line.  Below the model
readers (gguf, safetensors) and modelfile, which picks between them, so none imports the other."""

import contextlib
import os
import stat
from collections.abc import Iterator

from hugeload.errors import UsageError


def _refusal(path: str, e: OSError) -> UsageError:
    """The one line for a path that could not be opened."""
    if isinstance(e, FileNotFoundError):
        return UsageError(f"no such file: {path}")
    if isinstance(e, IsADirectoryError):
        return UsageError(f"{path} is a directory, not a file")
    return UsageError(f"cannot read {path}: {e.strerror}")


@contextlib.contextmanager
def open_regular(path: str) -> Iterator[tuple[int, int]]:
    """(descriptor, size) of a regular file opened read-only; UsageError, in one line, for a
    missing or unreadable path, a directory, or anything else that is not a regular file.
    O_NONBLOCK: a FIFO planted under a model's name must not hang the open."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        raise _refusal(path, e) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"{path} is not a regular file")
        try:
            yield fd, st.st_size
        except OSError as e:
            raise _refusal(path, e) from None
    finally:
        os.close(fd)
