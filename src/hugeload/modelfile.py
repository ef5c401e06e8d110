"""Model files, opened and read the one way: which checked reader a file goes to (GGUF by its
magic, safetensors by its name), and how either opens it.

Model files come from the internet and hugeload reads them as root: every header is read by
hugeload.gguf.read_header or hugeload.safetensors.read_header, which check it against the
file's size before allocating anything and raise FormatError (one line) for a bad file."""

import contextlib
import os
import stat
from collections.abc import Iterator

from hugeload.errors import UsageError

SAFETENSORS_SUFFIX = ".safetensors"


@contextlib.contextmanager
def open_regular(path: str) -> Iterator[tuple[int, int]]:
    """(descriptor, size) of a regular file opened read-only; UsageError, in one line, for a
    missing or unreadable path, a directory, or anything else that is not a regular file.
    O_NONBLOCK: a FIFO planted under a model's name must not hang the open."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise UsageError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a directory, not a file") from None
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"{path} is not a regular file")
        try:
            yield fd, st.st_size
        except OSError as e:
            raise UsageError(f"cannot read {path}: {e.strerror}") from None
    finally:
        os.close(fd)


def read_header(path):
    """The checked header of a model file (gguf.Header or safetensors.Header), or None when the
    file is neither format, or is GGUF and the optional gguf package is missing."""
    from hugeload import gguf, safetensors

    path = os.fspath(path)
    if gguf.is_gguf(path):
        try:
            return gguf.read_header(path)
        except gguf.MissingPackage:
            return None
    if path.endswith(SAFETENSORS_SUFFIX):
        return safetensors.read_header(path)
    return None
