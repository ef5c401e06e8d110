"""Copying a source file into a hugetlbfs file, and hashing either.

Facts designed around (measured here): hugetlbfs has no write(), so a copy is ftruncate to
the rounded size, mmap MAP_SHARED, and preadv straight into the map from several threads;
the mmap reserves every page of the file at once (ENOMEM when the pool cannot give them), so
a copy that starts never dies of a SIGBUS half-way; a MAP_PRIVATE map would reserve a second
set of pages.
"""

import contextlib
import errno
import hashlib
import mmap
import os
from concurrent.futures import ThreadPoolExecutor

from hugeload import pages
from hugeload.errors import HugeloadError, PoolError
from hugeload.units import KiB, MiB, ceil_div

CHUNK = 64 * MiB
FILE_MODE = 0o644
GROUP_FILE_MODE = 0o640


class SourceChanged(HugeloadError):
    pass


class NoPages(PoolError):
    """The pool could not give the pages of one staged file (mmap: ENOMEM)."""


def padded_size(size: int, kb: int) -> int:
    page = kb * KiB
    return ceil_div(size, page) * page if size else page


def copy_into(
    src: str,
    dir_fd: int,
    name: str,
    size: int,
    kb: int,
    threads: int,
    progress,
    gid: int | None = None,
    expect: tuple | None = None,
    part: tuple[int, int] | None = None,
) -> None:
    """Copy `size` bytes of `src` into a new file `name` in the directory `dir_fd` (created
    O_EXCL | O_NOFOLLOW: never an existing file, never through a link), padded with zeros to
    whole `kb` pages.  Mode 0644, or 0640 with group `gid`.  SourceChanged when the source is
    not the file `expect` (dev, ino, size, mtime, ctime: what the manifest will record) or
    changes while it is read; NoPages when the pool cannot hold the copy.  `part` (offset,
    length): only those bytes of the source, at the start of the new file (a copy in mixed
    page sizes is one file per part)."""
    start, length = part if part is not None else (0, size)
    padded = padded_size(length, kb)
    sfd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st0 = os.fstat(sfd)
        if st0.st_size != size:
            raise SourceChanged(f"{src} changed size before copying ({size} -> {st0.st_size} bytes)")
        now = (st0.st_dev, st0.st_ino, st0.st_size, st0.st_mtime_ns, st0.st_ctime_ns)
        if expect is not None and now != tuple(expect):
            raise SourceChanged(f"{src} changed before copying; nothing was staged")
        mode = FILE_MODE if gid is None else GROUP_FILE_MODE
        dfd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
        try:
            if gid is not None:
                os.fchown(dfd, 0, gid)
            os.fchmod(dfd, mode)
            os.ftruncate(dfd, padded)
            try:
                mm = mmap.mmap(dfd, padded, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
            except OSError as e:
                err = NoPages if e.errno == errno.ENOMEM else PoolError
                raise err(
                    f"cannot map {padded // (kb * KiB)} x {pages.name(kb)} pages for {os.path.basename(src)}: "
                    f"{e.strerror}"
                ) from None
            try:
                with contextlib.suppress(AttributeError, OSError):
                    os.posix_fadvise(sfd, start, length, os.POSIX_FADV_SEQUENTIAL)
                view = memoryview(mm)

                def copy(off: int) -> None:
                    end = min(off + CHUNK, length)
                    pos = off
                    while pos < end:
                        try:
                            n = os.preadv(sfd, [view[pos:end]], start + pos)
                        except InterruptedError:
                            continue
                        if n == 0:
                            raise SourceChanged(f"{src} shrank while copying (ended at {start + pos} of {size} bytes)")
                        pos += n
                        progress(n)

                with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
                    for fut in [pool.submit(copy, off) for off in range(0, length, CHUNK)]:
                        fut.result()
                view.release()
            finally:
                mm.close()
        finally:
            os.close(dfd)
        st1 = os.fstat(sfd)
        if (st1.st_size, st1.st_mtime_ns, st1.st_ctime_ns) != (st0.st_size, st0.st_mtime_ns, st0.st_ctime_ns):
            raise SourceChanged(f"{src} changed while copying; nothing was staged")
        # The staged copy is what engines read from now: do not hold the model twice in memory.
        with contextlib.suppress(AttributeError, OSError):
            os.posix_fadvise(sfd, start, length, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(sfd)


def sha256(path: str, size: int, dir_fd: int | None = None) -> str:
    """SHA-256 of the first `size` bytes (hugetlbfs supports read(), so a staged copy is hashed
    the same way as its source)."""
    return sha256_pieces([(path, size)], dir_fd)


def sha256_pieces(pieces: list[tuple[str, int]], dir_fd: int | None = None) -> str:
    """SHA-256 of the first bytes of several files read one after the other ((path, bytes) each:
    the parts of a copy in mixed page sizes)."""
    h = hashlib.sha256()
    for path, size in pieces:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | (os.O_NOFOLLOW if dir_fd is not None else 0), dir_fd=dir_fd)
        with open(fd, "rb", buffering=0) as f:
            left = size
            while left:
                b = f.read(min(CHUNK, left))
                if not b:
                    break
                h.update(b)
                left -= len(b)
    return h.hexdigest()
