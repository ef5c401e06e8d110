"""Helpers for the Python API tests: reserve a few huge pages for one test and
always put the pool back (the top-level fixture fails any test that does not)."""

import contextlib
import os

import pytest

from hugeload.act import pools as act_pools
from hugeload.probe import pools as probe_pools


@contextlib.contextmanager
def reserved(kb: int, count: int):
    """Add `count` pages to the pool for the block; skip the test when the kernel
    gives fewer (read back), and restore the count even if the block fails."""
    if os.geteuid() != 0:
        pytest.skip("needs root to reserve huge pages")
    if kb not in probe_pools.page_sizes("/"):
        pytest.skip(f"no {kb} kB huge pages in this kernel")
    before = act_pools.read_count("/", kb)
    try:
        got = act_pools.set_count("/", kb, before + count) - before
        if got < count:
            pytest.skip(f"the kernel gave {got} of {count} pages of {kb} kB (memory fragmented)")
        yield
    finally:
        act_pools.set_count("/", kb, before)


@pytest.fixture
def reserve():
    return reserved
