"""The ledger: every pool change and mount hugeload makes, so each can be undone.

ledger.json in the state directory:
  shares:  {"<kb>:<node or all>": {"<owner>": pages}}  pages hugeload added to a pool, per owner
           (owner "reserve" for the reserve command, "model:<name>" for load --reserve,
           "run:<pid>" for run --reserve)
  mounts:  [{"path", "page_size_kb", "created_dir", "owner"}]  hugetlbfs mounts hugeload made
  events:  [{"time", "action", "page_size_kb", "node", "before", "after", "owner"}]  the history
"""

import contextlib
import time
from pathlib import Path

from hugeload.act import state

MAX_EVENTS = 1000


def ledger_path(state_dir=None) -> Path:
    return state.state_dir(state_dir) / "ledger.json"


def pool_key(kb: int, node: int | None) -> str:
    return f"{kb}:{'all' if node is None else node}"


def parse_pool_key(key: str) -> tuple[int, int | None]:
    kb, _, node = key.partition(":")
    return int(kb), None if node == "all" else int(node)


def empty() -> dict:
    return {"shares": {}, "mounts": [], "events": []}


def load(state_dir=None) -> dict:
    data = state.read_json(ledger_path(state_dir), None) or empty()
    for k, v in empty().items():
        data.setdefault(k, v)
    return data


@contextlib.contextmanager
def edit(state_dir=None):
    """Read-modify-write under a lock; the file is replaced atomically on success."""
    path = ledger_path(state_dir)
    with state.locked(path.with_suffix(".lock")):
        data = load(state_dir)
        yield data
        data["events"] = data["events"][-MAX_EVENTS:]
        state.write_json(path, data)


def record_pool_change(data: dict, kb: int, node: int | None, before: int, after: int, owner: str, action: str) -> None:
    """Adds the change to the owner's share (never below zero) and to the history."""
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


def share(data: dict, kb: int, node: int | None, owner: str | None = None) -> int:
    owners = data["shares"].get(pool_key(kb, node), {})
    return owners.get(owner, 0) if owner else sum(owners.values())


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
