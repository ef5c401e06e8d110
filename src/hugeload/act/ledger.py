"""The ledger: every pool change and mount hugeload makes, written ahead, so each can be undone.

ledger.json in the state directory (mode 0600):
  shares:  {"<kb>:<node or all>": {"<owner>": pages}}  pages hugeload added to a pool, per Owner
  mounts:  [{"path", "page_size_kb", "created_dir", "owner"}]  hugetlbfs mounts hugeload made
  sysctls: {"<name>": {"path", "previous", "value", "owner"}}  kernel settings hugeload changed
           and puts back (act/hvo.py: vm.hugetlb_optimize_vmemmap)
  intents: [{"id", "what", "owner", "pid", "start", ...}]  changes begun and not yet recorded
  events:  [{"time", "action", "page_size_kb", "node", "before", "after", "owner"}]  the history

Write-ahead, the way databases survive a crash (SQLite's journal; the ALICE study of how
applications lose data when a crash lands between two writes): a change to a pool or a mount
is made inside one `edit()` transaction, which holds the ledger lock and
  1. writes the intent (owner, pool, count before, target; or the mount path) and fsyncs it,
  2. makes the one change (one sysfs write, one mount(2)),
  3. records the outcome (the count read back, the mount) and drops the intent.
The lock is held for that one change only (a 1 GB retry loop takes it once per write, never
across its sync, drop_caches and compaction), so the pressure agent never waits long.
An intent found by the next transaction belongs to a process that died (or failed) in the
middle: `reconcile()` records what the pool or the mount table shows now, under the intent's
owner, and `gc` then gives back what a dead owner holds.  No crash point leaves pages or mounts
that the ledger does not name.
"""

import contextlib
import os
import time
from pathlib import Path
from typing import NamedTuple

from hugeload.act import state
from hugeload.errors import HugeloadError, PermissionNeeded
from hugeload.probe import pools as probe_pools
from hugeload.probe import procs
from hugeload.probe.files import read_int
from hugeload.probe.mounts import read_mounts

MAX_EVENTS = 1000
VERSION = 2


# ---------------------------------------------------------------- owners


class Owner(NamedTuple):
    """Who a share of pages (or an intent) belongs to.

    Formats, as the ledger stores them:
      reserve                          `hugeload reserve` (given back by `hugeload release`)
      model:<name>                     a staged model (given back by unstage, or gc once gone)
      run:<pid>@<start>                `hugeload run --reserve` (gc gives back once it died)
      bench:<pid>@<start>[:<key>]      a benchmark; <key> names what it reserved
      doctor:<pid>@<start>             `doctor --try`'s one trial page
    <start> is the process's start time (clock ticks since boot, /proc/PID/stat field 22): a
    pid is reused, a pid with its start time is not.  Owners written before the start time was
    kept ("run:<pid>", "bench:<pid>:<key>") parse with start None and count as alive while
    their pid exists.  Any other word is an owner of its own (tests, other tools)."""

    kind: str
    name: str = ""  # the model name, or a process owner's key
    pid: int | None = None
    start: int | None = None

    @classmethod
    def model(cls, name: str) -> "Owner":
        return cls("model", name)

    @classmethod
    def process(cls, kind: str, key: str = "", pid: int | None = None, root="/") -> "Owner":
        """This process (or `pid`) as an owner of `kind` (run, bench, doctor)."""
        pid = os.getpid() if pid is None else pid
        return cls(kind, key, pid, procs.start_ticks(root, pid))

    @classmethod
    def parse(cls, text: str) -> "Owner":
        kind, sep, rest = str(text).partition(":")
        if kind in PROCESS_KINDS and sep:
            ident, _, key = rest.partition(":")
            pid_text, _, start_text = ident.partition("@")
            if pid_text.isdigit() and (start_text.isdigit() or not start_text):
                return cls(kind, key, int(pid_text), int(start_text) if start_text else None)
        if kind == "model" and sep:
            return cls("model", rest)
        return cls(str(text)) if not sep or kind not in KNOWN_KINDS else cls(kind, rest)

    def __str__(self) -> str:
        if self.pid is not None:
            ident = f"{self.pid}@{self.start}" if self.start is not None else str(self.pid)
            return f"{self.kind}:{ident}" + (f":{self.name}" if self.name else "")
        return f"{self.kind}:{self.name}" if self.name else self.kind

    @property
    def is_process(self) -> bool:
        return self.pid is not None

    def alive(self, root="/") -> bool:
        """Whether a process owner still runs: the same pid with the same start time (a zombie
        does not count).  Owners that are not processes are always alive here: a model lives
        as long as its manifest (gc decides), `reserve` until released."""
        if self.pid is None:
            return True
        now = procs.start_ticks(root, self.pid)
        return now is not None and (self.start is None or now == self.start)


PROCESS_KINDS = ("run", "bench", "doctor")
KNOWN_KINDS = ("reserve", "model", *PROCESS_KINDS)
RESERVE = Owner("reserve")


# ---------------------------------------------------------------- the file


def ledger_path(state_dir=None) -> Path:
    return state.state_dir(state_dir) / "ledger.json"


def pool_key(kb: int, node: int | None) -> str:
    return f"{kb}:{'all' if node is None else node}"


def parse_pool_key(key: str) -> tuple[int, int | None]:
    kb, _, node = key.partition(":")
    return int(kb), None if node == "all" else int(node)


def empty() -> dict:
    return {"version": VERSION, "shares": {}, "mounts": [], "sysctls": {}, "intents": [], "events": []}


def load(state_dir=None) -> dict:
    """The ledger as it is on disk (no lock, no reconciliation): for readers."""
    data = state.read_json(ledger_path(state_dir), None) or empty()
    if not isinstance(data, dict):
        raise HugeloadError(f"{ledger_path(state_dir)} is not a hugeload ledger: fix or remove it")
    for k, v in empty().items():
        data.setdefault(k, v)
    return data


def save(data: dict, state_dir=None) -> None:
    """Durable (fsync of the file and of the directory) before it returns.  A ledger that cannot
    be written (a full or read-only state directory) is one clear line: before a change, the
    change is not made; after it, the intent already written lets the next command settle it."""
    data["events"] = data["events"][-MAX_EVENTS:]
    data["version"] = VERSION
    path = ledger_path(state_dir)
    try:
        state.write_json(path, data)
    except OSError as e:
        raise HugeloadError(f"cannot write the ledger {path}: {e.strerror or e}") from None


@contextlib.contextmanager
def edit(state_dir=None, root="/"):
    """One transaction: the ledger lock, the ledger with every interrupted intent reconciled,
    and the file written back (atomically, durably) when the block ends, also when it raises
    (what the block recorded before it failed happened, and stays recorded)."""
    path = ledger_path(state_dir)
    state.make_state_dir(state_dir)
    try:
        lock = state.locked(path.with_suffix(".lock"))
        lock.__enter__()
    except PermissionError:
        raise PermissionNeeded(f"cannot lock the ledger {path}: pools and mounts are root's (run as root)") from None
    try:
        data = load(state_dir)
        reconcile(data, root)
        try:
            yield data
        except BaseException:
            with contextlib.suppress(OSError, HugeloadError):
                save(data, state_dir)
            raise
        save(data, state_dir)
    finally:
        lock.__exit__(None, None, None)


# ---------------------------------------------------------------- shares


def record_pool_change(data: dict, kb: int, node: int | None, before: int, after: int, owner, action: str) -> None:
    """Adds the change to the owner's share (never below zero) and to the history."""
    owner = str(owner)
    key = pool_key(kb, node)
    owners = data["shares"].setdefault(key, {})
    owners[owner] = max(0, owners.get(owner, 0) + after - before)
    if owners[owner] == 0:
        del owners[owner]
    if not owners:
        del data["shares"][key]
    data["events"].append(
        {
            "time": time.time(),
            "action": action,
            "page_size_kb": kb,
            "node": node,
            "before": before,
            "after": after,
            "owner": owner,
        }
    )


def share(data: dict, kb: int, node: int | None, owner=None) -> int:
    owners = data["shares"].get(pool_key(kb, node), {})
    return owners.get(str(owner), 0) if owner else sum(owners.values())


def owners(data: dict) -> list[Owner]:
    """Every owner holding a share, parsed."""
    return [Owner.parse(o) for o in sorted({o for shares in data["shares"].values() for o in shares})]


def take_from(data: dict, kb: int, node: int | None, owners_in_order: list[str], before: int, after: int, action: str):
    """A pool shrank from `before` to `after` for these owners: take it from their shares in order."""
    key = pool_key(kb, node)
    count = before
    for o in owners_in_order:
        take = min(count - after, data["shares"].get(key, {}).get(o, 0))
        if take > 0:
            record_pool_change(data, kb, node, count, count - take, o, action)
            count -= take


def record_moved(
    data: dict, kb: int, node: int | None, owners_in_order: list[str], before: int, target: int, now: int, action: str
) -> int:
    """A write asked a pool to go from `before` to `target` and it reads `now`: credit the owner
    with what the write did, and at most what it asked for (a change by someone outside
    hugeload in the same instant cannot be told apart, and is not credited).  Returns the
    pages moved (negative: given back)."""
    moved = max(min(now, max(before, target)), min(before, target)) - before
    if moved > 0:
        record_pool_change(data, kb, node, before, before + moved, owners_in_order[0], action)
    elif moved < 0:
        take_from(data, kb, node, owners_in_order, before, before + moved, action)
    return moved


def hand_over(data: dict, kb: int, node: int | None, giver, taker, count: int) -> int:
    """Move up to `count` pages of `giver`'s share of a pool to `taker` (the pool does not
    change: the pages are already in the taker's files); returns the pages moved."""
    moved = min(count, share(data, kb, node, giver))
    if moved > 0:
        record_pool_change(data, kb, node, moved, 0, giver, "hand-over")
        record_pool_change(data, kb, node, 0, moved, taker, "hand-over")
    return moved


def forget_excess(data: dict, kb: int, node: int | None, pool_total: int) -> None:
    """Shrink the shares of a pool to what it still holds, when someone else released pages
    hugeload had added (a share can never exceed the pool)."""
    key = pool_key(kb, node)
    owners = data["shares"].get(key, {})
    excess = sum(owners.values()) - pool_total
    for o in sorted(owners):
        if excess <= 0:
            break
        take = min(excess, owners[o])
        owners[o] -= take
        excess -= take
        data["events"].append(
            {
                "time": time.time(),
                "action": "forget",
                "page_size_kb": kb,
                "node": node,
                "before": owners[o] + take,
                "after": owners[o],
                "owner": o,
            }
        )
    for o in [o for o, n in owners.items() if n == 0]:
        del owners[o]
    if not owners:
        data["shares"].pop(key, None)


# ---------------------------------------------------------------- intents


def begin(data: dict, state_dir, what: str, owner, **fields) -> dict:
    """Write an intent durably, before the change it announces; returns it for finish()."""
    pid = os.getpid()
    intent = {
        "id": f"{pid}-{time.monotonic_ns()}",
        "what": what,
        "owner": str(owner),
        "pid": pid,
        "start": procs.start_ticks("/", pid),
        "time": time.time(),
        **fields,
    }
    data["intents"].append(intent)
    save(data, state_dir)
    return intent


def finish(data: dict, intent: dict) -> None:
    """The outcome is recorded (by the caller, in the same transaction): drop the intent."""
    data["intents"] = [i for i in data["intents"] if i.get("id") != intent["id"]]


def read_pool_count(root, kb: int, node: int | None) -> int:
    """Persistent pages (nr_hugepages less the surplus pages, which come and go by themselves)."""
    pool = probe_pools.system_pool(root, kb) if node is None else probe_pools.node_pool(root, kb, node)
    return pool.total - pool.surplus


def reconcile(data: dict, root="/") -> bool:
    """Settle every intent left by a transaction that did not finish (its process was killed,
    or failed between its change and its outcome).  Called with the ledger lock held, so no
    live transaction owns any of them.  Returns whether anything changed."""
    left = []
    for intent in list(data["intents"]):
        try:
            settled = _settle(data, intent, root)
        except (OSError, ValueError, KeyError, TypeError, HugeloadError):
            settled = False
        if not settled:
            left.append(intent)
    changed = len(left) != len(data["intents"])
    data["intents"] = left
    return changed


def _settle(data: dict, intent: dict, root) -> bool:
    what = intent.get("what")
    if what == "pool":
        kb, node = int(intent["page_size_kb"]), intent.get("node")
        before, target = int(intent["before"]), int(intent["target"])
        if kb not in probe_pools.page_sizes(root) or (node is not None and node not in probe_pools.nodes(root)):
            return False  # that pool is not here (another root): leave it
        now = read_pool_count(root, kb, node)
        owners_in_order = intent.get("owners") or [intent["owner"]]
        record_moved(data, kb, node, owners_in_order, before, target, now, "recover")
        return True
    if what in ("mount", "umount"):
        path, kb = intent["path"], int(intent["page_size_kb"])
        mounted = any(m.path == path for m in read_mounts(root))
        entries = [e for e in data["mounts"] if e["path"] != path]
        if mounted:
            known = next((e for e in data["mounts"] if e["path"] == path), None)
            entries.append(
                known
                or {
                    "path": path,
                    "page_size_kb": kb,
                    "created_dir": intent.get("created_dir"),
                    "owner": intent["owner"],
                }
            )
        elif intent.get("created_dir"):
            with contextlib.suppress(OSError):
                os.rmdir(path)
        data["mounts"] = entries
        data["events"].append({"time": time.time(), "action": f"recover-{what}", "path": path, "mounted": mounted})
        return True
    if what == "sysctl":
        return _settle_sysctl(data, intent, root)
    return False  # an intent of a kind this version does not know: kept for the version that wrote it


def _settle_sysctl(data: dict, intent: dict, root) -> bool:
    """A sysctl write that may or may not have happened: the value now says which.  A write
    that happened is recorded as act/hvo.py would have (changed: remember the value to put
    back; restored: forget it); one that did not leaves the record as it was."""
    name, rel = intent["name"], intent["path"]
    before, target = int(intent["before"]), int(intent["target"])
    now = read_int(root, rel)
    if now is None:
        return False  # that file is not here (another root): leave it
    if now == target and now != before:
        if intent.get("restore"):
            data["sysctls"].pop(name, None)
        else:
            data["sysctls"][name] = {"path": rel, "previous": before, "value": target, "owner": intent["owner"]}
    data["events"].append({"time": time.time(), "action": "recover-sysctl", "name": name, "value": now})
    return True


def outstanding(state_dir=None) -> list[dict]:
    return load(state_dir)["intents"]
