"""Hypothesis fuzz of the safetensors header parser and loader: malformed input
never raises anything but FormatError, and whatever loads lies inside the file."""

import json
import os
import struct
import tempfile

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hugeload
import hugeload.safetensors as hs

SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.binary(max_size=300), st.integers(0, 1000))
def test_random_bytes(data, extra):
    """Arbitrary bytes, claimed file size anywhere around them."""
    for size in (len(data), len(data) + extra):
        try:
            h = hs.parse_header(data, size)
        except hugeload.FormatError:
            continue
        data_len = size - h.data_start
        assert all(0 <= t.begin <= t.end <= data_len for t in h.tensors.values())


dtypes = st.sampled_from(sorted(hs.DTYPES))
json_junk = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def files(draw):
    """A valid file, then a few targeted corruptions of it."""
    n = draw(st.integers(0, 4))
    header, blobs, pos = {}, [], 0
    for i in range(n):
        dt = draw(dtypes)
        shape = draw(st.lists(st.integers(0, 4), max_size=3))
        nbytes = int(np.prod(shape, dtype=np.int64)) * hs.DTYPES[dt][0]
        header[f"t{i}"] = {"dtype": dt, "shape": shape, "data_offsets": [pos, pos + nbytes]}
        blobs.append(draw(st.binary(min_size=nbytes, max_size=nbytes)))
        pos += nbytes
    if draw(st.booleans()):
        header["__metadata__"] = {"k": "v"}
    names = [k for k in header if k != "__metadata__"]
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["field", "entry", "offsets", "shape", "dtype", "drop", "extra"]))
        if kind == "entry" or not names:
            header[draw(st.text(max_size=3))] = draw(json_junk)
            continue
        e = header[draw(st.sampled_from(names))]
        if not isinstance(e, dict):
            continue
        if kind == "field":
            e[draw(st.sampled_from(["dtype", "shape", "data_offsets"]))] = draw(json_junk)
        elif kind == "offsets":
            e["data_offsets"] = draw(st.lists(st.integers(-5, pos + 20), min_size=0, max_size=3))
        elif kind == "shape":
            e["shape"] = draw(st.lists(st.integers(-2, 2**40), max_size=3))
        elif kind == "dtype":
            e["dtype"] = draw(st.text(max_size=8))
        elif kind == "drop":
            e.pop(draw(st.sampled_from(["dtype", "shape", "data_offsets"])), None)
        else:
            e["x"] = 1
    raw = json.dumps(header).encode()
    raw += b" " * draw(st.integers(0, 7))
    length = len(raw)
    if draw(st.integers(0, 9)) == 0:
        length = draw(st.integers(0, 2**64 - 1))
    out = struct.pack("<Q", length) + raw + b"".join(blobs)
    cut = draw(st.integers(0, 12))
    if cut == 1:
        out = out[: draw(st.integers(0, len(out)))]
    elif cut == 2:
        out += draw(st.binary(min_size=1, max_size=8))
    elif cut == 3 and len(out) > 8:
        i = draw(st.integers(0, len(out) - 1))
        out = out[:i] + bytes([draw(st.integers(0, 255))]) + out[i + 1 :]
    return out


@SETTINGS
@given(files())
def test_structured_files(content):
    """Load a (maybe corrupt) file from disk: FormatError, or every array holds
    exactly the bytes its offsets name, inside the file."""
    fd, path = tempfile.mkstemp(suffix=".safetensors")
    try:
        os.write(fd, content)
        os.close(fd)
        try:
            out = hs.load(path, page_size="4k")
        except hugeload.FormatError:
            return
        header = hs.read_header(path)
        for name, t in header.tensors.items():
            start = header.data_start + t.begin
            assert start + t.nbytes <= len(content)
            assert out[name].tobytes() == content[start : start + t.nbytes]
        out.mapping.close()
    finally:
        os.unlink(path)
