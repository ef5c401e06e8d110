"""The two native libraries built by `pip install`.

_native.so      CPUID and the benchmark loops, for ctypes only (load()).
libhugeload.so  the LD_PRELOAD library (library_path()); it exports one
                function for Python, hugeload_page_choice_kb (page_choice_kb()),
                so a test can check that C applies the page-size rule Python
                decided.  Loaded RTLD_LOCAL by ctypes it stays inert: only
                LD_PRELOAD makes its interposers active.
"""

import ctypes
import functools
from pathlib import Path

from hugeload.errors import NotSupported

ABI_VERSION = 1


def library_path() -> Path:
    """Path of the shared object to put in LD_PRELOAD."""
    return Path(__file__).with_name("libhugeload.so")


def native_path() -> Path:
    """Path of the ctypes-only library (CPUID, benchmark loops)."""
    return Path(__file__).with_name("_native.so")


# Exported functions and their C signatures.  Without them ctypes would pass sizes as
# 32-bit ints and read doubles back as ints.
SIGNATURES = {
    "hugeload_cpuid": ([ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32 * 4)], ctypes.c_int),
    "hugeload_chase_init": ([ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_uint64], ctypes.c_int),
    "hugeload_chase_ns": ([ctypes.c_void_p, ctypes.c_uint64], ctypes.c_double),
    "hugeload_seq_read_gbps": ([ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_double),
    "hugeload_memcpy_gbps": ([ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_double),
    "hugeload_malloc_free_ns": ([ctypes.c_uint64, ctypes.c_size_t], ctypes.c_double),
}


def declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Set argtypes/restype of every exported function on a loaded library."""
    for name, (args, res) in SIGNATURES.items():
        try:
            fn = getattr(lib, name)
        except AttributeError:
            raise NotSupported(f"the native library has no {name}: reinstall hugeload with `pip install .`") from None
        fn.argtypes, fn.restype = args, res
    return lib


def _open(path) -> ctypes.CDLL:
    if not path.exists():
        raise NotSupported(f"native library missing at {path}: reinstall hugeload with `pip install .`")
    return ctypes.CDLL(str(path))


@functools.cache
def load() -> ctypes.CDLL:
    """The ctypes-only library, every function in SIGNATURES declared."""
    path = native_path()
    lib = _open(path)
    lib.hugeload_abi_version.restype = ctypes.c_int
    if lib.hugeload_abi_version() != ABI_VERSION:
        raise NotSupported(f"native library {path} is from another hugeload version: reinstall hugeload")
    declare(lib)
    return lib


def cpuid(leaf: int, subleaf: int = 0) -> tuple[int, int, int, int] | None:
    """(eax, ebx, ecx, edx) for the leaf, or None when the CPU does not have it."""
    out = (ctypes.c_uint32 * 4)()
    if load().hugeload_cpuid(leaf, subleaf, ctypes.byref(out)) != 0:
        return None
    return tuple(out)


@functools.cache
def _preload_lib() -> ctypes.CDLL:
    lib = _open(library_path())
    fn = lib.hugeload_page_choice_kb
    fn.argtypes, fn.restype = [ctypes.c_ulonglong, ctypes.c_char_p, ctypes.c_char_p], ctypes.c_int
    return lib


def page_choice_kb(nbytes: int, page_size: str | None = None, policy: str | None = None) -> int:
    """The first page size (kB) the preload library tries for nbytes under HUGELOAD_PAGE_SIZE=page_size
    and HUGELOAD_POLICY=policy (None: its defaults); -1 when either does not parse."""
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    return _preload_lib().hugeload_page_choice_kb(nbytes, enc(page_size), enc(policy))
