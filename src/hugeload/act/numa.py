"""NUMA placement: memory policy system calls, and staging copies on chosen nodes.

The policy is set on the staging thread before the staged file is created and mapped, so
every page faulted in while copying (by this thread and the copy threads it starts, which
inherit the policy) comes from the bound nodes; then the pages are counted per node from
/proc/self/numa_maps and the copy is thrown away if any landed elsewhere.  A hugetlb
fault under MPOL_BIND never falls back to another node, so the node's pool is checked
(and grown with --reserve) before the first touch.
"""

import contextlib
import ctypes
import mmap
import os
import platform
import shutil
import time
from pathlib import Path

from hugeload.act import pools as act_pools
from hugeload.act import state
from hugeload.act import store
from hugeload.errors import HugeloadError, UsageError
from hugeload.plan import numa as plan_numa
from hugeload.plan.numa import Mode, Placement
from hugeload.probe import numa as probe_numa
from hugeload.probe import pools as probe_pools
from hugeload.units import KiB, ceil_div

MPOL_DEFAULT, MPOL_PREFERRED, MPOL_BIND, MPOL_INTERLEAVE = 0, 1, 2, 3
# System call numbers per architecture (glibc has no wrappers; libnuma is not a dependency).
_SYSCALLS = {
    "x86_64": {"mbind": 237, "set_mempolicy": 238, "get_mempolicy": 239},
    "aarch64": {"mbind": 235, "get_mempolicy": 236, "set_mempolicy": 237},
}
_MAX_NODES = 1024


class PlacementError(HugeloadError):
    """Pages landed on a node other than the one asked for."""


def _syscall(name: str, *args) -> int:
    numbers = _SYSCALLS.get(platform.machine())
    if not numbers:
        raise HugeloadError(f"NUMA placement is not supported on {platform.machine()}")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    rc = libc.syscall(ctypes.c_long(numbers[name]), *args)
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")
    return rc


def _mask(nodes) -> tuple[ctypes.Array, int]:
    bits = ctypes.sizeof(ctypes.c_ulong) * 8
    arr = (ctypes.c_ulong * (_MAX_NODES // bits))()
    for n in nodes:
        arr[n // bits] |= 1 << (n % bits)
    return arr, _MAX_NODES + 1  # the kernel reads maxnode - 1 bits


def set_mempolicy(mode: int, nodes=()) -> None:
    """This thread's policy (and that of threads and children it creates from now on)."""
    if mode == MPOL_DEFAULT:
        _syscall("set_mempolicy", ctypes.c_int(mode), None, ctypes.c_ulong(0))
        return
    arr, maxnode = _mask(nodes)
    _syscall("set_mempolicy", ctypes.c_int(mode), arr, ctypes.c_ulong(maxnode))


def get_mempolicy() -> tuple[int, list[int]]:
    """(mode, nodes) of this thread's policy."""
    mode = ctypes.c_int(0)
    arr, maxnode = _mask(())
    _syscall("get_mempolicy", ctypes.byref(mode), arr, ctypes.c_ulong(maxnode), None, ctypes.c_ulong(0))
    bits = ctypes.sizeof(ctypes.c_ulong) * 8
    return mode.value, [i for i in range(_MAX_NODES) if arr[i // bits] >> (i % bits) & 1]


@contextlib.contextmanager
def bound(nodes: tuple[int, ...], interleave: bool = False):
    """Allocate this thread's new memory on `nodes` (interleaved, or bound) inside the block."""
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
    that exist, allocating none), and count them per node in /proc/self/numa_maps."""
    size = os.path.getsize(path)
    if not size:
        return {}
    page = kb * KiB
    fd = os.open(path, os.O_RDONLY)
    try:
        mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    try:
        for off in range(0, size, page):
            mm[off]
        return probe_numa.pages_by_node(probe_numa.read_numa_maps(root, "self"), os.path.realpath(path))
    finally:
        mm.close()


# ---------------------------------------------------------------- staging copies


def copy_dir(mnt: Path, name: str, node: int, first: bool) -> Path:
    """The first copy keeps the plain store path; further copies sit beside it as
    <name>@node<N> ('@' is not allowed in model names, so no model can collide)."""
    return mnt / name if first else mnt / f"{name}@node{node}"


def _same_sources(existing: store.Manifest, files, stats) -> bool:
    return [(f.source, f.size, f.mtime_ns, f.ino) for f in existing.files] == [
        (p, s.st_size, s.st_mtime_ns, s.st_ino) for p, s in zip(files, stats)
    ]


def stage(path: str, options: "store.StageOptions", state_dir=None, root="/", progress=None) -> "store.StageResult":
    """store.stage with options.placement: one copy per CopySpec, each bound to its nodes and
    checked.  All or nothing: every node's needs are checked before anything is reserved, and
    a failure anywhere removes every copy and gives back every page reserved for them."""
    placement: Placement = options.placement
    page_size_kb = options.page_size.kb if options.page_size else None
    name, reserve, verify, persist = options.name, options.reserve, options.verify, options.persist
    threads, lock_timeout = options.threads, options.lock_timeout
    files = store.source_files(path)
    name = store.check_name(name or store.default_name(files[0]))
    stats = [os.stat(f) for f in files]
    total = sum(s.st_size for s in stats)
    progress = progress or (lambda n: None)
    nodes = probe_numa.read_nodes(root)
    plan_numa.check_nodes(placement, nodes)
    specs = placement.copies()
    offered = probe_pools.page_sizes(root)
    with store.model_lock(name, state_dir, lock_timeout):
        existing = store.read_manifest(name, state_dir)
        if existing:
            if (
                _same_sources(existing, files, stats)
                and all(store.file_state(f) == "ready" for f in existing.all_files)
                and [c.node for c in existing.copies] == [s.node for s in specs]
                and (page_size_kb is None or all(c.page_size_kb == page_size_kb for c in existing.copies))
            ):
                return store.StageResult(existing, True, "already staged and unchanged")
            store._remove_model(existing, state_dir, root, release_pages=False)
        by_id = {n.node: n for n in nodes}
        plans = []  # (spec, kb, pages, reason)
        for spec in specs:
            free_1g = min(
                (by_id[n].pools[plan_numa.GIGANTIC_KB].free if plan_numa.GIGANTIC_KB in by_id[n].pools else 0)
                for n in spec.bind
            ) * len(spec.bind)
            kb, reason = plan_numa.choose_page_size(total, page_size_kb, offered, free_1g, reserve)
            pages = sum(max(1, ceil_div(s.st_size, kb * KiB)) for s in stats)
            plan_numa.check_fits(plan_numa.node_needs(spec, kb, pages, nodes), reserve, name)
            plans.append((spec, kb, pages, reason))
        staging_roots: list[Path] = []
        owner = store.owner(name)
        reserved = False
        try:
            for spec, kb, pages, _ in plans:
                for need in plan_numa.node_needs(spec, kb, pages, nodes):
                    if need.missing:
                        reserved = True
                        act_pools.reserve(root, kb, need.missing, need.node, owner=owner, state_dir=state_dir)
            copies: list[tuple[plan_numa.CopySpec, int, int, Path, Path, list[store.StagedFile]]] = []
            n_threads = threads or min(4, os.cpu_count() or 1)
            for i, (spec, kb, pages, _) in enumerate(plans):
                mnt = store.ensure_mount(kb, state_dir, root)
                staging = mnt / f".staging-{name}-{os.getpid()}"
                if staging not in staging_roots:
                    staging.mkdir()
                    staging_roots.append(staging)
                work = staging / f"copy{i}"
                work.mkdir()
                final = copy_dir(mnt, name, spec.node, i == 0)
                staged = []
                for src, st in zip(files, stats):
                    dst = work / os.path.basename(src)
                    with bound(spec.bind, interleave=placement.mode is Mode.INTERLEAVE):
                        store._copy_into(src, dst, st.st_size, kb, n_threads, progress)
                    _check_nodes(str(dst), kb, spec, root)
                    sha = None
                    if verify:
                        sha = store._sha256(src, st.st_size)
                        if store._staged_sha256(str(dst), st.st_size) != sha:
                            raise HugeloadError(
                                f"verification failed: the staged copy of {src} differs from the source"
                            )
                    staged.append(
                        store.StagedFile(
                            src,
                            str(final / os.path.basename(src)),
                            st.st_size,
                            st.st_dev,
                            st.st_ino,
                            st.st_mtime_ns,
                            sha,
                            st.st_ctime_ns,
                        )
                    )
                copies.append((spec, kb, pages, work, final, staged))
            for _, _, _, work, final, _ in copies:
                if final.exists():
                    shutil.rmtree(final)
                os.rename(work, final)
            for d in staging_roots:
                d.rmdir()
            staging_roots = []
            (spec0, kb0, pages0, _, _, files0), rest = copies[0], copies[1:]
            manifest = store.Manifest(
                name,
                kb0,
                pages0,
                files0,
                time.time(),
                persist,
                node=spec0.node,
                replicas=[store.Copy(s.node, kb, p, f) for s, kb, p, _, _, f in rest],
            )
            state.write_json(store.manifest_path(name, state_dir), manifest.to_json())
        except BaseException as e:
            for d in staging_roots:
                shutil.rmtree(d, ignore_errors=True)
            if reserved:
                act_pools.release(root, None, owner=owner, state_dir=state_dir)
            if isinstance(e, OSError):
                raise HugeloadError(
                    f"staging {name} {placement.describe()} failed: {e.strerror or e}"
                    f"{' (' + e.filename + ')' if e.filename else ''}; nothing was staged"
                ) from None
            raise
        store.write_redirects(state_dir)
        return store.StageResult(manifest, False, f"{plans[0][3]}; {placement.describe()}")


def _check_nodes(path: str, kb: int, spec: plan_numa.CopySpec, root) -> None:
    found = file_pages_by_node(path, kb, root)
    want = ceil_div(os.path.getsize(path), kb * KiB)
    wrong = {n: c for n, c in found.items() if n not in spec.bind}
    if wrong or sum(found.values()) != want:
        where = ", ".join(f"{c} on node {n}" for n, c in sorted(found.items())) or "none present"
        raise PlacementError(
            f"pages of {os.path.basename(path)} did not land on node(s) "
            f"{','.join(map(str, spec.bind))} ({where}, of {want}); nothing was staged"
        )


def check_run_node(node: int, root="/") -> probe_numa.Node:
    """The node `hugeload run --node` binds to: it exists, has CPUs and memory."""
    nodes = {n.node: n for n in probe_numa.read_nodes(root)}
    if node not in nodes:
        have = ", ".join(map(str, sorted(nodes))) or "none (kernel without NUMA)"
        raise UsageError(f"NUMA node {node} does not exist (nodes: {have})")
    n = nodes[node]
    if not n.cpus:
        raise UsageError(f"NUMA node {node} has no CPUs to run on")
    if not n.has_memory:
        raise UsageError(f"NUMA node {node} has no memory of its own: bind to a node with memory")
    allowed = set(os.sched_getaffinity(0))
    if not allowed & set(n.cpus):
        raise UsageError(f"none of node {node}'s CPUs ({','.join(map(str, n.cpus))}) is allowed for this process")
    return n


def _manifest_of(path: str, state_dir=None) -> store.Manifest | None:
    staged = store.find_staged(path, state_dir)
    if staged is None:
        return None
    for m in store.manifests(state_dir):
        if any(f.staged == staged.staged for f in m.all_files):
            return m
    return None


def check_copies_for_node(node: int, paths: list[str], state_dir=None) -> None:
    """`run --node N` with a model whose copies are all bound to other nodes would read
    every weight across the interconnect: refuse, in one line, before reserving anything."""
    for path in paths:
        m = _manifest_of(path, state_dir)
        if m is None:
            continue
        nodes = [c.node for c in m.copies]
        if node not in nodes and plan_numa.INTERLEAVED not in nodes:
            raise UsageError(
                f"model {m.name!r} has copies on node(s) {','.join(map(str, nodes))} only, not on node {node}: "
                f"stage one there (hugeload load {m.source} --nodes {','.join(map(str, sorted({*nodes, node})))}) "
                f"or run on node {nodes[0]}"
            )


def spanning_note(paths: list[str], state_dir=None, root="/") -> str | None:
    """A note when this process may run on CPUs of several nodes but a model's only copy is
    bound to one of them: the threads on the other nodes read it remotely."""
    cpu_node = probe_numa.cpu_nodes(root)
    span = sorted({cpu_node[c] for c in os.sched_getaffinity(0) if c in cpu_node})
    if len(span) < 2:
        return None
    for path in paths:
        m = _manifest_of(path, state_dir)
        if m is None:
            continue
        nodes = {c.node for c in m.copies}
        if plan_numa.INTERLEAVED not in nodes and not set(span) <= nodes:
            return (
                f"this engine may run on nodes {','.join(map(str, span))} but {m.name!r} is staged on node(s) "
                f"{','.join(map(str, sorted(nodes)))} only; pin it with --node N, or load with --replicate or --interleave"
            )
    return None
