"""When to give huge pages back under memory pressure.  Pure.

Pages in the huge page pools are taken out of ordinary memory: under pressure, pages
hugeload reserved and nothing uses are memory the kernel could reclaim into.  The agent
gives them back only while pressure *stays* high (one spike does not shrink a pool that
took seconds to fill), and only what the ledger says hugeload added for an owner that no
longer needs it: the spare pages of `hugeload reserve`, and those of a `run --reserve` or
benchmark that died.  A staged model's pages are never candidates (they hold the model),
and the kernel's own counts keep pages in use or promised to a mapping out of reach.
"""

from collections.abc import Callable
from dataclasses import dataclass

STAGED_KIND = "model"
SPARE_KIND = "reserve"
PROCESS_KINDS = ("run", "bench", "doctor")


@dataclass(frozen=True)
class Thresholds:
    some_avg10: float = 10.0  # % of time some task stalled on memory, over 10 s (PSI)
    min_available_kb: int = 0  # MemAvailable below this counts as pressure (0: PSI only)
    hold_s: float = 30.0  # pressure must last this long before a release


@dataclass(frozen=True)
class Sample:
    time: float
    some_avg10: float | None  # None: no PSI on this kernel
    mem_available_kb: int


def under_pressure(s: Sample, t: Thresholds) -> str:
    """Why this sample counts as pressure ("" when it does not)."""
    why = []
    if s.some_avg10 is not None and s.some_avg10 >= t.some_avg10:
        why.append(f"memory PSI some avg10={s.some_avg10:.2f}% >= {t.some_avg10:g}%")
    if t.min_available_kb and s.mem_available_kb < t.min_available_kb:
        why.append(f"MemAvailable {s.mem_available_kb // 1024} MiB < {t.min_available_kb // 1024} MiB")
    return "; ".join(why)


def pressure_since(history: list[Sample], t: Thresholds) -> float | None:
    """Start of the unbroken run of pressure samples that ends with the latest one."""
    start = None
    for s in reversed(history):
        if not under_pressure(s, t):
            break
        start = s.time
    return start


def should_release(history: list[Sample], t: Thresholds) -> str:
    """The reason to release now, or "" (pressure absent or not held long enough)."""
    if not history:
        return ""
    start = pressure_since(history, t)
    if start is None or history[-1].time - start < t.hold_s:
        return ""
    return f"{under_pressure(history[-1], t)} for {history[-1].time - start:.0f} s"


def releasable_owners(owners: list[str], alive: Callable[[str], bool]) -> list[str]:
    """Ledger owners whose pages may go back: the spare pages of `reserve`, and those of a
    process owner (run, bench, doctor) that died.  Never a staged model's, never a live
    process's, never an owner of a kind this version does not know.

    The kind is the word before the first ':'; what follows (a model's name, or a process's
    `<pid>@<start>[:<key>]`) is read by `alive(owner)` as a whole, e.g. act.ledger.Owner.parse(
    owner).alive(root): splitting it here once took "bench:<pid>:<key>" for a pid "<pid>:<key>"
    that never exists, and gave back a running benchmark's pages."""
    out = []
    for o in owners:
        kind = o.partition(":")[0]
        if o == SPARE_KIND or (kind in PROCESS_KINDS and not alive(o)):
            out.append(o)
    return out
