"""Memory binding: the set_mempolicy/get_mempolicy system calls, binding a block of work or a
process to nodes, and where a file's pages sit.

The store sets the policy on the staging thread before a placed copy's file is created and
mapped, so every page faulted in while copying (by this thread and the copy threads it
starts, which inherit the policy) comes from the bound nodes; then the pages are counted per
node from /proc/self/numa_maps (probe.numa) and the copy is thrown away if any landed
elsewhere.  A hugetlb fault under MPOL_BIND never falls back to another node, so the node's
pool is checked (and grown with --reserve) before the first touch.
"""

import contextlib
import ctypes
import mmap
import os
import platform

from hugeload.errors import HugeloadError
from hugeload.probe import numa as probe_numa
from hugeload.units import KiB, ceil_div

MPOL_DEFAULT, MPOL_PREFERRED, MPOL_BIND, MPOL_INTERLEAVE = 0, 1, 2, 3
# System call numbers per architecture (glibc has no wrappers; libnuma is not a dependency).
SYSCALLS = {
    "x86_64": {"mbind": 237, "set_mempolicy": 238, "get_mempolicy": 239},
    "aarch64": {"mbind": 235, "get_mempolicy": 236, "set_mempolicy": 237},
}
MAX_NODES = 1024


class PlacementError(HugeloadError):
    """Pages landed on a node other than the one asked for."""


def syscall(name: str, *args) -> int:
    numbers = SYSCALLS.get(platform.machine())
    if not numbers:
        raise HugeloadError(f"NUMA placement is not supported on {platform.machine()}")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    rc = libc.syscall(ctypes.c_long(numbers[name]), *args)
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")
    return rc


def node_mask(nodes) -> tuple[ctypes.Array, int]:
    bits = ctypes.sizeof(ctypes.c_ulong) * 8
    arr = (ctypes.c_ulong * (MAX_NODES // bits))()
    for n in nodes:
        arr[n // bits] |= 1 << (n % bits)
    return arr, MAX_NODES + 1  # the kernel reads maxnode - 1 bits


def set_mempolicy(mode: int, nodes=()) -> None:
    """This thread's policy (and that of threads and children it creates from now on)."""
    if mode == MPOL_DEFAULT:
        syscall("set_mempolicy", ctypes.c_int(mode), None, ctypes.c_ulong(0))
        return
    arr, maxnode = node_mask(nodes)
    syscall("set_mempolicy", ctypes.c_int(mode), arr, ctypes.c_ulong(maxnode))


def get_mempolicy() -> tuple[int, list[int]]:
    """(mode, nodes) of this thread's policy."""
    mode = ctypes.c_int(0)
    arr, maxnode = node_mask(())
    syscall("get_mempolicy", ctypes.byref(mode), arr, ctypes.c_ulong(maxnode), None, ctypes.c_ulong(0))
    bits = ctypes.sizeof(ctypes.c_ulong) * 8
    return mode.value, [i for i in range(MAX_NODES) if arr[i // bits] >> (i % bits) & 1]


@contextlib.contextmanager
def bound(nodes: tuple[int, ...], interleave: bool = False):
    """Allocate this thread's new memory on `nodes` (interleaved, or bound) inside the block;
    no nodes: the block runs under the policy it already has."""
    if not nodes:
        yield
        return
    before = get_mempolicy()
    set_mempolicy(MPOL_INTERLEAVE if interleave else MPOL_BIND, nodes)
    try:
        yield
    finally:
        set_mempolicy(before[0], before[1])


def bind_process(node: int, cpus: tuple[int, ...]) -> None:
    """What `numactl --cpunodebind=N --membind=N` does, for this process (called in the child
    between fork and exec: both survive exec)."""
    os.sched_setaffinity(0, cpus)
    set_mempolicy(MPOL_BIND, (node,))


def file_pages_by_node(path: str, kb: int, root="/") -> dict[int, int]:
    """Where the pages of a staged file sit: map it, touch one byte per page (mapping pages
    that exist, allocating none), and count them per node in /proc/self/numa_maps (matched on
    the whole file name the kernel shows, never a part of it)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        if not size:
            return {}
        mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    try:
        for off in range(0, size, kb * KiB):
            mm[off]
        return probe_numa.pages_by_node(probe_numa.read_numa_maps(root, "self"), os.path.realpath(path))
    finally:
        mm.close()


def check_placed(path: str, kb: int, bind: tuple[int, ...], root="/") -> None:
    """PlacementError unless every page of the staged file sits on one of `bind`'s nodes."""
    size = os.path.getsize(path)
    found = file_pages_by_node(path, kb, root)
    want = ceil_div(size, kb * KiB)
    wrong = {n: c for n, c in found.items() if n not in bind}
    if wrong or sum(found.values()) != want:
        where = ", ".join(f"{c} on node {n}" for n, c in sorted(found.items())) or "none present"
        raise PlacementError(
            f"pages of {os.path.basename(path)} did not land on node(s) "
            f"{','.join(map(str, bind))} ({where}, of {want}); nothing was staged"
        )
