"""The physical limit of token generation, measured in the same run as the engine: read
bandwidth at the engine's thread count (the native loops), and the bytes of weights one
generated token reads.  tokens/s x bytes per token / bandwidth is a backing's share of the limit."""

import contextlib
import ctypes
import mmap
import threading
import time

from hugeload import gguf
from hugeload.bench.common import native_loops
from hugeload.errors import HugeloadError
from hugeload.units import GiB


def read_bandwidth(threads: int, size: int = GiB, passes: int = 3) -> float | None:
    """GB/s reading `size` bytes (THP-backed, touched first) with `threads` threads, each
    a slice, the native loop per slice (ctypes drops the GIL); best of `passes`."""
    try:
        lib = native_loops()
        buf = mmap.mmap(-1, size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except (HugeloadError, OSError):
        return None
    try:
        with contextlib.suppress(OSError, AttributeError):
            buf.madvise(mmap.MADV_HUGEPAGE)
        view = (ctypes.c_char * size).from_buffer(buf)
        addr = ctypes.addressof(view)
        ctypes.memset(addr, 1, size)
        per = (size // threads) & ~4095
        best = 0.0
        for _ in range(passes):
            ws = [
                threading.Thread(target=lib.hugeload_seq_read_gbps, args=(addr + i * per, per, 1))
                for i in range(threads)
            ]
            t0 = time.perf_counter()
            for w in ws:
                w.start()
            for w in ws:
                w.join()
            best = max(best, per * threads / (time.perf_counter() - t0) / 1e9)
        del view
        return best
    finally:
        with contextlib.suppress(BufferError):
            buf.close()


def bytes_per_token(model: str) -> tuple[int | None, str]:
    """Bytes of weights one generated token reads: every tensor but the token embedding
    (one row per token; counted when it doubles as the output matrix), and for MoE only
    the active share (experts_used / experts) of the expert tensors."""
    try:
        header = gguf.read_header(model)  # the checked reader: a model file is untrusted input
    except HugeloadError as e:  # not GGUF, a bad header, or no gguf package: the share is left out
        return None, f"no weight count ({type(e).__name__})"

    def scalar(suffix: str) -> int | None:
        for name, value in header.kv.items():
            if name.endswith(suffix) and isinstance(value, int) and not isinstance(value, bool):
                return value
        return None

    experts, used = scalar(".expert_count"), scalar(".expert_used_count")
    total = 0
    for t in header.tensors.values():
        n = t.nbytes
        if t.name == "token_embd.weight" and "output.weight" in header.tensors:
            continue
        if "_exps" in t.name and experts and used:
            n = n * used // experts
        total += n
    what = f"MoE, {used} of {experts} experts active" if experts and used else "dense"
    return total, what
