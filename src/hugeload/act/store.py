"""The model store: files staged into hugetlbfs so engines map them from huge pages.

Layout under the state directory (default /run/hugeload):
  store/mnt-1g, store/mnt-2m     hugetlbfs mounts the store makes when it needs them
  store/mnt-*/<name>/<file>...   a staged model: the source files, each zero-padded to a page multiple
  store/mnt-*/<name>@node<N>/... further copies of it on other NUMA nodes (act/numa.py)
  store/mnt-*/.staging-<name>-*  a model being copied; renamed to <name> only when complete
  store/models/<name>.json       the manifest, written last: a model without one is not ready
  store/redirects                the preload library's index of ready files (act/redirects.py)
  store/locks/<name>.lock        one stager per model name at a time
Models staged with persist are also listed in the config directory's models.json
(act/persist.py, default /etc/hugeload), which stage(), unstage() and clear() keep in
step, and restore() re-stages at boot.

Facts designed around (measured here): hugetlbfs has no write(), so staging is
ftruncate to the rounded size, mmap MAP_SHARED, copy in; a file left on
hugetlbfs pins its pages until deleted, even after every process died; a
MAP_PRIVATE map of a hugetlbfs file reserves a second full set of pages.
"""

import contextlib
import hashlib
import mmap
import os
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

from hugeload import pages
from hugeload.act import ledger, persist, redirects, shm, state
from hugeload.act import mounts as act_mounts
from hugeload.act import pools as act_pools
from hugeload.errors import HugeloadError, PoolError, UsageError
from hugeload.pages import PAGE_1G, PAGE_2M, PageSize
from hugeload.plan import pages as plan_pages
from hugeload.probe import pools as probe_pools
from hugeload.probe import procs
from hugeload.probe.mounts import read_mounts
from hugeload.units import KiB, MiB, ceil_div

CHUNK = 64 * MiB
LOCK_TIMEOUT = 600.0  # StageOptions.lock_timeout's default
SPLIT_RE = re.compile(r"^(?P<prefix>.*)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


@dataclass
class StagedFile:
    source: str
    staged: str
    size: int  # true size; the staged file is padded to a page multiple
    dev: int
    ino: int
    mtime_ns: int
    sha256: str | None = None
    ctime_ns: int = 0  # 0 in manifests written before the index had ctime: never matches


@dataclass
class Copy:
    """One staged copy of a model's files, on one NUMA node (-1: not placed, or interleaved)."""

    node: int
    page_size_kb: int
    pages: int
    files: list[StagedFile]

    @property
    def path(self) -> str:
        return self.files[0].staged if self.files else ""

    def summary(self) -> dict:
        return {"node": self.node, "path": self.path, "pages": self.pages, "page_size_kb": self.page_size_kb}

    @classmethod
    def from_json(cls, d: dict) -> "Copy":
        return cls(d["node"], d["page_size_kb"], d["pages"], [StagedFile(**f) for f in d["files"]])


@dataclass
class Manifest:
    name: str
    page_size_kb: int
    pages: int
    files: list[StagedFile]
    created: float
    persist: bool = False
    node: int = -1  # NUMA node of `files`, the first copy
    replicas: list[Copy] = field(default_factory=list)  # copies on further nodes (act/numa.py)
    state: str = "ready"  # set when read: ready / stale / missing / staging / orphaned
    processes: list[str] = field(default_factory=list)

    @property
    def path(self) -> str:
        """The path to give the engine (the first split part for multi-file models)."""
        return self.files[0].staged if self.files else ""

    @property
    def source(self) -> str:
        return self.files[0].source if self.files else ""

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def copies(self) -> list[Copy]:
        return [Copy(self.node, self.page_size_kb, self.pages, self.files), *self.replicas]

    @property
    def all_files(self) -> list[StagedFile]:
        """The staged files of every copy."""
        return [f for c in self.copies for f in c.files]

    def to_json(self) -> dict:
        d = asdict(self)
        d.update(path=self.path, source=self.source, size=self.size, copies=[c.summary() for c in self.copies])
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Manifest":
        files = [StagedFile(**f) for f in d["files"]]
        return cls(
            d["name"],
            d["page_size_kb"],
            d["pages"],
            files,
            d["created"],
            d.get("persist", False),
            d.get("node", -1),
            [Copy.from_json(c) for c in d.get("replicas", [])],
        )


@dataclass(frozen=True)
class StageOptions:
    """How to stage a model: one bundle instead of a row of booleans (black's Mode).
    Add new knobs (NUMA placement, ...) as fields with a default that keeps today's behaviour."""

    page_size: PageSize | None = None  # None: auto (hugeload.pages' rule, then what the pools can hold)
    name: str | None = None  # store name; default from the file name
    reserve: bool = False  # grow the pool by what is missing (given back on unstage)
    verify: bool = False  # compare SHA-256 of source and staged copy
    persist: bool = False  # list it in models.json so `hugeload restore` re-stages it at boot
    threads: int | None = None  # copy threads (default: up to 4)
    lock_timeout: float = LOCK_TIMEOUT  # seconds to wait for another stager of the same model
    policy: pages.Policy = pages.DEFAULT_POLICY
    # ((page kB, count), ...), with `reserve` only: pages kept free for the heap copies an
    # engine will make of this model (plan/buffers: CPU_REPACK / AMX), owned by the model and
    # given back on unstage like its own.  Best effort: what the kernel does not give is left
    # to the engine's fallback.
    heap_pages: tuple[tuple[int, int], ...] = ()
    placement: "object | None" = None  # plan.numa.Placement: a node, a copy per node, or interleaved (act/numa.py)


class StageResult(NamedTuple):
    manifest: "Manifest"
    already_staged: bool
    reason: str  # why this page size


# ---------------------------------------------------------------- paths


def store_dir(state_dir=None) -> Path:
    return state.state_dir(state_dir) / "store"


def mount_dir(kb: int, state_dir=None) -> Path:
    return store_dir(state_dir) / f"mnt-{pages.by_kb(kb).name}"


def manifest_path(name: str, state_dir=None) -> Path:
    return store_dir(state_dir) / "models" / f"{name}.json"


def owner(name: str) -> str:
    return f"model:{name}"


def check_name(name: str) -> str:
    if not NAME_RE.match(name) or name.startswith(".staging"):
        raise UsageError(f"model name {name!r} is not allowed: use letters, digits, '.', '_', '+', '-' (no '/')")
    return name


def default_name(path: str) -> str:
    base = os.path.basename(path)
    m = SPLIT_RE.match(base)
    if m:
        base = m.group("prefix")
    else:
        base = os.path.splitext(base)[0] or base
    return re.sub(r"[^A-Za-z0-9._+-]", "_", base)[:128] or "model"


def source_files(path: str) -> list[str]:
    """The files that make up a model: all parts of a split GGUF, else the file itself."""
    if not os.path.exists(path):
        raise UsageError(f"no such file: {path}")
    if os.path.isdir(path):
        raise UsageError(f"{path} is a directory, not a model file")
    if not os.path.isfile(path):
        raise UsageError(f"{path} is not a regular file")
    m = SPLIT_RE.match(os.path.basename(path))
    if not m:
        return [os.path.abspath(path)]
    count = int(m.group("count"))
    d = os.path.dirname(os.path.abspath(path))
    parts = [os.path.join(d, f"{m.group('prefix')}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]
    missing = [p for p in parts if not os.path.isfile(p)]
    if missing:
        raise UsageError(f"split model is missing {len(missing)} of {count} parts, first: {missing[0]}")
    return parts


# ---------------------------------------------------------------- reading


def read_manifest(name: str, state_dir=None) -> Manifest | None:
    data = state.read_json(manifest_path(name, state_dir), None)
    return Manifest.from_json(data) if data else None


def manifests(state_dir=None) -> list[Manifest]:
    d = store_dir(state_dir) / "models"
    out = []
    for p in sorted(d.glob("*.json")) if d.exists() else []:
        m = read_manifest(p.stem, state_dir)
        if m:
            out.append(m)
    return out


def file_state(f: StagedFile) -> str:
    try:
        st = os.stat(f.staged)
    except FileNotFoundError:
        return "missing"
    if st.st_size < f.size:
        return "missing"
    try:
        src = os.stat(f.source)
    except FileNotFoundError:
        return "ready"  # the staged copy outlives its source; still valid
    if (src.st_size, src.st_mtime_ns, src.st_ino) != (f.size, f.mtime_ns, f.ino):
        return "stale"
    return "ready"


def mapped_by(paths: list[str], root="/") -> list[str]:
    """'PID (comm)' of processes that map or hold open any of `paths`, this one included
    (Python code that calls unstage() may still map the model itself)."""
    return procs.holder_names(procs.holders(root, paths=paths))


def staging_dirs(state_dir=None) -> list[Path]:
    out = []
    for page in pages.HUGE:
        d = mount_dir(page.kb, state_dir)
        if d.is_dir():
            out += sorted(p for p in d.iterdir() if p.name.startswith(".staging-"))
    return out


def staging_name(d: Path) -> str:
    """The model name in '.staging-<name>-<pid>'."""
    return d.name[len(".staging-") :].rsplit("-", 1)[0]


def staged(state_dir=None, root="/") -> list[Manifest]:
    """Every manifest with its current state and the processes that map it (one walk over
    /proc for all models), plus models being staged right now."""
    out = manifests(state_dir)
    found = procs.holders(root, paths=[f.staged for m in out for f in m.all_files])
    for m in out:
        states = {file_state(f) for f in m.all_files}
        m.state = "missing" if "missing" in states else "stale" if "stale" in states else "ready"
        mine = {f.staged for f in m.all_files}
        m.processes = procs.holder_names([h for h in found if h.path in mine])
    for d in staging_dirs(state_dir):
        name = staging_name(d)
        busy = _lock_held(name, state_dir)
        out.append(Manifest(name, _mount_kb(d), 0, [], d.stat().st_mtime, state="staging" if busy else "orphaned"))
    return out


def find_staged(path: str, state_dir=None) -> StagedFile | None:
    """The ready staged copy of `path` (matched by device, inode, size and mtime), if any."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    for m in manifests(state_dir):
        for f in m.all_files:
            if (f.dev, f.ino, f.size, f.mtime_ns) == (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns):
                if file_state(f) == "ready":
                    return f
    return None


def _mount_kb(path: Path) -> int:
    return PAGE_1G.kb if f"mnt-{PAGE_1G.name}" in str(path) else PAGE_2M.kb


# ---------------------------------------------------------------- locking


def _lock_path(name: str, state_dir=None) -> Path:
    return store_dir(state_dir) / "locks" / f"{name}.lock"


def _lock_held(name: str, state_dir=None) -> bool:
    import fcntl

    p = _lock_path(name, state_dir)
    if not p.exists():
        return False
    fd = os.open(p, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


@contextlib.contextmanager
def model_lock(name: str, state_dir=None, timeout: float = LOCK_TIMEOUT):
    try:
        with state.locked(_lock_path(name, state_dir), timeout=timeout) as fd:
            yield fd
    except TimeoutError:
        raise HugeloadError(
            f"model {name!r} is being staged or unstaged by another hugeload; waited {timeout:.0f} s"
        ) from None


# ---------------------------------------------------------------- redirects index


def write_redirects(state_dir=None) -> None:
    """The preload library's view of the store: ready files only, one line per copy (a model
    staged on several NUMA nodes has one line per node for the same source)."""
    entries = []
    for m in manifests(state_dir):
        for c in m.copies:
            for f in c.files:
                if file_state(f) == "ready":
                    entries.append(
                        redirects.RedirectEntry(
                            f.dev, f.ino, f.size, f.mtime_ns, f.ctime_ns, c.node, c.page_size_kb, f.staged
                        )
                    )
    redirects.write(state_dir, entries)


# ---------------------------------------------------------------- staging


def choose_page_size(
    sizes: int | list[int],
    requested_kb: int | None,
    reserve: bool,
    root="/",
    policy: pages.Policy = pages.DEFAULT_POLICY,
) -> tuple[int, str]:
    """(kB, reason).  A requested size is kept (see hugeload.pages).  auto: the size rule
    (plan.pages.recommend), where 1 GB counts as obtainable when the 1G pool can hold the
    model now or, with `reserve`, can be grown to; else 2 MB."""
    offered = probe_pools.page_sizes(root)
    if requested_kb is not None:
        if requested_kb not in offered:
            raise UsageError(f"this kernel offers no {pages.name(requested_kb)} huge pages")
        return requested_kb, f"{pages.name(requested_kb)} requested"
    if PAGE_2M.kb not in offered:
        raise HugeloadError("this kernel offers no 2M huge pages")
    sizes = [sizes] if isinstance(sizes, int) else list(sizes)
    need = sum(max(1, PAGE_1G.pages_for(s)) for s in sizes)
    fits = PAGE_1G.kb in offered and (reserve or probe_pools.system_pool(root, PAGE_1G.kb).available >= need)
    rec = plan_pages.recommend(
        sizes, offered, supports_1g=True, obtainable={PAGE_1G.kb: fits, PAGE_2M.kb: True}, policy=policy
    )
    if rec.page_size_kb == PAGE_1G.kb:
        return rec.page_size_kb, f"{pages.why(sizes, None, policy)}, and the 1G pool can hold it"
    if pages.first_page(sizes, None, policy) == PAGE_1G and PAGE_1G.kb in offered:
        return PAGE_2M.kb, (
            f"the 1G pool cannot hold {need} page(s); using 2M "
            f"(hugeload reserve --count {need} --page-size 1g, or --reserve)"
        )
    return PAGE_2M.kb, pages.why(sizes, None, policy) if PAGE_1G.kb in offered else "no 1G pages on this kernel"


def ensure_pages(kb: int, n_pages: int, name: str, reserve: bool, root="/", state_dir=None) -> int:
    """Make sure the pool has `pages` unpromised free pages; returns pages reserved for this model."""
    pool = probe_pools.system_pool(root, kb)
    missing = n_pages - max(0, pool.available)
    if missing <= 0:
        return 0
    if not reserve:
        raise PoolError(
            f"the {pages.name(kb)} pool has {max(0, pool.available)} free page(s), the model needs {n_pages}: "
            f"run `hugeload reserve --count {missing} --page-size {pages.name(kb).lower()}` or stage with --reserve"
        )
    act_pools.reserve(root, kb, missing, owner=owner(name), state_dir=state_dir)
    return missing


def _reserve_extra(extra: dict[int, int], staged_kb: int, staged_pages: int, name: str, root, state_dir) -> int:
    """Grow each pool so that, once the model is staged, `extra[kb]` pages stay free for
    its heap copies; returns the pages gained."""
    gained = 0
    for kb, count in extra.items():
        if kb not in probe_pools.page_sizes(root) or count <= 0:
            continue
        want = count + (staged_pages if kb == staged_kb else 0)  # staging still takes its pages
        missing = want - max(0, probe_pools.system_pool(root, kb).available)
        if missing <= 0:
            continue
        try:
            gained += act_pools.reserve(
                root, kb, missing, partial=True, owner=owner(name), state_dir=state_dir
            ).obtained
        except PoolError:  # best effort: the engine's allocation falls back
            continue
    return gained


def ensure_mount(kb: int, state_dir=None, root="/") -> Path:
    d = mount_dir(kb, state_dir)
    for m in read_mounts(root):
        if m.path == str(d):
            if m.page_size_kb != kb:
                raise HugeloadError(
                    f"{d} is a hugetlbfs mount of {pages.name(m.page_size_kb)} pages, expected {pages.name(kb)}"
                )
            return d
    state.ensure_dir(d.parent)
    act_mounts.mount(root, kb, str(d), owner="store", state_dir=state_dir)
    os.chmod(d, 0o755)
    return d


class SourceChanged(HugeloadError):
    pass


def _copy_into(src: str, dst: Path, size: int, kb: int, threads: int, progress) -> None:
    page = kb * KiB
    padded = ceil_div(size, page) * page if size else page
    sfd = os.open(src, os.O_RDONLY)
    try:
        st0 = os.fstat(sfd)
        if st0.st_size != size:
            raise SourceChanged(f"{src} changed size before copying ({size} -> {st0.st_size} bytes)")
        dfd = os.open(dst, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.ftruncate(dfd, padded)
            try:
                mm = mmap.mmap(dfd, padded, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
            except OSError as e:
                raise PoolError(
                    f"cannot map {padded // page} x {pages.name(kb)} pages for {os.path.basename(src)}: {e.strerror}"
                ) from None
            try:
                with contextlib.suppress(AttributeError, OSError):
                    os.posix_fadvise(sfd, 0, size, os.POSIX_FADV_SEQUENTIAL)
                view = memoryview(mm)

                def copy(off: int) -> None:
                    end = min(off + CHUNK, size)
                    pos = off
                    while pos < end:
                        try:
                            n = os.preadv(sfd, [view[pos:end]], pos)
                        except InterruptedError:
                            continue
                        if n == 0:
                            raise SourceChanged(f"{src} shrank while copying (ended at {pos} of {size} bytes)")
                        pos += n
                        progress(n)

                with ThreadPoolExecutor(max_workers=threads) as pool:
                    for fut in [pool.submit(copy, off) for off in range(0, size, CHUNK)]:
                        fut.result()
                view.release()
            finally:
                mm.close()
        finally:
            os.close(dfd)
        st1 = os.fstat(sfd)
        if (st1.st_size, st1.st_mtime_ns) != (st0.st_size, st0.st_mtime_ns):
            raise SourceChanged(f"{src} changed while copying; nothing was staged")
        # The staged copy is what engines read from now: do not hold the model twice in memory.
        with contextlib.suppress(AttributeError, OSError):
            os.posix_fadvise(sfd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(sfd)


def _sha256(path: str, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        left = size
        while left:
            b = f.read(min(CHUNK, left))
            if not b:
                break
            h.update(b)
            left -= len(b)
    return h.hexdigest()


def _staged_sha256(path: str, size: int) -> str:
    """hugetlbfs supports read(), so the staged copy is hashed the same way."""
    return _sha256(path, size)


def stage(
    path: str, options: StageOptions = StageOptions(), state_dir=None, root="/", progress=None, config_dir=None
) -> StageResult:
    """Stage a model; instant when it is already staged and unchanged.

    Atomic: files are copied under a .staging directory that is renamed into place only
    when complete, and the manifest is written last.  With `options.persist` the model is
    also listed in models.json (in `config_dir`) for `restore`."""
    if options.placement is not None and options.placement.placed:
        from hugeload.act import numa

        result = numa.stage(path, options, state_dir, root, progress)
        if options.persist:
            persist.add(result.manifest.name, result.manifest.source, result.manifest.page_size_kb, config_dir)
        return result
    files = source_files(path)
    name = check_name(options.name or default_name(files[0]))
    stats = [os.stat(f) for f in files]
    sizes = [s.st_size for s in stats]
    requested_kb = options.page_size.kb if options.page_size else None
    progress = progress or (lambda n: None)
    with model_lock(name, state_dir, options.lock_timeout):
        existing = read_manifest(name, state_dir)
        if existing:
            same = [(f.source, f.size, f.mtime_ns, f.ino) for f in existing.files] == [
                (p, s.st_size, s.st_mtime_ns, s.st_ino) for p, s in zip(files, stats)
            ]
            if (
                same
                and all(file_state(f) == "ready" for f in existing.files)
                and (requested_kb is None or requested_kb == existing.page_size_kb)
            ):
                if options.persist and not existing.persist:
                    existing.persist = True
                    state.write_json(manifest_path(name, state_dir), existing.to_json())
                if options.persist:
                    persist.add(existing.name, existing.source, existing.page_size_kb, config_dir)
                return StageResult(existing, True, "already staged and unchanged")
            _remove_model(existing, state_dir, root, release_pages=False)
        kb, reason = choose_page_size(sizes, requested_kb, options.reserve, root, options.policy)
        n_pages = sum(max(1, ceil_div(s.st_size, kb * KiB)) for s in stats)
        reserved = ensure_pages(kb, n_pages, name, options.reserve, root, state_dir)
        if options.reserve and options.heap_pages:
            reserved += _reserve_extra(dict(options.heap_pages), kb, n_pages, name, root, state_dir)
        staging = None
        try:
            mnt = ensure_mount(kb, state_dir, root)
            staging = mnt / f".staging-{name}-{os.getpid()}"
            staging.mkdir()
            n_threads = options.threads or min(4, os.cpu_count() or 1)
            copied = []
            for src, st in zip(files, stats):
                dst = staging / os.path.basename(src)
                _copy_into(src, dst, st.st_size, kb, n_threads, progress)
                final = mnt / name / os.path.basename(src)
                sha = None
                if options.verify:
                    sha = _sha256(src, st.st_size)
                    if _staged_sha256(str(dst), st.st_size) != sha:
                        raise HugeloadError(f"verification failed: the staged copy of {src} differs from the source")
                copied.append(
                    StagedFile(src, str(final), st.st_size, st.st_dev, st.st_ino, st.st_mtime_ns, sha, st.st_ctime_ns)
                )
            final_dir = mnt / name
            if final_dir.exists():
                shutil.rmtree(final_dir)
            os.rename(staging, final_dir)
            staging = None
            manifest = Manifest(name, kb, n_pages, copied, time.time(), options.persist)
            state.write_json(manifest_path(name, state_dir), manifest.to_json())
        except BaseException as e:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
            if reserved:
                act_pools.release(root, None, owner=owner(name), state_dir=state_dir)
            if isinstance(e, OSError):
                raise HugeloadError(
                    f"staging {name} failed: {e.strerror or e}"
                    f"{' (' + e.filename + ')' if e.filename else ''}; nothing was staged"
                ) from None
            raise
        write_redirects(state_dir)
    if options.persist:
        persist.add(manifest.name, manifest.source, manifest.page_size_kb, config_dir)
    return StageResult(manifest, False, reason)


def _remove_model(m: Manifest, state_dir=None, root="/", release_pages=True) -> None:
    dirs = {os.path.dirname(f.staged) for f in m.all_files}
    for f in m.all_files:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f.staged)
    for d in dirs:
        with contextlib.suppress(OSError):
            os.rmdir(d)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(manifest_path(m.name, state_dir))
    write_redirects(state_dir)
    if release_pages:
        act_pools.release(root, None, owner=owner(m.name), state_dir=state_dir)


def resolve(name_or_path: str, state_dir=None) -> Manifest:
    m = read_manifest(name_or_path, state_dir) if NAME_RE.match(name_or_path) else None
    if m:
        return m
    real = os.path.abspath(name_or_path)
    for m in manifests(state_dir):
        if any(real in (f.source, f.staged) for f in m.files):
            return m
    raise UsageError(f"no staged model named or at {name_or_path!r} (hugeload staged lists them)")


def _refuse_if_mapped(m: Manifest, users: list[str]) -> None:
    if users:
        raise HugeloadError(f"model {m.name!r} is mapped by {', '.join(users)}: stop them first or pass --force")


def unstage(
    name_or_path: str, force: bool = False, state_dir=None, root="/", config_dir=None, forget: bool = True
) -> Manifest:
    """Remove a staged model, give back the pages reserved for it, and drop it from
    models.json so that `restore` does not bring it back."""
    m = resolve(name_or_path, state_dir)
    with model_lock(m.name, state_dir):
        if not force:
            _refuse_if_mapped(m, mapped_by([f.staged for f in m.all_files], root))
        _remove_model(m, state_dir, root)
    if forget:
        persist.remove(m.name, config_dir)
    unmount_idle(state_dir, root)
    return m


def clear(force: bool = False, state_dir=None, root="/", config_dir=None, keep_persisted: bool = False) -> dict:
    """Unstage every model, all or nothing: without `force`, refuse before removing any
    while one is mapped.  Then gc.  Returns {"unstaged": [names], **gc()}.  `keep_persisted`:
    models.json keeps them (the boot unit's stop: the next boot restores them)."""
    models = manifests(state_dir)
    if not force:
        found = procs.holders(root, paths=[f.staged for m in models for f in m.all_files])
        for m in models:
            mine = {f.staged for f in m.all_files}
            _refuse_if_mapped(m, procs.holder_names([h for h in found if h.path in mine]))
    done = []
    for m in models:
        unstage(m.name, force, state_dir, root, config_dir, forget=not keep_persisted)
        done.append(m.name)
    return {"unstaged": done, **gc(state_dir, root)}


class Restored(NamedTuple):
    name: str
    path: str  # the staged path ("" when it failed)
    already_staged: bool
    error: str | None  # why it could not be staged


def restore(state_dir=None, root="/", config_dir=None, progress=None) -> list[Restored]:
    """Re-stage every model in models.json (at boot: /run is empty again), reserving what
    the pools lack.  One missing model does not stop the others."""
    out = []
    for entry in persist.load(config_dir):
        kb = entry.get("page_size_kb")
        options = StageOptions(
            page_size=pages.by_kb(kb) if kb else None, name=entry["name"], reserve=True, persist=True
        )
        try:
            r = stage(entry["source"], options, state_dir, root, progress, config_dir)
            out.append(Restored(r.manifest.name, r.manifest.path, r.already_staged, None))
        except Exception as e:  # noqa: BLE001 - reported per model; boot goes on
            out.append(Restored(entry["name"], "", False, str(e) or type(e).__name__))
    return out


def unmount_idle(state_dir=None, root="/") -> list[str]:
    """Unmount the store's own mounts once they hold nothing."""
    done = []
    for entry in act_mounts.hugeload_mounts(state_dir):
        if entry.get("owner") != "store":
            continue
        p = entry["path"]
        if os.path.isdir(p) and not os.listdir(p):
            with contextlib.suppress(HugeloadError):
                if act_mounts.umount(root, p, state_dir=state_dir):
                    done.append(p)
    return done


PROCESS_OWNERS = ("run", "bench")


def _owner_alive(pid: str, root="/") -> bool:
    """Whether the hugeload process that reserved pages as "run:<pid>" or "bench:<pid>" still
    runs (a reused pid of another program does not count)."""
    try:
        return b"hugeload" in (Path(root) / "proc" / pid / "cmdline").read_bytes()
    except OSError:
        return False


def run_report_path(pid: int, state_dir=None) -> Path:
    """Where `hugeload run` (without --report) has the preload library write its report."""
    return state.state_dir(state_dir) / "run" / f"report-{pid}.txt"


def _gc_run_reports(state_dir=None, root="/") -> list[str]:
    """Reports of `hugeload run` processes that were killed before they could remove them."""
    removed = []
    top = run_report_path(0, state_dir).parent
    for f in sorted(top.glob("report-*.txt")) if top.is_dir() else []:
        pid = f.name[len("report-") : -len(".txt")]
        if pid.isdigit() and not _owner_alive(pid, root):
            with contextlib.suppress(OSError):
                f.unlink()
                removed.append(str(f))
    return removed


def _gc_bench_runs(state_dir=None, root="/") -> list[str]:
    """What a killed `hugeload bench engine` left: its own store under <state>/bench/<pid>
    (staged copies, their mounts and pages) and its tmpfs copy (act/shm.py)."""
    removed = []
    top = state.state_dir(state_dir) / "bench"
    if not top.is_dir():
        return removed
    for d in sorted(top.iterdir()):
        if not d.name.isdigit() or _owner_alive(d.name, root):
            continue
        nested = d / "state"
        if nested.is_dir():
            for m in manifests(nested):
                with contextlib.suppress(HugeloadError):
                    unstage(m.name, force=True, state_dir=nested, root=root)
            with contextlib.suppress(HugeloadError):
                gc(nested, root)
            with contextlib.suppress(HugeloadError):
                act_pools.release(root, None, owner=None, state_dir=nested)
            if act_mounts.hugeload_mounts(nested):
                continue  # a mount still busy (an engine still running): the next gc retries
        if str(root) == "/":
            removed += shm.remove_bench_dirs(int(d.name))
        shutil.rmtree(d, ignore_errors=True)
        removed.append(str(d))
    return removed


def gc(state_dir=None, root="/") -> dict:
    """Remove what interrupted stagings left: staging directories nobody is writing, files on the
    store's mounts that no manifest names, pages reserved for models that no longer exist, and
    pages that a killed `hugeload run --reserve` or benchmark could not give back."""
    removed = []
    known = {f.staged for m in manifests(state_dir) for f in m.all_files}
    for page in pages.HUGE:
        mnt = mount_dir(page.kb, state_dir)
        if not mnt.is_dir():
            continue
        for entry in sorted(mnt.iterdir()):
            if entry.name.startswith(".staging-"):
                name = staging_name(entry)
                if _lock_held(name, state_dir):
                    continue
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(str(entry))
            elif entry.is_dir():
                for f in sorted(entry.iterdir()):
                    if str(f) not in known:
                        f.unlink()
                        removed.append(str(f))
                with contextlib.suppress(OSError):
                    entry.rmdir()
            elif str(entry) not in known:
                entry.unlink()
                removed.append(str(entry))
    names = {m.name for m in manifests(state_dir)}
    released = []
    for key, owners in list(ledger.load(state_dir)["shares"].items()):
        for o in list(owners):
            if (
                o.startswith("model:")
                and o[len("model:") :] not in names
                and not _lock_held(o[len("model:") :], state_dir)
            ):
                released += act_pools.release(root, None, owner=o, state_dir=state_dir)
            elif o.partition(":")[0] in PROCESS_OWNERS and not _owner_alive(o.split(":")[1], root):
                # "bench:<pid>" or "bench:<pid>:<what>"
                released += act_pools.release(root, None, owner=o, state_dir=state_dir)
    removed += _gc_bench_runs(state_dir, root)
    removed += _gc_run_reports(state_dir, root)
    write_redirects(state_dir)
    unmounted = unmount_idle(state_dir, root)
    return {"removed": removed, "released": released, "unmounted": unmounted}
