"""Fuzz hugeload's model header readers with mutated GGUF and safetensors files.

    python tests/fuzz/fuzz_models.py --format gguf --examples 100000 --seed 1
    python tests/fuzz/fuzz_models.py --replay tests/fuzz/corpus

Each input is a valid file (written by the gguf package's GGUFWriter, or a safetensors
header built here) with one to four mutations: an integer field of the header (counts,
lengths, types, dimensions, offsets) set to a boundary value (0, 2**31, 2**63, 2**64 - 1,
2**64 minus the data start, the file size, ...), random bytes, truncation, insertion,
deletion, splicing.  hypothesis draws them, shrinks a failure and prints its seed.

The property: the reader either raises hugeload.FormatError, or accepts a file whose every
tensor lies inside it, that hugeload.gguf.tensors / hugeload.safetensors.load maps to views
holding exactly those bytes, and that the reference reader (GGUFReader, the safetensors
package) reads the same way.  Anything else is a failure: another exception, an input that
takes more than --time-limit seconds (SIGALRM), or one that allocates past the address
space limit this process sets on itself after its imports (RLIMIT_AS, --memory-limit MiB
above what the imports took).

A failure's input is written to --save DIR (default: the corpus directory, under its
format) so `--replay` and tests/fuzz/test_fuzz_models.py keep it as a regression test; one
that turns out valid (the failure was elsewhere) is kept under a "valid-" name.
Prints one line at the end: `fuzz <format>: N inputs, seed S, ok`.
"""

import argparse
import hashlib
import json
import os
import resource
import signal
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np

import hugeload
import hugeload.gguf as hg
import hugeload.safetensors as hs

CORPUS = Path(__file__).resolve().parent / "corpus"
FORMATS = ("gguf", "safetensors")


class InputTimeout(BaseException):
    """An input ran past its time limit (BaseException: no `except Exception` swallows it)."""


# ---------------------------------------------------------------- valid seed files


def gguf_seeds(workdir: Path) -> list[tuple[bytes, int]]:
    """Valid GGUF files, each with its data section's start."""
    import gguf

    rng = np.random.default_rng(0)
    out = []
    for variant in range(3):
        path = workdir / f"seed{variant}.gguf"
        w = gguf.GGUFWriter(str(path), "llama")
        if variant == 1:
            w.add_custom_alignment(64)
        w.add_uint32("test.answer", 42)
        w.add_string("test.name", "fuzz")
        w.add_float32("test.f", 0.5)
        w.add_bool("test.b", True)
        w.add_uint64("test.u64", 1 << 40)
        w.add_array("test.tokens", ["a", "bc", "", "def"])
        w.add_array("test.ints", [1, 2, 3])
        if variant != 2:
            w.add_tensor("f32", rng.standard_normal((4, 6)).astype(np.float32))
            w.add_tensor("f16", rng.standard_normal((3, 5)).astype(np.float16))
            w.add_tensor("i8", np.arange(10, dtype=np.int8))
            w.add_tensor(
                "q8_0", rng.integers(0, 255, (2, 68), dtype=np.uint8), raw_dtype=gguf.GGMLQuantizationType.Q8_0
            )
            w.add_tensor(
                "q4_k", rng.integers(0, 255, (3, 144), dtype=np.uint8), raw_dtype=gguf.GGMLQuantizationType.Q4_K
            )
            w.add_tensor("bf16", rng.integers(0, 255, (2, 8), dtype=np.uint8), raw_dtype=gguf.GGMLQuantizationType.BF16)
            w.add_tensor("f32_3d", rng.standard_normal((2, 3, 4)).astype(np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        out.append((path.read_bytes(), hg.read_header(path).data_start))
    return out


def gguf_fields(data: bytes) -> list[tuple[int, int]]:
    """(offset, width) of every integer field in a *valid* GGUF file's header: counts, lengths,
    value and tensor types, dimensions, offsets: where a mutation does the most harm."""
    out = [(4, 4), (8, 8), (16, 8)]
    n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)
    pos = 24
    widths = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def string(pos):
        out.append((pos, 8))
        return pos + 8 + struct.unpack_from("<Q", data, pos)[0]

    def value(pos, vtype):
        if vtype == 8:
            return string(pos)
        if vtype == 9:
            out.extend([(pos, 4), (pos + 4, 8)])
            etype, count = struct.unpack_from("<IQ", data, pos)
            pos += 12
            for _ in range(count):
                pos = value(pos, etype)
            return pos
        out.append((pos, widths[vtype]))
        return pos + widths[vtype]

    for _ in range(n_kv):
        pos = string(pos)
        out.append((pos, 4))
        vtype = struct.unpack_from("<I", data, pos)[0]
        pos = value(pos + 4, vtype)
    for _ in range(n_tensors):
        pos = string(pos)
        out.append((pos, 4))
        n_dims = struct.unpack_from("<I", data, pos)[0]
        pos += 4
        for _ in range(n_dims):
            out.append((pos, 8))
            pos += 8
        out.extend([(pos, 4), (pos + 4, 8)])
        pos += 12
    return out


SAFETENSORS_SHAPES = [[], [0], [1], [3], [2, 3], [4, 1, 2], [0, 5]]


def safetensors_seed(rng: np.random.Generator, n: int, metadata: bool) -> tuple[dict, bytes]:
    header, blobs, pos = {}, [], 0
    for i in range(n):
        dt = sorted(hs.DTYPES)[rng.integers(len(hs.DTYPES))]
        shape = SAFETENSORS_SHAPES[rng.integers(len(SAFETENSORS_SHAPES))]
        nbytes = int(np.prod(shape, dtype=np.int64)) * hs.DTYPES[dt][0]
        header[f"t{i}"] = {"dtype": dt, "shape": shape, "data_offsets": [pos, pos + nbytes]}
        blobs.append(rng.integers(0, 256, nbytes, dtype=np.uint8).tobytes())
        pos += nbytes
    if metadata:
        header["__metadata__"] = {"format": "pt"}
    return header, b"".join(blobs)


def encode_safetensors(header: dict, blob: bytes, pad: int = 0) -> bytes:
    raw = json.dumps(header).encode() + b" " * pad
    return struct.pack("<Q", len(raw)) + raw + blob


# ---------------------------------------------------------------- mutations (hypothesis)


def boundary_values(size: int, data_start: int) -> list[int]:
    vals = [0, 1, 2, 3, 4, 7, 8, 9, 12, 13, 31, 32, 33, 63, 64, 255, 256, 65535, 65536]
    vals += [2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1, 2**64 - data_start]
    vals += [size, size - 1, size + 1, size - data_start, 2**64 - size]
    return vals


def strategies():
    from hypothesis import strategies as st

    @st.composite
    def mutate(draw, data: bytes, fields: list[tuple[int, int]], data_start: int) -> bytes:
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 4))):
            kind = draw(st.sampled_from(["field", "field", "field", "byte", "truncate", "insert", "delete", "splice"]))
            if kind == "field" and fields:
                off, width = draw(st.sampled_from(fields))
                if off + width > len(out):
                    continue
                mask = (1 << (8 * width)) - 1
                old = int.from_bytes(out[off : off + width], "little")
                v = draw(
                    st.sampled_from(boundary_values(len(out), data_start))
                    | st.integers(0, mask)
                    | st.integers(-4, 4).map(lambda d, old=old: old + d)
                )
                out[off : off + width] = (v & mask).to_bytes(width, "little")
            elif kind == "byte" and out:
                out[draw(st.integers(0, len(out) - 1))] = draw(st.integers(0, 255))
            elif kind == "truncate":
                del out[draw(st.integers(0, len(out))) :]
            elif kind == "insert":
                i = draw(st.integers(0, len(out)))
                out[i:i] = draw(st.binary(min_size=1, max_size=16))
            elif kind == "delete" and out:
                i = draw(st.integers(0, len(out) - 1))
                del out[i : i + draw(st.integers(1, 16))]
            elif kind == "splice" and out:
                i, j = draw(st.integers(0, len(out) - 1)), draw(st.integers(0, len(out)))
                out[j:j] = out[i : i + draw(st.integers(1, 32))]
        return bytes(out)

    return st, mutate


def gguf_inputs(seeds: list[tuple[bytes, int]]):
    st, mutate = strategies()
    parsed = [(data, gguf_fields(data), start) for data, start in seeds]

    @st.composite
    def inputs(draw):
        data, fields, start = draw(st.sampled_from(parsed))
        return draw(mutate(data, fields, start))

    return inputs()


def safetensors_inputs():
    st, mutate = strategies()
    junk = st.recursive(
        st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=5),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
        max_leaves=8,
    )
    big = st.sampled_from([0, 1, 2**31, 2**32, 2**53, 2**62, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -1])

    @st.composite
    def inputs(draw):
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        header, blob = safetensors_seed(rng, draw(st.integers(0, 4)), draw(st.booleans()))
        names = [k for k in header if k != "__metadata__"]
        for _ in range(draw(st.integers(0, 3))):
            kind = draw(st.sampled_from(["field", "entry", "offsets", "shape", "dims", "dtype", "drop", "extra"]))
            if kind == "entry" or not names:
                header[draw(st.text(max_size=3))] = draw(junk)
                continue
            e = header[draw(st.sampled_from(names))]
            if kind == "field":
                e[draw(st.sampled_from(["dtype", "shape", "data_offsets"]))] = draw(junk)
            elif kind == "offsets":
                e["data_offsets"] = draw(st.lists(st.integers(-5, len(blob) + 20) | big, max_size=3))
            elif kind == "shape":
                e["shape"] = draw(st.lists(st.integers(-2, 2**40) | big, max_size=4))
            elif kind == "dims":
                e["shape"] = [draw(st.sampled_from([0, 1, 2]))] * draw(st.integers(20, 200))
            elif kind == "dtype":
                e["dtype"] = draw(st.text(max_size=8))
            elif kind == "drop":
                e.pop(draw(st.sampled_from(["dtype", "shape", "data_offsets"])), None)
            else:
                e["x"] = 1
        data = encode_safetensors(header, blob, draw(st.integers(0, 7)))
        if draw(st.integers(0, 9)) == 0:
            data = struct.pack("<Q", draw(big | st.integers(0, 2**64 - 1)) % 2**64) + data[8:]
        if draw(st.booleans()):
            data = draw(mutate(data, [(0, 8)], 8 + struct.unpack_from("<Q", data)[0]))
        return data

    return inputs()


# ---------------------------------------------------------------- the property


class Checker:
    def __init__(self, workdir: Path, time_limit: float, self_test: str | None = None):
        self.workdir, self.time_limit, self.self_test = workdir, time_limit, self_test
        self.count = 0
        self.accepted = 0
        self.last_failure: bytes | None = None

    def _write(self, data: bytes, suffix: str) -> Path:
        path = self.workdir / f"input{suffix}"
        with open(path, "wb") as f:
            f.write(data)
        return path

    def run(self, fmt: str, data: bytes) -> None:
        self.count += 1
        check = SELF_TESTS.get(self.self_test) or (check_gguf if fmt == "gguf" else check_safetensors)
        signal.setitimer(signal.ITIMER_REAL, self.time_limit)
        try:
            if check(self._write(data, "." + fmt), data):
                self.accepted += 1
        except BaseException:
            self.last_failure = data
            raise
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)


def check_gguf(path: Path, data: bytes) -> None:
    try:
        header = hg.read_header(path)
    except hugeload.FormatError as e:
        assert "\n" not in str(e), str(e)
        return False
    size = len(data)
    assert header.data_start <= size or not header.tensors
    pos = header.data_start
    for t in header.tensors.values():
        assert t.offset >= pos and t.offset + t.nbytes <= size, t  # in order, no overlap, inside
        pos = t.offset + t.nbytes
    views = hg.tensors(path, page_size="4k", staged=False)
    try:
        for t in header.tensors.values():
            assert views[t.name].tobytes() == data[t.offset : t.offset + t.nbytes], t.name
        # The reference reader, now that the header is known to be sane, reads the same layout;
        # except where it has a bug of its own: a 0-dimensional tensor of a block type (BF16,
        # Q8_0, ...; ggml reads it as one row) makes GGUFReader index an empty shape.
        import gguf

        if any(not t.ne and t.type not in hg.ELEMENT_DTYPES for t in header.tensors.values()):
            return True
        reader = gguf.GGUFReader(str(path))
        assert [t.name for t in reader.tensors] == list(header.tensors)
        for rt in reader.tensors:
            t = header.tensors[rt.name]
            assert (rt.tensor_type.name, int(rt.data_offset), int(rt.n_bytes)) == (t.type, t.offset, t.nbytes)
            assert tuple(int(n) for n in rt.shape) == t.ne
            assert views[t.name].shape == rt.data.shape and views[t.name].dtype == rt.data.dtype
    finally:
        mapping = views.mapping
        views.clear()
        mapping.close()
    return True


# Where hugeload refuses what the reference reads, on purpose: its bounds, and dtypes NumPy
# cannot show (F4, C64, ...).
OUR_OWN_LIMITS = (
    "dimensions (the limit is",
    "JSON arrays and objects (the limit",
    "more bytes than an int64",
    "integers from 0 to 2**63-1",
    "unknown dtype",
)


def reference_layout(path: Path) -> dict | None:
    """name -> (dtype, shape) as the safetensors package (the reference, in Rust) reads it."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "np") as f:
            return {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in f.keys()}  # noqa: SIM118 (a safe_open, not a dict)
    except Exception:
        return None


def check_safetensors(path: Path, data: bytes) -> bool:
    reference = reference_layout(path)
    try:
        header = hs.read_header(path)
    except hugeload.FormatError as e:
        assert "\n" not in str(e), str(e)
        # Refused what the reference reads: only for a limit of our own.
        assert reference is None or any(w in str(e) for w in OUR_OWN_LIMITS), f"the reference reads it: {e}"
        return False
    assert reference is not None, "the reference refuses what hugeload accepts"
    assert reference == {t.name: (t.dtype, t.shape) for t in header.tensors.values()}
    out = hs.load(path, page_size="4k", staged=False)
    try:
        assert list(out) == list(header.tensors)
        for name, t in header.tensors.items():
            start = header.data_start + t.begin
            assert start + t.nbytes <= len(data)
            assert out[name].tobytes() == data[start : start + t.nbytes], name
            assert out[name].shape == t.shape, name
    finally:
        mapping = out.mapping
        out.clear()
        mapping.close()
    return True


def _hang(path: Path, data: bytes) -> bool:
    while True:
        pass


def _allocate(path: Path, data: bytes) -> bool:
    return bool(bytearray(8 << 30))


# --self-test: readers that break the limits, to show that the limits catch them.
SELF_TESTS = {"hang": _hang, "alloc": _allocate}


# ---------------------------------------------------------------- limits, runs, replay


def limit_memory(extra_mib: int) -> None:
    """RLIMIT_AS at what the imports took plus `extra_mib`: an input that allocates past it
    raises MemoryError, which the property counts as a failure."""
    with open("/proc/self/status") as f:
        vm_kb = next(int(line.split()[1]) for line in f if line.startswith("VmSize:"))
    limit = (vm_kb << 10) + (extra_mib << 20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))


def on_alarm(signum, frame):
    raise InputTimeout("an input ran past the time limit")


def save(data: bytes, directory: Path, fmt: str) -> Path:
    d = directory / fmt
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{hashlib.sha256(data).hexdigest()[:16]}.{fmt}"
    path.write_bytes(data)
    return path


def fuzz(fmt: str, examples: int, seed: int, checker: Checker, save_dir: Path) -> int:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed

    strategy = gguf_inputs(gguf_seeds(checker.workdir)) if fmt == "gguf" else safetensors_inputs()

    @hseed(seed)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate] if checker.self_test else [Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )
    @given(strategy)
    def prop(data):
        checker.run(fmt, data)

    try:
        prop()
    except BaseException:
        if checker.last_failure is not None:
            path = save(checker.last_failure, save_dir, fmt)
            print(f"fuzz {fmt}: failure after {checker.count} inputs, seed {seed}; input saved to {path}", flush=True)
        raise
    return checker.count


def replay(directory: Path, checker: Checker) -> int:
    n = 0
    for fmt in FORMATS:
        for path in sorted((directory / fmt).glob(f"*.{fmt}")):
            try:
                checker.run(fmt, path.read_bytes())
            except BaseException:
                print(f"replay: {path} fails", flush=True)
                raise
            n += 1
    return n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--format", choices=FORMATS, default="gguf")
    ap.add_argument("--examples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=None, help="hypothesis seed (default: random, printed)")
    ap.add_argument("--time-limit", type=float, default=5.0, help="seconds per input")
    ap.add_argument("--memory-limit", type=int, default=512, help="MiB of address space per input, above the imports")
    ap.add_argument("--replay", type=Path, help="run every input of this corpus directory instead")
    ap.add_argument("--save", type=Path, default=CORPUS, help="where a failing input is written")
    ap.add_argument("--self-test", choices=sorted(SELF_TESTS), help="check the limits with a reader that breaks them")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    import gguf  # noqa: F401  imported before the limit: its import is not an input's cost
    import hypothesis  # noqa: F401
    import safetensors  # noqa: F401

    signal.signal(signal.SIGALRM, on_alarm)
    with tempfile.TemporaryDirectory(prefix="hugeload-fuzz-") as tmp:
        checker = Checker(Path(tmp), args.time_limit, args.self_test)
        if args.replay:
            limit_memory(args.memory_limit)
            n = replay(args.replay, checker)
            print(f"replay: {n} inputs, ok", flush=True)
            return 0
        print(f"fuzz {args.format}: seed {seed}", flush=True)
        if args.format == "gguf":
            gguf_seeds(Path(tmp))  # warm: GGUFWriter's first use is not an input's cost
        limit_memory(args.memory_limit)
        n = fuzz(args.format, args.examples, seed, checker, args.save)
    print(f"fuzz {args.format}: {n} inputs ({checker.accepted} accepted), seed {seed}, ok", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
