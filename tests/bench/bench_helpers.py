"""Shared by the benchmark tests (a module of its own: `conftest` is ambiguous
when several test directories are collected together)."""

from pathlib import Path

from hugeload.act import pools as act_pools
from hugeload.probe import pools as probe_pools

KB_1G = 1048576
KB_2M = 2048
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "machines"


def pool_counts() -> dict[int, int]:
    return {kb: act_pools.read_count("/", kb) for kb in probe_pools.page_sizes("/")}


def positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0
