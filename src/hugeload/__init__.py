"""hugeload: model weights in 1 GB huge pages (then 2 MB, then 4 KB) for CPU inference.

The Python API (map_file, alloc, HugeMapping, page_size_of and the safetensors
and gguf loaders) is imported on first use, so `import hugeload` stays light:
it imports neither NumPy nor torch.
"""

import importlib

from hugeload.errors import FormatError, HugeloadError, PoolError, UsageError

__version__ = "0.1.0"

_API = {"map_file", "alloc", "HugeMapping", "FileChanged", "page_size_of"}
_STAGING = {"stage", "unstage", "StagedModel"}
_SUBMODULES = {"api", "safetensors", "gguf"}

__all__ = ["HugeloadError", "UsageError", "PoolError", "FormatError", "__version__", *sorted(_STAGING), *sorted(_API)]


def __getattr__(name: str):
    # Keeps `import hugeload` light: the store and the API are imported on first use.
    if name in _API:
        return getattr(importlib.import_module("hugeload.api"), name)
    if name in _STAGING:
        return getattr(importlib.import_module("hugeload.staging"), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"hugeload.{name}")
    raise AttributeError(f"module 'hugeload' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | _API | _STAGING | _SUBMODULES)
