"""hugeload: model weights in 1 GB huge pages (then 2 MB, then 4 KB) for CPU inference."""

from hugeload.errors import FormatError, HugeloadError, PoolError, UsageError

__version__ = "0.1.0"

__all__ = ["HugeloadError", "UsageError", "PoolError", "FormatError", "__version__"]
