"""Exception types.  The CLI turns every HugeloadError into one line on stderr."""


class HugeloadError(Exception):
    """An error the user can act on; `exit_code` is what the CLI exits with."""

    exit_code = 1


class UsageError(HugeloadError):
    """Bad input: unknown page size, unparsable size, missing file."""

    exit_code = 2


class NotSupported(HugeloadError):
    """The machine cannot do it: not Linux, no hugetlb support, unreadable /sys."""

    exit_code = 2


class PermissionNeeded(HugeloadError):
    """A write to /proc or /sys needs root; the message names the file."""

    exit_code = 1


class PoolError(HugeloadError):
    """A huge page pool could not provide what was asked (short reservation, empty pool)."""

    exit_code = 3


class FormatError(HugeloadError, ValueError):
    """A model file (safetensors, GGUF) is malformed."""

    exit_code = 2
