"""The running kernel's build configuration: /proc/config.gz (CONFIG_IKCONFIG_PROC), else
/boot/config-<release>, as distributions install it beside the kernel."""

import gzip
import zlib
from typing import NamedTuple

from hugeload.probe.files import path, read_text
from hugeload.probe.kernel import read_kernel_release

PROC_CONFIG = "proc/config.gz"
MAX_CONFIG_BYTES = 16 << 20  # a config is ~300 kB; a larger file is not one, and is not read whole


class KernelConfig(NamedTuple):
    options: dict[str, str]  # CONFIG_X -> "y", "m", "123", '"text"'; options "is not set" are absent
    source: str  # the file it came from, as the machine names it (/proc/config.gz)

    def enabled(self, name: str) -> bool:
        return self.options.get(name) in ("y", "m")


def parse_config(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key.startswith("CONFIG_") and value:
            out[key] = value
    return out


def _read_gz(root, rel: str) -> str | None:
    try:
        with gzip.open(path(root, rel), "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except (OSError, EOFError, zlib.error):
        return None
    return None if len(data) > MAX_CONFIG_BYTES else data.decode("utf-8", "replace")


def read_kernel_config(root="/", release: str | None = None) -> KernelConfig | None:
    """The configuration of the running kernel (`release`: its uname -r), or None when neither
    file is there (a kernel without IKCONFIG whose config file was not installed)."""
    text = _read_gz(root, PROC_CONFIG)
    if text is not None:
        return KernelConfig(parse_config(text), "/" + PROC_CONFIG)
    release = read_kernel_release(root) if release is None else release
    if not release or "/" in release or release.startswith("."):
        return None
    rel = f"boot/config-{release}"
    text = read_text(root, rel)
    return None if text is None else KernelConfig(parse_config(text), "/" + rel)
