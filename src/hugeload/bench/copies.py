"""The copies and pool pages `bench engine`'s backings need, held while they fit in memory.

A copy is named by a `CopyKey`: a staged copy (page size, NUMA placement), the tmpfs copy, or
pool pages for allocations (page size, count).  `Copies` sets each up when a backing needs it
(timed apart from start-up), tears the oldest down when the next one would not fit the memory
budget, and removes everything at the end, also on failure or Ctrl-C.  A killed bench leaves
its store under the state dir (`bench_dir`) and its tmpfs copy in /dev/shm under the name
`shm_name`: `hugeload gc` removes both.
"""

import contextlib
import os
import shutil
import time
from enum import Enum
from pathlib import Path
from typing import NamedTuple

from hugeload import pages
from hugeload.act import numa as act_numa
from hugeload.act import pools as act_pools
from hugeload.act import shm as act_shm
from hugeload.act import state, store
from hugeload.bench.backings import EngineBacking, Heap, Placement, Weights
from hugeload.bench.reservations import bench_owner, sigint_deferred
from hugeload.bench.scratch import copy_private, private_dir
from hugeload.errors import HugeloadError
from hugeload.pages import PAGE_2M, PageSize
from hugeload.probe import pools as probe_pools

SHM_DIR = act_shm.SHM_DIR


def bench_dir(state_dir=None, pid: int | None = None) -> Path:
    """A bench run's own store and scratch files, under the state dir so `hugeload gc` finds
    them after a kill -9."""
    return state.state_dir(state_dir) / "bench" / str(pid or os.getpid())


def shm_name(pid: int | None = None) -> str:
    """The tmpfs copy's directory in SHM_DIR (gc removes it, and a mkdtemp beside it, by this name: act/shm.py)."""
    return act_shm.bench_name(pid or os.getpid())


class CopyKind(Enum):
    STAGED = "stage"  # the model staged into hugetlbfs
    TMPFS = "shm"  # the model copied to tmpfs (huge=never)
    POOL = "pool"  # free pool pages for the engine's allocations


class CopyKey(NamedTuple):
    kind: CopyKind
    page: PageSize | None = None  # STAGED, POOL
    count: int = 0  # POOL: pages
    placement: Placement | None = None  # STAGED: where its pages are

    def __str__(self) -> str:
        """The name in the bench's output: stage-2048@remote, shm, pool-2048-512."""
        if self.kind is CopyKind.STAGED:
            return f"stage-{self.page.kb}" + (f"@{self.placement.value}" if self.placement else "")
        if self.kind is CopyKind.POOL:
            return f"pool-{self.page.kb}-{self.count}"
        return self.kind.value

    @property
    def stage_name(self) -> str:
        """The staged copy's model name in the bench's store."""
        return f"bench-{self.page.kb}" + (f"-{self.placement.value}" if self.placement else "")

    def bytes(self, model_size: int) -> int:
        if self.kind is CopyKind.POOL:
            return self.page.bytes * self.count
        if self.kind is CopyKind.STAGED:
            return self.page.round_up(model_size)
        return model_size


def needs(b: EngineBacking, size: int) -> list[CopyKey]:
    """The copies backing `b` needs for a model of `size` bytes."""
    out = []
    if b.weights is Weights.STAGED:
        out.append(CopyKey(CopyKind.STAGED, b.staged_page, placement=b.placement))
    if b.weights is Weights.TMPFS:
        out.append(CopyKey(CopyKind.TMPFS))
    if b.heap is Heap.HUGELOAD:
        page = b.alloc_page or b.staged_page or pages.first_page(size)
        copies = 2 if b.weights is Weights.PRIVATE_COPY else 1  # the copy of the file, and the heap's
        out.append(CopyKey(CopyKind.POOL, page, page.pages_for(size) * copies))
    if b.heap is Heap.GLIBC_HUGETLB:
        out.append(CopyKey(CopyKind.POOL, PAGE_2M, PAGE_2M.pages_for(size)))
    return out


class Copies:
    """The copies the chosen backings need, held oldest first."""

    def __init__(self, model: str, size: int, root, log, state_dir):
        self.model, self.size, self.root, self.log = model, size, root, log
        self.dir = bench_dir(state_dir)
        self.store_dir = self.dir / "state"
        self.held: dict[CopyKey, str] = {}  # key -> path ("" for pool pages), oldest first
        self.setup_s: dict[CopyKey, list[float]] = {}
        self.failed: dict[CopyKey, str] = {}
        self.budget: int | None = None  # bytes copies may hold together (None: no limit)
        self.placements: dict = {}  # Placement -> plan.numa.Placement (node_placement runs)
        self.nodes: dict[CopyKey, dict[int, int]] = {}  # staged copy -> pages per node, read when staged
        self.shm: Path | None = None

    def bytes_of(self, key: CopyKey) -> int:
        return key.bytes(self.size)

    def make_room(self, keys: list[CopyKey]) -> None:
        """Tear down the oldest copies not in `keys` until `keys` fit in the budget."""
        if self.budget is None:
            return
        want = sum(self.bytes_of(k) for k in keys if k not in self.held)
        for old in [k for k in self.held if k not in keys]:
            if sum(self.bytes_of(k) for k in self.held) + want <= self.budget:
                break
            self.teardown(old)

    def owner(self, key: CopyKey) -> str:
        return f"{bench_owner()}:{key}"

    def setup(self, key: CopyKey) -> str | None:
        """Path (or "" for pools) of the resource, or None when it cannot be had (reason in failed)."""
        if key in self.held:
            return self.held[key]
        t0 = time.perf_counter()
        try:
            path = {CopyKind.STAGED: self._stage, CopyKind.TMPFS: self._tmpfs, CopyKind.POOL: self._pool}[key.kind](key)
        except (HugeloadError, OSError) as e:
            self.failed[key] = str(e)
            self.teardown(key)
            return None
        self.setup_s.setdefault(key, []).append(time.perf_counter() - t0)
        self.held[key] = path
        return path

    def _stage(self, key: CopyKey) -> str:
        placement = self.placements.get(key.placement) if key.placement else None
        self.log(f"staging the model into {key.page.label} pages" + (f", {placement.describe()}" if placement else ""))
        state.ensure_dir(self.store_dir)
        m, _, _ = store.stage(
            self.model,
            store.StageOptions(page_size=key.page, name=key.stage_name, reserve=True, placement=placement),
            state_dir=self.store_dir,
            root=self.root,
        )
        if placement:
            self.nodes[key] = act_numa.file_pages_by_node(m.path, key.page.kb, self.root)
        return m.path

    def _tmpfs(self, key: CopyKey) -> str:
        self.log("copying the model to tmpfs (huge=never)")
        if self.shm is None:
            self.shm = private_dir(SHM_DIR, shm_name())
        path = self.shm / os.path.basename(self.model)
        copy_private(self.model, path)
        return str(path)

    def _pool(self, key: CopyKey) -> str:
        kb, n = key.page.kb, key.count
        avail = max(0, probe_pools.system_pool(self.root, kb).available)
        if n > avail:
            act_pools.reserve(self.root, kb, n - avail, partial=True, owner=self.owner(key))
        avail = max(0, probe_pools.system_pool(self.root, kb).available)
        if avail < n:
            raise HugeloadError(f"needs {n} free {key.page.label} pages, the kernel gave {avail}")
        return ""

    def teardown(self, key: CopyKey) -> None:
        with sigint_deferred():
            self.held.pop(key, None)
            if key.kind is CopyKind.STAGED:
                with contextlib.suppress(HugeloadError):
                    for m in store.manifests(self.store_dir):
                        if m.name == key.stage_name:
                            store.unstage(m.name, force=True, state_dir=self.store_dir, root=self.root)
            elif key.kind is CopyKind.TMPFS:
                if self.shm is not None:
                    with contextlib.suppress(FileNotFoundError):
                        (self.shm / os.path.basename(self.model)).unlink()
            else:
                with contextlib.suppress(HugeloadError):
                    act_pools.release(self.root, key.page.kb, owner=self.owner(key))

    def close(self) -> None:
        with sigint_deferred():
            for key in list(self.held):
                self.teardown(key)
            with contextlib.suppress(HugeloadError):
                for m in store.manifests(self.store_dir):
                    store.unstage(m.name, force=True, state_dir=self.store_dir, root=self.root)
            with contextlib.suppress(HugeloadError):
                store.gc(self.store_dir, self.root)
            with contextlib.suppress(HugeloadError):
                act_pools.release(self.root, None, owner=None, state_dir=self.store_dir)
            if self.shm is not None:
                shutil.rmtree(self.shm, ignore_errors=True)
            shutil.rmtree(self.dir, ignore_errors=True)
