"""N engines on one machine: start-up, time to first token and memory, by backing.

Cases (each starts N llama-server processes on the same model at once):
  cold     the model file dropped from the page cache first (posix_fadvise DONTNEED,
           checked with mincore): every engine waits for the disk
  warm     the page cache holds the file: the engines share it
  mlock    warm, with -lm mmap+mlock: the shared page cache, locked
  private  -lm none (--no-mmap): every engine reads its own heap copy
  staged   the model staged once into hugetlbfs (hugeload load; staging and the fault-in
           of its pages are timed apart as setup); the engines map that one copy, and the
           source is dropped from the page cache first (they do not need it)
  heap     warm, under the preload library with its allocation path on (hugeload run): the
           heap copy llama.cpp makes of the weights (CPU_REPACK/AMX) in huge pages, reserved
           for the N engines' predicted copies (plan/buffers) for the whole run
  both     staged, and the heap copies in huge pages as in heap
warm, staged, heap and both are the four layouts `plan` and `stage` choose between (none,
plan/buffers.Advice STAGE, HEAP, BOTH); the one recommended for this model on this CPU is
marked.  heap and both are skipped when llama.cpp makes no heap copy of at least
--alloc-threshold of this model here.
For each engine: time until /health answers (loaded) and until the first token of a
one-token completion comes back (time to first token, from the spawn).  Memory is read
once, after every engine has answered (never while one is timed): Pss, RSS, HugetlbPages and
VmLck of each engine, the model's pages in the page cache (mincore), the pool pages in use
and MemAvailable, the last two against their values just before the engines started.
`account()` turns that into what a layout costs, in total and per engine: what is shared
(the staged copy, the page cache) counted once, what is each engine's own (anonymous Pss,
heap copies in huge pages) summed.  Rounds interleave the cases in a shuffled order.
"""

import contextlib
import json
import os
import shutil
import socket
import time
import urllib.request
from dataclasses import dataclass
from typing import NamedTuple

from hugeload import engines, launch, runner
from hugeload.act import state, store
from hugeload.bench import reservations
from hugeload.bench.copies import bench_dir
from hugeload.bench.pagecache import drop_from_cache, read_into_cache, resident_fraction
from hugeload.bench.stats import round_orders, stat_dict
from hugeload.errors import HugeloadError, UsageError
from hugeload.plan.buffers import Advice
from hugeload.probe import memory as probe_memory
from hugeload.probe import pools as probe_pools
from hugeload.probe import procs

CASES = ("cold", "warm", "mlock", "private", "staged", "heap", "both")
LOAD_MODE = {"mlock": "mmap+mlock", "private": "none"}
STAGED_CASES = ("staged", "both")  # the engines map the staged copy
HEAP_CASES = ("heap", "both")  # the preload library puts the engines' heap copies in huge pages
# The layouts plan/buffers.advise chooses between, and the case that measures each.
LAYOUTS = {"warm": "none", "staged": "staged file only", "heap": "heap copy in huge pages only", "both": "both"}
RECOMMENDED_CASE = {Advice.STAGE: "staged", Advice.HEAP: "heap", Advice.BOTH: "both"}


@dataclass(frozen=True)
class FleetOptions:
    engines: int = 2  # started together per case
    cases: tuple[str, ...] = CASES
    rounds: int = 3
    threads: int = 1  # per engine
    server: str | None = None  # llama-server (None: the one hugeload finds)
    timeout: float = 300.0  # seconds the engines may take to answer
    seed: int = 0
    alloc_threshold: int = runner.DEFAULT_ALLOC_THRESHOLD  # heap, both: allocations from this size in huge pages


def parse_cases(text: str) -> list[str]:
    names = list(dict.fromkeys(c.strip().lower() for c in text.split(",") if c.strip()))
    bad = [c for c in names if c not in CASES]
    if bad or not names:
        raise UsageError(f"unknown case {', '.join(bad) or '(none)'}: choose from {', '.join(CASES)}")
    return names


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 1.0, body: dict | None = None) -> int:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            r.read()
            return r.status
    except OSError:
        return 0


def _private_pss_kb(pid: int) -> int:
    """Pss less its file-backed part (the page cache is counted once, from mincore)."""
    rollup = procs.read_smaps_rollup("/", pid)
    return rollup.get("Pss_Anon", 0) + rollup.get("Pss_Shmem", 0)


def _pool_used_kb(root) -> int:
    used = 0
    for kb in probe_pools.page_sizes(root):
        p = probe_pools.system_pool(root, kb)
        used += (p.total - p.free) * kb
    return used


def _mem_available_kb(root) -> int:
    return probe_memory.read_meminfo(root).get("MemAvailable", 0)


class Sample(NamedTuple):
    """What one case measured once all N engines answered (sums over the engines), and the
    machine-wide counters as differences from just before the engines were started."""

    pss_kb: int  # anonymous and shmem Pss (the file-backed part is the page cache, counted below)
    rss_kb: int  # VmRSS (no hugetlb pages in it)
    hugetlb_kb: int  # HugetlbPages: a staged copy is counted once per engine that maps it
    vmlck_kb: int
    pool_grew_kb: int  # hugetlb pool pages in use now less before: the engines' own (heap copies)
    page_cache_kb: int  # the source file's pages in the page cache (mincore)
    mem_available_drop_kb: int  # MemAvailable before less now


def account(s: Sample, engines_: int, staged_kb: int = 0, held_kb: int = 0) -> dict:
    """What a layout costs N engines: `staged_kb` the staged copy they map (0: none), `held_kb`
    the pool pages reserved for their heap copies before they started (0: none; MemAvailable
    had already lost them).  Shared memory (the staged copy, the page cache) is counted once,
    each engine's own (anonymous Pss, heap copies in huge pages) summed; per engine is the
    total over N.  mem_available_kb is the same cost seen by the kernel's MemAvailable (the
    drop while the engines started, plus the pool pages the layout held beforehand): a check
    on the sum, noisier, as other processes move it too."""
    n = max(1, engines_)
    shared = staged_kb + s.page_cache_kb
    own = s.pss_kb + s.pool_grew_kb
    mem_available = s.mem_available_drop_kb + staged_kb + held_kb
    return {
        **s._asdict(),
        "pool_used_kb": staged_kb + s.pool_grew_kb,  # hugetlb pages in use for this layout
        "staged_kb": staged_kb,
        "heap_hugetlb_kb": s.pool_grew_kb,
        "shared_kb": shared,
        "own_kb": own,
        "memory_kb": shared + own,
        "per_engine_kb": (shared + own) // n,
        "own_per_engine_kb": own // n,
        "pinned_per_engine_kb": (staged_kb + s.pool_grew_kb) // n,  # huge pages: never reclaimed
        "mem_available_kb": mem_available,
        "mem_available_per_engine_kb": mem_available // n,
    }


# Medians of these over the rounds (summarize); the per-engine ones are recomputed from the medians.
MEMORY_KEYS = (
    "pss_kb",
    "rss_kb",
    "hugetlb_kb",
    "vmlck_kb",
    "pool_used_kb",
    "heap_hugetlb_kb",
    "staged_kb",
    "page_cache_kb",
    "shared_kb",
    "own_kb",
    "memory_kb",
    "mem_available_drop_kb",
    "mem_available_kb",
)


class _Case:
    """One case of one round: what is started and how."""

    def __init__(self, case: str, model: str, options: FleetOptions, env: dict | None):
        self.case, self.model, self.options, self.env = case, model, options, env

    def command(self, server: str, port: int) -> launch.Command:
        o = self.options
        argv = [server, "-m", self.model, "--port", str(port), "--host", "127.0.0.1", "-t", str(o.threads)]
        argv += ["-c", "256", "-np", "1", "--no-warmup"]
        argv += ["-lm", LOAD_MODE[self.case]] if self.case in LOAD_MODE else []
        return launch.Command(argv, self.env, output=launch.Output.TAIL)


def _wait_loaded(engines_: list[launch.Running], ports: list[int], t0: float, timeout: float) -> list[float | None]:
    """Seconds from the spawn until each engine's /health answered (None: it did not)."""
    loaded: list[float | None] = [None] * len(engines_)
    deadline = t0 + timeout
    while any(x is None for x in loaded) and time.perf_counter() < deadline:
        for i, (e, port) in enumerate(zip(engines_, ports, strict=True)):
            if loaded[i] is None and e.poll() is None and _get(f"http://127.0.0.1:{port}/health", 0.5) == 200:
                loaded[i] = time.perf_counter() - t0
        if any(e.poll() is not None for e in engines_):
            break
        time.sleep(0.02)
    return loaded


def _one_case(c: _Case, server: str, root, source: str, staged_kb: int, held_kb: int) -> dict:
    o = c.options
    started: list[launch.Running] = []
    ports: list[int] = []
    try:
        pool_before, available_before = _pool_used_kb(root), _mem_available_kb(root)
        t0 = time.perf_counter()
        for _ in range(o.engines):
            ports.append(_free_port())
            started.append(launch.start(c.command(server, ports[-1])))
        loaded = _wait_loaded(started, ports, t0, o.timeout)
        first: list[float | None] = [None] * o.engines
        for i, port in enumerate(ports):
            if loaded[i] is not None:
                body = {"prompt": "hello", "n_predict": 1, "cache_prompt": False}
                ok = _get(f"http://127.0.0.1:{port}/completion", o.timeout, body) == 200
                first[i] = time.perf_counter() - t0 if ok else None
        dead = [e for e in started if e.poll() is not None]
        if dead or any(x is None for x in first):
            err = dead[0].wait().last_line() if dead else ""
            return {"case": c.case, "error": err or "an engine did not answer in time"}
        # Memory, once every engine answered.
        statuses = [procs.read_status("/", e.pid) for e in started]
        sample = Sample(
            pss_kb=sum(_private_pss_kb(e.pid) for e in started),
            rss_kb=sum(procs.status_kb(s, "VmRSS") for s in statuses),
            hugetlb_kb=sum(procs.status_kb(s, "HugetlbPages") for s in statuses),
            vmlck_kb=sum(procs.status_kb(s, "VmLck") for s in statuses),
            pool_grew_kb=max(0, _pool_used_kb(root) - pool_before),
            page_cache_kb=int((resident_fraction(source) or 0) * os.path.getsize(source)) >> 10,
            mem_available_drop_kb=available_before - _mem_available_kb(root),
        )
        # The staged copy and the heap reservation are held for the whole run: they count for
        # the cases that use them only.
        return {
            "case": c.case,
            "error": None,
            "loaded_s": loaded,
            "first_token_s": first,
            **account(
                sample,
                o.engines,
                staged_kb if c.case in STAGED_CASES else 0,
                held_kb if c.case in HEAP_CASES else 0,
            ),
        }
    finally:
        for e in started:
            e.stop()


def run(model: str, options: FleetOptions = FleetOptions(), *, root="/", log=lambda m: None, state_dir=None) -> dict:
    o = options
    if not os.path.isfile(model):
        raise UsageError(f"no such model file: {model}")
    if o.engines < 1 or o.rounds < 1:
        raise UsageError("--engines and --rounds must be at least 1")
    server = o.server or (str(engines.find_llama("llama-server") or "") or None)
    if not server:
        raise UsageError("llama-server not found (scripts/get-llama.sh, or --server PATH)")
    cases = list(o.cases) or list(CASES)
    d = bench_dir(state_dir)
    store_dir = d / "state"
    staged_path, staged_kb, setup_s, skipped = None, 0, None, {}
    out: list[dict] = []
    reads = runner.weights_advice([model], server)
    heap = _heap_pages(model, server, o) if any(c in HEAP_CASES for c in cases) else {}
    pages = reservations.PageReservations(root, reservations.PoolUse.RESERVE, log)
    try:
        state.ensure_dir(d)
        if any(c in STAGED_CASES for c in cases):
            state.ensure_dir(store_dir)
            t = time.perf_counter()
            try:
                m, _, _ = store.stage(
                    model, store.StageOptions(name="bench-fleet", reserve=True), state_dir=store_dir, root=root
                )
                staged_path, staged_kb, setup_s = m.path, m.pages * m.page_size_kb, time.perf_counter() - t
            except HugeloadError as e:
                skipped.update({c: f"could not stage: {e}" for c in STAGED_CASES})
        held_kb = 0
        if any(c in HEAP_CASES for c in cases):
            why, held_kb = _reserve_heap(pages, heap, o, root, log)
            if why:
                skipped.update({c: why for c in HEAP_CASES if c not in skipped})
        # As `hugeload run` would: the preload library keeps the engines' sub-page munmaps of the
        # staged file from failing; for heap and both, it also puts allocations from
        # --alloc-threshold up (the heap copies) in huge pages; nothing else (no copy).
        empty = state.ensure_dir(d / "empty")
        env = {
            c: runner.environment(
                runner.PreloadOptions(
                    alloc_threshold=o.alloc_threshold if c in HEAP_CASES else 0, log=runner.LogLevel.QUIET
                ),
                str(empty),
            )
            for c in (*STAGED_CASES, *HEAP_CASES)
        }
        active = [c for c in cases if c not in skipped]
        for r, order in enumerate(round_orders(active, o.rounds, o.seed)):
            for c in order:
                log(f"round {r + 1}/{o.rounds}: {c} x {o.engines}")
                if c in ("cold", *STAGED_CASES):
                    drop_from_cache(model)  # staged engines do not need the source's page cache
                elif c in ("warm", "mlock", "heap"):
                    read_into_cache(model)
                case = _Case(c, staged_path if c in STAGED_CASES else model, o, env.get(c))
                res = _one_case(case, server, root, model, staged_kb, held_kb)
                res["round"] = r
                out.append(res)
    finally:
        pages.give_back()
        with contextlib.suppress(HugeloadError):
            for m in store.manifests(store_dir):
                store.unstage(m.name, force=True, state_dir=store_dir, root=root)
        with contextlib.suppress(HugeloadError):
            store.gc(store_dir, root)
        shutil.rmtree(d, ignore_errors=True)
    data = summarize(model, o, cases, out, skipped, setup_s)
    recommended = RECOMMENDED_CASE[Advice(reads["advice"])] if reads else None
    data.update(reads=reads, recommended_case=recommended, heap_pages=_pages_json(heap))
    data["pools_restored"] = pages.restored
    for e in data["results"]:
        e["layout"] = LAYOUTS.get(e["case"])
        e["recommended"] = e["case"] == recommended
    return data


def _heap_pages(model: str, server: str, o: FleetOptions) -> dict[int, int]:
    """Pages per page size (kB) one engine's predicted heap copies take under the preload library."""
    p = runner.predict_buffers(model, server)
    return runner.heap_pages({model: p}, None, o.alloc_threshold) if p else {}


def _reserve_heap(
    pages: reservations.PageReservations, heap: dict[int, int], o: FleetOptions, root, log
) -> tuple[str | None, int]:
    """Reserve the N engines' heap copies (our own pages, given back at the end): (why heap and
    both are skipped, or None; the kB reserved)."""
    if not heap:
        return (
            f"llama.cpp makes no heap copy of {o.alloc_threshold >> 20} MiB or more of this model on this CPU "
            "(--alloc-threshold): the layouts are warm and staged",
            0,
        )
    held = 0
    for kb, n in heap.items():
        r = reservations.reserve_pages(root, kb, n * o.engines, log)
        pages.reservations.append(r)
        held += r.got * kb
        if r.got < n * o.engines:
            return f"reserved {r.got} of the {n * o.engines} x {kb} kB pages the heap copies need", held
    return None, held


def _pages_json(counts: dict[int, int]) -> list[dict]:
    return [{"page_size_kb": kb, "pages": n} for kb, n in sorted(counts.items())]


def summarize(model: str, options: FleetOptions, cases: list[str], out: list[dict], skipped, setup_s) -> dict:
    results = []
    for c in cases:
        if c in skipped:
            results.append({"case": c, "status": "skipped", "reason": skipped[c]})
            continue
        mine = [x for x in out if x["case"] == c]
        ok = [x for x in mine if not x["error"]]
        if not ok:
            results.append({"case": c, "status": "failed", "reason": mine[0]["error"] if mine else "not run"})
            continue
        e = {
            "case": c,
            "status": "ok",
            "reason": None,
            "failed_runs": len(mine) - len(ok),
            "loaded_s": stat_dict([max(x["loaded_s"]) for x in ok]),
            "first_token_s": stat_dict([max(x["first_token_s"]) for x in ok]),
        }
        for k in MEMORY_KEYS:
            e[k] = int(sorted(x[k] for x in ok)[len(ok) // 2])
        # Per engine, from the medians (account(): shared counted once, each engine's own summed).
        n = max(1, options.engines)
        e["per_engine_kb"], e["own_per_engine_kb"] = e["memory_kb"] // n, e["own_kb"] // n
        e["pinned_per_engine_kb"] = e["pool_used_kb"] // n
        e["mem_available_per_engine_kb"] = e["mem_available_kb"] // n
        results.append(e)
    return {
        "model": model,
        "model_size": os.path.getsize(model),
        "engines": options.engines,
        "rounds": options.rounds,
        "staging_s": setup_s,
        "results": results,
        "note": "times from spawning the N engines together until the last one answered; memory read once "
        "after all answered, shared memory (staged copy, page cache) counted once, each engine's own (anonymous "
        "Pss, heap copies in huge pages) summed, per engine = total / N; pinned: huge pages, which the kernel "
        "never reclaims; MemAvailable: its drop while the engines started plus the pool pages the layout held "
        "(it counts the page cache as available); medians over interleaved rounds with bootstrap "
        "95% intervals",
    }
