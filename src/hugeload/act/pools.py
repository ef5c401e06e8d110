"""Huge page pool sizes: write nr_hugepages, then read back what the kernel gave."""

from pathlib import Path

from hugeload.act.sysfs import write_text
from hugeload.probe import pools as probe_pools


def pool_dir(root, kb: int, node: int | None = None) -> Path:
    if node is None:
        return Path(root) / probe_pools.HUGEPAGES_DIR / f"hugepages-{kb}kB"
    return Path(root) / probe_pools.NODES_DIR / f"node{node}" / "hugepages" / f"hugepages-{kb}kB"


def read_count(root, kb: int, node: int | None = None) -> int:
    pool = probe_pools.system_pool(root, kb) if node is None else probe_pools.node_pool(root, kb, node)
    return pool.total


def set_count(root, kb: int, count: int, node: int | None = None) -> int:
    """Ask the kernel for `count` persistent pages and return the count it settled on."""
    write_text(pool_dir(root, kb, node) / "nr_hugepages", f"{count}\n")
    return read_count(root, kb, node)


def try_one_page(root, kb: int) -> tuple[int, bool, str | None]:
    """Grow the pool by one page and put it back: (pages obtained, restored, error).

    Used by `doctor --try` to learn whether runtime reservation works without
    keeping anything."""
    before = read_count(root, kb)
    obtained, error = 0, None
    try:
        obtained = max(0, set_count(root, kb, before + 1) - before)
    except Exception as e:  # reported as the check's detail
        error = str(e)
    finally:
        restored = read_count(root, kb) == before or set_count(root, kb, before) == before
    return obtained, restored, error
