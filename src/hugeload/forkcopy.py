"""Huge allocations across fork(): what a child of a process that holds `hugeload.alloc` memory
gets, and the address of any buffer (api.page_size_of and the copies here need it).  Kept out
of api.py so the fork rules, which every huge allocation depends on, read as one piece."""

import ctypes
import mmap
import os
import weakref

_pyapi = ctypes.PyDLL(None)  # own handle: setting argtypes must not touch ctypes.pythonapi
_pyapi.PyObject_GetBuffer.argtypes = [ctypes.py_object, ctypes.c_void_p, ctypes.c_int]
_pyapi.PyObject_GetBuffer.restype = ctypes.c_int
_pyapi.PyBuffer_Release.argtypes = [ctypes.c_void_p]
_pyapi.PyBuffer_Release.restype = None


def buffer_address(obj) -> int:
    """Address of the first byte of any buffer-exporting object (read-only ones too)."""
    view = (ctypes.c_char * 256)()  # larger than a Py_buffer; `buf` is its first field
    if _pyapi.PyObject_GetBuffer(obj, ctypes.addressof(view), 0) != 0:
        raise TypeError(f"{type(obj).__name__} does not export a buffer")
    try:
        return ctypes.c_void_p.from_buffer(view).value or 0
    finally:
        _pyapi.PyBuffer_Release(ctypes.addressof(view))


# A private 1 GB hugetlb page loses its page-table entry in about half the forked children
# (kernel 6.18, scripts/repro/fork-1g.c), and a private 2 MB one needs a fresh page when the
# child writes it: with an empty pool, the child dies of SIGBUS where it would have lived.  So
# 1 GB allocations come from a memfd mapped shared (a child finds the pages in the file), and
# what a private map gives a child, its own copy, the child's fork handler makes for every
# writable huge allocation: its bytes go to ordinary memory at the same address while the
# parent waits (a pipe), so the forking thread cannot write first.  The preload library does
# the same for engines (csrc/preload/fork.c).  Children made by subprocess (fork + exec) run no
# Python fork handlers unless they run Python code first (preexec_fn).

_forkable: "weakref.WeakKeyDictionary[mmap.mmap, bool]" = weakref.WeakKeyDictionary()  # mm -> shared (memfd)
_fork_pipe: list[int] = []
_libc = None


def _libc_calls():
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.mmap.restype = ctypes.c_void_p
        lib.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
        lib.mremap.restype = ctypes.c_void_p
        lib.mremap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p]
        lib.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        lib.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        _libc = lib
    return _libc


_MAP_FAILED = ctypes.c_void_p(-1).value
_MREMAP_MAYMOVE, _MREMAP_FIXED = 1, 2


def _private_copy(mm: mmap.mmap, shared: bool) -> bool:
    """In a child: mm's bytes into ordinary private memory at the same address."""
    libc = _libc_calls()
    addr, length = buffer_address(mm), len(mm)
    rw = mmap.PROT_READ | mmap.PROT_WRITE
    tmp = libc.mmap(None, length, rw, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    if tmp not in (None, _MAP_FAILED):
        ctypes.memmove(tmp, addr, length)
        if libc.mremap(tmp, length, length, _MREMAP_MAYMOVE | _MREMAP_FIXED, addr) == addr:
            return True
        libc.munmap(tmp, length)
    if shared:  # still the parent's pages: the child may read them, never write them
        libc.mprotect(addr, length, mmap.PROT_READ)
    return False


def _fork_before() -> None:
    _fork_pipe.clear()
    if any(not mm.closed for mm in list(_forkable)):
        _fork_pipe.extend(os.pipe())


def _fork_parent() -> None:
    if _fork_pipe:
        r, w = _fork_pipe
        _fork_pipe.clear()
        os.close(w)
        try:
            os.read(r, 1)  # returns when the child has its copies (or is gone)
        finally:
            os.close(r)


def _fork_child() -> None:
    pipe = list(_fork_pipe)
    _fork_pipe.clear()
    try:
        for mm, shared in list(_forkable.items()):
            if not mm.closed:
                _private_copy(mm, shared)
    finally:
        if pipe:
            os.close(pipe[0])
            os.close(pipe[1])


os.register_at_fork(before=_fork_before, after_in_parent=_fork_parent, after_in_child=_fork_child)


def track(mm: mmap.mmap, shared: bool) -> None:
    """Give a child of this process its own copy of `mm` at fork (shared: a memfd's map, whose
    pages the child may read but must not write)."""
    _forkable[mm] = shared
