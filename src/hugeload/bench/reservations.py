"""The huge pages a benchmark run needs: reserved (read back, recorded in the ledger under the
owner `bench:<pid>`, so `hugeload gc` frees them after a kill -9) and always given back, also on
failure or Ctrl-C (held back until the pools are restored)."""

import contextlib
import signal
import threading
from enum import Enum
from typing import NamedTuple

from hugeload.act import pools as act_pools
from hugeload.bench.backings import hugetlb_page
from hugeload.errors import HugeloadError
from hugeload.probe import pools as probe_pools


class PoolUse(Enum):
    """Where a benchmark's huge pages come from."""

    RESERVE = "reserve"  # its own, reserved for the run and given back after (the default)
    FREE = "free"  # free pages already in the pools, none reserved (--no-reserve)


class Reservation(NamedTuple):
    page_size_kb: int
    before: int
    asked: int  # pages added on top of `before`
    got: int  # pages the kernel really added (read back)
    restored: bool | None  # None until given back


def bench_owner() -> str:
    """Ledger owner of a benchmark's pages: `hugeload gc` frees them if the run is killed."""
    from hugeload.act import ledger

    return str(ledger.Owner.process("bench"))


def reserve_pages(root, kb: int, need: int, log=lambda msg: None) -> Reservation:
    """Add `need` pages to the pool, reading back what the kernel gave, and record them in
    the ledger.  A short 1 GB result is retried after freeing memory; what it gave is kept
    (partial) and given back by give_back()."""
    before = act_pools.read_count(root, kb)
    try:
        result = act_pools.reserve(root, kb, need, partial=True, owner=bench_owner(), retry_seconds=20.0)
    except HugeloadError as e:
        log(f"could not reserve {need} pages of {kb} kB: {e}")
        return Reservation(kb, before, need, 0, None)
    return Reservation(kb, result.before, need, max(0, result.after - result.before), None)


def release_reservation(root, r: Reservation) -> Reservation:
    """Release this run's pages of that size (per the ledger): never pages another process
    reserved meanwhile, never pages still in use."""
    if not r.got:
        return r._replace(restored=True)
    try:
        released = sum(x.released for x in act_pools.release(root, r.page_size_kb, owner=bench_owner()))
        return r._replace(restored=released == r.got)
    except HugeloadError:
        return r._replace(restored=False)


@contextlib.contextmanager
def sigint_deferred():
    """Hold Ctrl-C back while pools are put back; deliver it afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending = []
    old = signal.signal(signal.SIGINT, lambda sig, frame: pending.append(sig))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
        if pending and callable(old):
            old(signal.SIGINT, None)


class PageReservations:
    """The huge pages one benchmark run needs, given back when the block ends
    (also on failure or Ctrl-C).

        with PageReservations(root, PoolUse.RESERVE, log=log) as pages:
            reason = pages.ensure("1g", nbytes)   # None, or why the backing is skipped
        pages.reservations                        # with .restored filled in
    """

    def __init__(self, root="/", use: PoolUse = PoolUse.RESERVE, log=lambda msg: None):
        self.root, self.use, self.log = root, use, log
        self.reservations: list[Reservation] = []

    def ensure(self, backing: str, nbytes: int, count: int = 1) -> str | None:
        """Make `count` buffers of `nbytes` in `backing` possible: None when the pool
        holds the pages (reserving them if allowed), else the reason to skip."""
        page = hugetlb_page(backing)
        if page is None:
            return None
        kb, name = page.kb, page.label
        if kb not in probe_pools.page_sizes(self.root):
            return f"the kernel offers no {name} pages"
        need = page.pages_for(nbytes) * count
        got = None
        if self.use is PoolUse.RESERVE:  # our own pages: never lean on free pages another user reserved
            r = reserve_pages(self.root, kb, need, self.log)
            self.reservations.append(r)
            got = r.got
        available = max(0, probe_pools.system_pool(self.root, kb).available)
        if available >= need:
            return None
        if got is not None:
            return (
                f"needs {need} free {name} pages; reserved {got} of {need} (the kernel gave fewer), "
                f"the pool has {available} unclaimed"
            )
        return (
            f"needs {need} free {name} pages, the pool has {available} unclaimed and reserving was turned off; "
            f"reserve them first: hugeload reserve --page-size {backing} --count {need - available}"
        )

    @property
    def restored(self) -> bool:
        return all(r.restored for r in self.reservations)

    def give_back(self) -> None:
        with sigint_deferred():
            self.reservations = [
                r if r.restored is not None else release_reservation(self.root, r) for r in self.reservations
            ]

    def __enter__(self) -> "PageReservations":
        return self

    def __exit__(self, *exc) -> None:
        self.give_back()
