"""Loads libhugeload.so (built by `pip install`) with ctypes.

Loaded RTLD_LOCAL, so its interposers do not take over this Python process;
only LD_PRELOAD makes them active.
"""

import ctypes
import functools
from pathlib import Path

from hugeload.errors import NotSupported

ABI_VERSION = 1


def library_path() -> Path:
    """Path of the shared object to put in LD_PRELOAD."""
    return Path(__file__).with_name("libhugeload.so")


# Exported functions and their C signatures.  Without them ctypes would pass sizes as
# 32-bit ints and read doubles back as ints.
SIGNATURES = {
    "hugeload_cpuid": ([ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32 * 4)], ctypes.c_int),
    "hugeload_chase_init": ([ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_uint64], ctypes.c_int),
    "hugeload_chase_ns": ([ctypes.c_void_p, ctypes.c_uint64], ctypes.c_double),
    "hugeload_seq_read_gbps": ([ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_double),
    "hugeload_memcpy_gbps": ([ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_double),
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


@functools.cache
def load() -> ctypes.CDLL:
    path = library_path()
    if not path.exists():
        raise NotSupported(f"native library missing at {path}: reinstall hugeload with `pip install .`")
    lib = ctypes.CDLL(str(path))
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
