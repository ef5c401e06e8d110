"""The same engine command under each backing of the model, interleaved round-robin.

Alternatives (what a user could choose without hugeload):
  default         the engine as it is: the model file mapped from the page cache (on kernels
                  with large page-cache folios, ext4 on 6.16+, partly in 2 MB PMDs already)
  pagecache-4k    a copy of the model on tmpfs with huge=never: a 4 KB page cache, what older
                  kernels and most distributions give
  mlock           llama.cpp's -lm mmap+mlock (--mlock)
  private         llama.cpp's -lm none (--no-mmap): weights read into a private heap buffer
  thp             private, with glibc.malloc.hugetlb=1: the heap buffer in transparent huge pages
  glibc-hugetlb1  GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (large mallocs madvised for THP)
  glibc-hugetlb2  GLIBC_TUNABLES=glibc.malloc.hugetlb=2 (large mallocs from the 2 MB pool)
hugeload:
  alloc           preload library, large allocations (llama.cpp's repack buffer) in huge pages
  alloc-2m, alloc-1g  the same, in 2 MB or 1 GB pages (the model mapped from the page cache)
  2m, 1g          the model staged into hugetlbfs with that page size, mapped zero-copy
  2m+alloc, 1g+alloc  staged, plus large allocations in huge pages
  copy            preload library copying the model into private huge pages at start
A backing named twice (`default,default`) runs twice as `default` and `default#2`: the A/A
check, whose ratio must be 1 within its interval; its spread is the noise floor.

No observer effect: nothing reads smaps (or any file whose cost grows with page-table
entries) while a timed run runs.  Each backing first gets one untimed verification run
(the start-up command, else the engine command) with /proc/PID/smaps sampled; that run
decides the page sizes the backing really got.  Timed runs are only waited for; the
preload library's report (written at exit) confirms their pages.

Each round runs every backing once, in a shuffled order.  Copies the backings need
(staged files, the tmpfs copy, pool pages for allocations) are held for the whole run
when they fit in memory together; otherwise each is set up when a backing needs it and
the oldest are torn down to make room, so the bench never holds more copies than fit.
Before a backing that reads the source file runs, the source is read back into the page
cache if copies pushed part of it out (untimed), so no backing pays a disk read.  Setting a copy up (and
faulting its pages in) is timed apart from start-up.

The physical limit is measured in the same run: read bandwidth at the engine's thread
count with the native loops, and each backing's share of it (bytes of weights read per
generated token x tokens/s / bandwidth; for MoE only the active experts' bytes).

NUMA placement (`node_placement`, multi-socket machines): every run, of every backing, is
bound to one node's CPUs and memory (the engine node, what `hugeload run --node N` does),
and each staged backing runs once per placement of its copy: `2m@local` (every page on the
engine's node), `2m@remote` (every page on another node), `2m@interleave` (pages spread
over all nodes).  Each copy's nodes are checked from numa_maps when it is staged (outside
any timed phase) and reported.  The ratios remote/local and interleave/local say what
placement is worth on the machine; under an emulated guest they mean nothing.
"""

import contextlib
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from hugeload import engines, pages, runner
from hugeload.act import pools as act_pools
from hugeload.act import state, store
from hugeload.bench import perf
from hugeload.bench.common import bar_charts, bench_owner, bootstrap_median_ci, mem_available, median
from hugeload.errors import HugeloadError, UsageError
from hugeload.probe import pools as probe_pools
from hugeload.probe.procs import parse_smaps, read_status
from hugeload.pages import PAGE_1G, PAGE_2M
from hugeload.units import GiB, KiB, MiB, ceil_div

GIGANTIC_KB, HUGE_KB = PAGE_1G.kb, PAGE_2M.kb
SHM_DIR = "/dev/shm"


@dataclass(frozen=True)
class Backing:
    name: str
    staged_kb: int | None = None
    preload: bool = False
    alloc: bool = False
    copy: bool = False
    hugeload: bool = False
    shm: bool = False  # model copied to tmpfs huge=never
    load_mode: str | None = None  # llama.cpp -lm
    glibc_hugetlb: int = 0
    base: str = ""  # for an A/A duplicate: the backing it repeats
    placement: str | None = None  # NUMA placement of the staged copy (PLACEMENTS)
    alloc_kb: int | None = None  # page size of large allocations (None: the auto policy)

    @property
    def kind(self) -> str:
        return self.base or self.name

    @property
    def expected_kb(self) -> int | None:
        """Page size the weights must get for the backing's numbers to count."""
        return self.staged_kb


BACKINGS = {
    "default": Backing("default"),
    "pagecache-4k": Backing("pagecache-4k", shm=True),
    "mlock": Backing("mlock", load_mode="mmap+mlock"),
    "private": Backing("private", load_mode="none"),
    "thp": Backing("thp", load_mode="none", glibc_hugetlb=1),
    "glibc-hugetlb1": Backing("glibc-hugetlb1", glibc_hugetlb=1),
    "glibc-hugetlb2": Backing("glibc-hugetlb2", glibc_hugetlb=2),
    "alloc": Backing("alloc", preload=True, alloc=True, hugeload=True),
    "alloc-2m": Backing("alloc-2m", preload=True, alloc=True, hugeload=True, alloc_kb=HUGE_KB),
    "alloc-1g": Backing("alloc-1g", preload=True, alloc=True, hugeload=True, alloc_kb=GIGANTIC_KB),
    "2m": Backing("2m", HUGE_KB, preload=True, hugeload=True),
    "1g": Backing("1g", GIGANTIC_KB, preload=True, hugeload=True),
    "2m+alloc": Backing("2m+alloc", HUGE_KB, preload=True, alloc=True, hugeload=True),
    "1g+alloc": Backing("1g+alloc", GIGANTIC_KB, preload=True, alloc=True, hugeload=True),
    "copy": Backing("copy", preload=True, alloc=True, copy=True, hugeload=True),
}
ALTERNATIVES = tuple(n for n, b in BACKINGS.items() if not b.hugeload)
DEFAULT_BACKINGS = ("default", "default", "pagecache-4k", "2m", "1g")
PLACEMENTS = ("local", "remote", "interleave")
PLACEMENT_BACKINGS = ("default", "2m")  # with --node-placement and no --backings
_RATE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*(?:tokens per second|tokens/s|tok/s|t/s)")
_REPORT = re.compile(r"hugeload: region (.*)$")
NOTE = (
    "times are wall-clock; nothing reads smaps while a timed run runs (page sizes come from one untimed "
    "verification run per backing and the preload library's report); intervals are bootstrap 95% intervals "
    "of the median over interleaved rounds, ratios are medians of per-round ratios"
)
THP_MIN_FRACTION = 0.5
MLOCK_MIN_FRACTION = 0.9


@dataclass
class Run:
    backing: str
    round: int
    returncode: int
    wall_s: float
    startup_s: float | None
    rates: dict[str, float]  # test name -> tokens/s
    report: list[dict] = field(default_factory=list)
    weights_kb: set[int] = field(default_factory=set)  # from the preload report
    munmap_failed: bool = False
    error: str | None = None
    tlb: dict = field(default_factory=dict)  # dTLB counts of the engine run, where counted


@dataclass
class Verification:
    """What one untimed run with smaps sampled showed."""

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


def _known(name: str) -> bool:
    base, at, where = name.partition("@")
    return base in BACKINGS and (not at or (where in PLACEMENTS and BACKINGS[base].staged_kb is not None))


def parse_backings(text: str) -> list[str]:
    """Names in order; a name given again becomes `name#2` (the A/A check).  A staged
    backing may name its NUMA placement: `2m@local`, `2m@remote`, `2m@interleave`."""
    names = [b.strip().lower() for b in text.split(",") if b.strip()]
    unknown = [b for b in names if not _known(b)]
    if unknown or not names:
        raise UsageError(
            f"unknown backing {', '.join(unknown) or '(none)'}: choose from {', '.join(BACKINGS)} "
            f"(a staged one may add @{'|@'.join(PLACEMENTS)})"
        )
    out, seen = [], {}
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out


def parse_placements(text: str) -> list[str]:
    out = list(dict.fromkeys(p.strip().lower() for p in text.split(",") if p.strip()))
    bad = [p for p in out if p not in PLACEMENTS]
    if bad or not out:
        raise UsageError(f"unknown node placement {', '.join(bad) or '(none)'}: choose from {', '.join(PLACEMENTS)}")
    return out


def with_placements(names: list[str], placements: list[str]) -> list[str]:
    """Each staged backing once per placement (`2m` -> `2m@local`, `2m@remote`, ...); the
    others as they are (they run bound to the engine node too)."""
    out = []
    for n in names:
        base = n.partition("#")[0]
        if "@" in base or BACKINGS[base].staged_kb is None:
            out.append(n)
        else:
            out += [f"{base}@{p}" for p in placements if f"{base}@{p}" not in out]
    return out


def backing(name: str) -> Backing:
    full, _, nth = name.partition("#")
    base, _, where = full.partition("@")
    b = BACKINGS[base]
    if where:
        b = Backing(**{**b.__dict__, "name": full, "placement": where})
    return b if not nth else Backing(**{**b.__dict__, "name": name, "base": full})


def parse_rates(output: str) -> dict[str, float]:
    """llama-bench's table or JSON; else any 'N tokens per second' / 't/s' the command prints."""
    recs = engines.parse_llama_bench(output)
    if recs:
        return {r["test"]: r["tokens_per_s"] for r in recs}
    found = _RATE.findall(output)
    return {"rate": float(found[-1])} if found else {}


def parse_report(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        m = _REPORT.search(line)
        if m:
            out.append(dict(kv.split("=", 1) for kv in m.group(1).split() if "=" in kv))
    return out


def command_for(argv: list[str], model: str, load_mode: str | None = None) -> list[str]:
    """Substitute {model}, or add `-m MODEL` when the command does not name it; a load mode
    is passed as llama.cpp's `-lm` (llama-bench, llama-cli, llama-completion, llama-server)."""
    if any("{model}" in a for a in argv):
        out = [a.replace("{model}", model) for a in argv]
    else:
        out = [argv[0], "-m", model, *argv[1:]]
    return out + (["-lm", load_mode] if load_mode else [])


def threads_of(argv: list[str]) -> int:
    for i, a in enumerate(argv[:-1]):
        if a in ("-t", "--threads"):
            with contextlib.suppress(ValueError):
                return max(1, int(argv[i + 1].split(",")[0]))
    return os.cpu_count() or 1


def default_startup_cmd(engine_argv: list[str]) -> list[str] | None:
    """llama-completion next to the engine, loading the model and producing one token."""
    exe = Path(engine_argv[0])
    sibling = exe.with_name("llama-completion") if exe.parent != Path("") else None
    tool = sibling if sibling and sibling.exists() else engines.find_llama("llama-completion")
    if tool is None:
        return None
    t = threads_of(engine_argv)
    return [str(tool), "-m", "{model}", "-n", "1", "-p", "hello", "-no-cnv", "--no-warmup", "-t", str(t)]


# --------------------------------------------------------------------------- running the engine


class _Sampler(threading.Thread):
    """Polls /proc/PID during a verification run (never a timed one): peak HugetlbPages,
    VmPTE, VmLck, and the page sizes of the model mapping and of large anonymous mappings."""

    def __init__(self, pid: int, model_paths: set[str], interval: float = 0.05):
        super().__init__(daemon=True)
        self.pid, self.paths, self.interval = pid, model_paths, interval
        self.stop_event = threading.Event()
        self.v = Verification()

    def run(self):
        while not self.stop_event.is_set():
            self.sample()
            self.stop_event.wait(self.interval)

    def sample(self):
        status = read_status("/", self.pid)
        if not status:
            return
        v = self.v
        for key, attr in (("HugetlbPages", "hugetlb_kb"), ("VmPTE", "vmpte_kb"), ("VmLck", "vmlck_kb")):
            with contextlib.suppress(ValueError, IndexError):
                setattr(v, attr, max(getattr(v, attr), int(status.get(key, "0 kB").split()[0])))
        try:
            text = Path(f"/proc/{self.pid}/smaps").read_text()
        except OSError:
            return
        thp = anon = 0
        for m in parse_smaps(text, 64 << 20):
            if m.path in self.paths:
                v.weights_kb.add(m.kernel_page_kb)
                v.file_pmd_kb = max(v.file_pmd_kb, m.file_pmd_mapped_kb)
            elif m.path in ("[anon]", "[heap]") or m.path.startswith(("/anon_hugepage", "/memfd:hugeload:")):
                if m.rss_kb or m.hugetlb_kb:
                    v.alloc_kb.add(2048 if m.anon_huge_kb and m.kernel_page_kb == 4 else m.kernel_page_kb)
                    thp += m.anon_huge_kb
                    anon += m.rss_kb + m.hugetlb_kb
        v.thp_kb, v.anon_kb = max(v.thp_kb, thp), max(v.anon_kb, anon)
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path(f"/proc/{self.pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    v.pss_kb = max(v.pss_kb, int(line.split()[1]))


def _spawn(argv: list[str], env: dict, bind: tuple[int, tuple[int, ...]] | None = None) -> subprocess.Popen:
    preexec = None
    if bind:
        from hugeload.act import numa

        def preexec():
            numa.bind_process(*bind)  # what `numactl --cpunodebind=N --membind=N` does

    return subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", preexec_fn=preexec
    )  # random weights print arbitrary bytes


def _wait(proc: subprocess.Popen, timeout: float) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        out += f"\nhugeload: the engine ran longer than {timeout:.0f} s and was stopped"
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return out


def timed_run(
    argv: list[str],
    env: dict,
    timeout: float,
    counters_vendor: str | None = None,
    counts: dict | None = None,
    bind=None,
) -> tuple[int, float, str]:
    """Start, wait, nothing else: no thread of ours reads /proc while it runs.  With
    `counters_vendor` (the machine has TLB counters), the engine's dTLB events are counted
    into `counts` (the counters are the CPU's, read once at exit: no observer effect)."""
    t0 = time.perf_counter()
    proc = _spawn(argv, env, bind)
    c = perf.open_counters(proc.pid, counters_vendor) if counters_vendor is not None else None
    if c:
        c.start()
    try:
        out = _wait(proc, timeout)
    finally:
        if c:
            if counts is not None:
                counts.update(c.stop())
            c.close()
    return proc.returncode, time.perf_counter() - t0, out


def verification_run(
    argv: list[str], env: dict, model_paths: set[str], timeout: float, bind=None
) -> tuple[Verification, str]:
    proc = _spawn(argv, env, bind)
    sampler = _Sampler(proc.pid, model_paths)
    sampler.start()
    try:
        out = _wait(proc, timeout)
    finally:
        sampler.stop_event.set()
        sampler.join()
    v = sampler.v
    v.returncode = proc.returncode
    if proc.returncode != 0:
        v.error = _last_line(out, proc.returncode)
    return v, out


def _last_line(out: str, rc: int) -> str:
    lines = [x for x in out.strip().splitlines() if x.strip()]
    return lines[-1] if lines else f"exit {rc}"


def _env(b: Backing, report: Path, empty_state: Path, page_size: str) -> dict:
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    if b.glibc_hugetlb:
        tun = env.get("GLIBC_TUNABLES", "")
        env["GLIBC_TUNABLES"] = ":".join(x for x in (tun, f"glibc.malloc.hugetlb={b.glibc_hugetlb}") if x)
    if not b.preload:
        return env
    # Staged backings name the staged path directly; the empty state dir keeps the library
    # from redirecting the other backings' source mappings to a staged copy.
    options = runner.PreloadOptions(
        page_size=pages.parse(page_size),
        copy=b.copy,
        alloc_threshold=runner.DEFAULT_ALLOC_THRESHOLD if b.alloc else 0,
        report=str(report),
    )
    env = runner.environment(options, str(empty_state), env)
    if b.copy:
        env["HUGELOAD_MIN_FILE_SIZE"] = "1"
    return env


# --------------------------------------------------------------------------- copies


def bench_dir(state_dir=None) -> Path:
    """This run's store, under the state dir so `hugeload gc` finds it after a kill -9."""
    return state.state_dir(state_dir) / "bench" / str(os.getpid())


def shm_dir(pid: int | None = None) -> Path:
    return Path(SHM_DIR) / f"hugeload-bench-{pid or os.getpid()}"


class Copies:
    """The copies and pool pages the chosen backings need, keyed by resource:
    stage-<kb> (a staged file), shm (tmpfs copy), pool-<kb>-<n> (pages for allocations)."""

    def __init__(self, model: str, size: int, root, log, state_dir):
        self.model, self.size, self.root, self.log = model, size, root, log
        self.dir = bench_dir(state_dir)
        self.store_dir = self.dir / "state"
        self.paths: dict[str, str] = {}  # held, oldest first
        self.setup_s: dict[str, list[float]] = {}
        self.failed: dict[str, str] = {}
        self.budget: int | None = None  # bytes copies may hold together (None: no limit)
        self.placements: dict = {}  # placement name -> plan.numa.Placement (node_placement runs)
        self.nodes: dict[str, dict[int, int]] = {}  # stage key -> pages per node, read when staged

    def make_room(self, keys: list[str]) -> None:
        """Tear down the oldest copies not in `keys` until `keys` fit in the budget."""
        if self.budget is None:
            return
        want = sum(self.bytes_of(k) for k in keys if k not in self.paths)
        for old in [k for k in self.paths if k not in keys]:
            if sum(self.bytes_of(k) for k in self.paths) + want <= self.budget:
                break
            self.teardown(old)

    @staticmethod
    def needs(b: Backing, size: int) -> list[str]:
        out = []
        if b.staged_kb:
            out.append(f"stage-{b.staged_kb}" + (f"@{b.placement}" if b.placement else ""))
        if b.shm:
            out.append("shm")
        if b.alloc or b.copy:
            kb = b.alloc_kb or b.staged_kb or pages.first_page(size).kb
            out.append(f"pool-{kb}-{ceil_div(size, kb * KiB) * (2 if b.copy else 1)}")
        if b.glibc_hugetlb == 2:
            out.append(f"pool-{HUGE_KB}-{ceil_div(size, HUGE_KB * KiB)}")
        return out

    def bytes_of(self, key: str) -> int:
        if key.startswith("pool-"):
            _, kb, n = key.split("-")
            return int(kb) * KiB * int(n)
        if key.startswith("stage-"):
            kb = _stage_kb(key)
            return ceil_div(self.size, kb * KiB) * kb * KiB
        return self.size

    def owner(self, key: str) -> str:
        return f"{bench_owner()}:{key}"

    def setup(self, key: str) -> str | None:
        """Path (or "" for pools) of the resource, or None when it cannot be had (reason in failed)."""
        if key in self.paths:
            return self.paths[key]
        t0 = time.perf_counter()
        try:
            if key.startswith("stage-"):
                kb, where = _stage_kb(key), key.partition("@")[2]
                placement = self.placements.get(where) if where else None
                self.log(
                    f"staging the model into {'1G' if kb == GIGANTIC_KB else '2M'} pages"
                    + (f", {placement.describe()}" if placement else "")
                )
                state.ensure_dir(self.store_dir)
                m, _, _ = store.stage(
                    self.model,
                    store.StageOptions(
                        page_size=pages.by_kb(kb), name=_stage_name(key), reserve=True, placement=placement
                    ),
                    state_dir=self.store_dir,
                    root=self.root,
                )
                path = m.path
                if placement:
                    from hugeload.act import numa

                    self.nodes[key] = numa.file_pages_by_node(path, kb, self.root)
            elif key == "shm":
                self.log("copying the model to tmpfs (huge=never)")
                d = shm_dir()
                d.mkdir(exist_ok=True)
                path = str(d / os.path.basename(self.model))
                shutil.copyfile(self.model, path)
            else:
                _, kb, n = key.split("-")
                kb, n = int(kb), int(n)
                avail = max(0, probe_pools.system_pool(self.root, kb).available)
                if n > avail:
                    act_pools.reserve(self.root, kb, n - avail, partial=True, owner=self.owner(key))
                avail = max(0, probe_pools.system_pool(self.root, kb).available)
                if avail < n:
                    raise HugeloadError(
                        f"needs {n} free {kb >> 10 if kb < GIGANTIC_KB else 1} "
                        f"{'MB' if kb < GIGANTIC_KB else 'GB'} pages, the kernel gave {avail}"
                    )
                path = ""
        except (HugeloadError, OSError) as e:
            self.failed[key] = str(e)
            self.teardown(key)
            return None
        self.setup_s.setdefault(key, []).append(time.perf_counter() - t0)
        self.paths[key] = path
        return path

    def teardown(self, key: str) -> None:
        with sigint_held():
            self.paths.pop(key, None)
            if key.startswith("stage-"):
                with contextlib.suppress(HugeloadError):
                    for m in store.manifests(self.store_dir):
                        if m.name == _stage_name(key):
                            store.unstage(m.name, force=True, state_dir=self.store_dir, root=self.root)
            elif key == "shm":
                shutil.rmtree(shm_dir(), ignore_errors=True)
            else:
                with contextlib.suppress(HugeloadError):
                    act_pools.release(self.root, int(key.split("-")[1]), owner=self.owner(key))

    def close(self) -> None:
        with sigint_held():
            for key in list(self.paths):
                self.teardown(key)
            with contextlib.suppress(HugeloadError):
                for m in store.manifests(self.store_dir):
                    store.unstage(m.name, force=True, state_dir=self.store_dir, root=self.root)
            with contextlib.suppress(HugeloadError):
                store.gc(self.store_dir, self.root)
            with contextlib.suppress(HugeloadError):
                act_pools.release(self.root, None, owner=None, state_dir=self.store_dir)
            shutil.rmtree(shm_dir(), ignore_errors=True)
            shutil.rmtree(self.dir, ignore_errors=True)


def _stage_kb(key: str) -> int:
    """stage-2048 or stage-2048@remote -> 2048."""
    return int(key.partition("@")[0].split("-")[1])


def _stage_name(key: str) -> str:
    kb, _, where = key.partition("@")
    return f"bench-{kb.split('-')[1]}" + (f"-{where}" if where else "")


@contextlib.contextmanager
def sigint_held():
    from hugeload.bench.common import sigint_deferred

    with sigint_deferred():
        yield


# --------------------------------------------------------------------------- the physical limit


def read_bandwidth(threads: int, size: int = 1 << 30, passes: int = 3) -> float | None:
    """GB/s reading `size` bytes (THP-backed, touched first) with `threads` threads, each
    a slice, the native loop per slice (ctypes drops the GIL); best of `passes`."""
    import ctypes
    import mmap

    from hugeload.bench.common import native_loops

    try:
        lib = native_loops()
        buf = mmap.mmap(-1, size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except (HugeloadError, OSError):
        return None
    try:
        with contextlib.suppress(OSError, AttributeError):
            buf.madvise(mmap.MADV_HUGEPAGE)
        view = (ctypes.c_char * size).from_buffer(buf)
        addr = ctypes.addressof(view)
        ctypes.memset(addr, 1, size)
        per = (size // threads) & ~4095
        best = 0.0
        for _ in range(passes):
            ws = [
                threading.Thread(target=lib.hugeload_seq_read_gbps, args=(addr + i * per, per, 1))
                for i in range(threads)
            ]
            t0 = time.perf_counter()
            for w in ws:
                w.start()
            for w in ws:
                w.join()
            best = max(best, per * threads / (time.perf_counter() - t0) / 1e9)
        del view
        return best
    finally:
        with contextlib.suppress(BufferError):
            buf.close()


def bytes_per_token(model: str) -> tuple[int | None, str]:
    """Bytes of weights one generated token reads: every tensor but the token embedding
    (one row per token; counted when it doubles as the output matrix), and for MoE only
    the active share (experts_used / experts) of the expert tensors."""
    try:
        from gguf import GGUFReader

        r = GGUFReader(model, "r")
    except Exception as e:  # not GGUF, or no gguf package: the share is left out
        return None, f"no weight count ({type(e).__name__})"
    fields = {f.name: f for f in r.fields.values()}

    def scalar(suffix: str) -> int | None:
        for name, f in fields.items():
            if name.endswith(suffix) and f.data:
                with contextlib.suppress(Exception):
                    return int(f.parts[f.data[0]][0])
        return None

    experts, used = scalar(".expert_count"), scalar(".expert_used_count")
    names = {t.name for t in r.tensors}
    total = 0
    for t in r.tensors:
        n = int(t.n_bytes)
        if t.name == "token_embd.weight" and "output.weight" in names:
            continue
        if "_exps" in t.name and experts and used:
            n = n * used // experts
        total += n
    what = f"MoE, {used} of {experts} experts active" if experts and used else "dense"
    return total, what


# --------------------------------------------------------------------------- the run


def _pages_needed(model_size: int, kb: int) -> int:
    return ceil_div(model_size, kb * KiB)


def run(
    model: str,
    engine_argv: list[str],
    backings: list[str],
    rounds: int = 3,
    startup_argv: list[str] | None = None,
    timeout: float = 600.0,
    root="/",
    seed: int = 0,
    log=lambda msg: None,
    state_dir=None,
    memory_limit: int | None = None,
    bandwidth: bool = True,
    node_placement: list[str] | None = None,
    engine_node: int | None = None,
) -> dict:
    if not os.path.isfile(model):
        raise UsageError(f"no such model file: {model}")
    if not engine_argv:
        raise UsageError("give the engine command after --, e.g. -- llama-bench -p 64 -n 32 -r 1")
    if rounds < 1:
        raise UsageError("--rounds must be at least 1")
    size = os.path.getsize(model)
    if node_placement:
        backings = with_placements(backings, node_placement)
    chosen = [backing(b) for b in backings]
    copies = Copies(model, size, root, log, state_dir)
    numa_info = (
        _numa_setup(chosen, copies, engine_node, root)
        if (node_placement or engine_node is not None or any(b.placement for b in chosen))
        else None
    )
    bind = (numa_info["engine_node"], tuple(numa_info["cpus"])) if numa_info else None
    skipped: dict[str, str] = {}
    runs: list[Run] = []
    verified: dict[str, Verification] = {}
    bw: list[float] = []
    old_term = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    if old_term is not None:
        signal.signal(signal.SIGTERM, lambda sig, frame: (_ for _ in ()).throw(KeyboardInterrupt()))
    tmp = copies.dir
    probe = perf.open_counters(0, _vendor(root))
    vendor = (_vendor(root) or "") if probe else None
    tlb_note = "" if probe else perf.why_none()
    if probe:
        probe.close()
    try:
        state.ensure_dir(tmp)
        empty_state = tmp / "empty"
        empty_state.mkdir(exist_ok=True)
        # Memory: the engine's own copy (private, repack buffers) plus the copies held.
        avail = memory_limit if memory_limit is not None else (mem_available(root) or 0)
        engine_bytes = size + 512 * MiB
        need = {k for b in chosen for k in Copies.needs(b, size)}
        held_bytes = sum(copies.bytes_of(k) for k in need)
        hold_all = held_bytes + engine_bytes <= avail
        for b in chosen:
            largest = max((copies.bytes_of(k) for k in Copies.needs(b, size)), default=0)
            mine = sum(copies.bytes_of(k) for k in Copies.needs(b, size))
            if mine and mine + engine_bytes > avail:
                skipped[b.name] = (
                    f"the model ({size / GiB:.1f} GiB) and its copies ({mine / GiB:.1f} GiB) do not fit "
                    f"in the {avail / GiB:.1f} GiB available"
                )
            del largest
        if not hold_all:
            copies.budget = max(0, avail - engine_bytes)
            log(
                f"copies do not fit together ({held_bytes / GiB:.1f} GiB + the engine, {avail / GiB:.1f} GiB "
                f"available): set up when a backing needs them, the oldest torn down to make room"
            )
        # Verification: one untimed run per backing with smaps sampled.
        verify_argv = startup_argv or engine_argv
        active = []
        for b in chosen:
            if b.name in skipped:
                continue
            path = _prepare(b, copies, model, skipped)
            if path is None:
                continue
            log(f"verifying {b.name}")
            if path == model:
                _keep_cached(model)
            report = tmp / f"report-{b.name}-verify.txt"
            env = _env(b, report, empty_state, _page_size(b))
            v, out = verification_run(
                command_for(verify_argv, path, b.load_mode), env, {path, os.path.realpath(path)}, timeout, bind
            )
            rep = parse_report(report.read_text()) if report.exists() else []
            v.weights_kb |= _report_weights(rep, path)
            verified[b.name] = v
            if v.returncode != 0:
                skipped[b.name] = f"the engine failed under this backing: {v.error}"
                continue
            reason = _fell_back(b, v, size)
            if reason:
                skipped[b.name] = f"fell back: {reason}"
                continue
            active.append(b)
        rng = random.Random(seed)
        for r in range(rounds):
            if bandwidth:
                g = read_bandwidth(threads_of(engine_argv))
                if g:
                    bw.append(g)
            order = active[:]
            rng.shuffle(order)
            for b in order:
                log(f"round {r + 1}/{rounds}: {b.name}")
                path = _prepare(b, copies, model, skipped)
                if path is None:
                    runs.append(Run(b.name, r, -1, 0.0, None, {}, error=skipped.pop(b.name, "setup failed")))
                    continue
                if path == model:
                    _keep_cached(model)
                runs.append(_one_run(b, r, path, engine_argv, startup_argv, tmp, empty_state, timeout, vendor, bind))
    finally:
        copies.close()
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    bpt, what = bytes_per_token(model)
    data = summarize(model, size, engine_argv, chosen, runs, skipped, rounds, verified)
    data.update(
        tlb_note=tlb_note,
        bandwidth_gbps=_stat_dict(bw),
        bytes_per_token=bpt,
        weights_read=what,
        threads=threads_of(engine_argv),
        copies_held="all" if hold_all else f"as many as fit in {copies.budget / GiB:.1f} GiB, oldest torn down first",
        setup_s={k: _stat_dict(v) for k, v in copies.setup_s.items()},
    )
    if numa_info:
        numa_info["copy_nodes"] = {
            b.name: {str(n): c for n, c in sorted(copies.nodes[k].items())}
            for b in chosen
            for k in Copies.needs(b, size)
            if k in copies.nodes
        }
        numa_info["placement_ratios"] = placement_ratios(chosen, runs, _tests(runs))
        data["numa"] = numa_info
    if bw and bpt:
        limit = median(bw) * 1e9 / bpt
        data["tg_limit_tps"] = limit
        for e in data["results"]:
            for t, m in (e.get("metrics") or {}).items():
                if t.startswith("tg"):
                    m["bandwidth_share"] = m["median"] / limit
    return data


def _numa_setup(chosen: list[Backing], copies: Copies, engine_node: int | None, root) -> dict:
    """The engine node every run is bound to, and the nodes of each placement; UsageError
    (one line, before anything is staged) when the machine cannot place them."""
    from hugeload.act import numa as act_numa
    from hugeload.plan import numa as plan_numa
    from hugeload.probe import numa as probe_numa

    with_memory = [n.node for n in probe_numa.read_nodes(root) if n.has_memory]
    node = engine_node if engine_node is not None else (with_memory[0] if with_memory else 0)
    cpus = act_numa.check_run_node(node, root).cpus
    wanted = sorted({b.placement for b in chosen if b.placement})
    if wanted:
        others = [n for n in with_memory if n != node]
        if not others:
            raise UsageError(
                f"node placements need at least two NUMA nodes with memory (this machine has "
                f"{len(with_memory)}): run without --node-placement"
            )
        copies.placements = {
            "local": plan_numa.Placement(plan_numa.Mode.NODE, (node,)),
            "remote": plan_numa.Placement(plan_numa.Mode.NODE, (others[0],)),
            "interleave": plan_numa.Placement(plan_numa.Mode.INTERLEAVE, tuple(with_memory)),
        }
    return {
        "engine_node": node,
        "cpus": list(cpus),
        "placements": {p: copies.placements[p].describe() for p in wanted},
        "note": "every run bound to the engine node's CPUs and memory; figures from an emulated "
        "(TCG) guest say nothing about a real machine",
    }


def placement_ratios(chosen: list[Backing], runs: list[Run], tests: list[str]) -> dict:
    """Per staged backing placed elsewhere than local: its paired ratio against the same
    backing @local, per test (> 1: faster than local; start-up: > 1 is slower)."""
    out = {}
    names = {b.name for b in chosen}
    for b in chosen:
        if not b.placement or b.placement == "local" or b.base:
            continue
        local = b.name.replace(f"@{b.placement}", "@local")
        if local not in names:
            continue
        out[b.name] = {"against": local, "tests": _paired_by_test(runs, b.name, local, tests)}
    return out


def _vendor(root) -> str | None:
    from hugeload.probe.cpu import read_cpu

    try:
        return read_cpu(root).vendor
    except Exception:  # picks raw events only
        return None


def _stat_dict(values: list[float]) -> dict | None:
    if not values:
        return None
    med, lo, hi = bootstrap_median_ci(values)
    return {"median": med, "low": lo, "high": hi, "values": values}


def _page_size(b: Backing) -> str:
    return {GIGANTIC_KB: "1g", HUGE_KB: "2m"}.get(b.staged_kb or b.alloc_kb, "auto")


def _prepare(b: Backing, copies: Copies, model: str, skipped: dict) -> str | None:
    """The model path the backing's engine gets, with its copies set up; None (reason in
    skipped) when one cannot be had."""
    path = model
    keys = Copies.needs(b, copies.size)
    copies.make_room(keys)
    for k in keys:
        p = copies.setup(k)
        if p is None:
            skipped[b.name] = f"could not set up {k}: {copies.failed.get(k)}"
            return None
        if p:
            path = p
    return path


def _keep_cached(path: str) -> None:
    """Read the source back into the page cache when copies pushed part of it out (untimed),
    so backings that read the source never pay a disk read their rivals did not."""
    from hugeload.bench.stage import read_into_cache, resident_fraction

    if (resident_fraction(path) or 0) < 0.99:
        read_into_cache(path)


def _report_weights(rep: list[dict], path: str) -> set[int]:
    name = os.path.basename(path).replace(" ", "%20")
    out = set()
    for line in rep:
        kb = {"1G": GIGANTIC_KB, "2M": HUGE_KB, "THP": 2048, "4K": 4}.get(line.get("page", ""), 0)
        if kb and line.get("what") == name and line.get("fill") != "alloc":
            out.add(kb)
    return out


def _fell_back(b: Backing, v: Verification, size: int) -> str | None:
    """Why the backing's pages are not what it claims, or None."""
    kind = b.kind
    if b.expected_kb and v.weights_kb != {b.expected_kb}:
        return f"weights got page sizes {sorted(v.weights_kb) or 'unknown'} kB, expected {b.expected_kb} kB"
    if b.alloc_kb and b.alloc_kb not in v.alloc_kb:
        return f"large allocations got page sizes {sorted(v.alloc_kb) or 'unknown'} kB, expected {b.alloc_kb} kB"
    if b.copy and not (v.weights_kb & {GIGANTIC_KB, HUGE_KB}):
        return f"the copy got page sizes {sorted(v.weights_kb) or 'unknown'} kB, not huge pages"
    if kind == "pagecache-4k" and (v.file_pmd_kb or v.weights_kb - {4}):
        return f"the tmpfs copy was mapped with {v.file_pmd_kb} kB in PMDs (pages {sorted(v.weights_kb)} kB)"
    if kind == "thp" and v.anon_kb and v.thp_kb < THP_MIN_FRACTION * v.anon_kb:
        return f"only {v.thp_kb >> 10} of {v.anon_kb >> 10} MiB of the heap in transparent huge pages"
    if kind == "mlock" and v.vmlck_kb * KiB < MLOCK_MIN_FRACTION * size:
        return f"only {v.vmlck_kb >> 10} MiB locked (RLIMIT_MEMLOCK?)"
    return None


def _one_run(
    b: Backing,
    r: int,
    path: str,
    engine_argv,
    startup_argv,
    tmp: Path,
    empty_state: Path,
    timeout: float,
    vendor: str | None = None,
    bind=None,
) -> Run:
    report = tmp / f"report-{b.name}-{r}.txt"
    env = _env(b, report, empty_state, _page_size(b))
    startup = None
    if startup_argv:
        rc, wall, _ = timed_run(command_for(startup_argv, path, b.load_mode), env, timeout, bind=bind)
        startup = wall if rc == 0 else None
        with contextlib.suppress(FileNotFoundError):
            report.unlink()
    counts: dict = {}
    rc, wall, out = timed_run(command_for(engine_argv, path, b.load_mode), env, timeout, vendor, counts, bind)
    rep = parse_report(report.read_text()) if report.exists() else []
    run = Run(
        b.name,
        r,
        rc,
        wall,
        startup,
        parse_rates(out),
        rep,
        _report_weights(rep, path),
        "munmap failed" in out,
        None if rc == 0 else _last_line(out, rc),
        counts,
    )
    if rc == 0 and b.preload and b.expected_kb and run.weights_kb and run.weights_kb != {b.expected_kb}:
        run.error = f"this run's weights got {sorted(run.weights_kb)} kB pages"
        run.returncode = -1
    return run


# --------------------------------------------------------------------------- summary


def paired_ratio(values: dict[int, float], base: dict[int, float], seed: int = 0) -> tuple[float, float, float] | None:
    """Median of per-round ratios (rounds both ran in), with a bootstrap 95% interval over
    rounds: pairing cancels drift that hits a whole round."""
    common = sorted(set(values) & set(base))
    ratios = [values[k] / base[k] for k in common if base[k]]
    if not ratios:
        return None
    med, lo, hi = bootstrap_median_ci(ratios, seed=seed)
    return med, lo, hi


def _metric(vals_by_round: dict[int, float], base_by_round: dict[int, float] | None) -> dict:
    vals = list(vals_by_round.values())
    med, lo, hi = bootstrap_median_ci(vals)
    ratio = paired_ratio(vals_by_round, base_by_round) if base_by_round is not None else None
    return {
        "median": med,
        "low": lo,
        "high": hi,
        "values": vals,
        "ratio": ratio[0] if ratio else None,
        "ratio_low": ratio[1] if ratio else None,
        "ratio_high": ratio[2] if ratio else None,
        "within_noise": bool(ratio and ratio[1] <= 1.0 <= ratio[2]),
    }


def _series(runs: list[Run], name: str, test: str) -> dict[int, float]:
    out = {}
    for r in runs:
        if r.backing == name and r.returncode == 0:
            v = r.startup_s if test == "startup_s" else r.rates.get(test)
            if v is not None:
                out[r.round] = v
    return out


def _tests(runs: list[Run]) -> list[str]:
    """The rates any successful run reported, then start-up when it was timed."""
    return sorted({t for r in runs if r.returncode == 0 for t in r.rates}) + (
        ["startup_s"] if any(r.startup_s is not None for r in runs) else []
    )


def summarize(
    model,
    size,
    engine_argv,
    chosen,
    runs: list[Run],
    skipped: dict,
    rounds: int,
    verified: dict[str, Verification] | None = None,
) -> dict:
    verified = verified or {}
    results = []
    base_name = "default" if any(b.name == "default" for b in chosen) else None
    tests = _tests(runs)
    for b in chosen:
        mine = [r for r in runs if r.backing == b.name]
        ok = [r for r in mine if r.returncode == 0]
        v = verified.get(b.name, Verification())
        entry = {
            "backing": b.name,
            "kind": b.kind,
            "hugeload": b.hugeload,
            "status": "ok",
            "reason": None,
            "runs": len(mine),
            "failed_runs": len(mine) - len(ok),
            "weights_page_kb": sorted(v.weights_kb),
            "alloc_page_kb": sorted(v.alloc_kb),
            "file_pmd_mapped_kb": v.file_pmd_kb,
            "thp_kb": v.thp_kb,
            "hugetlb_kb": v.hugetlb_kb,
            "vmpte_kb": v.vmpte_kb,
            "vmlck_kb": v.vmlck_kb,
            "pss_kb": v.pss_kb,
            "munmap_failed": any(r.munmap_failed for r in mine),
        }
        if b.name in skipped:
            entry.update(status="skipped", reason=skipped[b.name])
            results.append(entry)
            continue
        if not ok:
            entry.update(status="failed", reason=mine[0].error if mine else "not run")
            results.append(entry)
            continue
        metrics = {}
        for t in tests:
            series = _series(runs, b.name, t)
            if not series:
                continue
            base = _series(runs, base_name, t) if base_name and b.name != base_name else None
            metrics[t] = _metric(series, base)
        tlb = [r.tlb for r in ok if r.tlb]
        if tlb:
            entry["tlb"] = {
                k: sorted(x[k] for x in tlb if x.get(k) is not None)[len(tlb) // 2]
                if any(x.get(k) is not None for x in tlb)
                else None
                for k in tlb[0]
            }
        if not any(t != "startup_s" for t in metrics):
            entry.update(status="no rate", reason="the engine printed no tokens/s figure")
        entry["metrics"] = metrics
        results.append(entry)
    return {
        "model": model,
        "model_size": size,
        "command": shlex.join(engine_argv),
        "rounds": rounds,
        "results": results,
        "best": best_vs_best(results, runs, tests),
        "gigantic_vs_huge": gigantic_vs_huge(results, runs, tests),
        "note": NOTE,
    }


def gigantic_vs_huge(results: list[dict], runs: list[Run], tests: list[str]) -> dict:
    """1 GB against 2 MB pages, paired per round, for each pair of backings that differ
    only in page size (1g/2m, 1g+alloc/2m+alloc; > 1: 1 GB faster, start-up: slower)."""
    ok = {r["backing"] for r in results if r["status"] == "ok"}
    out = {}
    for big in sorted(ok):
        if "1g" not in big or "#" in big:
            continue
        small = big.replace("1g", "2m")
        if small not in ok:
            continue
        out[f"{big} vs {small}"] = _paired_by_test(runs, big, small, tests)
    return out


def _paired_by_test(runs: list[Run], name: str, base: str, tests: list[str]) -> dict:
    """{test: paired ratio of `name` over `base` with its interval}, for the tests both ran."""
    out = {}
    for t in tests:
        r = paired_ratio(_series(runs, name, t), _series(runs, base, t))
        if r:
            out[t] = {"ratio": r[0], "ratio_low": r[1], "ratio_high": r[2], "within_noise": r[1] <= 1.0 <= r[2]}
    return out


def best_vs_best(results: list[dict], runs: list[Run], tests: list[str]) -> dict:
    """Per test: hugeload's best backing against the best alternative (highest median
    tokens/s; lowest start-up), with the paired ratio (> 1: hugeload better)."""
    out = {}
    for t in tests:
        lower = t == "startup_s"
        cands = [
            (r["backing"], r["hugeload"], r["metrics"][t]["median"])
            for r in results
            if r["status"] == "ok" and t in (r.get("metrics") or {})
        ]
        hl = [c for c in cands if c[1]]
        alt = [c for c in cands if not c[1] and "#" not in c[0]]
        if not hl or not alt:
            continue
        pick = min if lower else max
        h = pick(hl, key=lambda c: c[2])
        a = pick(alt, key=lambda c: c[2])
        ratio = (
            paired_ratio(_series(runs, a[0], t), _series(runs, h[0], t))
            if lower
            else paired_ratio(_series(runs, h[0], t), _series(runs, a[0], t))
        )
        out[t] = {
            "hugeload": h[0],
            "alternative": a[0],
            "ratio": ratio[0] if ratio else None,
            "ratio_low": ratio[1] if ratio else None,
            "ratio_high": ratio[2] if ratio else None,
            "within_noise": bool(ratio and ratio[1] <= 1.0 <= ratio[2]),
        }
    return out


def plot(data: dict, path: str) -> None:
    """One bar chart per test (tokens/s, and start-up seconds) across the backings that counted."""
    tests: dict[str, list] = {}
    for r in data["results"]:
        for test, m in (r.get("metrics") or {}).items():
            tests.setdefault(test, []).append((r["backing"], m["median"], m["low"], m["high"]))
    panels = [
        ("start-up, s (lower is better)" if t == "startup_s" else f"{t}, tokens/s (higher is better)", bars)
        for t, bars in tests.items()
    ]
    if not panels:
        raise HugeloadError("nothing to plot: no backing produced figures")
    bar_charts(
        panels,
        f"hugeload bench engine: {os.path.basename(data['model'])}, median of {data['rounds']} rounds, "
        f"95% intervals" + (" (VM)" if data.get("hypervisor") else ""),
        path,
    )
