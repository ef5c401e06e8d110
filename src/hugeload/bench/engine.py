"""`bench engine`: the same engine command under each backing of the model, interleaved round-robin.

The backings (what each one is, and how names parse) are bench/backings.py; the copies they
need, bench/copies.py; what a verification run checks, bench/verify.py; the summary,
bench/summary.py; the statistics and the meaning of "within noise", bench/stats.py.

No observer effect: nothing reads smaps (or any file whose cost grows with page-table
entries) while a timed run runs.  Each backing first gets one untimed verification run
(the start-up command, else the engine command) with /proc/PID sampled; that run decides
the page sizes the backing really got.  Timed runs are only waited for; the preload
library's report (written at exit) confirms their pages.

Each round runs every backing once, in a shuffled order.  Copies the backings need
(staged files, the tmpfs copy, pool pages for allocations) are held for the whole run
when they fit in memory together; otherwise each is set up when a backing needs it and
the oldest are torn down to make room, so the bench never holds more copies than fit.
Before a backing that reads the source file runs, the source is read back into the page
cache if copies pushed part of it out (untimed), so no backing pays a disk read.  Setting a
copy up (and faulting its pages in) is timed apart from start-up.

The physical limit is measured in the same run (bench/limits.py): read bandwidth at the
engine's thread count, and each backing's share of it.

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
import re
import signal
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from hugeload import engines, launch, report, runner
from hugeload.act import state
from hugeload.bench import limits, perf, stats, verify
from hugeload.bench.backings import EngineBacking, Heap, Placement, Weights, backing, with_placements
from hugeload.bench.common import cpu_vendor, mem_available
from hugeload.bench.copies import Copies, CopyKey, CopyKind, needs
from hugeload.bench.pagecache import read_into_cache, resident_fraction
from hugeload.bench.scratch import touch_private
from hugeload.bench.summary import Measured, Run, placement_ratios, summarize, tests_of
from hugeload.errors import UsageError
from hugeload.units import GiB, MiB

_RATE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*(?:tokens per second|tokens/s|tok/s|t/s)")
ENGINE_OVERHEAD = 512 * MiB  # what the engine itself needs beside its copy of the model


@dataclass(frozen=True)
class EngineOptions:
    rounds: int = 3
    startup_argv: tuple[str, ...] | None = None  # timed as start-up, with {model}; None: not timed
    timeout: float = 600.0  # seconds one engine run may take
    seed: int = 0
    memory_limit: int | None = None  # bytes the copies and the engine may use (None: MemAvailable)
    bandwidth: bool = True  # measure the read bandwidth limit between rounds
    node_placement: tuple[Placement, ...] = ()  # run each staged backing once per placement
    engine_node: int | None = None  # the node every run is bound to (None: the first with memory)


# --------------------------------------------------------------------------- the engine command


def score(rec: dict) -> float:
    """One run's figure for a llama-bench test: the best of its samples (`-r N`, in its JSON
    output), else the mean it printed.  Other load on the machine only ever slows a sample
    down, so the best sample is the least disturbed one, and runs scored by it scatter far
    less than runs scored by their mean (the A/A interval narrows accordingly)."""
    samples = [float(x) for x in rec.get("samples_ts") or () if isinstance(x, (int, float)) and x > 0]
    return max(samples) if samples else rec["tokens_per_s"]


def parse_rates(output: str) -> dict[str, float]:
    """llama-bench's table or JSON (each test scored by score()); else any 'N tokens per second' /
    't/s' the command prints."""
    recs = engines.parse_llama_bench(output)
    if recs:
        return {r["test"]: score(r) for r in recs}
    found = _RATE.findall(output)
    return {"rate": float(found[-1])} if found else {}


def command_for(argv, model: str, load_mode: str | None = None) -> list[str]:
    """Substitute {model}, or add `-m MODEL` when the command does not name it; a load mode
    is passed as llama.cpp's `-lm` (llama-bench, llama-cli, llama-completion, llama-server)."""
    if any("{model}" in a for a in argv):
        out = [a.replace("{model}", model) for a in argv]
    else:
        out = [argv[0], "-m", model, *argv[1:]]
    return out + (["-lm", load_mode] if load_mode else [])


def is_llama(exe: str) -> bool:
    """A llama.cpp tool (llama-bench, llama-cli, ...) or the python of a llama-cpp-python build."""
    return os.path.basename(exe).startswith("llama-") or engines.build_stamp(exe) is not None


def with_samples(argv: list[str]) -> list[str]:
    """A llama-bench command that names no output format asks for JSON lines (`-o jsonl`), which
    carry every sample's rate (score() takes the best); JSON lines, because the engine's log,
    captured with it, may hold brackets that a JSON array's parse would trip over."""
    if not argv or os.path.basename(argv[0]) != "llama-bench":
        return list(argv)
    if any(a in ("-o", "--output") or a.startswith("--output=") for a in argv):
        return list(argv)
    return [*argv, "-o", "jsonl"]


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


def environment(b: EngineBacking, report_path: Path, state_dir: Path) -> dict:
    """The engine's environment under backing `b`: the preload library for hugeload backings
    (staged ones name the staged path directly, and `state_dir` is an empty one that keeps the
    library from redirecting the source to a staged copy; `1g+2m`, no one file, names the source
    and gets the state dir of its copy alone), glibc's tunable for its heap backings, and
    nothing of ours for the rest."""
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    glibc = {Heap.GLIBC_THP: 1, Heap.GLIBC_HUGETLB: 2}.get(b.heap)
    if glibc:
        tun = env.get("GLIBC_TUNABLES", "")
        env["GLIBC_TUNABLES"] = ":".join(x for x in (tun, f"glibc.malloc.hugetlb={glibc}") if x)
    if not b.hugeload:
        return env
    copy = b.weights is Weights.PRIVATE_COPY
    options = runner.PreloadOptions(
        page_size=b.page_size,
        copy=copy,
        alloc_threshold=runner.DEFAULT_ALLOC_THRESHOLD if b.heap is Heap.HUGELOAD else 0,
        report=str(report_path),
    )
    env = runner.environment(options, str(state_dir), env)
    if copy:
        env["HUGELOAD_MIN_FILE_SIZE"] = "1"
    return env


# --------------------------------------------------------------------------- running it


def timed_run(command: launch.Command, counters_vendor: str | None = None, counts: dict | None = None):
    """Start, wait, nothing else: no thread of ours reads /proc while it runs.  With
    `counters_vendor` (the machine has TLB counters), the engine's dTLB events are counted
    into `counts` (the counters are the CPU's, read once at exit: no observer effect)."""
    running = launch.start(command)
    c = perf.open_counters(running.pid, counters_vendor) if counters_vendor is not None else None
    if c:
        c.start()
    try:
        return running.wait()
    finally:
        if c:
            if counts is not None:
                counts.update(c.stop())
            c.close()


def verification_run(command: launch.Command, model_paths: set[str]) -> tuple[verify.Verification, launch.Finished]:
    running = launch.start(command)
    sampler = verify.Sampler(running.pid, model_paths)
    sampler.start()
    try:
        done = running.wait()
    finally:
        sampler.stop_event.set()
        sampler.join()
    v = sampler.v
    v.returncode = done.returncode
    if done.returncode != 0:
        v.error = done.last_line()
    return v, done


class _Bench:
    """One `bench engine` run: the model, the command, the copies and what was measured."""

    def __init__(self, engine_argv: list[str], chosen, options: EngineOptions, copies: Copies, bind, log):
        self.engine_argv, self.options, self.copies, self.bind, self.log = engine_argv, options, copies, bind, log
        self.model, self.size = copies.model, copies.size
        self.measured = Measured(chosen)
        self.vendor: str | None = None  # set when the machine has TLB counters
        self.scratch: Path | None = None  # reports and the library's empty state dir
        # Which heap copies llama.cpp makes of the model (plan/buffers): what the alloc pools are
        # sized from and what each run's report is checked against.  None: not predictable (not
        # GGUF, or an engine that is not llama.cpp's: its heap is not llama.cpp's repacking).
        self.prediction = (
            runner.predict_buffers(self.model, engine_argv[0], repack=runner.repack_enabled(engine_argv))
            if is_llama(engine_argv[0])
            else None
        )
        self.reports = 0
        # Backing name -> the state dir whose index redirects the source to its copy in mixed
        # page sizes (`1g+2m`: the engine is given the source under the preload library).
        self.redirect_state: dict[str, Path] = {}

    def make_scratch(self) -> None:
        state.ensure_dir(self.copies.dir)
        self.scratch = Path(tempfile.mkdtemp(prefix="run-", dir=self.copies.dir))
        (self.scratch / "empty").mkdir(mode=0o700)

    def command(self, argv, path: str, b: EngineBacking) -> tuple[launch.Command, Path]:
        """The command for backing `b` on the model at `path`, and its (fresh, private) report file."""
        assert self.scratch is not None
        self.reports += 1
        report_path = touch_private(self.scratch / f"report-{self.reports}.txt")
        env = environment(b, report_path, self.redirect_state.get(b.name, self.scratch / "empty"))
        cmd = launch.Command(
            command_for(argv, path, b.load_mode), env, self.bind, launch.Output.CAPTURE, self.options.timeout
        )
        return cmd, report_path

    def prepare(self, b: EngineBacking) -> str | None:
        """The model path the backing's engine gets, with its copies set up; None (reason in
        skipped) when one cannot be had."""
        path = self.model
        keys = needs(b, self.size, self.prediction)
        for k in keys:
            if k.kind is CopyKind.STAGED and k.mixed:
                self.redirect_state[b.name] = self.copies.state_dir_of(k)
        self.copies.make_room(keys)
        for k in keys:
            p = self.copies.setup(k)
            if p is None:
                self.measured.skipped[b.name] = f"could not set up {k}: {self.copies.failed.get(k)}"
                return None
            if p:
                path = p
        short = self.copies.top_up(keys)
        if short:
            self.measured.skipped[b.name] = f"pool pages for its allocations: {short}"
            return None
        if path == self.model and (resident_fraction(path) or 0) < 0.99:
            read_into_cache(path)  # copies pushed part of it out: no backing pays a disk read
        return path

    def verify(self, b: EngineBacking) -> None:
        path = self.prepare(b)
        if path is None:
            return
        self.log(f"verifying {b.name}")
        cmd, report_path = self.command(self.options.startup_argv or self.engine_argv, path, b)
        v, _ = verification_run(cmd, {path, os.path.realpath(path)})
        v.weights_kb |= report.weights_page_kb(report.parse(report.read(report_path)), path)
        self.measured.verified[b.name] = v
        if v.returncode != 0:
            self.measured.skipped[b.name] = f"the engine failed under this backing: {v.error}"
            return
        reason = verify.fell_back(b, v, self.size) or self.heap_fell_back(b, report_path)
        if reason:
            self.measured.skipped[b.name] = f"fell back: {reason}"

    def heap_fell_back(self, b: EngineBacking, report_path: Path) -> str | None:
        """For a backing whose heap is the preload library's: why the predicted heap copy is not
        in the pages the size rule gives it, from the run's report; None when it is."""
        if b.heap is not Heap.HUGELOAD or self.prediction is None:
            return None
        regions = report.parse(report.read(report_path))
        return verify.heap_fell_back(self.prediction, regions, b.page_size, runner.DEFAULT_ALLOC_THRESHOLD)

    def one_run(self, b: EngineBacking, r: int) -> Run:
        path = self.prepare(b)
        if path is None:
            return Run(b.name, r, -1, 0.0, None, {}, error=self.measured.skipped.pop(b.name, "setup failed"))
        startup = None
        if self.options.startup_argv:
            cmd, _ = self.command(self.options.startup_argv, path, b)
            done = timed_run(cmd)
            startup = done.wall_s if done.returncode == 0 else None
        counts: dict = {}
        cmd, report_path = self.command(self.engine_argv, path, b)
        done = timed_run(cmd, self.vendor, counts)
        weights = report.weights_page_kb(report.parse(report.read(report_path)), path)
        run = Run(
            b.name,
            r,
            done.returncode,
            done.wall_s,
            startup,
            parse_rates(done.output),
            weights,
            "munmap failed" in done.output,
            None if done.returncode == 0 else done.last_line(),
            counts,
        )
        if done.returncode == 0 and b.staged_page and weights and not verify.staged_weights_ok(b, weights):
            run.error = f"this run's weights got {sorted(weights)} kB pages"
            run.returncode = -1
        heap = self.heap_fell_back(b, report_path) if done.returncode == 0 else None
        if heap:
            run.error = f"this run's heap fell back: {heap}"
            run.returncode = -1
        return run

    def memory_budget(self, avail: int) -> str:
        """Skip the backings whose copies cannot fit; budget the copies when not all fit at once."""
        chosen, size = self.measured.chosen, self.size
        engine_bytes = size + ENGINE_OVERHEAD
        held = sum(k.bytes(size) for k in {k for b in chosen for k in needs(b, size, self.prediction)})
        for b in chosen:
            mine = sum(k.bytes(size) for k in needs(b, size, self.prediction))
            if mine and mine + engine_bytes > avail:
                self.measured.skipped[b.name] = (
                    f"the model ({size / GiB:.1f} GiB) and its copies ({mine / GiB:.1f} GiB) do not fit "
                    f"in the {avail / GiB:.1f} GiB available"
                )
        if held + engine_bytes <= avail:
            return "all"
        self.copies.budget = max(0, avail - engine_bytes)
        self.log(
            f"copies do not fit together ({held / GiB:.1f} GiB + the engine, {avail / GiB:.1f} GiB "
            f"available): set up when a backing needs them, the oldest torn down to make room"
        )
        return f"as many as fit in {self.copies.budget / GiB:.1f} GiB, oldest torn down first"

    def measure(self, root) -> tuple[str, list[float]]:
        """Verification runs, then the interleaved rounds; returns (copies held, bandwidths)."""
        o = self.options
        avail = o.memory_limit if o.memory_limit is not None else (mem_available(root) or 0)
        held = self.memory_budget(avail)
        for b in self.measured.chosen:
            if b.name not in self.measured.skipped:
                self.verify(b)
        active = [b for b in self.measured.chosen if b.name not in self.measured.skipped]
        bw: list[float] = []
        for r, order in enumerate(stats.round_orders(active, o.rounds, o.seed)):
            if o.bandwidth:
                g = limits.read_bandwidth(threads_of(self.engine_argv))
                if g:
                    bw.append(g)
            for b in order:
                self.log(f"round {r + 1}/{o.rounds}: {b.name}")
                self.measured.runs.append(self.one_run(b, r))
        return held, bw


def _numa_setup(chosen: list[EngineBacking], copies: Copies, engine_node: int | None, root) -> dict:
    """The engine node every run is bound to, and the nodes of each placement; UsageError
    (one line, before anything is staged) when the machine cannot place them."""
    from hugeload.act import numa as act_numa
    from hugeload.plan import numa as plan_numa
    from hugeload.probe import numa as probe_numa

    with_memory = [n.node for n in probe_numa.read_nodes(root) if n.has_memory]
    node = engine_node if engine_node is not None else (with_memory[0] if with_memory else 0)
    cpus = act_numa.check_run_node(node, root).cpus
    wanted = sorted({b.placement for b in chosen if b.placement}, key=list(Placement).index)
    if wanted:
        others = [n for n in with_memory if n != node]
        if not others:
            raise UsageError(
                f"node placements need at least two NUMA nodes with memory (this machine has "
                f"{len(with_memory)}): run without --node-placement"
            )
        copies.placements = {
            Placement.LOCAL: plan_numa.Placement(plan_numa.Mode.NODE, (node,)),
            Placement.REMOTE: plan_numa.Placement(plan_numa.Mode.NODE, (others[0],)),
            Placement.INTERLEAVE: plan_numa.Placement(plan_numa.Mode.INTERLEAVE, tuple(with_memory)),
        }
    return {
        "engine_node": node,
        "cpus": list(cpus),
        "placements": {p.value: copies.placements[p].describe() for p in wanted},
        "note": "every run bound to the engine node's CPUs and memory; figures from an emulated "
        "(TCG) guest say nothing about a real machine",
    }


def _check(model: str, engine_argv: list[str], options: EngineOptions) -> None:
    if not os.path.isfile(model):
        raise UsageError(f"no such model file: {model}")
    if not engine_argv:
        raise UsageError("give the engine command after --, e.g. -- llama-bench -p 64 -n 32 -r 1")
    if options.rounds < 1:
        raise UsageError("--rounds must be at least 1")


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM ends the bench as Ctrl-C does: copies torn down, pools given back."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, lambda sig, frame: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def run(
    model: str,
    engine_argv: list[str],
    backings: list[str],
    options: EngineOptions = EngineOptions(),
    *,
    root="/",
    log=lambda msg: None,
    state_dir=None,
) -> dict:
    """Run the bench; see the module doc.  `backings` as parse_backings() returns them."""
    _check(model, engine_argv, options)
    engine_argv = with_samples(engine_argv)
    size = os.path.getsize(model)
    names = with_placements(backings, list(options.node_placement)) if options.node_placement else backings
    chosen = [backing(b) for b in names]
    copies = Copies(model, size, root, log, state_dir)
    numa_info = (
        _numa_setup(chosen, copies, options.engine_node, root)
        if options.node_placement or options.engine_node is not None or any(b.placement for b in chosen)
        else None
    )
    bind = launch.NodeBinding(numa_info["engine_node"], tuple(numa_info["cpus"])) if numa_info else None
    bench = _Bench(engine_argv, chosen, options, copies, bind, log)
    vendor = cpu_vendor(root)
    probe = perf.open_counters(0, vendor)
    tlb_note = "" if probe else perf.why_none()
    if probe:
        probe.close()
        bench.vendor = vendor or ""
    with _sigterm_as_interrupt():
        try:
            bench.make_scratch()
            held, bw = bench.measure(root)
        finally:
            copies.close()
    return _result(bench, numa_info, held, bw, tlb_note)


def _result(bench: _Bench, numa_info: dict | None, held: str, bw: list[float], tlb_note: str) -> dict:
    copies, chosen, runs = bench.copies, bench.measured.chosen, bench.measured.runs
    bpt, what = limits.bytes_per_token(bench.model)
    data = summarize(bench.model, bench.size, bench.engine_argv, bench.options.rounds, bench.measured)
    data.update(
        tlb_note=tlb_note,
        bandwidth_gbps=stats.stat_dict(bw),
        bytes_per_token=bpt,
        weights_read=what,
        threads=threads_of(bench.engine_argv),
        copies_held=held,
        setup_s={str(k): stats.stat_dict(v) for k, v in copies.setup_s.items()},
    )
    if numa_info:
        numa_info["copy_nodes"] = {
            b.name: {str(n): c for n, c in sorted(copies.nodes[k].items())}
            for b in chosen
            for k in needs(b, bench.size, bench.prediction)
            if k in copies.nodes
        }
        numa_info["placement_ratios"] = placement_ratios(chosen, runs, tests_of(runs))
        data["numa"] = numa_info
    if bw and bpt:
        limit = stats.median(bw) * 1e9 / bpt
        data["tg_limit_tps"] = limit
        for e in data["results"]:
            for t, m in (e.get("metrics") or {}).items():
                if t.startswith("tg"):
                    m["bandwidth_share"] = m["median"] / limit
    return data


__all__ = ["EngineOptions", "CopyKey", "run", "parse_rates", "command_for", "timed_run", "verification_run"]
