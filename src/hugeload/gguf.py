"""GGUF files in huge pages: raw NumPy views of every tensor, and a checked header reader.

    views = hugeload.gguf.tensors("model.gguf")
    header = hugeload.gguf.read_header("model.gguf")   # layout and metadata, nothing mapped

Model files come from the internet and hugeload reads them as root, so the header is read
here, by one reader that checks every count, length, offset and shape against the file's
size *before* it allocates or skips anything: a bad file ends in FormatError (one line)
after a bounded amount of reading, never in a MemoryError, a hang or a NumPy exception.
Every path that looks into a GGUF file goes through read_header (`run`'s and `stage
--reserve`'s buffer prediction via engines.model_tensors, container-args, tensors()).

The rules are ggml's own (gguf.cpp, which llama.cpp loads with), so what passes here is what
the engine would load: version 2 or 3, little-endian; at most 4 dimensions whose product
fits an int64; a known tensor type whose block divides the row; general.alignment a uint32
power of two; and each tensor at exactly the offset that the ones before it, padded to the
alignment, leave (so tensors can neither overlap nor alias the header), ending inside the
file.  The GGML type table (block sizes) is the `gguf` package's.

Each view of tensors() has the dtype and shape GGUFReader gives the same tensor: float/int
types as such, quantized types (BF16 included) as uint8 arrays of their blocks (last axis =
bytes per row).

This module is hugeload.gguf; `gguf` below is the PyPI package (absolute imports), so keep
scripts named gguf.py out of the working directory.
"""

import os
import struct
from typing import Any, NamedTuple, NoReturn

from hugeload.errors import FormatError, UsageError
from hugeload.regularfile import open_regular

__all__ = ["Array", "GGUFTensors", "Header", "MissingPackage", "TensorInfo", "is_gguf", "read_header", "tensors"]

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
INT64_MAX = (1 << 63) - 1
# Bounds that real models stay far below (a few thousand tensors and keys, tokenizers of a
# few hundred thousand strings) and that keep a hostile header's cost in memory and time to
# a fraction of a second's work per million entries.
MAX_TENSORS = 1 << 20
MAX_KV = 1 << 20
MAX_NAME = 65535  # the GGUF spec's limit on keys; tensor names are held to it too
MAX_STRING_ARRAY = 1 << 24
MAX_KEPT_STRING = 1 << 20  # string values longer than this are skipped, kept as an Array-like stub
CHUNK = 1 << 20

# GGUF value types (the spec's numbering; gguf.GGUFValueType has the same names).
STRING, ARRAY = 8, 9
SCALARS = {
    0: ("UINT8", "<B"),
    1: ("INT8", "<b"),
    2: ("UINT16", "<H"),
    3: ("INT16", "<h"),
    4: ("UINT32", "<I"),
    5: ("INT32", "<i"),
    6: ("FLOAT32", "<f"),
    7: ("BOOL", "<B"),
    10: ("UINT64", "<Q"),
    11: ("INT64", "<q"),
    12: ("FLOAT64", "<d"),
}
# GGML types that GGUFReader (and so tensors()) views as their own NumPy element type.
ELEMENT_DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "I8": "i1", "I16": "<i2", "I32": "<i4", "I64": "<i8"}


class Array(NamedTuple):
    """A metadata array (or an overlong string), left in the file: its element type, its
    length, and where its elements start."""

    type: str  # UINT8, ..., STRING
    length: int  # elements (for an overlong string: bytes)
    offset: int


class TensorInfo(NamedTuple):
    name: str
    type: str  # GGML type name: F32, Q4_K, ...
    ne: tuple[int, ...]  # ggml order: ne[0] is the row length
    offset: int  # absolute file offset of its first byte
    nbytes: int

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.ne:
            n *= d
        return n


class Header(NamedTuple):
    version: int
    alignment: int
    data_start: int  # absolute file offset of the data section
    kv: dict[str, Any]  # scalars and strings as values; arrays as Array
    tensors: dict[str, TensorInfo]  # in file order


class MissingPackage(UsageError):
    """The optional gguf package (its GGML type table) is not installed."""


def _fail(path: str, msg: str) -> NoReturn:
    raise FormatError(f"not a valid GGUF file: {path}: {msg}")


def _type_table() -> dict[int, tuple[str, int, int]]:
    """GGML type id -> (name, values per block, bytes per block), from the gguf package."""
    try:
        from gguf.constants import GGML_QUANT_SIZES  # the PyPI package, not this module
    except ImportError:
        raise MissingPackage("reading GGUF files needs the gguf package: pip install 'hugeload[gguf]'") from None
    return {int(t): (t.name, block, size) for t, (block, size) in GGML_QUANT_SIZES.items()}


class _Reader:
    """Sequential reads of a file through one bounded window: every read is checked against
    the file's size first, and nothing larger than the window or the checked length is read."""

    def __init__(self, fd: int, size: int, path: str):
        self.fd, self.size, self.path = fd, size, path
        self.pos = 0
        self.buf = b""
        self.buf_at = 0

    def fail(self, msg: str) -> NoReturn:
        _fail(self.path, msg)

    def left(self) -> int:
        return self.size - self.pos

    def _window(self, n: int, what: str) -> int:
        if n > self.size - self.pos:
            self.fail(f"{what} at byte {self.pos} runs past the end of the {self.size}-byte file")
        at = self.pos - self.buf_at
        if at < 0 or at + n > len(self.buf):
            self.buf = os.pread(self.fd, min(max(n, CHUNK), self.size - self.pos), self.pos)
            self.buf_at, at = self.pos, 0
            if len(self.buf) < n:
                self.fail(f"the file shrank while it was read (at byte {self.pos})")
        return at

    def unpack(self, fmt: str, n: int, what: str):
        at = self._window(n, what)
        self.pos += n
        return struct.unpack_from(fmt, self.buf, at)[0]

    def u32(self, what: str) -> int:
        return self.unpack("<I", 4, what)

    def u64(self, what: str) -> int:
        return self.unpack("<Q", 8, what)

    def raw(self, n: int, what: str) -> bytes:
        at = self._window(n, what)
        self.pos += n
        return self.buf[at : at + n]

    def skip(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            self.fail(f"{what} at byte {self.pos} runs past the end of the {self.size}-byte file")
        self.pos += n

    def name(self, what: str) -> str:
        n = self.u64(f"the length of {what}")
        if n > MAX_NAME:
            self.fail(f"{what} at byte {self.pos - 8} claims {n} bytes (the limit is {MAX_NAME})")
        raw = self.raw(n, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            self.fail(f"{what} at byte {self.pos - n} is not UTF-8 ({e.reason})")

    def value(self, vtype: int, key: str):
        if vtype in SCALARS:
            name, fmt = SCALARS[vtype]
            v = self.unpack(fmt, struct.calcsize(fmt), f"the value of {key!r}")
            return bool(v) if name == "BOOL" else v
        if vtype == STRING:
            n = self.u64(f"the length of {key!r}")
            if n > self.left():
                self.fail(f"the string {key!r} claims {n} bytes; {self.left()} are left in the file")
            if n > MAX_KEPT_STRING:
                at = self.pos
                self.skip(n, f"the string {key!r}")
                return Array("STRING", n, at)  # a length in bytes, not elements: see Array
            return self.raw(n, f"the string {key!r}").decode("utf-8", errors="replace")
        if vtype == ARRAY:
            etype = self.u32(f"the element type of {key!r}")
            count = self.u64(f"the length of {key!r}")
            at = self.pos
            if etype in SCALARS:
                width = struct.calcsize(SCALARS[etype][1])
                if count > self.left() // width:
                    self.fail(
                        f"the array {key!r} claims {count} elements; the file has room for {self.left() // width}"
                    )
                self.skip(count * width, f"the array {key!r}")
                return Array(SCALARS[etype][0], count, at)
            if etype == STRING:
                if count > min(self.left() // 8, MAX_STRING_ARRAY):
                    self.fail(f"the string array {key!r} claims {count} strings (limit {MAX_STRING_ARRAY})")
                for _ in range(count):
                    n = self.u64(f"a string of {key!r}")
                    self.skip(n, f"a string of {key!r}")
                return Array("STRING", count, at)
            self.fail(
                f"the array {key!r} has elements of type {etype}" + (" (nested arrays)" if etype == ARRAY else "")
            )
        self.fail(f"the value of {key!r} has unknown type {vtype}")


def _tensor_info(r: _Reader) -> tuple[str, int, tuple[int, ...], int]:
    name = r.name("a tensor name")
    n_dims = r.u32(f"the dimension count of {name!r}")
    if n_dims > MAX_DIMS:
        r.fail(f"tensor {name!r} has {n_dims} dimensions; ggml allows {MAX_DIMS}")
    ne = tuple(r.u64(f"a dimension of {name!r}") for _ in range(n_dims))
    type_id = r.u32(f"the type of {name!r}")
    offset = r.u64(f"the offset of {name!r}")
    return name, type_id, ne, offset


def _check_tensor(path: str, name: str, type_id: int, ne: tuple[int, ...], types: dict) -> tuple[str, int]:
    """The type name and byte size of a tensor, or FormatError: ggml's rules."""
    if type_id not in types:
        _fail(path, f"tensor {name!r} has unknown type {type_id}")
    tname, block, size = types[type_id]
    nonzero = 1
    for d in ne:
        if d > INT64_MAX:
            _fail(path, f"tensor {name!r} has a dimension of {d}, more than an int64 holds")
        if d:
            nonzero *= d
            if nonzero > INT64_MAX:
                _fail(path, f"tensor {name!r} has shape {list(ne)}: more elements than an int64 counts")
    row = ne[0] if ne else 1  # ggml pads missing dimensions with 1
    if row % block:
        _fail(path, f"tensor {name!r} ({tname}) has rows of {row} values, not a multiple of its block of {block}")
    n = 0 if 0 in ne else nonzero
    return tname, n // block * size


def _parse(fd: int, size: int, path: str) -> Header:
    r = _Reader(fd, size, path)
    if size < 4 or r.raw(4, "the magic") != MAGIC:
        r.fail("it does not start with 'GGUF'")
    version = r.u32("the version")
    if version & 0xFFFF == 0 and version:
        r.fail("it is big-endian (byte-swapped); hugeload reads little-endian GGUF only")
    if version not in VERSIONS:
        r.fail(f"version {version} (hugeload reads {' and '.join(map(str, VERSIONS))})")
    n_tensors = r.u64("the tensor count")
    n_kv = r.u64("the key count")
    # Each key takes at least 8 + 4 + 1 bytes, each tensor info at least 8 + 4 + 4 + 8.
    if n_kv > min(MAX_KV, r.left() // 13):
        r.fail(f"it claims {n_kv} keys; the file has room for {r.left() // 13} (limit {MAX_KV})")
    if n_tensors > min(MAX_TENSORS, r.left() // 24):
        r.fail(f"it claims {n_tensors} tensors; the file has room for {r.left() // 24} (limit {MAX_TENSORS})")
    kv: dict[str, Any] = {}
    alignment = DEFAULT_ALIGNMENT
    for _ in range(n_kv):
        key = r.name("a key")
        if key in kv:
            r.fail(f"the key {key!r} appears twice")
        vtype = r.u32(f"the type of {key!r}")
        kv[key] = r.value(vtype, key)
        if key == "general.alignment":
            v = kv[key]
            if vtype != 4 or not v or v & (v - 1):
                r.fail(f"general.alignment must be a uint32 power of two, got {v!r:.40}")
            alignment = v
    types = _type_table()
    raw = []
    names = set()
    for _ in range(n_tensors):
        t = _tensor_info(r)
        if t[0] in names:
            r.fail(f"tensor {t[0]!r} appears twice")
        names.add(t[0])
        raw.append(t)
    data_start = -(-r.pos // alignment) * alignment
    if raw and data_start > size:
        r.fail(f"the data section would start at byte {data_start}, past the end of the {size}-byte file")
    tensors: dict[str, TensorInfo] = {}
    expected = 0
    for name, type_id, ne, offset in raw:
        tname, nbytes = _check_tensor(path, name, type_id, ne, types)
        if offset != expected:
            r.fail(f"tensor {name!r} has offset {offset}, expected {expected} (ggml's layout: in order, aligned)")
        end = data_start + offset + nbytes
        if end > size:
            r.fail(f"tensor {name!r} ({nbytes} bytes at byte {data_start + offset}) runs past the end of the file")
        tensors[name] = TensorInfo(name, tname, ne, data_start + offset, nbytes)
        expected += -(-nbytes // alignment) * alignment
    return Header(version, alignment, data_start, kv, tensors)


def read_header(path) -> Header:
    """The checked layout and metadata of a GGUF file, without mapping it.  FormatError for
    anything ggml would not load; UsageError when the file is missing or the gguf package is."""
    path = os.fspath(path)
    with open_regular(path) as (fd, size):
        return _parse(fd, size, path)


def is_gguf(path) -> bool:
    """Whether the file starts with GGUF's magic (False when it cannot be read)."""
    try:
        with open_regular(os.fspath(path)) as (fd, _size):
            return os.pread(fd, 4, 0) == MAGIC
    except UsageError:
        return False


class GGUFTensors(dict):
    """name -> array, in file order.  `.mapping` is the HugeMapping they view,
    `.types` the GGML type name of each (F32, Q4_K, ...), `.header` the checked header."""

    def __init__(self, arrays: dict, mapping: Any, types: dict[str, str], header: Header):
        super().__init__(arrays)
        self.mapping, self.types, self.header = mapping, types, header


def view_layout(t: TensorInfo, types: dict | None = None):
    """(NumPy dtype, shape) of a tensor's view: GGUFReader's choice."""
    import numpy as np

    shape = tuple(reversed(t.ne))
    if t.type in ELEMENT_DTYPES:
        return np.dtype(ELEMENT_DTYPES[t.type]), shape
    types = types or _type_table()
    block, size = next((b, s) for name, b, s in types.values() if name == t.type)
    if not shape:
        return np.dtype(np.uint8), (t.nbytes,)
    return np.dtype(np.uint8), (*shape[:-1], shape[-1] // block * size)


def tensors(path, page_size: str = "auto", fallback: bool | None = None, staged: bool = True) -> GGUFTensors:
    """Every tensor of a GGUF file as a read-only NumPy view into one huge page
    mapping.  `page_size`, `fallback`, `staged`: as for hugeload.map_file."""
    import numpy as np

    from hugeload.api import FileChanged, map_file

    path = os.fspath(path)
    header = read_header(path)
    types = _type_table()
    layout = [(t, *view_layout(t, types)) for t in header.tensors.values()]
    size = os.stat(path).st_size
    mapping = map_file(path, page_size=page_size, staged=staged, fallback=fallback)
    try:
        if len(mapping) != size:
            raise FileChanged(f"{path} changed between reading its layout and mapping it; try again")
        buf = mapping.buffer
        out = {}
        for t, dtype, shape in layout:
            if t.nbytes == 0:
                a = np.empty(shape, dtype)
                a.flags.writeable = False
            else:
                a = np.frombuffer(buf, dtype=dtype, count=t.nbytes // dtype.itemsize, offset=t.offset).reshape(shape)
            out[t.name] = a
    except BaseException:
        mapping.close()
        raise
    return GGUFTensors(out, mapping, {t.name: t.type for t in header.tensors.values()}, header)
