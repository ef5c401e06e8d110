"""What the store holds: manifests, the state of each staged file, and the redirect index.

A manifest is read leniently and trusted strictly.  Keys this version does not know are
ignored (a node agent of another version may share /run/hugeload); a manifest that cannot be
read, that a newer hugeload wrote in a format this one does not know, or that names a file
outside its model's own directories is listed as `unreadable`, never used, and can always be
unstaged by name.  A staged file is `ready` while its source is the same file it was copied
from: same device, inode, size, mtime and ctime (ctime because a file rewritten in place and
given back its old mtime has a new ctime; the preload library matches on the same five).
"""

import contextlib
import logging
import os
import stat
from dataclasses import asdict, dataclass, field, fields
from typing import NamedTuple

from hugeload import pages
from hugeload.act import redirects, state
from hugeload.act.store import layout, lock
from hugeload.errors import HugeloadError, PermissionNeeded, UsageError
from hugeload.probe import procs
from hugeload.units import KiB, ceil_div

MANIFEST_VERSION = 2  # raised only for a change older readers would misread; new keys need no bump
log = logging.getLogger("hugeload")


class ManifestError(HugeloadError):
    pass


@dataclass
class Part:
    """The bytes of a source file from `offset` on, staged in their own file (a copy in mixed
    page sizes: the first part in 1G pages is StagedFile.staged, the rest in 2M pages here)."""

    offset: int
    staged: str
    page_size_kb: int


@dataclass
class StagedFile:
    source: str
    staged: str  # the whole file, or its first part when `parts` is not empty
    size: int  # true size; the staged file is padded to a page multiple
    dev: int
    ino: int
    mtime_ns: int
    sha256: str | None = None
    ctime_ns: int = 0  # 0 in manifests written before the index had ctime: never matches
    parts: list[Part] = field(default_factory=list)  # the file past parts[0].offset, in order

    @property
    def identity(self) -> tuple:
        return (self.dev, self.ino, self.size, self.mtime_ns, self.ctime_ns)

    def pieces(self, page_size_kb: int) -> list[tuple[str, int, int, int]]:
        """(staged path, page kB, source offset, bytes) of each staged file, first first
        (`page_size_kb`: the copy's, the first part's)."""
        starts = [(self.staged, page_size_kb, 0)] + [(p.staged, p.page_size_kb, p.offset) for p in self.parts]
        ends = [p.offset for p in self.parts] + [self.size]
        return [(path, kb, start, end - start) for (path, kb, start), end in zip(starts, ends, strict=True)]


def identity(st: os.stat_result) -> tuple:
    """What a staged copy is matched on (C: redirect.c matches the same five)."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def staged_file(source: str, staged: str, st: os.stat_result, sha256: str | None = None) -> StagedFile:
    return StagedFile(source, staged, st.st_size, st.st_dev, st.st_ino, st.st_mtime_ns, sha256, st.st_ctime_ns)


def _known(cls, d) -> dict:
    if not isinstance(d, dict):
        raise ManifestError(f"expected an object, found {type(d).__name__}")
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}


def _whole(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _part_from_json(d) -> Part:
    p = Part(**_known(Part, d))
    if not (_whole(p.offset) and _whole(p.page_size_kb) and isinstance(p.staged, str)):
        raise ManifestError("a file part has an offset, page size or path of the wrong type")
    return p


def _file_from_json(d) -> StagedFile:
    k = _known(StagedFile, d)
    parts = k.pop("parts", [])
    if not isinstance(parts, list):
        raise ManifestError("a file entry's parts are not a list")
    f = StagedFile(**k, parts=[_part_from_json(p) for p in parts])
    ints = (f.size, f.dev, f.ino, f.mtime_ns, f.ctime_ns)
    if not all(_whole(x) for x in ints) or f.size < 0:
        raise ManifestError("a file entry has a size, device, inode or time that is not a whole number")
    if not isinstance(f.source, str) or not isinstance(f.staged, str):
        raise ManifestError("a file entry has no source or staged path")
    offsets = [0] + [p.offset for p in f.parts] + [f.size]
    if any(a >= b for a, b in zip(offsets, offsets[1:], strict=False)):
        raise ManifestError("a file entry's parts are not in order inside the file")
    return f


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

    def pieces(self) -> list[tuple[str, int, int, int]]:
        """(staged path, page kB, source offset, bytes) of every staged file of the copy."""
        return [x for f in self.files for x in f.pieces(self.page_size_kb)]

    def split(self) -> dict[int, tuple[int, int]]:
        """{page kB: (bytes, pages)}: how much of the copy each page size holds (one key unless
        the copy is in mixed page sizes)."""
        if not any(f.parts for f in self.files):
            return {self.page_size_kb: (sum(f.size for f in self.files), self.pages)}
        out: dict[int, tuple[int, int]] = {}
        for _, kb, _, size in self.pieces():
            b, n = out.get(kb, (0, 0))
            out[kb] = (b + size, n + max(1, ceil_div(size, kb * KiB)))
        return out

    def pages_of(self, kb: int) -> int:
        """Pages of size `kb` the copy takes."""
        return self.split().get(kb, (0, 0))[1]

    def summary(self) -> dict:
        return {
            "node": self.node,
            "path": self.path,
            "pages": self.pages,
            "page_size_kb": self.page_size_kb,
            "split": [{"page_size_kb": kb, "bytes": b, "pages": n} for kb, (b, n) in sorted(self.split().items())],
        }

    @classmethod
    def from_json(cls, d: dict) -> "Copy":
        k = _known(cls, d)
        return cls(int(k["node"]), int(k["page_size_kb"]), int(k["pages"]), [_file_from_json(f) for f in k["files"]])


RUNTIME_FIELDS = ("state", "processes", "error")  # set when read, never written


@dataclass
class Manifest:
    name: str
    page_size_kb: int
    pages: int
    files: list[StagedFile]
    created: float
    persist: bool = False
    node: int = -1  # NUMA node of `files`, the first copy
    replicas: list[Copy] = field(default_factory=list)  # copies on further nodes
    state: str = "ready"  # set when read: ready / stale / missing / staging / orphaned / unreadable
    processes: list[str] = field(default_factory=list)
    group: str | None = None  # `stage --group`: the copies are readable by root and this group only
    version: int = MANIFEST_VERSION
    error: str = ""  # why an unreadable manifest could not be read

    @property
    def readable(self) -> bool:
        return self.state != "unreadable"

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
        if not self.files:
            return list(self.replicas)
        return [Copy(self.node, self.page_size_kb, self.pages, self.files), *self.replicas]

    @property
    def all_files(self) -> list[StagedFile]:
        """The entries of every copy (one per source file and copy)."""
        return [f for c in self.copies for f in c.files]

    @property
    def all_paths(self) -> list[str]:
        """Every staged file of every copy, parts included."""
        return [path for c in self.copies for path, _, _, _ in c.pieces()]

    def to_json(self) -> dict:
        d = asdict(self)
        d.update(path=self.path, source=self.source, size=self.size, copies=[c.summary() for c in self.copies])
        return d

    def to_file(self) -> dict:
        d = self.to_json()
        for k in RUNTIME_FIELDS:
            d.pop(k, None)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Manifest":
        """Unknown keys are ignored; ManifestError (or KeyError, TypeError, ValueError) when a
        key it needs is missing or of the wrong type."""
        k = _known(cls, d)
        version = k.get("version", 1)
        if not isinstance(version, int) or version > MANIFEST_VERSION:
            raise ManifestError(
                f"written by a newer hugeload (manifest version {version}, this one reads {MANIFEST_VERSION})"
            )
        group = k.get("group")
        return cls(
            str(k["name"]),
            int(k["page_size_kb"]),
            int(k["pages"]),
            [_file_from_json(f) for f in k["files"]],
            float(k["created"]),
            bool(k.get("persist", False)),
            int(k.get("node", -1)),
            [Copy.from_json(c) for c in k.get("replicas", [])],
            group=str(group) if group is not None else None,
            version=version,
        )


def unreadable(name: str, why: str, created: float = 0.0) -> Manifest:
    return Manifest(name, 0, 0, [], created, state="unreadable", error=why)


# ---------------------------------------------------------------- reading


def _check_paths(m: Manifest, state_dir) -> None:
    for c in m.copies:
        for path, kb, _, _ in c.pieces():
            if not layout.inside_store(path, kb, m.name, state_dir):
                raise ManifestError(f"it names {path!r}, which is not in the model's own store directory")


def read_manifest(name: str, state_dir=None) -> Manifest | None:
    """The manifest of `name`; None when there is none; an `unreadable` Manifest when there is
    one that cannot be used (the reason in .error)."""
    path = layout.manifest_path(name, state_dir)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except PermissionError:
        raise PermissionNeeded(f"cannot read {path}: the store's manifests are root's (run as root)") from None
    except OSError as e:
        return unreadable(name, f"cannot open it: {e.strerror}")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return unreadable(name, "it is not a regular file", st.st_mtime)
        if st.st_size > 16 << 20:
            return unreadable(name, f"it is {st.st_size} bytes, too large for a manifest", st.st_mtime)
        with os.fdopen(os.dup(fd), "rb") as f:
            raw = f.read()
    finally:
        os.close(fd)
    import json

    try:
        m = Manifest.from_json(json.loads(raw))
        if m.name != name:
            raise ManifestError(f"it names the model {m.name!r}")
        _check_paths(m, state_dir)
    except ManifestError as e:
        return unreadable(name, str(e), st.st_mtime)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        what = f"no {e}" if isinstance(e, KeyError) else "not valid JSON" if isinstance(e, ValueError) else str(e)
        return unreadable(name, f"it cannot be read ({what})", st.st_mtime)
    return m


def manifest_names(state_dir=None) -> list[str]:
    d = layout.models_dir(state_dir)
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return []
    except PermissionError:
        raise PermissionNeeded(
            f"cannot list {d}: the store's manifests are root's (run as root; engines and map_file() "
            "find staged copies through the index without it)"
        ) from None
    return sorted(n[: -len(".json")] for n in names if n.endswith(".json") and layout.NAME_RE.match(n[: -len(".json")]))


def manifests(state_dir=None, readable_only: bool = True) -> list[Manifest]:
    """Every manifest (those that cannot be read too, with `readable_only` False), sorted by name."""
    out = []
    for name in manifest_names(state_dir):
        m = read_manifest(name, state_dir)
        if m is not None and (m.readable or not readable_only):
            out.append(m)
    return out


def write_manifest(m: Manifest, state_dir=None) -> None:
    state.write_json(layout.manifest_path(m.name, state_dir), m.to_file())


def remove_manifest(name: str, state_dir=None) -> bool:
    try:
        os.unlink(layout.manifest_path(name, state_dir))
    except FileNotFoundError:
        return False
    state.fsync_dir(layout.models_dir(state_dir))
    return True


# ---------------------------------------------------------------- state of the files


def file_state(f: StagedFile) -> str:
    """ready, missing (a staged file, or part, is gone or short) or stale (the source changed)."""
    for path, _, _, size in f.pieces(0):
        try:
            st = os.lstat(path)
        except OSError:
            return "missing"
        if not stat.S_ISREG(st.st_mode) or st.st_size < size:
            return "missing"
    try:
        src = os.stat(f.source)
    except FileNotFoundError:
        return "ready"  # the staged copy outlives its source; still valid
    except OSError:
        return "stale"
    return "ready" if identity(src) == f.identity else "stale"


def model_state(m: Manifest) -> str:
    if not m.readable:
        return m.state
    states = {file_state(f) for f in m.all_files}
    return "missing" if "missing" in states or not m.files else "stale" if "stale" in states else "ready"


# ---------------------------------------------------------------- the redirect index


def index_entries(models: list[Manifest]) -> list[redirects.RedirectEntry]:
    """Ready files only, one line per copy (a model staged on several NUMA nodes has one line
    per node for the same source)."""
    out = []
    for m in models:
        if not m.readable:
            continue
        for c in m.copies:
            for f in c.files:
                if file_state(f) == "ready":
                    parts = tuple(redirects.Part(p.offset, p.page_size_kb, p.staged) for p in f.parts)
                    out.append(
                        redirects.RedirectEntry(
                            f.dev, f.ino, f.size, f.mtime_ns, f.ctime_ns, c.node, c.page_size_kb, f.staged, parts
                        )
                    )
    return out


def write_redirects(state_dir=None, exclude: str | None = None) -> None:
    """Rewrite the preload library's index from the manifests (under the store lock), leaving
    out the model `exclude` (one being withdrawn)."""
    redirects.write(state_dir, index_entries([m for m in manifests(state_dir) if m.name != exclude]))


class StagedCopy(NamedTuple):
    source: str  # the path asked about
    staged: str  # the hugetlbfs file to map (the first part of a copy in mixed page sizes)
    size: int  # the source's true size
    page_size_kb: int
    node: int
    split: int = 0  # a copy in mixed page sizes: the source's bytes from here on are in another file


_warned: set[str] = set()


def find_staged(path: str, state_dir=None) -> StagedCopy | None:
    """The ready staged copy of `path`, from the redirect index (the file any user can read, as
    the preload library does): matched on device, inode, size, mtime and ctime, its staged file
    present in the store and as long as the source.  None when there is none, and when the
    index cannot be read (said once, in one line, on the `hugeload` logger)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    try:
        state.check_state_dir(state_dir)
        state.check_dir(layout.store_dir(state_dir), "store", ancestors=False)
        entries = redirects.read(state_dir, trusted=True)
    except (OSError, HugeloadError) as e:
        where = str(redirects.index_path(state_dir))
        if where not in _warned:
            _warned.add(where)
            log.warning("hugeload: cannot use the store's index %s (%s): reading files directly", where, e)
        return None
    key = identity(st)
    store = str(layout.store_dir(state_dir)) + "/"
    for entry in entries:
        ident = (entry.src_dev, entry.src_ino, entry.src_size, entry.src_mtime_ns, entry.src_ctime_ns)
        if ident != key:
            continue
        starts = [0] + [p.offset for p in entry.parts]
        ends = starts[1:] + [entry.src_size]
        files = [entry.staged_path] + [p.staged_path for p in entry.parts]
        if all(_present(f, end - start, store) for f, start, end in zip(files, starts, ends, strict=True)):
            split = entry.parts[0].offset if entry.parts else 0
            return StagedCopy(
                os.path.abspath(path), entry.staged_path, entry.src_size, entry.page_kb, entry.node, split
            )
    return None


def _present(path: str, size: int, store: str) -> bool:
    """A staged file in the store, a regular file at least `size` bytes long."""
    if not path.startswith(store):
        return False
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size >= size


def staging_dirs(state_dir=None) -> list:
    """The work directories of copies being made (or left by a stager that died)."""
    out = []
    for page in pages.HUGE:
        d = layout.mount_dir(page.kb, state_dir)
        if d.is_dir() and not d.is_symlink():
            out += sorted(p for p in d.iterdir() if p.name.startswith(layout.STAGING_PREFIX))
    return out


def staged(state_dir=None, root="/") -> list[Manifest]:
    """Every manifest with its current state (unreadable ones too, with why) and the processes
    that map it (one walk over /proc for all models), plus copies being made now (`staging`)
    or left by a stager that died (`orphaned`, until gc).  Root reads under the store lock,
    shared: a stage or unstage is seen before or after, never half-done."""
    state.check_state_dir(state_dir)
    if not layout.store_dir(state_dir).is_dir():
        return []
    shared = lock.store_lock(state_dir, shared=True) if os.geteuid() == 0 else contextlib.nullcontext()
    with shared:
        out = manifests(state_dir, readable_only=False)
        found = procs.holders(root, paths=[p for m in out for p in m.all_paths])
        for m in out:
            m.state = model_state(m)
            mine = set(m.all_paths)
            m.processes = procs.holder_names([h for h in found if h.path in mine])
        for d in staging_dirs(state_dir):
            name = layout.staging_owner(d.name)
            busy = lock.model_busy(name, state_dir)
            created = d.lstat().st_mtime
            out.append(
                Manifest(name, layout.mount_kb(d.parent), 0, [], created, state="staging" if busy else "orphaned")
            )
    return out


def resolve(name_or_path: str, state_dir=None) -> Manifest:
    """The manifest named `name_or_path`, or the one whose source or staged file it is (an
    unreadable manifest only by its name)."""
    m = read_manifest(name_or_path, state_dir) if layout.NAME_RE.match(name_or_path) else None
    if m:
        return m
    real = os.path.abspath(name_or_path)
    for m in manifests(state_dir):
        if any(real == f.source for f in m.all_files) or real in m.all_paths:
            return m
    raise UsageError(f"no staged model named or at {name_or_path!r} (hugeload staged lists them)")
