"""HVO (vm.hugetlb_optimize_vmemmap): on while hugeload holds huge pages, put back after.

HVO gives back the `struct page` memory of each huge page allocated while it is on (16 MiB per
1 GB page, 14 MiB per GiB of 2 MB pages; plan/hvo.py); pages allocated before stay as they
were.  So a reservation turns it on *before* its pool write, in the same ledger transaction
(a release that puts it back cannot slip in between), and the transaction that gives back
hugeload's last page puts the previous value back.  A value hugeload did not write (the
user's `sysctl`, `hugetlb_free_vmemmap=on` at boot) is never changed back: a 1 found before
hugeload wrote anything is the user's, and so is any value other than the one hugeload wrote.

Both writes follow the ledger's rule: the intent is durable before the write, the value is
read back after it (DPDK's dpdk-hugepages.py reads back every write), and a write that fails
is reported, never fatal: HVO saves memory, the reservation does not depend on it.

`Hvo.LEAVE` (`--hvo leave`, HUGELOAD_HVO=leave) never writes the sysctl: for machines whose
owners must not have it changed (HVO makes each huge page allocation and free remap the
vmemmap, and a free can fail under memory pressure and leave a surplus page)."""

import contextlib
import contextvars
import os
import time
from enum import StrEnum

from hugeload.act import crashpoint, ledger
from hugeload.act.sysfs import write_text
from hugeload.errors import HugeloadError, UsageError
from hugeload.probe.hvo import HVO_PATH, HVO_SYSCTL, read_hvo

ENV = "HUGELOAD_HVO"


class Hvo(StrEnum):
    AUTO = "auto"  # on before reserving, previous value back when hugeload's last page goes
    LEAVE = "leave"  # never write the sysctl

    def __str__(self) -> str:
        return self.value


def parse(text) -> Hvo:
    if isinstance(text, Hvo):
        return text
    try:
        return Hvo(str(text).strip().lower())
    except ValueError:
        raise UsageError(f"unknown HVO mode {text!r}: choose one of {', '.join(m.value for m in Hvo)}") from None


def arg_type(text: str) -> Hvo:
    import argparse

    try:
        return parse(text)
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


_override: contextvars.ContextVar[Hvo | None] = contextvars.ContextVar("hugeload_hvo", default=None)


@contextlib.contextmanager
def using(mode: Hvo | str | None):
    """Reservations made inside the block use `mode` (None: HUGELOAD_HVO, else auto): how a
    command's --hvo reaches the reservations a stage makes deep inside the store."""
    token = _override.set(None if mode is None else parse(mode))
    try:
        yield
    finally:
        _override.reset(token)


def mode(explicit: Hvo | str | None = None) -> Hvo:
    """The mode in force: the caller's, else using()'s, else HUGELOAD_HVO, else auto."""
    if explicit is not None:
        return parse(explicit)
    return _override.get() or parse(os.environ.get(ENV) or Hvo.AUTO)


def _write(data: dict, root, state_dir, owner: str, before: int, target: int, restore: bool) -> int | None:
    """One write-ahead sysctl write; the value read back (None: unreadable)."""
    intent = ledger.begin(
        data, state_dir, "sysctl", owner, name=HVO_SYSCTL, path=HVO_PATH, before=before, target=target, restore=restore
    )
    crashpoint.point("hvo: intent durable, not written")
    try:
        write_text(os.path.join(str(root), HVO_PATH), f"{target}\n")
        crashpoint.point("hvo written, outcome not recorded")
    finally:
        now = read_hvo(root)
        if now == target:
            if restore:
                data["sysctls"].pop(HVO_SYSCTL, None)
            else:
                data["sysctls"][HVO_SYSCTL] = {"path": HVO_PATH, "previous": before, "value": target, "owner": owner}
        data["events"].append(
            {"time": time.time(), "action": "hvo-restore" if restore else "hvo-on", "before": before, "after": now}
        )
        ledger.finish(data, intent)
    return now


def before_grow(data: dict, root, state_dir, owner: str, how: Hvo) -> str:
    """In the ledger transaction of a pool write that grows a pool, before the write: turn HVO
    on (auto).  Returns what it found or did, in words, for the reservation's report."""
    data.setdefault("sysctls", {})
    now = read_hvo(root)
    if now is None:
        return "unavailable"
    mine = data["sysctls"].get(HVO_SYSCTL)
    if now != 0:
        return "on (turned on by hugeload)" if mine and mine.get("value") == now else "on (set outside hugeload)"
    if how is Hvo.LEAVE:
        return "off (left alone: --hvo leave)"
    try:
        got = _write(data, root, state_dir, owner, now, 1, restore=False)
    except HugeloadError as e:
        return f"off (could not turn it on: {e})"
    return "on (turned on by hugeload)" if got == 1 else f"off (wrote 1, reads {got})"


def after_shrink(data: dict, root, state_dir) -> str | None:
    """In a ledger transaction that gave pages back (or found none held): when hugeload holds
    no page any more, put back the value HVO had before hugeload turned it on.  Returns what it
    did, or None when nothing was to do."""
    mine = data.get("sysctls", {}).get(HVO_SYSCTL)
    if not mine or any(data["shares"].values()):
        return None
    now = read_hvo(root)
    if now is None or now != mine.get("value"):
        # Gone, or changed since hugeload wrote it: the value is someone else's now.
        data["sysctls"].pop(HVO_SYSCTL, None)
        data["events"].append({"time": time.time(), "action": "hvo-forget", "after": now})
        return None
    previous = int(mine.get("previous", 0))
    try:
        got = _write(data, root, state_dir, str(mine.get("owner", "reserve")), now, previous, restore=True)
    except HugeloadError as e:
        return f"HVO left on: could not put back {previous} ({e})"
    return f"HVO back to {got}"


def settle(state_dir=None, root="/") -> str | None:
    """after_shrink() in a transaction of its own: for gc, where an interrupted reservation may
    have turned HVO on and kept no page."""
    data = ledger.load(state_dir)
    if not data.get("sysctls") and not any(i.get("what") == "sysctl" for i in data["intents"]):
        return None  # the common case, without the ledger lock
    with ledger.edit(state_dir, root) as data:
        return after_shrink(data, root, state_dir)
