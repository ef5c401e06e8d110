"""What every benchmark shares: the backings, reserving the pages a run needs
and always giving them back, checking in smaps that memory is in the pages it
claims, interleaved round orders, bootstrap intervals, and the notes every
result carries (times are measured; VMs hide the gain of 1 GB pages).

Pure helpers except PageReservations (writes the pools) and verify_backing
(reads /proc/self/smaps).
"""

import contextlib
import ctypes
import random
import signal
import threading
from pathlib import Path
from typing import NamedTuple

from hugeload.errors import HugeloadError, UsageError
from hugeload.pages import HUGE
from hugeload.probe import pools as probe_pools
from hugeload.units import ceil_div

BACKINGS = ("4k", "thp", "2m", "1g")
HUGETLB_KB = {p.name: p.kb for p in HUGE}
PMU_DIR = "sys/bus/event_source/devices/cpu"  # present when the kernel has hardware counters

VM_NOTE = (
    "running under a hypervisor: a guest's TLB entries are no larger than the host's backing pages, "
    "so 1G guest pages measure about the same as 2M unless the host backs this VM with 1G pages"
)


# --------------------------------------------------------------------------- input


def parse_backings(spec) -> list[str]:
    """'4k,thp,2m,1g' (or a list) -> unique backings in order; UsageError on an unknown one."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out = list(dict.fromkeys(b.strip().lower() for b in items if b.strip()))
    unknown = [b for b in out if b not in BACKINGS]
    if unknown:
        raise UsageError(f"unknown backing {unknown[0]!r}: choose from {', '.join(BACKINGS)}")
    if not out:
        raise UsageError(f"no backing given: choose from {', '.join(BACKINGS)}")
    return out


# --------------------------------------------------------------------------- native loops


def native_loops() -> ctypes.CDLL:
    """The native library; its benchmark loops' signatures are declared by native.load()."""
    from hugeload import native

    return native.load()


# --------------------------------------------------------------------------- statistics


def median(values: list[float]) -> float:
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def bootstrap_median_ci(
    values: list[float], confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """(median, low, high): percentile bootstrap interval of the median."""
    if not values:
        raise ValueError("no values")
    med = median(values)
    if len(values) == 1:
        return med, med, med
    rng = random.Random(seed)
    n = len(values)
    meds = sorted(median([values[rng.randrange(n)] for _ in range(n)]) for _ in range(resamples))
    alpha = (1 - confidence) / 2
    lo = meds[int(alpha * (resamples - 1))]
    hi = meds[int(round((1 - alpha) * (resamples - 1)))]
    return med, lo, hi


class Stat(NamedTuple):
    """One measured quantity over rounds: the median and its bootstrap interval."""

    values: list[float]
    median: float
    low: float
    high: float


def stat(values: list[float], confidence: float = 0.95, seed: int = 0) -> Stat:
    med, lo, hi = bootstrap_median_ci(values, confidence, seed=seed)
    return Stat(list(values), med, lo, hi)


def overlap(a: Stat, b: Stat) -> bool:
    """True when the two intervals overlap: the difference is within noise."""
    return a.low <= b.high and b.low <= a.high


def round_orders(backings: list[str], rounds: int, seed: int = 0) -> list[list[str]]:
    """Every round visits every backing once, in a fresh shuffled order, so slow
    drift (other load, thermal, page cache) falls on all backings alike."""
    rng = random.Random(seed)
    out = []
    for _ in range(rounds):
        order = list(backings)
        rng.shuffle(order)
        out.append(order)
    return out


# --------------------------------------------------------------------------- notes


def has_cpu_counters(root="/") -> bool:
    return (Path(root) / PMU_DIR).exists()


def measured_note(root="/", how: str = "wall-clock", tlb: bool = True) -> str:
    counters = (
        "this machine exposes no CPU performance counters"
        if not has_cpu_counters(root)
        else "CPU performance counters are not read"
    )
    if not tlb:
        return f"times are measured ({how}); {counters}"
    return f"times are measured ({how}), not TLB misses: {counters}, so TLB misses are inferred, not counted"


def on_hypervisor(root="/") -> bool:
    from hugeload.probe.cpu import read_cpu

    try:
        return read_cpu(root).hypervisor
    except Exception:  # a note, never a failure
        return False


# --------------------------------------------------------------------------- pages


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
    from hugeload.act import pools as act_pools

    before = act_pools.read_count(root, kb)
    try:
        result = act_pools.reserve(root, kb, need, partial=True, owner=bench_owner(), retry_seconds=20.0)
    except HugeloadError as e:
        log(f"could not reserve {need} pages of {kb} kB: {e}")
        return Reservation(kb, before, need, 0, None)
    return Reservation(kb, result.before, need, max(0, result.after - result.before), None)


def give_back(root, r: Reservation) -> Reservation:
    """Release this run's pages of that size (per the ledger): never pages another process
    reserved meanwhile, never pages still in use."""
    from hugeload.act import pools as act_pools

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

        with PageReservations(root, reserve=True, log=log) as pages:
            reason = pages.ensure("1g", nbytes)   # None, or why the backing is skipped
        pages.reservations                        # with .restored filled in
    """

    def __init__(self, root="/", reserve: bool = True, log=lambda msg: None):
        self.root, self.reserve, self.log = root, reserve, log
        self.reservations: list[Reservation] = []

    def ensure(self, backing: str, nbytes: int, count: int = 1) -> str | None:
        """Make `count` buffers of `nbytes` in `backing` possible: None when the pool
        holds the pages (reserving them if allowed), else the reason to skip."""
        if backing not in HUGETLB_KB:
            return None
        kb = HUGETLB_KB[backing]
        name = backing.upper()
        if kb not in probe_pools.page_sizes(self.root):
            return f"the kernel offers no {name} pages"
        need = ceil_div(nbytes, kb * 1024) * count
        got = None
        if self.reserve:  # our own pages: never lean on free pages another user reserved
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
            self.reservations = [r if r.restored is not None else give_back(self.root, r) for r in self.reservations]

    def __enter__(self) -> "PageReservations":
        return self

    def __exit__(self, *exc) -> None:
        self.give_back()


class Verified(NamedTuple):
    page_size_kb: int  # from /proc/self/smaps
    huge_fraction: float  # share of the bytes in huge pages (AnonHugePages for THP)
    problem: str | None  # why this memory is not what the backing claims


THP_MIN_FRACTION = 0.9


def verify_backing(mapping, backing: str) -> Verified:
    """Check in /proc/self/smaps that `mapping` (api.HugeMapping, already touched
    for THP) is in the pages `backing` claims."""
    from hugeload.api import _vma

    vma = _vma(mapping.address)
    if vma is None:
        return Verified(0, 0.0, "the mapping is not in /proc/self/smaps")
    size_kb = max(1, len(mapping) // 1024)
    if backing in HUGETLB_KB:
        kb = vma.kernel_page_kb
        ok = kb == HUGETLB_KB[backing]
        return Verified(
            kb, 1.0 if ok else 0.0, None if ok else f"smaps shows {kb} kB pages, not {HUGETLB_KB[backing]} kB"
        )
    fraction = min(1.0, vma.anon_huge_kb / size_kb)
    if backing == "thp":
        if fraction < THP_MIN_FRACTION:
            return Verified(
                2048 if fraction else 4,
                fraction,
                f"THP backed only {fraction:.0%} of the memory with huge pages (AnonHugePages in smaps), "
                f"so it would measure mostly 4K pages",
            )
        return Verified(2048, fraction, None)
    if fraction > 0:
        return Verified(
            4,
            fraction,
            f"{fraction:.0%} of the 4K baseline is in transparent huge pages (THP 'always' ignoring MADV_NOHUGEPAGE?)",
        )
    return Verified(4, 0.0, None)


def mem_available(root="/") -> int | None:
    """MemAvailable in bytes, or None."""
    from hugeload.probe.memory import read_meminfo

    try:
        kb = read_meminfo(root).get("MemAvailable")
    except (OSError, HugeloadError):
        return None
    return kb * 1024 if kb else None


# --------------------------------------------------------------------------- plots


def check_plot_available() -> None:
    """UsageError (one line) when matplotlib is missing; call before a long run."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'hugeload[plot]'") from None


def bar_charts(panels: list[tuple[str, list[tuple[str, float, float, float]]]], title: str, path: str) -> None:
    """One bar chart per panel, (label, [(name, median, low, high), ...]), intervals as error bars."""
    check_plot_available()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, (label, bars) in zip(axes[0], panels):
        med = [b[1] for b in bars]
        err = [[m - b[2] for m, b in zip(med, bars)], [b[3] - m for m, b in zip(med, bars)]]
        ax.bar([b[0] for b in bars], med, yerr=err, capsize=4, color="#4c72b0")
        ax.set_title(label, fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except OSError as e:
        raise HugeloadError(f"cannot write plot {path}: {e.strerror}") from None
    finally:
        plt.close(fig)
