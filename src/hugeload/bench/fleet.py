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
For each engine: time until /health answers (loaded) and until the first token of a
one-token completion comes back (time to first token, from the spawn).  Memory is read
once, after every engine has answered (never while one is timed): Pss, HugetlbPages and
VmLck of each engine, the model's pages in the page cache (mincore), and the pool pages
in use.  Rounds interleave the cases in a shuffled order.
"""

import contextlib
import json
import os
import shutil
import socket
import time
import urllib.request
from dataclasses import dataclass

from hugeload import engines, launch, runner
from hugeload.act import state, store
from hugeload.bench.copies import bench_dir
from hugeload.bench.pagecache import drop_from_cache, read_into_cache, resident_fraction
from hugeload.bench.stats import round_orders, stat_dict
from hugeload.errors import HugeloadError, UsageError
from hugeload.probe import pools as probe_pools
from hugeload.probe import procs

CASES = ("cold", "warm", "mlock", "private", "staged")
LOAD_MODE = {"mlock": "mmap+mlock", "private": "none"}


@dataclass(frozen=True)
class FleetOptions:
    engines: int = 2  # started together per case
    cases: tuple[str, ...] = CASES
    rounds: int = 3
    threads: int = 1  # per engine
    server: str | None = None  # llama-server (None: the one hugeload finds)
    timeout: float = 300.0  # seconds the engines may take to answer
    seed: int = 0


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


def _one_case(c: _Case, server: str, root, pool_before: int, source: str) -> dict:
    o = c.options
    started: list[launch.Running] = []
    ports: list[int] = []
    try:
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
        return {
            "case": c.case,
            "error": None,
            "loaded_s": loaded,
            "first_token_s": first,
            "pss_kb": sum(_private_pss_kb(e.pid) for e in started),
            "hugetlb_kb": sum(procs.status_kb(s, "HugetlbPages") for s in statuses),
            "vmlck_kb": sum(procs.status_kb(s, "VmLck") for s in statuses),
            # The staged copy's pages count for the staged case only (it waits, unused, meanwhile).
            "pool_used_kb": max(0, _pool_used_kb(root) - pool_before) if c.case == "staged" else 0,
            "page_cache_kb": int((resident_fraction(source) or 0) * os.path.getsize(source)) >> 10,
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
    staged_path, setup_s, skipped = None, None, {}
    out: list[dict] = []
    pool_before = _pool_used_kb(root)
    try:
        state.ensure_dir(d)
        if "staged" in cases:
            state.ensure_dir(store_dir)
            t = time.perf_counter()
            try:
                m, _, _ = store.stage(
                    model, store.StageOptions(name="bench-fleet", reserve=True), state_dir=store_dir, root=root
                )
                staged_path, setup_s = m.path, time.perf_counter() - t
            except HugeloadError as e:
                skipped["staged"] = f"could not stage: {e}"
        # As `hugeload run` would: the preload library keeps the engines' sub-page munmaps of the
        # staged file from failing; nothing else (no allocations, no copy).
        empty = state.ensure_dir(d / "empty")
        staged_env = runner.environment(runner.PreloadOptions(alloc_threshold=0, log=runner.LogLevel.QUIET), str(empty))
        active = [c for c in cases if c not in skipped]
        for r, order in enumerate(round_orders(active, o.rounds, o.seed)):
            for c in order:
                log(f"round {r + 1}/{o.rounds}: {c} x {o.engines}")
                if c in ("cold", "staged"):
                    drop_from_cache(model)  # staged engines do not need the source's page cache
                elif c in ("warm", "mlock"):
                    read_into_cache(model)
                case = _Case(c, staged_path if c == "staged" else model, o, staged_env if c == "staged" else None)
                res = _one_case(case, server, root, pool_before, model)
                res["round"] = r
                out.append(res)
    finally:
        with contextlib.suppress(HugeloadError):
            for m in store.manifests(store_dir):
                store.unstage(m.name, force=True, state_dir=store_dir, root=root)
        with contextlib.suppress(HugeloadError):
            store.gc(store_dir, root)
        shutil.rmtree(d, ignore_errors=True)
    return summarize(model, o, cases, out, skipped, setup_s)


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
        for k in ("pss_kb", "hugetlb_kb", "vmlck_kb", "pool_used_kb", "page_cache_kb"):
            e[k] = int(sorted(x[k] for x in ok)[len(ok) // 2])
        # What is shared is counted once: the engines' anonymous and shmem Pss, the pool pages
        # in use (the staged copy), and the source file's pages in the page cache.
        e["memory_kb"] = e["pss_kb"] + e["pool_used_kb"] + e["page_cache_kb"]
        results.append(e)
    return {
        "model": model,
        "model_size": os.path.getsize(model),
        "engines": options.engines,
        "rounds": options.rounds,
        "staging_s": setup_s,
        "results": results,
        "note": "times from spawning the N engines together until the last one answered; memory read once "
        "after all answered; medians over interleaved rounds with bootstrap 95% intervals",
    }
