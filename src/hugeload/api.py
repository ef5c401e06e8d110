"""Python API: files and buffers in huge pages, for NumPy and PyTorch code.

    m = hugeload.map_file("model.safetensors")   # read-only, 1 GB pages when it can
    buf = hugeload.alloc(8 << 30)                  # writable, zero-filled

Neither call reserves pages: the pool must already hold free pages
(`hugeload reserve --page-size 1g --count N`, as root).  Page sizes are tried
in the order 1g -> 2m -> thp -> 4k, starting from the one asked for; `fallback`
decides whether a size that cannot be had moves on to the next one or raises
PoolError.  Only the standard library is imported here.
"""

import contextlib
import errno
import mmap
import os
import stat
import sys
import threading
import weakref
from typing import NamedTuple

from hugeload import forkcopy, pages
from hugeload.errors import FormatError, PoolError, UsageError
from hugeload.forkcopy import buffer_address as _buffer_address
from hugeload.pages import BACKINGS
from hugeload.probe import pools as probe_pools
from hugeload.probe import procs
from hugeload.probe.thp import THP_DIR, read_thp
from hugeload.units import MiB, ceil_div, format_bytes

__all__ = ["map_file", "alloc", "HugeMapping", "FileChanged", "page_size_of", "BACKINGS"]

THP_KB = pages.Backing.THP.page.kb

READ_CHUNK = 64 * MiB
MAX_READ_THREADS = 4
THP_ENABLED = f"/{THP_DIR}/enabled"  # named in messages; read through probe.thp
RESERVE_HINT = "hugeload reserve --page-size {name} --count {count}"


class FileChanged(FormatError):
    """The file changed (size, mtime or contents' length) while it was being read."""


# --------------------------------------------------------------------------- helpers


def page_size_of(obj) -> int | None:
    """Page size in kB backing `obj`, read from /proc/self/smaps.

    `obj` is an address, a NumPy array, a torch tensor, a HugeMapping or anything
    with the buffer protocol.  hugetlb pages give KernelPageSize (1048576, 2048);
    an anonymous mapping counts as 2048 when THP backs some of it (AnonHugePages),
    else 4.  None when the address is in no mapping."""
    if isinstance(obj, int):
        address = obj
    elif isinstance(obj, HugeMapping):
        address = obj.address
    elif hasattr(obj, "data_ptr"):  # torch.Tensor
        address = obj.data_ptr()
    elif hasattr(obj, "__array_interface__"):
        address = obj.__array_interface__["data"][0]
    else:
        address = _buffer_address(obj)
    m = procs.smaps_entry("/", "self", address)
    if m is None:
        return None
    if m.kernel_page_kb > 4:
        return m.kernel_page_kb
    return THP_KB if m.anon_huge_kb > 0 else 4


def _parse_page_size(page_size: str) -> str:
    """ "auto" or a backing name; page sizes in any spelling hugeload.pages accepts."""
    backing = pages.parse_backing(page_size)
    return "auto" if backing is None else backing.value


def _cascade(page_size: str, nbytes: int, fallback: bool | None) -> list[str]:
    """The backings to try, in order: auto starts where hugeload.pages' size rule says (as
    the preload library does); an explicit size starts there exactly."""
    t = _parse_page_size(page_size)
    if nbytes == 0:
        return ["4k"]  # nothing to put in pages; hugetlb cannot map zero bytes
    if t == "auto":
        first = pages.first_page(nbytes).name
        fallback = True if fallback is None else fallback
    else:
        first = t
        fallback = False if fallback is None else fallback
    i = BACKINGS.index(first)
    return list(BACKINGS[i:]) if fallback else [first]


def _round_up(n: int, align: int) -> int:
    return ceil_div(n, align) * align


def _pool_note(name: str, kb: int, need: int) -> str:
    try:
        pool = probe_pools.system_pool("/", kb)
    except Exception:  # the message is a hint; never fail while building it
        return f"the {name.upper()} pool cannot provide {need} pages"
    return (
        f"the {name.upper()} pool has {max(0, pool.available)} unclaimed free pages ({pool.total} total), {need} needed"
    )


class _Anon(NamedTuple):
    mm: mmap.mmap
    offset: int  # where the usable region starts inside mm
    backing: str


def _map_anon(backing: str, nbytes: int) -> _Anon:
    """One anonymous private read-write mapping in `backing`; OSError/PoolError if not."""
    prot = mmap.PROT_READ | mmap.PROT_WRITE
    base = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    if pages.Backing(backing).hugetlb:
        page = pages.by_name(backing)
        kb = page.kb
        if kb not in probe_pools.page_sizes("/"):
            raise PoolError(f"this kernel offers no {backing.upper()} huge pages")
        # hugetlb munmap needs the length in whole pages: map whole pages, expose a slice.
        length = page.round_up(nbytes)
        try:
            if page == pages.PAGE_1G:
                mm = _map_memfd(page, length, prot)
            else:
                mm = mmap.mmap(-1, length, flags=base | page.mmap_flags, prot=prot)
        except OSError as e:
            need = length // (kb * 1024)
            if e.errno == errno.ENOMEM:
                raise PoolError(
                    f"{_pool_note(backing, kb, need)}; reserve them first: "
                    f"`{RESERVE_HINT.format(name=backing, count=need)}` (as root)"
                ) from None
            raise PoolError(f"mapping {format_bytes(length)} in {backing.upper()} pages failed: {e.strerror}") from None
        return _Anon(mm, 0, backing)
    if backing == "thp":
        mode = read_thp("/").enabled
        if mode is None or mode == "never":
            raise PoolError(
                f"transparent huge pages are {'unavailable' if mode is None else 'disabled (never)'} in {THP_ENABLED}"
            )
        align = THP_KB * 1024
        length = _round_up(nbytes, align)
        mm = mmap.mmap(-1, length, flags=base, prot=prot)
        offset = (-_buffer_address(mm)) % align
        if offset:
            # The kernel aligns large anonymous maps on most versions; when it did
            # not, map one extra huge page and start at the first aligned byte.
            mm.close()
            mm = mmap.mmap(-1, length + align, flags=base, prot=prot)
            offset = (-_buffer_address(mm)) % align
        try:
            mm.madvise(mmap.MADV_HUGEPAGE)
        except OSError as e:
            mm.close()
            raise PoolError(f"madvise(MADV_HUGEPAGE) failed: {e.strerror}") from None
        return _Anon(mm, offset, "thp")
    mm = mmap.mmap(-1, max(nbytes, 1), flags=base, prot=prot)
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        with contextlib.suppress(OSError):  # a true 4 KB baseline even where THP is "always"
            mm.madvise(mmap.MADV_NOHUGEPAGE)
    return _Anon(mm, 0, "4k")


def _map_memfd(page: pages.PageSize, length: int, prot: int) -> mmap.mmap:
    """1 GB pages from a hugetlb memfd of our own, mapped shared (see _fork below)."""
    size_bits = page.mmap_flags & ~pages.MAP_HUGETLB  # the page size, encoded as memfd_create wants it too
    fd = os.memfd_create("hugeload:alloc", os.MFD_CLOEXEC | os.MFD_HUGETLB | size_bits)
    try:
        os.ftruncate(fd, length)
        return mmap.mmap(fd, length, flags=mmap.MAP_SHARED, prot=prot)  # reserves the pages, or ENOMEM
    finally:
        os.close(fd)  # the map keeps the file


def _map_cascade(order: list[str], nbytes: int, what: str) -> tuple[_Anon, list[tuple[str, str]]]:
    fallbacks: list[tuple[str, str]] = []
    for backing in order:
        try:
            return _map_anon(backing, nbytes), fallbacks
        except PoolError as e:
            fallbacks.append((backing, str(e)))
    reasons = "; ".join(f"{b}: {r}" for b, r in fallbacks)
    hint = "" if len(order) > 1 else " (pass fallback=True to accept smaller pages)"
    raise PoolError(f"cannot put {what} in {order[0].upper()} pages: {reasons}{hint}")


# --------------------------------------------------------------------------- HugeMapping


class HugeMapping:
    """Memory in huge pages, holding a file's bytes (map_file) or zeros (alloc).

    `buffer` is a memoryview of exactly len(self) bytes (read-only for map_file,
    writable for alloc); on Python >= 3.12 the object itself speaks the buffer
    protocol too.  Views made from it (np.frombuffer, torch.frombuffer, memoryview
    slices) keep the pages alive: close() releases them at once when no view is
    left, otherwise when the last view is garbage collected.  Never crashes on
    close, never leaves a view pointing at unmapped memory.
    """

    def __init__(
        self,
        mm: mmap.mmap,
        offset: int,
        size: int,
        backing: str,
        *,
        path: str | None = None,
        staged: bool = False,
        writable: bool = False,
        fallbacks=(),
        requested: str = "auto",
    ):
        self._mm = mm
        self._mm_ref = weakref.ref(mm)
        self._lock = threading.Lock()
        self._size = size
        self._offset = offset
        self._address = _buffer_address(mm) + offset
        full = memoryview(mm)
        self._rw = full[offset : offset + size] if not full.readonly else None
        self._ro = full[offset : offset + size].toreadonly()
        full.release()
        self.backing = backing
        self.path = path
        self.staged = staged
        self.writable = writable
        self.requested = requested
        self.fallbacks: list[tuple[str, str]] = list(fallbacks)
        self._page_kb: int | None = None
        self.deferred = False  # close() found live views; pages go when they do

    # -- the bytes
    @property
    def buffer(self) -> memoryview:
        """A new memoryview of the bytes: read-only unless from alloc().

        Each call returns a fresh view that holds the pages until it is released
        or collected, so consumers that keep only a reference to it (numpy,
        torch.frombuffer) stay valid after close()."""
        self._check_open()
        return memoryview(self._rw if self.writable else self._ro)

    def _writable_buffer(self) -> memoryview | None:
        """A fresh read-write view of an anonymous mapping's private copy (for
        torch.frombuffer).  None for a staged file: its MAP_SHARED pages are
        mapped read-only."""
        self._check_open()
        return None if self._rw is None else memoryview(self._rw)

    def __buffer__(self, flags: int) -> memoryview:  # PEP 688, Python >= 3.12
        view = self.buffer
        if flags & 1 and view.readonly:  # PyBUF_WRITABLE
            view.release()
            raise BufferError("this HugeMapping is read-only")
        return view

    def __release_buffer__(self, view: memoryview) -> None:
        view.release()

    def __len__(self) -> int:
        return self._size

    @property
    def address(self) -> int:
        return self._address

    @property
    def closed(self) -> bool:
        return self._mm is None

    @property
    def released(self) -> bool:
        """True once the pages are unmapped (after close() and the last view's death)."""
        mm = self._mm_ref()
        return mm is None or mm.closed

    @property
    def page_size(self) -> int:
        """Page size in kB that backs the bytes, verified in /proc/self/smaps.

        Fixed for hugetlb and staged mappings (read once); for THP it is 2048 as
        soon as the kernel backs any of it with huge pages, else 4."""
        if self._page_kb is not None:
            return self._page_kb
        if self.closed:
            raise ValueError("HugeMapping is closed")
        kb = page_size_of(self._address) if self._size else 4
        if kb is None:
            kb = pages.Backing(self.backing).page.kb
        if self.backing != "thp" or kb > 4:
            self._page_kb = kb
        return kb

    def _check_open(self) -> None:
        if self._mm is None:
            raise ValueError("HugeMapping is closed")

    # -- lifetime
    def close(self) -> None:
        """Release the pages, or, while views exist, as soon as the last one dies."""
        with self._lock:
            mm, self._mm = self._mm, None
            if mm is None:
                return
            for view in (self._rw, self._ro):  # internal views, never handed out
                if view is not None:
                    with contextlib.suppress(BufferError):  # a read in flight on another thread
                        view.release()
            self._rw = self._ro = None
            try:
                mm.close()
            except BufferError:
                # Views still point into the pages.  Drop our reference: the mmap
                # object lives exactly as long as they do and unmaps when freed.
                self.deferred = True

    def __enter__(self) -> "HugeMapping":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self.backing}"
        where = f" {self.path!r}" if self.path else ""
        staged = " staged" if self.staged else ""
        return f"<HugeMapping{where}{staged} {format_bytes(self._size)} {state}>"


# --------------------------------------------------------------------------- filling


def _fill(fd: int, dest: memoryview, size: int, path: str, threads: int | None = None) -> None:
    """Read bytes [0, size) of fd into dest with a few threads of positioned reads."""
    if size == 0:
        return
    n_threads = threads or max(1, min(MAX_READ_THREADS, os.cpu_count() or 1, ceil_div(size, READ_CHUNK)))
    step = _round_up(ceil_div(size, n_threads), 4096)
    errors: list[BaseException] = []

    def worker(lo: int, hi: int) -> None:
        pos = lo
        try:
            while pos < hi and not errors:
                n = min(READ_CHUNK, hi - pos)
                try:
                    got = os.preadv(fd, [dest[pos : pos + n]], pos)
                except InterruptedError:
                    continue
                if got == 0:
                    raise FileChanged(
                        f"{path} ended at byte {pos} while being read ({size} expected): "
                        "it was truncated or replaced; try again once it is complete"
                    )
                pos += got
        except BaseException as e:  # reported by the caller
            errors.append(e)

    ranges = [(lo, min(lo + step, size)) for lo in range(0, size, step)]
    if len(ranges) == 1:
        worker(*ranges[0])
    else:
        pool = [threading.Thread(target=worker, args=r, name="hugeload-read", daemon=True) for r in ranges]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
    if errors:
        raise errors[0]


def _identity(st: os.stat_result) -> tuple:
    """What "the same file" means everywhere in hugeload (the store and the C index too):
    a file rewritten in place and given back its old mtime has a new ctime."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


# --------------------------------------------------------------------------- staged files


class Staged(NamedTuple):
    path: str  # the staged hugetlbfs file
    size: int  # the source's true size (the staged file is padded to whole pages)
    page_size_kb: int


def _find_staged(path: str) -> Staged | None:
    """The store's ready staged copy of `path`, or None (also without a store).

    act.store.find_staged reads the redirect index, which any user can read (as the preload
    library does), and matches the source by device, inode, size, mtime and ctime, so an
    edited source is never served from a stale copy.  An index it cannot read is said once,
    in one line, and the file is read directly."""
    try:
        from hugeload.act.store import find_staged
    except ImportError:  # a build without the store: nothing is staged
        return None
    found = find_staged(path)
    if found is None or found.split:  # a copy in two parts is mapped whole only by the preload library
        return None
    return Staged(found.staged, int(found.size), int(found.page_size_kb))


def _map_staged(manifest: Staged, path: str) -> HugeMapping | None:
    size = int(manifest.size)
    if size <= 0:
        return None
    kb = int(manifest.page_size_kb)
    try:
        fd = os.open(manifest.path, os.O_RDONLY | os.O_CLOEXEC)
    except (PermissionError, FileNotFoundError):
        # Readable by one group only (stage --group), or unstaged since the index was read:
        # read the source instead.
        return None
    try:
        file_size = os.fstat(fd).st_size
        if file_size < size:
            raise FormatError(
                f"staged copy {manifest.path} holds {file_size} bytes, fewer than the "
                f"{size} of {path}: stage it again (hugeload stage)"
            )
        length = min(file_size, _round_up(size, kb * 1024))
        # MAP_SHARED and read-only: MAP_PRIVATE would reserve a second set of pages.
        mm = mmap.mmap(fd, length, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)
    return HugeMapping(
        mm, 0, size, pages.by_kb(kb).name if kb in (p.kb for p in pages.HUGE) else "4k", path=path, staged=True
    )


# --------------------------------------------------------------------------- public


def map_file(
    path, page_size: str = "auto", staged: bool = True, fallback: bool | None = None, threads: int | None = None
) -> HugeMapping:
    """The bytes of `path` in huge pages, read-only.

    If hugeload's store has staged the file (and `staged`), its hugetlbfs copy is
    mapped MAP_SHARED read-only: zero copy, no extra pages.  A staged copy is used
    when `page_size` is "auto" or matches the page size it was staged in.

    Otherwise the file is read into an anonymous mapping.  `page_size`: "auto"
    (the size rule of hugeload.pages: 1g from 1 GiB when whole 1 GB pages waste at most 1/8,
    else 2m), "1g", "2m", "thp" or "4k".
    `fallback`: when the page size cannot be had, try the next smaller one
    (1g -> 2m -> thp -> 4k) instead of raising PoolError.  Default: True for
    "auto", False for an explicit size.  Pages are never reserved here: the pool
    must hold free pages already (`hugeload reserve`).

    Raises FileChanged (a FormatError) and frees the pages when the file changes
    while it is read; UsageError for a missing file or unknown page size.
    """
    path = os.fspath(path)
    kind = _parse_page_size(page_size)
    if staged:
        manifest = _find_staged(path)
        if manifest is not None and (
            kind == "auto" or (kind in BACKINGS and pages.Backing(kind).page.kb == int(manifest.page_size_kb))
        ):
            mapping = _map_staged(manifest, path)
            if mapping is not None:
                return mapping
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UsageError(f"no such file: {path}") from None
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            raise UsageError(f"{path} is not a regular file")
        size = before.st_size
        order = _cascade(kind, size, fallback)
        anon, fallbacks = _map_cascade(order, size, f"{path} ({format_bytes(size)})")
        mapping = HugeMapping(anon.mm, anon.offset, size, anon.backing, path=path, fallbacks=fallbacks, requested=kind)
        try:
            with contextlib.suppress(OSError, AttributeError):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            _fill(fd, mapping._rw, size, path, threads)
            after = os.fstat(fd)
            if _identity(after) != _identity(before):
                raise FileChanged(
                    f"{path} changed while it was being read (size {before.st_size} -> "
                    f"{after.st_size}, mtime changed: {after.st_mtime_ns != before.st_mtime_ns}); "
                    "try again once it is complete"
                )
        except BaseException:
            mapping.close()
            raise
        return mapping
    finally:
        os.close(fd)


def alloc(nbytes: int, page_size: str = "auto", fallback: bool | None = None) -> HugeMapping:
    """`nbytes` of zeroed, writable memory in huge pages.

    `page_size` and `fallback` as for map_file ("auto": hugeload.pages' size rule;
    falls back for "auto" only).  hugetlb pages are claimed from the pool at
    once, so a successful alloc cannot run out of huge pages later.  A forked child
    (multiprocessing) gets its own copy, as of a private map, and never needs a page
    from the pool for it."""
    nbytes = int(nbytes)
    if nbytes < 0:
        raise UsageError(f"cannot allocate a negative size: {nbytes}")
    order = _cascade(page_size, nbytes, fallback)
    anon, fallbacks = _map_cascade(order, nbytes, format_bytes(nbytes))
    if pages.Backing(anon.backing).hugetlb:  # a forked child gets its own copy (see _fork above)
        forkcopy.track(anon.mm, shared=anon.backing == pages.PAGE_1G.name)
    return HugeMapping(
        anon.mm,
        anon.offset,
        nbytes,
        anon.backing,
        writable=True,
        fallbacks=fallbacks,
        requested=_parse_page_size(page_size),
    )


if sys.version_info < (3, 12):  # the buffer protocol from Python code needs PEP 688
    del HugeMapping.__buffer__, HugeMapping.__release_buffer__
