"""hugeload: model weights in 1 GB huge pages (then 2 MB, then 4 KB) for CPU inference."""

from hugeload.errors import FormatError, HugeloadError, PoolError, UsageError

__version__ = "0.1.0"

__all__ = ["HugeloadError", "UsageError", "PoolError", "FormatError", "stage", "unstage", "StagedModel", "__version__"]

_LAZY = {"stage": "hugeload.staging", "unstage": "hugeload.staging", "StagedModel": "hugeload.staging"}


def __getattr__(name):
    # Keeps `import hugeload` light: the store is imported on first use.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hugeload' has no attribute {name!r}")
