"""Benchmark tests: sizes are small and rounds few, and no test asserts a timing
(timings are noise on a shared machine), only structure, verified page sizes,
positive ratios and that the machine is left as found (the top-level fixture
checks pools and mounts after every test)."""

import pytest
from bench_helpers import FIXTURES


@pytest.fixture
def no1g_root():
    """A fixture machine whose kernel has an empty 2M pool and no 1G pages."""
    return str(FIXTURES / "no1g")
