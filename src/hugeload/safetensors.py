"""safetensors files in huge pages: zero-copy NumPy arrays or torch tensors.

    weights = hugeload.safetensors.load("model.safetensors")            # numpy
    weights = hugeload.safetensors.load("model.safetensors", framework="pt")

The header is parsed and validated here (no dependency on the safetensors
package) with the same rules as the reference implementation: tensors must
cover the data region exactly, in any order, without overlaps or gaps.  Every
violation raises hugeload.FormatError before a single huge page is touched.
Model files come from the internet and hugeload reads them as root, so the
header's cost is bounded before it is parsed: its length by the file's size and
the reference's 100 MB, the number of JSON arrays and objects in it (what makes
a small header expensive in Python objects), each shape's dimensions (32, what
NumPy 1 allows) and their product (an int64, what NumPy and torch can hold).

Returned arrays are views into one HugeMapping (`result.mapping`), which
stays mapped as long as any of them is alive.

NumPy has no bfloat16 or float8: BF16 tensors come back as uint16 arrays and
F8_E4M3 / F8_E5M2 as uint8 arrays holding the same bits (`result.dtypes` names
the file's dtype for each; `bf16_to_f32` widens a BF16 array).  For torch they
are real torch.bfloat16 / torch.float8_* tensors.
"""

import json
import os
import struct
import warnings
from typing import NamedTuple

from hugeload.api import HugeMapping, map_file
from hugeload.errors import FormatError, UsageError
from hugeload.regularfile import open_regular

__all__ = ["DTYPES", "Header", "TensorInfo", "Tensors", "bf16_to_f32", "load", "parse_header", "read_header"]

MAX_HEADER = 100_000_000  # the reference implementation's limit
MAX_DIMS = 32  # NumPy 1's NPY_MAXDIMS; torch and NumPy 2 allow more, no model needs it
INT64_MAX = (1 << 63) - 1
# A tensor entry is three containers ({}, shape [], data_offsets []): a header with a million
# tensors has ~3M.  Counted as brackets in the raw bytes (an upper bound), before json parses
# 100 MB of "[]," into 33M lists (2 GB).
MAX_CONTAINERS = 3 * (1 << 20) + 16

# dtype -> (bytes per element, NumPy dtype holding it: the bits for BF16/F8)
DTYPES = {
    "F64": (8, "<f8"),
    "F32": (4, "<f4"),
    "F16": (2, "<f2"),
    "BF16": (2, "<u2"),
    "I64": (8, "<i8"),
    "I32": (4, "<i4"),
    "I16": (2, "<i2"),
    "I8": (1, "i1"),
    "U64": (8, "<u8"),
    "U32": (4, "<u4"),
    "U16": (2, "<u2"),
    "U8": (1, "u1"),
    "BOOL": (1, "?"),
    "F8_E4M3": (1, "u1"),
    "F8_E5M2": (1, "u1"),
}
_TORCH_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U64": "uint64",
    "U32": "uint32",
    "U16": "uint16",
    "U8": "uint8",
    "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
}
_ENTRY_KEYS = {"dtype", "shape", "data_offsets"}


class TensorInfo(NamedTuple):
    name: str
    dtype: str  # the file's name for it: F32, BF16, ...
    shape: tuple[int, ...]
    begin: int  # byte offsets into the data region (after the header)
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


class Header(NamedTuple):
    tensors: dict[str, TensorInfo]  # in the header's order
    metadata: dict[str, str] | None
    data_start: int  # absolute file offset of the data region: 8 + header length


def _fail(msg: str):
    raise FormatError(f"not a valid safetensors file: {msg}")


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            _fail(f"the header names {k!r} twice")
        out[k] = v
    return out


def _reject_constant(name):
    _fail(f"the header holds {name}, which is not JSON")


def _int_list(value, what: str) -> list[int]:
    if not isinstance(value, list) or not all(type(x) is int for x in value):
        _fail(f"{what} must be a list of integers, got {_short(value)}")
    if any(x < 0 or x > INT64_MAX for x in value):
        _fail(f"{what} must hold integers from 0 to 2**63-1: {_short(value)}")
    return value


def _short(value) -> str:
    """repr of a value from the file, cut short before it is built in full."""
    if isinstance(value, list) and len(value) > 8:
        return "[" + ", ".join(_short(v) for v in value[:8]) + f", ... ({len(value)} items)]"
    return f"{value!r:.80}"


def _element_count(name: str, dtype: str, shape: list[int]) -> int:
    """Elements of `shape`, or FormatError when NumPy or torch could not hold its array: more
    than MAX_DIMS dimensions, or a size (zero dimensions aside) that overflows an int64."""
    if len(shape) > MAX_DIMS:
        _fail(f"tensor {name!r}: {len(shape)} dimensions (the limit is {MAX_DIMS})")
    nonzero = DTYPES[dtype][0]
    for d in shape:
        if d:
            nonzero *= d
            if nonzero > INT64_MAX:
                _fail(f"tensor {name!r}: shape {_short(shape)} has more bytes than an int64 counts")
    return 0 if 0 in shape else nonzero // DTYPES[dtype][0]


def parse_header(data: bytes | memoryview, file_size: int) -> Header:
    """Parse and validate a safetensors header.

    `data` holds the file's first bytes (at least 8 + header length of them,
    fewer only if the file is that short); `file_size` is the whole file's size.
    Raises FormatError for anything but a well-formed file; never anything else."""
    data = bytes(data[: 8 + MAX_HEADER])
    if file_size < 8 or len(data) < 8:
        _fail(f"{file_size} bytes is too short for the 8-byte header length")
    (n,) = struct.unpack_from("<Q", data)
    if n > MAX_HEADER:
        _fail(f"header length {n} exceeds the {MAX_HEADER}-byte limit")
    if 8 + n > file_size:
        _fail(f"header length {n} runs past the end of the {file_size}-byte file")
    if len(data) < 8 + n:
        _fail(f"header truncated: {len(data) - 8} of {n} bytes")
    raw = data[8 : 8 + n]
    if not raw.startswith(b"{"):
        _fail("the header does not start with '{'")
    containers = raw.count(b"[") + raw.count(b"{")
    if containers > MAX_CONTAINERS:
        _fail(f"the header holds {containers} JSON arrays and objects (the limit is {MAX_CONTAINERS})")
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except FormatError:
        raise
    except UnicodeDecodeError as e:
        _fail(f"the header is not UTF-8 ({e.reason} at byte {e.start})")
    except (ValueError, RecursionError) as e:
        _fail(f"the header is not JSON ({str(e)[:120]})")
    if not isinstance(header, dict):
        _fail("the header is not a JSON object")

    data_len = file_size - 8 - n
    metadata = None
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                _fail("__metadata__ must map strings to strings")
            metadata = entry
            continue
        if not isinstance(entry, dict):
            _fail(f"tensor {name!r}: expected an object, got {type(entry).__name__}")
        if not set(entry) >= _ENTRY_KEYS:  # other keys are ignored, as by the reference
            _fail(f"tensor {name!r}: expected the keys dtype, shape, data_offsets, got {sorted(entry)[:8]}")
        dtype = entry["dtype"]
        if not isinstance(dtype, str) or dtype not in DTYPES:
            _fail(f"tensor {name!r}: unknown dtype {dtype!r:.40} (known: {', '.join(DTYPES)})")
        shape = _int_list(entry["shape"], f"tensor {name!r}: shape")
        offsets = _int_list(entry["data_offsets"], f"tensor {name!r}: data_offsets")
        if len(offsets) != 2:
            _fail(f"tensor {name!r}: data_offsets must be [begin, end], got {_short(offsets)}")
        begin, end = offsets
        if begin > end:
            _fail(f"tensor {name!r}: data_offsets [{begin}, {end}] end before they begin")
        if end > data_len:
            _fail(f"tensor {name!r}: data_offsets [{begin}, {end}] run past the {data_len}-byte data region")
        expected = _element_count(name, dtype, shape) * DTYPES[dtype][0]
        if end - begin != expected:
            _fail(f"tensor {name!r}: {dtype} {_short(shape)} needs {expected} bytes, data_offsets give {end - begin}")
        tensors[name] = TensorInfo(name, dtype, tuple(shape), begin, end)

    # The data region must be covered exactly: no overlap, no gap, nothing after.
    pos, prev = 0, None
    for t in sorted(tensors.values(), key=lambda t: (t.begin, t.end)):
        if t.begin < pos:
            _fail(f"tensors {prev!r} and {t.name!r} overlap (bytes {t.begin}..{pos})")
        if t.begin > pos:
            _fail(f"{t.begin - pos} unclaimed bytes before tensor {t.name!r} (at {pos})")
        pos, prev = t.end, t.name
    if pos != data_len:
        _fail(f"{data_len - pos} bytes after the last tensor (the data region holds {data_len})")
    return Header(tensors, metadata, 8 + n)


def read_header(path) -> Header:
    """Parse and validate the header of a safetensors file without mapping it."""
    path = os.fspath(path)
    with open_regular(path) as (fd, size):
        head = os.pread(fd, 8, 0)
        n = struct.unpack_from("<Q", head)[0] if len(head) == 8 else 0
        if len(head) == 8 and n <= MAX_HEADER and 8 + n <= size:
            head += os.pread(fd, n, 8)
    return parse_header(head, size)


class Tensors(dict):
    """name -> array, in the header's order.  `.mapping` is the HugeMapping they
    view, `.dtypes` the file's dtype per name, `.metadata` the __metadata__."""

    def __init__(self, arrays: dict, mapping: HugeMapping, dtypes: dict[str, str], metadata: dict[str, str] | None):
        super().__init__(arrays)
        self.mapping, self.dtypes, self.metadata = mapping, dtypes, metadata


def _numpy_views(mapping: HugeMapping, header: Header, buf) -> dict:
    import numpy as np

    out = {}
    for t in header.tensors.values():
        dt = np.dtype(DTYPES[t.dtype][1])
        if t.nbytes == 0:
            a = np.empty(t.shape, dt)
            a.flags.writeable = False
        else:
            a = np.frombuffer(buf, dtype=dt, count=t.nbytes // dt.itemsize, offset=header.data_start + t.begin).reshape(
                t.shape
            )
        out[t.name] = a
    return out


def _torch_views(mapping: HugeMapping, header: Header) -> dict:
    try:
        import torch
    except ImportError:
        raise UsageError("framework='pt' needs torch: pip install 'hugeload[torch]'") from None
    buf = mapping._writable_buffer()
    readonly = buf is None
    if readonly:
        # A staged file is mapped MAP_SHARED read-only (a writable MAP_PRIVATE map
        # would reserve a second copy of the pages).  torch has no read-only
        # tensors: these must not be written to (it would fault).
        buf = mapping.buffer
    out = {}
    with warnings.catch_warnings():
        if readonly:
            warnings.filterwarnings("ignore", message="The given buffer is not writable")
        for t in header.tensors.values():
            dtype = getattr(torch, _TORCH_DTYPES[t.dtype], None)
            if dtype is None:
                raise FormatError(f"tensor {t.name!r} is {t.dtype}, which torch {torch.__version__} lacks")
            if t.nbytes == 0:
                out[t.name] = torch.empty(t.shape, dtype=dtype)
                continue
            count = t.nbytes // DTYPES[t.dtype][0]
            tensor = torch.frombuffer(buf, dtype=dtype, count=count, offset=header.data_start + t.begin)
            out[t.name] = tensor.reshape(t.shape)
    return out


def load(
    path, framework: str = "numpy", page_size: str = "auto", fallback: bool | None = None, staged: bool = True
) -> Tensors:
    """Every tensor of a safetensors file, as views into one huge page mapping.

    `framework`: "numpy"/"np" (read-only arrays) or "pt"/"torch" (tensors; a
    private copy is writable, a staged file's must not be written).
    `page_size`, `fallback`, `staged`: as for hugeload.map_file.
    Raises FormatError for a malformed file (before any page is used)."""
    fw = {"numpy": "numpy", "np": "numpy", "pt": "pt", "torch": "pt"}.get(framework)
    if fw is None:
        raise UsageError(f"unknown framework {framework!r}: choose numpy or pt")
    path = os.fspath(path)
    header = read_header(path)
    mapping = map_file(path, page_size=page_size, staged=staged, fallback=fallback)
    try:
        # The header read above must be the one mapped (the file may have changed in between).
        if (
            len(mapping) < header.data_start
            or parse_header(mapping.buffer[: header.data_start], len(mapping)) != header
        ):
            from hugeload.api import FileChanged

            raise FileChanged(f"{path} changed between reading its header and mapping it; try again")
        views = _torch_views(mapping, header) if fw == "pt" else _numpy_views(mapping, header, mapping.buffer)
    except BaseException:
        mapping.close()
        raise
    return Tensors(views, mapping, {t.name: t.dtype for t in header.tensors.values()}, header.metadata)


def bf16_to_f32(bits):
    """Widen a BF16 array (uint16 bits, as load() returns it for NumPy) to float32."""
    import numpy as np

    bits = np.asarray(bits)
    if bits.dtype != np.uint16:
        raise UsageError(f"expected the uint16 bits of a BF16 tensor, got {bits.dtype}")
    return (bits.astype(np.uint32) << 16).view(np.float32)
