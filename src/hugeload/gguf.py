"""GGUF files in huge pages: raw NumPy views of every tensor.

    views = hugeload.gguf.tensors("model.gguf")

The `gguf` package's GGUFReader supplies the layout only (offsets, shapes,
types); the bytes come from a HugeMapping.  Each view has the dtype and shape
GGUFReader gives the same tensor: float/int types as such, quantized types as
uint8 arrays of their blocks (last axis = bytes per row).

This module is hugeload.gguf; `gguf` below is the PyPI package (absolute
imports), so keep scripts named gguf.py out of the working directory.
"""

import os

from hugeload.api import HugeMapping, map_file
from hugeload.errors import FormatError, UsageError

__all__ = ["tensors", "GGUFTensors"]


class GGUFTensors(dict):
    """name -> array, in file order.  `.mapping` is the HugeMapping they view,
    `.types` the GGML type name of each (F32, Q4_K, ...)."""

    mapping: HugeMapping
    types: dict[str, str]


def _layout(path: str):
    try:
        from gguf import GGUFReader  # the PyPI package, not this module
    except ImportError:
        raise UsageError("hugeload.gguf needs the gguf package: pip install 'hugeload[gguf]'") from None
    try:
        reader = GGUFReader(path, "r")
    except FileNotFoundError:
        raise UsageError(f"no such file: {path}") from None
    except (ValueError, KeyError, IndexError, TypeError, OverflowError, UnicodeDecodeError) as e:
        raise FormatError(f"not a valid GGUF file: {path}: {e}") from None
    layout = []
    for t in reader.tensors:
        layout.append((t.name, t.tensor_type.name, t.data_offset, t.data.dtype, t.data.shape, t.data.nbytes))
    return layout


def tensors(path, page_size: str = "auto", fallback: bool | None = None, staged: bool = True) -> GGUFTensors:
    """Every tensor of a GGUF file as a read-only NumPy view into one huge page
    mapping.  `page_size`, `fallback`, `staged`: as for hugeload.map_file."""
    import numpy as np

    path = os.fspath(path)
    layout = _layout(path)
    size = os.stat(path).st_size
    for name, _type, offset, _dtype, _shape, nbytes in layout:
        if offset < 0 or offset + nbytes > size:
            raise FormatError(f"not a valid GGUF file: tensor {name!r} runs past the end of {path}")
    mapping = map_file(path, page_size=page_size, staged=staged, fallback=fallback)
    try:
        if len(mapping) != size:
            from hugeload.api import FileChanged

            raise FileChanged(f"{path} changed between reading its layout and mapping it; try again")
        buf = mapping.buffer
        out = {}
        for name, _type, offset, dtype, shape, nbytes in layout:
            if nbytes == 0:
                a = np.empty(shape, dtype)
                a.flags.writeable = False
            else:
                a = np.frombuffer(buf, dtype=dtype, count=nbytes // dtype.itemsize, offset=offset).reshape(shape)
            out[name] = a
    except BaseException:
        mapping.close()
        raise
    result = GGUFTensors(out)
    result.mapping = mapping
    result.types = {name: t for name, t, *_ in layout}
    return result
