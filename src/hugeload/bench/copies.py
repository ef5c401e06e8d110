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

from hugeload import pages, runner
from hugeload.act import numa as act_numa
from hugeload.act import pools as act_pools
from hugeload.act import shm as act_shm
from hugeload.act import state, store
from hugeload.bench.backings import EngineBacking, Heap, Placement, Weights
from hugeload.bench.reservations import bench_owner, sigint_deferred
from hugeload.bench.scratch import copy_private, private_dir
from hugeload.errors import HugeloadError
from hugeload.pages import PAGE_2M, PageSize
from hugeload.plan.buffers import Prediction
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
    mixed: bool = False  # STAGED in 1G: 2M pages for what the 1G pool cannot give

    def __str__(self) -> str:
        """The name in the bench's output: stage-2048@remote, stage-1048576+2048, shm, pool-2048-512."""
        if self.kind is CopyKind.STAGED:
            mixed = f"+{PAGE_2M.kb}" if self.mixed else ""
            return f"stage-{self.page.kb}{mixed}" + (f"@{self.placement.value}" if self.placement else "")
        if self.kind is CopyKind.POOL:
            return f"pool-{self.page.kb}-{self.count}"
        return self.kind.value

    @property
    def stage_name(self) -> str:
        """The staged copy's model name in the bench's store."""
        mixed = "-mixed" if self.mixed else ""
        return f"bench-{self.page.kb}{mixed}" + (f"-{self.placement.value}" if self.placement else "")

    def bytes(self, model_size: int) -> int:
        if self.kind is CopyKind.POOL:
            return self.page.bytes * self.count
        if self.kind is CopyKind.STAGED:
            return self.page.round_up(model_size)
        return model_size


# glibc.malloc.hugetlb=2 takes every mmap'd chunk from the 2 MB pool, not only the heap copy:
# room for the engine's other large mallocs (compute buffers, a small KV cache) made before it.
GLIBC_HEADROOM_2M = 32
GLIBC_CHUNK_HEADER = 16  # bytes glibc puts before an mmap'd chunk: a 2 MiB-multiple copy needs one more page


def heap_pages(b: EngineBacking, prediction: Prediction) -> dict[int, int]:
    """Pages per page size (kB) backing `b`'s heap copies take, as predicted for this model
    (plan/buffers): under the preload library, the one size rule for the page size `b` tells
    it (runner.heap_pages, what `hugeload run` reserves); under glibc's tunable, 2 MB pages."""
    if b.heap is Heap.HUGELOAD:
        return runner.heap_pages({"": prediction}, b.page_size, runner.DEFAULT_ALLOC_THRESHOLD)
    if b.heap is Heap.GLIBC_HUGETLB:
        copies = sum(PAGE_2M.pages_for(h.bytes + GLIBC_CHUNK_HEADER) for h in prediction.heap)
        return {PAGE_2M.kb: copies + GLIBC_HEADROOM_2M}
    return {}


def needs(b: EngineBacking, size: int, prediction: Prediction | None = None) -> list[CopyKey]:
    """The copies backing `b` needs for a model of `size` bytes.  Pool pages for allocations are
    sized from the predicted heap copy (`prediction`, plan/buffers) plus, for `copy`, the private
    copy of the file; without a prediction (not GGUF, no gguf package) from the model's size."""
    out = []
    if b.weights is Weights.STAGED:
        out.append(CopyKey(CopyKind.STAGED, b.staged_page, placement=b.placement, mixed=b.mixed))
    if b.weights is Weights.TMPFS:
        out.append(CopyKey(CopyKind.TMPFS))
    if prediction is None:
        if b.heap is Heap.HUGELOAD:
            page = b.alloc_page or b.staged_page or pages.first_page(size)
            copies = 2 if b.weights is Weights.PRIVATE_COPY else 1  # the copy of the file, and the heap's
            out.append(CopyKey(CopyKind.POOL, page, page.pages_for(size) * copies))
        if b.heap is Heap.GLIBC_HUGETLB:
            out.append(CopyKey(CopyKind.POOL, PAGE_2M, PAGE_2M.pages_for(size)))
        return out
    pool = heap_pages(b, prediction)
    if b.weights is Weights.PRIVATE_COPY:
        page = pages.first_page(size, b.page_size)
        pool[page.kb] = pool.get(page.kb, 0) + page.pages_for(size)
    out += [CopyKey(CopyKind.POOL, pages.by_kb(kb), n) for kb, n in sorted(pool.items(), reverse=True) if n]
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
        self.pool_owners: set[str] = set()  # every owner pool pages were reserved under

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

    def state_dir_of(self, key: CopyKey) -> Path:
        """Where a staged copy lives: the bench's store, or for `1g+2m` a state dir of its own.
        A copy in mixed page sizes is no one file: the engine maps the source under the preload
        library, which redirects it to the copy the state dir's index names, so no other copy of
        the source may be listed beside it."""
        return self.dir / f"state-{key.stage_name}" if key.mixed else self.store_dir

    def state_dirs(self) -> list[Path]:
        """Every state dir this bench's copies may live in (gc's list, act/store/gc.py)."""
        return [self.store_dir, *sorted(p for p in self.dir.glob("state-*") if p.is_dir() and not p.is_symlink())]

    def _stage(self, key: CopyKey) -> str:
        placement = self.placements.get(key.placement) if key.placement else None
        self.log(f"staging the model into {key.page.label} pages" + (f", {placement.describe()}" if placement else ""))
        state_dir = self.state_dir_of(key)
        state.ensure_dir(state_dir)
        m, _, _ = store.stage(
            self.model,
            store.StageOptions(
                page_size=key.page,
                name=key.stage_name,
                reserve=True,
                placement=placement,
                mixed=store.Mixed.WHEN_SHORT if key.mixed else store.Mixed.NEVER,  # `1g` measures 1G only
            ),
            state_dir=state_dir,
            root=self.root,
        )
        if placement:
            self.nodes[key] = act_numa.file_pages_by_node(m.path, key.page.kb, self.root)
        return self.model if key.mixed else m.path

    def _tmpfs(self, key: CopyKey) -> str:
        self.log("copying the model to tmpfs (huge=never)")
        if self.shm is None:
            self.shm = private_dir(SHM_DIR, shm_name())
        path = self.shm / os.path.basename(self.model)
        copy_private(self.model, path)
        return str(path)

    def _pool(self, key: CopyKey) -> str:
        """All `count` pages reserved under the key's own owner: never free pages that are
        there already (another user's, or another key's: alloc-1g and 1g+alloc once shared one
        1 GB page that way, and the heap fell back)."""
        self.pool_owners.add(self.owner(key))
        got = act_pools.reserve(self.root, key.page.kb, key.count, partial=True, owner=self.owner(key)).obtained
        if got < key.count:
            raise HugeloadError(f"needs {key.count} free {key.page.label} pages, the kernel gave {got}")
        return ""

    def top_up(self, keys: list[CopyKey]) -> str | None:
        """Before a run: the pool pages `keys` hold are still free.  Staging takes free pages
        first (act/store.ensure_pages), so a copy staged after a pool key was set up may have
        taken that key's pages; what is missing is reserved again under the key's owner.
        Returns why the pages cannot be had, or None."""
        want: dict[int, int] = {}
        for k in keys:
            if k.kind is CopyKind.POOL:
                want[k.page.kb] = want.get(k.page.kb, 0) + k.count
        for kb, n in want.items():
            missing = n - max(0, probe_pools.system_pool(self.root, kb).available)
            if missing <= 0:
                continue
            key = next(k for k in keys if k.kind is CopyKind.POOL and k.page.kb == kb)
            try:
                got = act_pools.reserve(self.root, kb, missing, partial=True, owner=self.owner(key)).obtained
            except HugeloadError as e:
                return str(e)
            if got < missing:
                return f"needs {n} free {key.page.label} pages, {missing} were taken and the kernel gave back {got}"
        return None

    def teardown(self, key: CopyKey) -> None:
        with sigint_deferred():
            self.held.pop(key, None)
            if key.kind is CopyKind.STAGED:
                with contextlib.suppress(HugeloadError):
                    for m in store.manifests(self.state_dir_of(key)):
                        if m.name == key.stage_name:
                            store.unstage(m.name, force=True, state_dir=self.state_dir_of(key), root=self.root)
            elif key.kind is CopyKind.TMPFS:
                if self.shm is not None:
                    with contextlib.suppress(FileNotFoundError):
                        (self.shm / os.path.basename(self.model)).unlink()
            else:
                with contextlib.suppress(HugeloadError):
                    act_pools.release(self.root, key.page.kb, owner=self.owner(key))

    def close(self) -> None:
        with sigint_deferred():
            # Copies first, pool keys last, and every pool owner released once more: a staged copy
            # may hold pages a pool key reserved (staging takes free pages first), which its
            # release could not give back while the copy was there.
            for key in sorted(self.held, key=lambda k: k.kind is CopyKind.POOL):
                self.teardown(key)
            for owner in sorted(self.pool_owners):
                with contextlib.suppress(HugeloadError):
                    act_pools.release(self.root, None, owner=owner)
            for state_dir in self.state_dirs():
                with contextlib.suppress(HugeloadError):
                    for m in store.manifests(state_dir):
                        store.unstage(m.name, force=True, state_dir=state_dir, root=self.root)
                with contextlib.suppress(HugeloadError):
                    store.gc(state_dir, self.root)
                with contextlib.suppress(HugeloadError):
                    act_pools.release(self.root, None, owner=None, state_dir=state_dir)
            if self.shm is not None:
                shutil.rmtree(self.shm, ignore_errors=True)
            shutil.rmtree(self.dir, ignore_errors=True)
