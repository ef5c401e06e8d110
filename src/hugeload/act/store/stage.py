"""stage(), unstage(), clear() and restore(): every change of what the store holds.

One stage() for every placement: an unplaced copy is the one-copy case of a placement
(plan/stage.py plans every copy with the one page-size rule).  The steps, and why a kill at
any of them leaves nothing gc cannot account for:
  1. under the model lock (held to the end) and the store lock: read the manifest; when the
     model is staged and unchanged, done.  When it changed, withdraw the old copies (index
     first, then the manifest, then the files), keeping their pages for the new ones.
  2. reserve what the pools lack, for model:<name> (act/pools: write-ahead in the ledger).
  3. under the store lock: mount the store's hugetlbfs if needed (write-ahead too), and make
     the copy's work directory .staging-<name>-<pid>.
  4. copy, with no store lock (a kill leaves a work directory whose model lock is free: gc
     removes it, and gives back model:<name>'s pages when no manifest names the model).
  5. under the store lock: rename each work directory to its copy's name, write the manifest,
     rewrite the redirect index, update models.json.  gc and readers, which take or respect
     the same lock, see the model before or after this step, never in between.
"""

import contextlib
import dataclasses
import grp
import os
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import NamedTuple

from hugeload import pages
from hugeload.act import crashpoint, ledger, mempolicy, persist
from hugeload.act import hvo as act_hvo
from hugeload.act import mounts as act_mounts
from hugeload.act import pools as act_pools
from hugeload.act.state import UntrustedState
from hugeload.act.store import copy, layout, lock, manifest
from hugeload.act.store.manifest import Copy, Manifest
from hugeload.errors import HugeloadError, PoolError, UsageError
from hugeload.pages import PAGE_1G, PAGE_2M, PageSize
from hugeload.plan import numa as plan_numa
from hugeload.plan import stage as plan_stage
from hugeload.probe import numa as probe_numa
from hugeload.probe import pools as probe_pools
from hugeload.probe import procs
from hugeload.probe.mounts import read_mounts

COPY_DIR_MODE = 0o755
GROUP_DIR_MODE = 0o750
NO_PAGES_RETRIES = 3


class Mixed(Enum):
    """Whether a copy the 1G pool cannot hold whole may be made in mixed page sizes."""

    WHEN_SHORT = "when-short"  # the 1G pages the pool has (or the kernel gives), 2M for the rest
    NEVER = "never"  # all of it in one page size (bench's `1g`: only 1G pages, or skipped)


@dataclass(frozen=True)
class StageOptions:
    """How to stage a model: one bundle instead of a row of booleans (black's Mode).
    Add new knobs as fields with a default that keeps today's behaviour."""

    page_size: PageSize | None = None  # None: auto (hugeload.pages' rule, then what the pools can hold)
    name: str | None = None  # store name; default from the file name
    reserve: bool = False  # grow the pool by what is missing (given back on unstage)
    verify: bool = False  # compare SHA-256 of source and staged copy
    persist: bool = False  # list it in models.json so `hugeload restore` re-stages it at boot
    threads: int | None = None  # copy threads (default: up to 4)
    lock_timeout: float = lock.LOCK_TIMEOUT  # seconds to wait for another stager of the same model
    policy: pages.Policy = pages.DEFAULT_POLICY
    # ((page kB, count), ...), with `reserve` only: pages kept free for the heap copies an
    # engine will make of this model (plan/buffers: CPU_REPACK / AMX), owned by the model and
    # given back on unstage like its own.  Best effort: what the kernel does not give is left
    # to the engine's fallback.
    heap_pages: tuple[tuple[int, int], ...] = ()
    placement: plan_numa.Placement | None = None  # a node, a copy per node, or interleaved; None: not placed
    group: str | None = None  # the copies readable by root and this group only (default: by everyone)
    hvo: act_hvo.Hvo | None = None  # HVO for the pages `reserve` adds (act/hvo.py); None: HUGELOAD_HVO, else auto
    mixed: Mixed = Mixed.WHEN_SHORT  # a one-file copy the 1G pool is short of: its 1G pages, then 2M


class StageResult(NamedTuple):
    manifest: Manifest
    already_staged: bool
    reason: str  # why this page size


def owner(name: str) -> str:
    """The ledger owner of a model's pages."""
    return str(ledger.Owner.model(name))


def group_id(group: str | int | None) -> int | None:
    if group is None:
        return None
    text = str(group)
    if text.isdigit():
        return int(text)
    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        raise UsageError(f"no group named {text!r} on this machine (--group takes a group name or id)") from None


# ---------------------------------------------------------------- pages and mounts


def choose_page_size(
    sizes: int | list[int],
    requested_kb: int | None,
    reserve: bool,
    root="/",
    policy: pages.Policy = pages.DEFAULT_POLICY,
) -> tuple[int, str]:
    """(kB, reason) for an unplaced copy, from what this machine's pools hold (plan/stage.py)."""
    sizes = [sizes] if isinstance(sizes, int) else list(sizes)
    plans = plan_copies(
        sizes,
        StageOptions(
            page_size=None if requested_kb is None else pages.by_kb(requested_kb), reserve=reserve, policy=policy
        ),
        root,
        [],
        "model",
    )
    return plans[0].page_size_kb, plans[0].reason


def plan_copies(sizes: list[int], options: StageOptions, root, nodes: list, name: str) -> list[plan_stage.CopyPlan]:
    offered = probe_pools.page_sizes(root)
    available_1g = max(0, probe_pools.system_pool(root, PAGE_1G.kb).available) if PAGE_1G.kb in offered else 0
    return plan_stage.plan_copies(
        sizes,
        options.page_size,
        offered,
        options.placement or plan_numa.Placement(),
        options.reserve,
        available_1g,
        nodes,
        name,
        options.policy,
        options.mixed is Mixed.WHEN_SHORT,
    )


def ensure_pages(kb: int, n_pages: int, name: str, reserve: bool, root="/", state_dir=None) -> int:
    """Make sure the pool has `n_pages` unpromised free pages; returns pages reserved for this model."""
    pool = probe_pools.system_pool(root, kb)
    missing = n_pages - max(0, pool.available)
    if missing <= 0:
        return 0
    if not reserve:
        raise PoolError(
            f"the {pages.name(kb)} pool has {max(0, pool.available)} free page(s), the model needs {n_pages}: "
            f"run `hugeload reserve --count {missing} --page-size {pages.name(kb).lower()}` or stage with --reserve"
        )
    return act_pools.reserve(root, kb, missing, owner=owner(name), state_dir=state_dir).obtained


def reserve_heap_pages(extra: dict[int, int], staged: dict[int, int], name: str, root, state_dir) -> int:
    """Grow each pool so that, once the model is staged, `extra[kb]` pages stay free for
    its heap copies (`staged[kb]`: pages the copies still take); returns the pages gained."""
    gained = 0
    for kb, count in extra.items():
        if kb not in probe_pools.page_sizes(root) or count <= 0:
            continue
        want = count + staged.get(kb, 0)
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


def reserve_for(
    plan: plan_stage.CopyPlan, sizes: list[int], name: str, reserve: bool, root, state_dir, mixed: Mixed
) -> plan_stage.CopyPlan:
    """The pages one copy needs: from the system pool, or from the node(s) it is bound to.  A
    one-file copy in 1G pages, unplaced or bound to one node, that `reserve` cannot get all of
    (the kernel gives fewer than asked and says so only in the count read back) keeps the 1G
    pages it got and takes 2M for the rest of the file (plan/stage.split_copy): the plan
    returned is the one to copy."""
    one_file_1g = plan.page_size_kb == PAGE_1G.kb and plan_stage.splittable(plan.bind, sizes) and not plan.tail_pages
    if reserve and mixed is Mixed.WHEN_SHORT and one_file_1g:
        node = plan.bind[0] if plan.bind else None
        have = free_1g(root, node)
        if have < plan.pages:
            with contextlib.suppress(PoolError):  # short: read back below, the rest in 2M
                act_pools.reserve(
                    root, PAGE_1G.kb, plan.pages - have, node, partial=True, owner=owner(name), state_dir=state_dir
                )
            have = free_1g(root, node)
            if have == 0:
                plan = plan._replace(
                    page_size_kb=PAGE_2M.kb,
                    pages=plan_stage.pages_needed(sizes, PAGE_2M.kb),
                    reason=f"{plan.reason}; the kernel gave no 1G page: using 2M",
                )
            else:
                plan = plan_stage.split_copy(plan, sizes, have)
            if plan.bind:  # what each part still needs of the node, read again
                plan = plan._replace(needs=plan_stage.part_needs(plan, probe_numa.read_nodes(root)))
    if not plan.bind:
        for kb, n in plan.parts():
            ensure_pages(kb, n, name, reserve, root, state_dir)
        return plan
    for need in plan.needs:
        if need.missing:
            act_pools.reserve(root, need.page_size_kb, need.missing, need.node, owner=owner(name), state_dir=state_dir)
    return plan


def free_1g(root, node: int | None) -> int:
    """Free 1G pages nobody has promised: of the system's pool, or of one node's."""
    if node is None:
        return max(0, probe_pools.system_pool(root, PAGE_1G.kb).available)
    return plan_stage.node_available_1g((node,), probe_numa.read_nodes(root))


def ensure_mount(kb: int, state_dir=None, root="/") -> Path:
    """The store's hugetlbfs mount for `kb` pages (mounted 0755 when missing; under the store lock)."""
    d = layout.mount_dir(kb, state_dir)
    for m in read_mounts(root):
        if m.path == str(d):
            if m.page_size_kb != kb:
                raise HugeloadError(
                    f"{d} is a hugetlbfs mount of {pages.name(m.page_size_kb)} pages, expected {pages.name(kb)}"
                )
            return d
    if os.path.islink(d):
        raise UntrustedState(f"refusing {d}: it is a symbolic link where the store mounts its hugetlbfs; remove it")
    act_mounts.mount(root, kb, str(d), mode=COPY_DIR_MODE, owner="store", state_dir=state_dir)
    return d


# ---------------------------------------------------------------- staging


def unchanged(existing: Manifest, files: list[str], stats, options: StageOptions) -> bool:
    """Whether `existing` already is what this stage would make."""
    placement = options.placement or plan_numa.Placement()
    want_nodes = [s.node for s in placement.copies()]
    return (
        existing.readable
        and [(f.source, f.identity) for f in existing.files]
        == [(p, manifest.identity(s)) for p, s in zip(files, stats, strict=True)]
        and manifest.model_state(existing) == "ready"
        and (not placement.placed or [c.node for c in existing.copies] == want_nodes)
        and (options.page_size is None or all(c.page_size_kb == options.page_size.kb for c in existing.copies))
        and existing.group == (None if options.group is None else str(options.group))
    )


def withdraw(name: str, state_dir=None) -> list[str]:
    """Take a model out of the store (under the store lock): out of the index first, so no new
    engine is sent to it; then its manifest; then every copy directory of it.  A kill between
    two of these leaves either a listed model or files no manifest names (gc removes them)."""
    manifest.write_redirects(state_dir, exclude=name)
    crashpoint.point(f"{name} out of the index, manifest still there")
    manifest.remove_manifest(name, state_dir)
    crashpoint.point(f"{name}'s manifest removed, files still there")
    removed = []
    for page in pages.HUGE:
        with layout.open_mount(page.kb, state_dir) as fd:
            if fd is None:
                continue
            for entry in layout.list_dir(fd):
                if layout.copy_owner(entry) == name:
                    layout.remove_tree(fd, entry)
                    removed.append(str(layout.mount_dir(page.kb, state_dir) / entry))
    return removed


def model_files(name: str, state_dir=None) -> list[str]:
    """The files in a model's copy directories, whatever its manifest says (or cannot say)."""
    out = []
    for page in pages.HUGE:
        with layout.open_mount(page.kb, state_dir) as fd:
            if fd is None:
                continue
            top = layout.mount_dir(page.kb, state_dir)
            for entry in layout.list_dir(fd):
                if layout.copy_owner(entry) == name and layout.is_dir_at(fd, entry):
                    with layout.opened(entry, fd) as dfd:
                        out += [str(top / entry / f) for f in layout.list_dir(dfd)]
    return out


class WorkDir(NamedTuple):
    kb: int
    name: str  # .staging-<model>-<pid>[.<i>] in the mount
    final: str  # the copy's directory name
    copy: int = 0  # which copy (index into the plans)
    part: int = 0  # which part of it (a copy in mixed page sizes has one per page size, in two mounts)


def make_work_dirs(plans: list[plan_stage.CopyPlan], name: str, gid: int | None, state_dir, root) -> list[WorkDir]:
    """Under the store lock: the mounts, and one empty work directory per copy and part (the
    parts of a copy are in different mounts, under the same names)."""
    out = []
    for i, plan in enumerate(plans):
        for part, (kb, _) in enumerate(plan.parts()):
            ensure_mount(kb, state_dir, root)
            work = layout.staging_name(name) + (f".{i}" if i else "")
            with layout.open_mount(kb, state_dir) as fd:
                layout.remove_tree(fd, work)  # a leftover of a dead stager that had our pid: ours to replace
                os.mkdir(work, GROUP_DIR_MODE if gid is not None else COPY_DIR_MODE, dir_fd=fd)
                with layout.opened(work, fd) as wfd:
                    if gid is not None:
                        os.fchown(wfd, 0, gid)
                    os.fchmod(wfd, GROUP_DIR_MODE if gid is not None else COPY_DIR_MODE)
            out.append(WorkDir(kb, work, layout.copy_name(name, plan.node, i == 0), i, part))
    return out


def remove_work_dirs(work: list[WorkDir], state_dir) -> None:
    for w in work:
        with layout.open_mount(w.kb, state_dir) as fd:
            if fd is not None:
                layout.remove_tree(fd, w.name)


def copy_one(
    src: str,
    st,
    plan: plan_stage.CopyPlan,
    w: WorkDir,
    name: str,
    options: StageOptions,
    gid,
    progress,
    root,
    state_dir,
    piece: tuple[int, int] | None = None,
) -> str:
    """Copy one source file (`piece`: only bytes (offset, length) of it, one part of a copy
    in mixed page sizes) into the work directory (bound to the copy's nodes), retrying when a
    concurrent command took the free pages between the check and the map; returns the path of
    the copy in the work directory."""
    start, length = piece if piece is not None else (0, st.st_size)
    threads = options.threads or min(4, os.cpu_count() or 1)
    base = os.path.basename(src)
    interleave = options.placement is not None and options.placement.mode is plan_numa.Mode.INTERLEAVE
    for attempt in range(NO_PAGES_RETRIES):
        with layout.open_mount(w.kb, state_dir) as fd, layout.opened(w.name, fd) as wfd:
            try:
                with mempolicy.bound(plan.bind, interleave=interleave):
                    copy.copy_into(
                        src, wfd, base, st.st_size, w.kb, threads, progress, gid, manifest.identity(st), piece
                    )
                break
            except copy.NoPages:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(base, dir_fd=wfd)
                if not options.reserve or plan.bind or attempt == NO_PAGES_RETRIES - 1:
                    raise
        ensure_pages(w.kb, plan_stage.pages_needed([length], w.kb), name, True, root, state_dir)
    return str(layout.mount_dir(w.kb, state_dir) / w.name / base)


def stage(
    path: str, options: StageOptions = StageOptions(), state_dir=None, root="/", progress=None, config_dir=None
) -> StageResult:
    """Stage a model; instant when it is already staged and unchanged.

    Atomic: copies are made in .staging work directories renamed into place only when
    complete, with the manifest, under the store lock.  With `options.persist` the model is
    also listed in models.json (in `config_dir`) for `restore`."""
    if options.hvo is not None:  # reaches every reservation below (act_pools.reserve asks act/hvo.mode())
        with act_hvo.using(options.hvo):
            return stage(path, dataclasses.replace(options, hvo=None), state_dir, root, progress, config_dir)
    placement = options.placement or plan_numa.Placement()
    files = layout.source_files(path)
    name = layout.check_name(options.name or layout.default_name(files[0]))
    gid = group_id(options.group)
    stats = [os.stat(f) for f in files]
    sizes = [s.st_size for s in stats]
    nodes = probe_numa.read_nodes(root) if placement.placed else []
    if placement.placed:
        plan_numa.check_nodes(placement, nodes)
    progress = progress or (lambda n: None)
    layout.make_store(state_dir)
    with lock.model_lock(name, state_dir, options.lock_timeout):
        with lock.store_lock(state_dir):
            existing = manifest.read_manifest(name, state_dir)
            if existing is not None and unchanged(existing, files, stats, options):
                if options.persist:
                    if not existing.persist:
                        existing.persist = True
                        manifest.write_manifest(existing, state_dir)
                    persist.add(existing.name, existing.source, existing.page_size_kb, config_dir, existing.group)
                return StageResult(existing, True, "already staged and unchanged")
            if existing is not None:
                withdraw(name, state_dir)  # its pages stay model:<name>'s, for the new copies
        plans = plan_copies(sizes, options, root, nodes, name)
        reason = plans[0].reason + ("" if not placement.placed else f"; {placement.describe()}")
        work: list[WorkDir] = []
        try:
            for i, plan in enumerate(plans):
                plans[i] = reserve_for(plan, sizes, name, options.reserve, root, state_dir, options.mixed)
                crashpoint.point(f"pages for a copy of {name} reserved")
            reason = plans[0].reason + ("" if not placement.placed else f"; {placement.describe()}")
            if options.reserve and options.heap_pages:
                still: dict[int, int] = {}
                for plan in plans:
                    for kb, n in plan.parts():
                        still[kb] = still.get(kb, 0) + n
                reserve_heap_pages(dict(options.heap_pages), still, name, root, state_dir)
            with lock.store_lock(state_dir):
                work = make_work_dirs(plans, name, gid, state_dir, root)
            crashpoint.point(f"work directories of {name} made")
            made = []
            for i, plan in enumerate(plans):
                staged = []
                mine = [w for w in work if w.copy == i]
                for src, st in zip(files, stats, strict=True):
                    split = plan.split_at
                    pieces = [(0, split), (split, st.st_size - split)] if split else [None]
                    finals = []
                    for w, piece in zip(mine, pieces, strict=True):
                        tmp = copy_one(src, st, plan, w, name, options, gid, progress, root, state_dir, piece)
                        crashpoint.point(f"{tmp} copied")
                        if plan.bind:
                            mempolicy.check_placed(tmp, w.kb, plan.bind, root)
                        finals.append((layout.mount_dir(w.kb, state_dir) / w.final / os.path.basename(src), w.kb))
                    sha = None
                    if options.verify:
                        sha = copy.sha256(src, st.st_size)
                        if staged_sha256(mine, src, st.st_size, split, state_dir) != sha:
                            raise HugeloadError(
                                f"verification failed: the staged copy of {src} differs from the source"
                            )
                    f = manifest.staged_file(src, str(finals[0][0]), st, sha)
                    f.parts = [manifest.Part(split, str(path), kb) for path, kb in finals[1:]]
                    staged.append(f)
                made.append(Copy(plan.node, plan.page_size_kb, plan.pages, staged))
            with lock.store_lock(state_dir):
                for w in work:
                    with layout.open_mount(w.kb, state_dir) as fd:
                        layout.remove_tree(fd, w.final)  # a copy directory no manifest names: a leftover
                        os.rename(w.name, w.final, src_dir_fd=fd, dst_dir_fd=fd)
                    crashpoint.point(f"{w.final} renamed into place, no manifest yet")
                work = []
                first, rest = made[0], made[1:]
                m = Manifest(
                    name,
                    first.page_size_kb,
                    first.pages,
                    first.files,
                    time.time(),
                    options.persist,
                    node=first.node,
                    replicas=rest,
                    group=None if options.group is None else str(options.group),
                )
                manifest.write_manifest(m, state_dir)
                manifest.write_redirects(state_dir)
                if options.persist:
                    persist.add(m.name, m.source, m.page_size_kb, config_dir, m.group)
        except BaseException as e:
            give_back_failed(name, work, state_dir, root)
            if isinstance(e, OSError):
                where = f" {placement.describe()}" if placement.placed else ""
                raise HugeloadError(
                    f"staging {name}{where} failed: {e.strerror or e}"
                    f"{' (' + e.filename + ')' if e.filename else ''}; nothing was staged"
                ) from None
            raise
    return StageResult(m, False, reason)


def staged_sha256(work: list[WorkDir], src: str, size: int, split: int, state_dir) -> str:
    """SHA-256 of the staged copy of `src` in its work directories, its parts read in order."""
    lengths = [split, size - split] if split else [size]
    paths = [str(layout.mount_dir(w.kb, state_dir) / w.name / os.path.basename(src)) for w in work]
    return copy.sha256_pieces(list(zip(paths, lengths, strict=True)))


def give_back_failed(name: str, work: list[WorkDir], state_dir, root) -> None:
    """After a failed stage (we hold the model lock): remove its work directories and, when no
    manifest names the model any more, give back every page reserved for it."""
    with contextlib.suppress(HugeloadError, OSError):
        with lock.store_lock(state_dir):
            remove_work_dirs(work, state_dir)
            gone = manifest.read_manifest(name, state_dir) is None
        if gone:
            act_pools.release(root, None, owner=owner(name), state_dir=state_dir)


# ---------------------------------------------------------------- unstage, clear, restore


def name_of(name_or_path: str, state_dir=None) -> str:
    """The model a name, a source path or a staged path stands for."""
    if layout.NAME_RE.match(name_or_path) and layout.manifest_path(name_or_path, state_dir).exists():
        return name_or_path
    return manifest.resolve(name_or_path, state_dir).name


def refuse_if_mapped(name: str, users: list[str]) -> None:
    if users:
        raise HugeloadError(f"model {name!r} is mapped by {', '.join(users)}: stop them first or pass --force")


def mapped_by(paths: list[str], root="/") -> list[str]:
    """'PID (comm)' of processes that map or hold open any of `paths`, this one included
    (Python code that calls unstage() may still map the model itself)."""
    return procs.holder_names(procs.holders(root, paths=paths))


def unstage(
    name_or_path: str, force: bool = False, state_dir=None, root="/", config_dir=None, forget: bool = True
) -> Manifest:
    """Remove a staged model (a manifest that cannot be read too), give back the pages reserved
    for it, and (`forget`) drop it from models.json so that `restore` does not bring it back."""
    name = name_of(name_or_path, state_dir)
    with lock.model_lock(name, state_dir):
        with lock.store_lock(state_dir):
            m = manifest.read_manifest(name, state_dir)
            if m is None:
                raise UsageError(f"no staged model named or at {name_or_path!r} (hugeload staged lists them)")
            if not force:
                refuse_if_mapped(name, mapped_by(model_files(name, state_dir), root))
            withdraw(name, state_dir)
            if forget:
                persist.remove(name, config_dir)
        act_pools.release(root, None, owner=owner(name), state_dir=state_dir)
    unmount_idle(state_dir, root)
    return m


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
        try:
            options = StageOptions(
                page_size=pages.by_kb(int(kb)) if kb else None,
                name=entry["name"],
                reserve=True,
                persist=True,
                group=entry.get("group"),
            )
            r = stage(str(entry["source"]), options, state_dir, root, progress, config_dir)
            out.append(Restored(r.manifest.name, r.manifest.path, r.already_staged, None))
        except Exception as e:  # noqa: BLE001 - reported per model; boot goes on
            out.append(Restored(str(entry.get("name")), "", False, str(e) or type(e).__name__))
    return out


def unmount_idle(state_dir=None, root="/") -> list[str]:
    """Unmount the store's own mounts once they hold nothing (under the store lock, so no stage
    is between its mount and its first work directory)."""
    done: list[str] = []
    if not layout.store_dir(state_dir).is_dir():
        return done
    with lock.store_lock(state_dir):
        for entry in act_mounts.hugeload_mounts(state_dir, root):
            if entry.get("owner") != "store":
                continue
            p = entry["path"]
            with contextlib.suppress(OSError):
                if os.path.isdir(p) and not os.path.islink(p) and not os.listdir(p):
                    with contextlib.suppress(HugeloadError):
                        if act_mounts.umount(root, p, state_dir=state_dir):
                            done.append(p)
    return done
