"""Model files, opened and read the one way: which checked reader a file goes to (GGUF by its
magic, safetensors by its name).  Both open it with hugeload.regularfile.open_regular.

Model files come from the internet and hugeload reads them as root: every header is read by
hugeload.gguf.read_header or hugeload.safetensors.read_header, which check it against the
file's size before allocating anything and raise FormatError (one line) for a bad file."""

import os

SAFETENSORS_SUFFIX = ".safetensors"


def read_header(path):
    """The checked header of a model file (gguf.Header or safetensors.Header), or None when the
    file is neither format, or is GGUF and the optional gguf package is missing."""
    from hugeload import gguf, safetensors

    path = os.fspath(path)
    if gguf.is_gguf(path):
        try:
            return gguf.read_header(path)
        except gguf.MissingPackage:
            return None
    if path.endswith(SAFETENSORS_SUFFIX):
        return safetensors.read_header(path)
    return None
