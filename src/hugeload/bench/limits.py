"""The physical limit of token generation, measured in the same run as the engine: read
bandwidth at the engine's thread count (the native loops), and the bytes of weights one
generated token reads.  tokens/s x bytes per token / bandwidth is a backing's share of the limit."""

import contextlib
import ctypes
import mmap
import threading
import time

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
        from gguf import GGUFReader

        r = GGUFReader(model, "r")
    except Exception as e:  # not GGUF, or no gguf package: the share is left out
        return None, f"no weight count ({type(e).__name__})"
    fields = {f.name: f for f in r.fields.values()}

    def scalar(suffix: str) -> int | None:
        for name, f in fields.items():
            if name.endswith(suffix) and f.data:
                with contextlib.suppress(Exception):
                    return int(f.parts[f.data[0]][0])
        return None

    experts, used = scalar(".expert_count"), scalar(".expert_used_count")
    names = {t.name for t in r.tensors}
    total = 0
    for t in r.tensors:
        n = int(t.n_bytes)
        if t.name == "token_embd.weight" and "output.weight" in names:
            continue
        if "_exps" in t.name and experts and used:
            n = n * used // experts
        total += n
    what = f"MoE, {used} of {experts} experts active" if experts and used else "dense"
    return total, what
