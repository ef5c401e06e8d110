"""The same engine command under each backing of the model, interleaved round-robin.

Backings (what the engine's weights live in):
  default     the engine as it is: the model file mapped from the page cache
  alloc       preload library, large allocations (llama.cpp's repack buffer) in huge pages,
              the model file as it is
  2m, 1g      the model staged into hugetlbfs with that page size, mapped zero-copy
              (preload library on, so the engine's sub-page munmaps do not fail)
  2m+alloc, 1g+alloc
              staged, plus large allocations in huge pages
  copy        preload library copying the model into private huge pages at start
              (what the seed design's wrapper did), plus large allocations

Each round runs every backing once, in a shuffled order, so drift on a shared
machine hits all backings alike.  For each run: start-up (the engine loading the
model and producing one token, when a start-up command is known), the rates the
engine prints, peak HugetlbPages and VmPTE, and the page size the weights really
got (the preload library's report, and /proc/PID/smaps sampled while it runs).
A backing whose weights fell back to another page size is reported as such and
gets no speed figures.  Times are wall-clock: no CPU counters are used.
"""

import contextlib
import os
import random
import re
import shlex
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from hugeload import engines, pages, runner
from hugeload.act import pools as act_pools
from hugeload.act import store
from hugeload.bench.common import bar_charts, bench_owner, bootstrap_median_ci
from hugeload.errors import HugeloadError, UsageError
from hugeload.pages import PAGE_1G, PAGE_2M
from hugeload.probe import pools as probe_pools
from hugeload.probe.procs import parse_smaps, read_status
from hugeload.units import KiB, ceil_div

GIGANTIC_KB, HUGE_KB = PAGE_1G.kb, PAGE_2M.kb


@dataclass(frozen=True)
class Backing:
    name: str
    staged_kb: int | None = None
    preload: bool = False
    alloc: bool = False
    copy: bool = False

    @property
    def expected_kb(self) -> int | None:
        """Page size the weights must get for the backing's numbers to count."""
        return self.staged_kb


BACKINGS = {
    "default": Backing("default"),
    "alloc": Backing("alloc", preload=True, alloc=True),
    "2m": Backing("2m", HUGE_KB, preload=True),
    "1g": Backing("1g", GIGANTIC_KB, preload=True),
    "2m+alloc": Backing("2m+alloc", HUGE_KB, preload=True, alloc=True),
    "1g+alloc": Backing("1g+alloc", GIGANTIC_KB, preload=True, alloc=True),
    "copy": Backing("copy", preload=True, alloc=True, copy=True),
}
DEFAULT_BACKINGS = ("default", "2m", "1g")
_RATE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*(?:tokens per second|tokens/s|tok/s|t/s)")
_REPORT = re.compile(r"hugeload: region (.*)$")
NOTE = ("times are wall-clock (no CPU performance counters are used); "
        "intervals are bootstrap 95% intervals of the median over interleaved rounds")


@dataclass
class Run:
    backing: str
    round: int
    returncode: int
    wall_s: float
    startup_s: float | None
    rates: dict[str, float]  # test name -> tokens/s
    hugetlb_kb: int
    vmpte_kb: int
    weights_kb: set[int] = field(default_factory=set)  # page sizes the model mapping had
    alloc_kb: set[int] = field(default_factory=set)  # page sizes of large heap allocations
    report: list[dict] = field(default_factory=list)
    file_pmd_kb: int = 0
    munmap_failed: bool = False
    error: str | None = None


def parse_backings(text: str) -> list[str]:
    names = [b.strip().lower() for b in text.split(",") if b.strip()]
    unknown = [b for b in names if b not in BACKINGS]
    if unknown or not names:
        raise UsageError(f"unknown backing {', '.join(unknown) or '(none)'}: choose from {', '.join(BACKINGS)}")
    return list(dict.fromkeys(names))


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


def command_for(argv: list[str], model: str) -> list[str]:
    """Substitute {model}, or add `-m MODEL` when the command does not name it."""
    if any("{model}" in a for a in argv):
        return [a.replace("{model}", model) for a in argv]
    return [argv[0], "-m", model, *argv[1:]]


def default_startup_cmd(engine_argv: list[str]) -> list[str] | None:
    """llama-completion next to the engine, loading the model and producing one token."""
    exe = Path(engine_argv[0])
    sibling = exe.with_name("llama-completion") if exe.parent != Path("") else None
    tool = sibling if sibling and sibling.exists() else engines.find_llama("llama-completion")
    if tool is None:
        return None
    threads = [engine_argv[i + 1] for i, a in enumerate(engine_argv[:-1]) if a in ("-t", "--threads")]
    return [str(tool), "-m", "{model}", "-n", "1", "-p", "hello", "-no-cnv", "--no-warmup", *(["-t", threads[0]] if threads else [])]


class _Sampler(threading.Thread):
    """Polls /proc/PID while the engine runs: peak HugetlbPages/VmPTE and page sizes of the
    model mapping and of large anonymous mappings."""

    def __init__(self, pid: int, model_paths: set[str], interval: float = 0.05):
        super().__init__(daemon=True)
        self.pid, self.paths, self.interval = pid, model_paths, interval
        self.stop_event = threading.Event()
        self.hugetlb_kb = self.vmpte_kb = self.file_pmd_kb = 0
        self.weights_kb: set[int] = set()
        self.alloc_kb: set[int] = set()

    def run(self):
        while not self.stop_event.is_set():
            self.sample()
            self.stop_event.wait(self.interval)

    def sample(self):
        status = read_status("/", self.pid)
        if not status:
            return
        for key, attr in (("HugetlbPages", "hugetlb_kb"), ("VmPTE", "vmpte_kb")):
            with contextlib.suppress(ValueError, IndexError):
                setattr(self, attr, max(getattr(self, attr), int(status.get(key, "0 kB").split()[0])))
        try:
            text = Path(f"/proc/{self.pid}/smaps").read_text()
        except OSError:
            return
        for m in parse_smaps(text, 64 << 20):
            if m.path in self.paths:
                self.weights_kb.add(m.kernel_page_kb)
                # Kernels since 6.x map page-cache folios with 2 MB PMDs: "default" is not all 4 KB.
                self.file_pmd_kb = max(self.file_pmd_kb, m.file_pmd_mapped_kb)
            elif m.path in ("[anon]", "[heap]") or m.path.startswith("/anon_hugepage"):
                if m.rss_kb or m.hugetlb_kb:
                    self.alloc_kb.add(2048 if m.anon_huge_kb and m.kernel_page_kb == 4 else m.kernel_page_kb)


def _run_engine(argv: list[str], env: dict, model_paths: set[str], timeout: float) -> tuple[int, float, str, _Sampler]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace")  # random weights print arbitrary bytes
    sampler = _Sampler(proc.pid, model_paths)
    sampler.start()
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        out += f"\nhugeload: the engine ran longer than {timeout:.0f} s and was stopped"
    finally:
        sampler.stop_event.set()
        sampler.join()
    return proc.returncode, time.perf_counter() - t0, out, sampler


def _env(b: Backing, report: Path, empty_state: Path, page_size: str) -> dict:
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    if not b.preload:
        return env
    # Staged backings name the staged path directly; the empty state dir keeps the library
    # from redirecting the other backings' source mappings to a staged copy.
    options = runner.PreloadOptions(page_size=pages.parse(page_size), copy=b.copy,
                                    alloc_threshold=runner.DEFAULT_ALLOC_THRESHOLD if b.alloc else 0, report=str(report))
    env = runner.environment(options, str(empty_state), env)
    if b.copy:
        env["HUGELOAD_MIN_FILE_SIZE"] = "1"
    return env


def _pages_needed(model_size: int, kb: int) -> int:
    return ceil_div(model_size, kb * KiB)


def run(model: str, engine_argv: list[str], backings: list[str], rounds: int = 3, startup_argv: list[str] | None = None,
        timeout: float = 600.0, root="/", seed: int = 0, log=lambda msg: None) -> dict:
    if not os.path.isfile(model):
        raise UsageError(f"no such model file: {model}")
    if not engine_argv:
        raise UsageError("give the engine command after --, e.g. -- llama-bench -p 64 -n 32 -r 1")
    if rounds < 1:
        raise UsageError("--rounds must be at least 1")
    size = os.path.getsize(model)
    chosen = [BACKINGS[b] for b in backings]
    tmp = Path(tempfile.mkdtemp(prefix="hugeload-bench-"))
    state_dir, empty_state = tmp / "state", tmp / "empty"
    empty_state.mkdir()
    skipped: dict[str, str] = {}
    paths: dict[str, str] = {}
    owner = bench_owner()
    runs: list[Run] = []
    try:
        # Pages for the allocation path (a Q4_0 repack buffer is about the model's size): asked for, read back.
        if any(b.alloc or b.copy for b in chosen):
            alloc_kb = pages.first_page(size).kb
            need = _pages_needed(size, alloc_kb) * (2 if any(b.copy for b in chosen) else 1)
            avail = probe_pools.system_pool(root, alloc_kb).available
            if need > avail:
                with contextlib.suppress(HugeloadError):
                    act_pools.reserve(root, alloc_kb, need - avail, partial=True, owner=owner)
        for b in chosen:
            if b.staged_kb is None:
                paths[b.name] = model
                continue
            key = f"staged-{b.staged_kb}"
            if key not in paths:
                try:
                    log(f"staging the model into {'1G' if b.staged_kb == GIGANTIC_KB else '2M'} pages")
                    m, _, _ = store.stage(model, store.StageOptions(page_size=pages.by_kb(b.staged_kb), name=f"bench-{b.staged_kb}",
                                                                    reserve=True), state_dir=state_dir, root=root)
                    paths[key] = m.path
                except HugeloadError as e:
                    paths[key] = ""
                    skipped[key] = str(e)
            if paths[key]:
                paths[b.name] = paths[key]
            else:
                skipped[b.name] = f"could not stage: {skipped[key]}"
        active = [b for b in chosen if b.name not in skipped]
        rng = random.Random(seed)
        for r in range(rounds):
            order = active[:]
            rng.shuffle(order)
            for b in order:
                log(f"round {r + 1}/{rounds}: {b.name}")
                runs.append(_one_run(b, r, paths[b.name], model, engine_argv, startup_argv, tmp, empty_state, timeout))
    finally:
        with contextlib.suppress(HugeloadError):
            for m in store.manifests(state_dir):
                store.unstage(m.name, force=True, state_dir=state_dir, root=root)
        with contextlib.suppress(HugeloadError):
            act_pools.release(root, None, owner=owner)
        with contextlib.suppress(HugeloadError):
            store.gc(state_dir, root)
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return summarize(model, size, engine_argv, chosen, runs, skipped, rounds)


def _one_run(b: Backing, r: int, path: str, source: str, engine_argv, startup_argv, tmp: Path, empty_state: Path,
             timeout: float) -> Run:
    report = tmp / f"report-{b.name}-{r}.txt"
    page_size = pages.by_kb(b.staged_kb).name if b.staged_kb else "auto"
    env = _env(b, report, empty_state, page_size)
    model_paths = {path, os.path.realpath(path)}
    startup = None
    if startup_argv:
        rc, wall, out, _ = _run_engine(command_for(startup_argv, path), env, model_paths, timeout)
        startup = wall if rc == 0 else None
        with contextlib.suppress(FileNotFoundError):
            report.unlink()
    rc, wall, out, s = _run_engine(command_for(engine_argv, path), env, model_paths, timeout)
    rep = parse_report(report.read_text()) if report.exists() else []
    weights = set(s.weights_kb)
    alloc = set(s.alloc_kb)
    name = os.path.basename(path)
    for line in rep:
        kb = {"1G": GIGANTIC_KB, "2M": HUGE_KB, "THP": 2048, "4K": 4}.get(line.get("page", ""), 0)
        if line.get("what") == name.replace(" ", "%20"):
            weights.add(kb)
        elif line.get("fill") == "alloc" and kb:
            alloc.add(kb)
    return Run(b.name, r, rc, wall, startup, parse_rates(out), s.hugetlb_kb, s.vmpte_kb, weights, alloc, rep,
               s.file_pmd_kb, "munmap failed" in out, None if rc == 0 else out.strip().splitlines()[-1:][0] if out.strip() else f"exit {rc}")


def _ratio_ci(values: list[float], base: list[float], seed: int = 0) -> tuple[float, float, float] | None:
    if not values or not base:
        return None
    rng = random.Random(seed)
    med = _median(values) / _median(base)
    if len(values) == 1 or len(base) == 1:
        return med, med, med
    boots = sorted(_median([rng.choice(values) for _ in values]) / _median([rng.choice(base) for _ in base])
                   for _ in range(2000))
    return med, boots[49], boots[1949]


def _median(v: list[float]) -> float:
    s = sorted(v)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def summarize(model, size, engine_argv, chosen, runs: list[Run], skipped: dict, rounds: int) -> dict:
    results = []
    base_runs = [r for r in runs if r.backing == "default" and r.returncode == 0]
    for b in chosen:
        mine = [r for r in runs if r.backing == b.name]
        ok = [r for r in mine if r.returncode == 0]
        entry = {"backing": b.name, "status": "ok", "reason": None, "runs": len(mine)}
        if b.name in skipped:
            entry.update(status="skipped", reason=skipped[b.name])
            results.append(entry)
            continue
        weights = set().union(*(r.weights_kb for r in ok)) if ok else set()
        allocs = set().union(*(r.alloc_kb for r in ok)) if ok else set()
        entry.update(weights_page_kb=sorted(weights), alloc_page_kb=sorted(allocs),
                     munmap_failed=any(r.munmap_failed for r in mine),
                     hugetlb_kb=max((r.hugetlb_kb for r in ok), default=0), vmpte_kb=max((r.vmpte_kb for r in ok), default=0),
                     file_pmd_mapped_kb=max((r.file_pmd_kb for r in ok), default=0))
        if not ok:
            entry.update(status="failed", reason=mine[0].error if mine else "not run")
        elif b.expected_kb and weights != {b.expected_kb}:
            entry.update(status="fell back", reason=f"weights got page sizes {sorted(weights) or 'unknown'} kB, expected {b.expected_kb} kB")
        if entry["status"] == "ok":
            tests = sorted({t for r in ok for t in r.rates})
            if not tests:
                entry.update(status="no rate", reason="the engine printed no tokens/s figure")
            metrics = {}
            for t in tests:
                vals = [r.rates[t] for r in ok if t in r.rates]
                med, lo, hi = bootstrap_median_ci(vals)
                base = [r.rates[t] for r in base_runs if t in r.rates]
                ratio = _ratio_ci(vals, base) if b.name != "default" else None
                metrics[t] = {"median": med, "low": lo, "high": hi, "values": vals,
                              "ratio": ratio[0] if ratio else None, "ratio_low": ratio[1] if ratio else None,
                              "ratio_high": ratio[2] if ratio else None,
                              "within_noise": bool(ratio and ratio[1] <= 1.0 <= ratio[2])}
            starts = [r.startup_s for r in ok if r.startup_s is not None]
            if starts:
                med, lo, hi = bootstrap_median_ci(starts)
                base = [r.startup_s for r in base_runs if r.startup_s is not None]
                ratio = _ratio_ci(starts, base) if b.name != "default" else None
                metrics["startup_s"] = {"median": med, "low": lo, "high": hi, "values": starts,
                                        "ratio": ratio[0] if ratio else None, "ratio_low": ratio[1] if ratio else None,
                                        "ratio_high": ratio[2] if ratio else None,
                                        "within_noise": bool(ratio and ratio[1] <= 1.0 <= ratio[2])}
            entry["metrics"] = metrics
        results.append(entry)
    return {"model": model, "model_size": size, "command": shlex.join(engine_argv), "rounds": rounds,
            "results": results, "note": NOTE}


def plot(data: dict, path: str) -> None:
    """One bar chart per test (tokens/s, and start-up seconds) across the backings that counted."""
    tests: dict[str, list] = {}
    for r in data["results"]:
        for test, m in (r.get("metrics") or {}).items():
            tests.setdefault(test, []).append((r["backing"], m["median"], m["low"], m["high"]))
    panels = [("start-up, s (lower is better)" if t == "startup_s" else f"{t}, tokens/s (higher is better)", bars)
              for t, bars in tests.items()]
    if not panels:
        raise HugeloadError("nothing to plot: no backing produced figures")
    bar_charts(panels, f"hugeload bench engine: {os.path.basename(data['model'])}, median of {data['rounds']} rounds, "
                       f"95% intervals" + (" (VM)" if data.get("hypervisor") else ""), path)
