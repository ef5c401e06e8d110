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


@functools.cache
def load() -> ctypes.CDLL:
    path = library_path()
    if not path.exists():
        raise NotSupported(f"native library missing at {path}: reinstall hugeload with `pip install .`")
    lib = ctypes.CDLL(str(path))
    lib.hugeload_abi_version.restype = ctypes.c_int
    if lib.hugeload_abi_version() != ABI_VERSION:
        raise NotSupported(f"native library {path} is from another hugeload version: reinstall hugeload")
    lib.hugeload_cpuid.argtypes = [ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32 * 4)]
    lib.hugeload_cpuid.restype = ctypes.c_int
    # Benchmark loops (hugeload bench): without these, ctypes would pass sizes as
    # 32-bit ints and read the doubles back as ints.
    lib.hugeload_chase_init.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_uint64]
    lib.hugeload_chase_init.restype = ctypes.c_int
    lib.hugeload_chase_ns.argtypes = [ctypes.c_void_p, ctypes.c_uint64]
    lib.hugeload_chase_ns.restype = ctypes.c_double
    lib.hugeload_seq_read_gbps.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    lib.hugeload_seq_read_gbps.restype = ctypes.c_double
    lib.hugeload_memcpy_gbps.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    lib.hugeload_memcpy_gbps.restype = ctypes.c_double
    return lib


def cpuid(leaf: int, subleaf: int = 0) -> tuple[int, int, int, int] | None:
    """(eax, ebx, ecx, edx) for the leaf, or None when the CPU does not have it."""
    out = (ctypes.c_uint32 * 4)()
    if load().hugeload_cpuid(leaf, subleaf, ctypes.byref(out)) != 0:
        return None
    return tuple(out)
