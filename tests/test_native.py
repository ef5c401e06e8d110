"""native.load() declares the C signatures, so callers pass sizes and read doubles correctly."""

import ctypes
import mmap

from hugeload import native


def test_benchmark_functions_have_signatures():
    lib = native.load()
    assert lib.hugeload_chase_init.restype is ctypes.c_int
    assert lib.hugeload_chase_init.argtypes == [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_uint64]
    assert lib.hugeload_chase_ns.restype is ctypes.c_double
    assert lib.hugeload_chase_ns.argtypes == [ctypes.c_void_p, ctypes.c_uint64]
    assert lib.hugeload_seq_read_gbps.restype is ctypes.c_double
    assert lib.hugeload_seq_read_gbps.argtypes == [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    assert lib.hugeload_memcpy_gbps.restype is ctypes.c_double
    assert lib.hugeload_memcpy_gbps.argtypes == [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def test_benchmark_functions_callable_without_extra_declarations():
    lib = native.load()
    size = 4 << 20
    with mmap.mmap(-1, size) as a, mmap.mmap(-1, size) as b:
        pa = ctypes.addressof(ctypes.c_char.from_buffer(a))
        pb = ctypes.addressof(ctypes.c_char.from_buffer(b))
        assert lib.hugeload_chase_init(pa, size, 64, 3) == 0
        ns = lib.hugeload_chase_ns(pa, 10_000)
        assert isinstance(ns, float) and 0 < ns < 10_000
        assert lib.hugeload_seq_read_gbps(pa, size, 1) > 0.0
        assert lib.hugeload_memcpy_gbps(pb, pa, size, 1) > 0.0
        assert lib.hugeload_chase_ns(None, 10) == -1.0
        del pa, pb
