"""gc and clear: give back what interrupted commands left, and empty the store.

What gc accounts for, in this order:
  1. the ledger: every intent an interrupted command left is settled (act/ledger.py: the
     pages a killed reserve gained are recorded under its owner, a half-made mount is
     recorded or its directory removed);
  2. the store's mounts, walked without following links (layout.py): work directories whose
     model lock is free (their stager died), copy directories and files no manifest names;
     a manifest that cannot be read keeps its model's directories (it may be a newer
     hugeload's), and is reported;
  3. pages: a model's share once no manifest names it (tested under that model's lock, so a
     stage starting meanwhile keeps its pages), the shares of processes that died (run,
     bench, doctor: pid and start time, ledger.Owner);
  4. what killed `hugeload run` and `bench` processes left in the state directory;
  5. the redirect index, rewritten from the manifests, and the store's idle mounts.
"""

import contextlib
import os
import shutil
from pathlib import Path

from hugeload import pages
from hugeload.act import crashpoint, ledger, shm, state
from hugeload.act import hvo as act_hvo
from hugeload.act import mounts as act_mounts
from hugeload.act import pools as act_pools
from hugeload.act.store import layout, lock, manifest
from hugeload.act.store.stage import model_files, refuse_if_mapped, unmount_idle, unstage, withdraw
from hugeload.errors import HugeloadError, UsageError
from hugeload.probe import procs
from hugeload.probe.mounts import read_mounts


def run_report_path(pid: int, state_dir=None) -> Path:
    """Where `hugeload run` (without --report) has the preload library write its report: named
    by the run's pid and start time, so gc can tell a dead run's report from a live one's."""
    start = procs.start_ticks("/", pid)
    name = f"report-{pid}@{start}.txt" if start is not None else f"report-{pid}.txt"
    return state.state_dir(state_dir) / "run" / name


def started_before(pid: str, when: float, root="/") -> bool:
    """Whether process `pid` runs and started no later than `when` (seconds since the epoch,
    give or take the second of btime's precision): a process that started later cannot have
    made what was there at `when`."""
    t = procs.started_at(root, pid)
    return t is not None and t <= when + 1.0


def gc_run_reports(state_dir=None, root="/") -> list[str]:
    """Reports of `hugeload run` processes that were killed before they could remove them."""
    removed: list[str] = []
    top = state.state_dir(state_dir) / "run"
    for f in sorted(top.glob("report-*.txt")) if top.is_dir() else []:
        ident = f.name[len("report-") : -len(".txt")]
        who = ledger.Owner.parse(f"run:{ident}")
        if who.pid is not None and not who.alive(root):
            with contextlib.suppress(OSError):
                f.unlink()
                removed.append(str(f))
    return removed


def gc_bench_runs(state_dir=None, root="/") -> list[str]:
    """What a killed `hugeload bench engine` left: its own store under <state>/bench/<pid>
    (staged copies, their mounts and pages) and its tmpfs copy (act/shm.py)."""
    removed: list[str] = []
    top = state.state_dir(state_dir) / "bench"
    if not top.is_dir():
        return removed
    for d in sorted(top.iterdir()):
        if not d.name.isdigit() or d.is_symlink():
            continue
        if started_before(d.name, d.stat().st_ctime, root):
            continue  # its benchmark still runs
        # its store, and the state dir of each copy in mixed page sizes (bench/copies.py)
        nested = [p for p in [d / "state", *sorted(d.glob("state-*"))] if p.is_dir() and not p.is_symlink()]
        for n in nested:
            with contextlib.suppress(HugeloadError, OSError):
                empty_store(n, root)
        if any(act_mounts.hugeload_mounts(n, root) for n in nested):
            continue  # a mount still busy (an engine still running): the next gc retries
        if str(root) == "/":
            removed += shm.remove_bench_dirs(int(d.name))
        shutil.rmtree(d, ignore_errors=True)
        removed.append(str(d))
    return removed


def empty_store(state_dir, root="/") -> None:
    """Everything out of a store nobody uses any more: models, pages, mounts."""
    if layout.store_dir(state_dir).is_dir():
        with lock.store_lock(state_dir):
            for name in manifest.manifest_names(state_dir):
                withdraw(name, state_dir)
    gc(state_dir, root)
    act_pools.release(root, None, owner=None, state_dir=state_dir)
    unmount_idle(state_dir, root)


def sweep_mount(kb: int, models: dict[str, manifest.Manifest], state_dir) -> list[str]:
    """Remove from one store mount what no manifest names (under the store lock)."""
    removed: list[str] = []
    top = layout.mount_dir(kb, state_dir)
    with layout.open_mount(kb, state_dir) as fd:
        if fd is None:
            return removed
        for entry in layout.list_dir(fd):
            if entry.startswith(layout.STAGING_PREFIX):
                if not lock.model_busy(layout.staging_owner(entry), state_dir):
                    layout.remove_tree(fd, entry)
                    removed.append(str(top / entry))
                continue
            name = layout.copy_owner(entry)
            m = models.get(name) if name else None
            if m is not None and not m.readable:
                continue  # cannot tell which files are its: keep them all (and say so in `staged`)
            keep = {
                os.path.basename(path)
                for c in (m.copies if m else [])
                for path, part_kb, _, _ in c.pieces()
                if part_kb == kb and os.path.dirname(path) == str(top / entry)
            }
            if not keep or not layout.is_dir_at(fd, entry):
                layout.remove_tree(fd, entry)
                removed.append(str(top / entry))
                continue
            with layout.opened(entry, fd) as dfd:
                for f in layout.list_dir(dfd):
                    if f not in keep:
                        layout.remove_tree(dfd, f)
                        removed.append(str(top / entry / f))
    return removed


def adopt_store_mounts(state_dir, root) -> None:
    """Make the ledger's mounts agree with the kernel's: forget those that are gone (unmounted by
    hand), and record the store's own mounts it does not list."""
    mounted = {m.path: m for m in read_mounts(root)}
    with ledger.edit(state_dir, root) as data:
        keep = [e for e in data["mounts"] if e["path"] in mounted]
        known = {e["path"] for e in keep}
        for page in pages.HUGE:
            p = str(layout.mount_dir(page.kb, state_dir))
            if p in mounted and p not in known and mounted[p].page_size_kb == page.kb:
                keep.append({"path": p, "page_size_kb": page.kb, "created_dir": True, "owner": "store"})
        if keep != data["mounts"]:
            data["events"].append({"action": "gc-mounts", "before": len(data["mounts"]), "after": len(keep)})
            data["mounts"] = keep


def release_dead_owners(state_dir, root) -> list:
    released = []
    with ledger.edit(state_dir, root) as data:  # settles what killed commands left first
        owners = ledger.owners(data)
    for o in owners:
        if o.kind == "model" and layout.NAME_RE.match(o.name):
            # Under the model's lock: a stage that starts right after this test keeps its pages.
            with contextlib.suppress(TimeoutError), state.locked(layout.lock_path(o.name, state_dir), timeout=0):
                if manifest.read_manifest(o.name, state_dir) is None:
                    released += act_pools.release(root, None, owner=str(o), state_dir=state_dir)
                    hand_over_in_use(o, state_dir, root)
        elif o.is_process and not o.alive(root):
            released += act_pools.release(root, None, owner=str(o), state_dir=state_dir)
        crashpoint.point(f"gc: {o} looked at")
    return released


def hand_over_in_use(dead: ledger.Owner, state_dir, root) -> None:
    """What a dead model's share kept after its release is in use: a stage that ran before this
    gc took the free pages it had reserved (stage reserves only what the pool lacks).  Those
    pages now hold another model's copies: the share goes to the models whose copies use more
    pages than their own shares, so that their unstage gives the pages back."""
    if not layout.store_dir(state_dir).is_dir():
        return
    with lock.store_lock(state_dir), ledger.edit(state_dir, root) as data:
        live = [m for m in manifest.manifests(state_dir) if m.readable]
        for key in list(data["shares"]):
            kb, node = ledger.parse_pool_key(key)
            keys = [ledger.parse_pool_key(k) for k in data["shares"]]
            same = [(k, n) for k, n in keys if k == kb and node in (None, n)]  # a node's pool, or every node's
            for m in live:
                if ledger.share(data, kb, node, dead) <= 0:
                    break
                taker = ledger.Owner.model(m.name)
                used = sum(c.pages_of(kb) for c in m.copies if node in (None, c.node))
                held = sum(ledger.share(data, k, n, taker) for k, n in same)
                ledger.hand_over(data, kb, node, dead, taker, used - held)


def gc(state_dir=None, root="/") -> dict:
    """Remove what interrupted stagings left, give back pages no living owner holds, and report
    the manifests that cannot be read: {"removed", "released", "unmounted", "unreadable"}."""
    out: dict = {"removed": [], "released": [], "unmounted": [], "unreadable": []}
    if not state.state_dir(state_dir).is_dir():
        return out
    state.check_state_dir(state_dir)
    if layout.store_dir(state_dir).is_dir():
        with lock.store_lock(state_dir):
            models = {m.name: m for m in manifest.manifests(state_dir, readable_only=False)}
            out["unreadable"] = [f"{m.name}: {m.error}" for m in models.values() if not m.readable]
            for page in pages.HUGE:
                out["removed"] += sweep_mount(page.kb, models, state_dir)
            manifest.write_redirects(state_dir)
    adopt_store_mounts(state_dir, root)
    out["released"] += release_dead_owners(state_dir, root)
    act_hvo.settle(state_dir, root)  # a reservation killed after turning HVO on, before its pages
    out["removed"] += gc_bench_runs(state_dir, root)
    out["removed"] += gc_run_reports(state_dir, root)
    out["unmounted"] = unmount_idle(state_dir, root)
    return out


def clear(force: bool = False, state_dir=None, root="/", config_dir=None, keep_persisted: bool = False) -> dict:
    """Unstage every model (those whose manifest cannot be read too), all or nothing: without
    `force`, refuse before removing any while one is mapped.  Then gc.  Returns
    {"unstaged": [names], **gc()}.  `keep_persisted`: models.json keeps them (the boot unit's
    stop: the next boot restores them)."""
    names = manifest.manifest_names(state_dir) if layout.store_dir(state_dir).is_dir() else []
    if not force:
        files = {n: model_files(n, state_dir) for n in names}
        found = procs.holders(root, paths=[f for fs in files.values() for f in fs])
        for n in names:
            mine = set(files[n])
            refuse_if_mapped(n, procs.holder_names([h for h in found if h.path in mine]))
    done: list[str] = []
    for n in names:
        with contextlib.suppress(UsageError):  # unstaged meanwhile by another command
            unstage(n, force, state_dir, root, config_dir, forget=not keep_persisted)
            done.append(n)
    return {"unstaged": done, **gc(state_dir, root)}
