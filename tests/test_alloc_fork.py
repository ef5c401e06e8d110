"""hugeload.alloc() keeps a private map's meaning across fork (issue 20, item 12).

A private 1 GB hugetlb page loses its page-table entry in about half the forked children
on this kernel, and a child's write to a private huge page needs a fresh page: with an
empty pool the child got SIGBUS.  alloc("1g") now takes its pages from a memfd mapped
shared, and the child's fork handler gives it its own copy."""

import ctypes
import os
import signal
from pathlib import Path

import pytest

import hugeload

HUGEPAGES = Path("/sys/kernel/mm/hugepages")
GIB, MIB = 1 << 30, 1 << 20


def set_pool(kind: str, n: int) -> int:
    (HUGEPAGES / kind / "nr_hugepages").write_text(str(n))
    return int((HUGEPAGES / kind / "nr_hugepages").read_text())


@pytest.fixture
def pool(needs_root):
    """reserve(kind, n): exactly n pages (skips when the kernel gives fewer); the pools come back after."""
    before = {k.name: int((k / "nr_hugepages").read_text()) for k in HUGEPAGES.glob("hugepages-*")}

    def reserve(kind: str, n: int) -> None:
        if kind not in before:
            pytest.skip(f"no {kind} pool")
        if set_pool(kind, n) < n:
            pytest.skip(f"{kind}: the kernel gave fewer than {n} pages")

    try:
        yield reserve
    finally:
        for kind, n in before.items():
            set_pool(kind, n)


def children_write(buf, size: int, forks: int) -> list[int]:
    """`forks` children one after another, each writing all of buf and checking it; their exit statuses."""
    view = memoryview(buf)
    statuses = []
    for _ in range(forks):
        pid = os.fork()
        if pid == 0:  # the write that died of SIGBUS
            try:
                ctypes.memset(ctypes.addressof(ctypes.c_char.from_buffer(view)), 0x33, size)
                ok = view[0] == 0x33 and view[size // 2] == 0x33 and view[size - 1] == 0x33
                os._exit(0 if ok else 1)
            except BaseException:
                os._exit(2)
        _, status = os.waitpid(pid, 0)
        statuses.append(status)
    return statuses


@pytest.mark.kernel
@pytest.mark.parametrize("page, kind, size", [("1g", "hugepages-1048576kB", GIB), ("2m", "hugepages-2048kB", 64 * MIB)])
def test_forked_children_write_an_alloc_with_an_empty_pool(pool, page, kind, size):
    pool(kind, size // (GIB if page == "1g" else 2 * MIB))  # exactly the allocation: no spare page
    m = hugeload.alloc(size, page)
    try:
        assert m.backing == page and m.page_size == (1048576 if page == "1g" else 2048)
        view = m.buffer
        addr = ctypes.addressof(ctypes.c_char.from_buffer(view))
        ctypes.memset(addr, 0x5A, size)
        statuses = children_write(view, size, forks=4)
        # Each child lived, wrote its own copy, and the parent's bytes are still its own.
        assert [os.waitstatus_to_exitcode(s) for s in statuses] == [0] * 4, [
            signal.Signals(-os.waitstatus_to_exitcode(s)).name if os.WIFSIGNALED(s) else s for s in statuses
        ]
        assert view[0] == 0x5A and view[size // 2] == 0x5A and view[size - 1] == 0x5A
        view.release()
    finally:
        m.close()
    assert int((HUGEPAGES / kind / "free_hugepages").read_text()) == int(
        (HUGEPAGES / kind / "nr_hugepages").read_text()
    )
