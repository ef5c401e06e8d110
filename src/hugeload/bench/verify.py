"""Is the memory in the pages a backing claims?  A backing that is not is skipped with the
reason, never timed on a fallback.

Memory benches (tlb, tensors) check their own mapping in /proc/self/smaps after touching it.
`bench engine` samples an engine's /proc/PID files during one untimed verification run per
backing (never during a timed one: see bench/engine.py) and judges what it saw.  Every read
goes through hugeload.probe.procs.
"""

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from hugeload import pages, report, runner
from hugeload.api import HugeMapping, alloc
from hugeload.bench.backings import EngineBacking, Weights, hugetlb_page
from hugeload.bench.reservations import PageReservations
from hugeload.errors import HugeloadError
from hugeload.pages import HUGE, PAGE_2M, PAGE_4K, PageSize
from hugeload.plan import buffers
from hugeload.probe import procs
from hugeload.units import KiB, MiB

# A working set the bench touched itself must be almost all THP to be measured as THP; an
# engine's heap is the C library's, with small and short-lived blocks among the large ones, so
# half of it in THP already says the backing works.
WORKING_SET_THP_MIN = 0.9
ENGINE_HEAP_THP_MIN = 0.5
MLOCK_MIN_FRACTION = 0.9  # of the model locked (VmLck) for `mlock` to count
LARGE_MAPPING = 64 * MiB  # what the sampler looks at: the model and the large heap blocks


# --------------------------------------------------------------------------- memory benches


class Verified(NamedTuple):
    page_size_kb: int  # from /proc/self/smaps
    huge_fraction: float  # share of the bytes in huge pages (AnonHugePages for THP)
    problem: str | None  # why this memory is not what the backing claims


def verify_backing(mapping, backing: str) -> Verified:
    """Check in /proc/self/smaps that `mapping` (api.HugeMapping, already touched for THP:
    the kernel decides THP at fault time) is in the pages `backing` claims."""
    vma = procs.smaps_entry("/", "self", mapping.address)
    if vma is None:
        return Verified(0, 0.0, "the mapping is not in /proc/self/smaps")
    size_kb = max(1, len(mapping) // KiB)
    page = hugetlb_page(backing)
    if page is not None:
        kb = vma.kernel_page_kb
        ok = kb == page.kb
        return Verified(kb, 1.0 if ok else 0.0, None if ok else f"smaps shows {kb} kB pages, not {page.kb} kB")
    fraction = min(1.0, vma.anon_huge_kb / size_kb)
    if backing == "thp":
        if fraction < WORKING_SET_THP_MIN:
            return Verified(
                PAGE_2M.kb if fraction else PAGE_4K.kb,
                fraction,
                f"THP backed only {fraction:.0%} of the memory with huge pages (AnonHugePages in smaps), "
                f"so it would measure mostly 4K pages",
            )
        return Verified(PAGE_2M.kb, fraction, None)
    if fraction > 0:
        return Verified(
            PAGE_4K.kb,
            fraction,
            f"{fraction:.0%} of the 4K baseline is in transparent huge pages (THP 'always' ignoring MADV_NOHUGEPAGE?)",
        )
    return Verified(PAGE_4K.kb, 0.0, None)


class Prepared(NamedTuple):
    mapping: HugeMapping
    verified: Verified
    touched: Any  # what `touch` returned


def prepare_backing(
    pages: PageReservations, backing: str, nbytes: int, touch: Callable[[HugeMapping], Any]
) -> Prepared | str:
    """`nbytes` in `backing`, its pool pages ensured, touched by `touch` (which returns what the
    bench wants to keep: a fill time, a view) and verified; else the reason to skip it (nothing
    left mapped)."""
    reason = pages.ensure(backing, nbytes)
    if reason:
        return reason
    try:
        m = alloc(nbytes, page_size=backing, fallback=False)
    except HugeloadError as e:
        return str(e)
    try:
        touched = touch(m)
        v = verify_backing(m, backing)  # after the touch: THP is only decided at fault time
    except BaseException:
        m.close()
        raise
    if v.problem:
        touched = None
        m.close()
        return v.problem
    return Prepared(m, v, touched)


# --------------------------------------------------------------------------- engine runs


@dataclass
class Verification:
    """What one untimed run with /proc sampled showed (peaks over the samples)."""

    weights_kb: set[int] = field(default_factory=set)
    alloc_kb: set[int] = field(default_factory=set)
    file_pmd_kb: int = 0
    thp_kb: int = 0  # AnonHugePages of large anonymous mappings
    anon_kb: int = 0  # Rss of large anonymous mappings
    hugetlb_kb: int = 0
    vmpte_kb: int = 0
    vmlck_kb: int = 0
    pss_kb: int = 0
    returncode: int = 0
    error: str | None = None


def _heap_mapping(m: procs.Mapping) -> bool:
    """A large anonymous mapping: the C library's heap, or the preload library's (named memfd)."""
    return m.path in ("[anon]", "[heap]") or m.path.startswith(("/anon_hugepage", "/memfd:hugeload:"))


class Sampler(threading.Thread):
    """Polls /proc/PID during a verification run (never a timed one): peak HugetlbPages,
    VmPTE, VmLck and Pss, and the page sizes of the model mapping and of large anonymous mappings."""

    def __init__(self, pid: int, model_paths: set[str], interval: float = 0.05):
        super().__init__(daemon=True)
        self.pid, self.paths, self.interval = pid, model_paths, interval
        self.stop_event = threading.Event()
        self.v = Verification()

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.sample()
            self.stop_event.wait(self.interval)

    def sample(self) -> None:
        status = procs.read_status("/", self.pid)
        if not status:
            return
        v = self.v
        v.hugetlb_kb = max(v.hugetlb_kb, procs.status_kb(status, "HugetlbPages"))
        v.vmpte_kb = max(v.vmpte_kb, procs.status_kb(status, "VmPTE"))
        v.vmlck_kb = max(v.vmlck_kb, procs.status_kb(status, "VmLck"))
        thp = anon = 0
        for m in procs.read_smaps("/", self.pid, LARGE_MAPPING):
            if m.path in self.paths and m.flags.startswith("r"):
                # readable only: the preload library keeps the kernel's own map of a redirected
                # source as a PROT_NONE placeholder (filemap.c's shadow), which no read goes through
                v.weights_kb.add(m.kernel_page_kb)
                v.file_pmd_kb = max(v.file_pmd_kb, m.file_pmd_mapped_kb)
            elif _heap_mapping(m) and (m.rss_kb or m.hugetlb_kb):
                v.alloc_kb.add(PAGE_2M.kb if m.anon_huge_kb and m.kernel_page_kb == PAGE_4K.kb else m.kernel_page_kb)
                thp += m.anon_huge_kb
                anon += m.rss_kb + m.hugetlb_kb
        v.thp_kb, v.anon_kb = max(v.thp_kb, thp), max(v.anon_kb, anon)
        v.pss_kb = max(v.pss_kb, procs.read_smaps_rollup("/", self.pid).get("Pss", 0))


def heap_fell_back(
    prediction: buffers.Prediction, regions: list[report.Region], requested: PageSize | None, alloc_threshold: int
) -> str | None:
    """Why a predicted heap copy is not in the pages the one size rule gives it under the preload
    library (`requested`: the page size the library was told), read from the library's report
    (the allocation of the copy's size); None when every copy is."""
    regions = report.blocks(regions)  # a copy in 1G and 2M parts is one, of page "1G+2M"
    for h in prediction.heap:
        want = buffers.alloc_page_kb(h.bytes, requested, alloc_threshold)
        if want == PAGE_4K.kb:
            continue  # under the threshold: the C library's, as planned
        what = f"the {h.buffer} heap copy ({h.bytes / MiB:.0f} MiB)"
        i = runner.find_heap_copy(h, regions)
        if i is None:
            return f"{what} is not in the library's report"
        if regions[i].page != pages.name(want):
            return f"{what} got page={regions[i].page}, expected {pages.name(want)}"
    return None


def staged_weights_ok(b: EngineBacking, kbs: set[int]) -> bool:
    """Whether `kbs`, the page sizes a staged backing's weights got, are what it claims: its
    page size, and for `1g+2m` 2 MB pages besides (the rest of a copy the 1G pool was short of)."""
    assert b.staged_page is not None
    return b.staged_page.kb in kbs and kbs <= {b.staged_page.kb} | ({PAGE_2M.kb} if b.mixed else set())


def fell_back(b: EngineBacking, v: Verification, size: int) -> str | None:
    """Why the backing's pages are not what it claims, or None."""
    kind = b.kind
    if b.staged_page and not staged_weights_ok(b, v.weights_kb):
        plus = " (+2048)" if b.mixed else ""
        return f"weights got page sizes {sorted(v.weights_kb) or 'unknown'} kB, expected {b.staged_page.kb}{plus} kB"
    if b.alloc_page and b.alloc_page.kb not in v.alloc_kb:
        return f"large allocations got page sizes {sorted(v.alloc_kb) or 'unknown'} kB, expected {b.alloc_page.kb} kB"
    if b.weights is Weights.PRIVATE_COPY and not (v.weights_kb & {p.kb for p in HUGE}):
        return f"the copy got page sizes {sorted(v.weights_kb) or 'unknown'} kB, not huge pages"
    if b.weights is Weights.TMPFS and (v.file_pmd_kb or v.weights_kb - {PAGE_4K.kb}):
        return f"the tmpfs copy was mapped with {v.file_pmd_kb} kB in PMDs (pages {sorted(v.weights_kb)} kB)"
    if kind == "thp" and v.anon_kb and v.thp_kb < ENGINE_HEAP_THP_MIN * v.anon_kb:
        return f"only {v.thp_kb >> 10} of {v.anon_kb >> 10} MiB of the heap in transparent huge pages"
    if b.load_mode == "mmap+mlock" and v.vmlck_kb * KiB < MLOCK_MIN_FRACTION * size:
        return f"only {v.vmlck_kb >> 10} MiB locked (RLIMIT_MEMLOCK?)"
    return None
