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
import random
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from hugeload import engines
from hugeload.act import state, store
from hugeload.bench.common import bootstrap_median_ci
from hugeload.bench.stage import drop_from_cache, read_into_cache, resident_fraction
from hugeload.errors import HugeloadError, UsageError
from hugeload.probe import pools as probe_pools
from hugeload.probe.procs import read_status

CASES = ("cold", "warm", "mlock", "private", "staged")
LOAD_MODE = {"mlock": "mmap+mlock", "private": "none"}


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


def _kb(status: dict, key: str) -> int:
    with contextlib.suppress(ValueError, IndexError):
        return int(status.get(key, "0 kB").split()[0])
    return 0


def _private_pss_kb(pid: int) -> int:
    """Pss less its file-backed part (the page cache is counted once, from mincore)."""
    out = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith(("Pss_Anon:", "Pss_Shmem:")):
                out += int(line.split()[1])
    return out


def _pool_used_kb(root) -> int:
    used = 0
    for kb in probe_pools.page_sizes(root):
        p = probe_pools.system_pool(root, kb)
        used += (p.total - p.free) * kb
    return used


def _one_case(
    case: str,
    model: str,
    server: str,
    n: int,
    threads: int,
    timeout: float,
    root,
    env: dict | None = None,
    pool_before: int = 0,
    source: str | None = None,
) -> dict:
    procs, ports = [], []
    try:
        t0 = time.perf_counter()
        for _ in range(n):
            port = _free_port()
            argv = [
                server,
                "-m",
                model,
                "--port",
                str(port),
                "--host",
                "127.0.0.1",
                "-t",
                str(threads),
                "-c",
                "256",
                "-np",
                "1",
                "--no-warmup",
            ] + (["-lm", LOAD_MODE[case]] if case in LOAD_MODE else [])
            procs.append(
                subprocess.Popen(
                    argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, errors="replace", env=env
                )
            )
            ports.append(port)
        loaded: list[float | None] = [None] * n
        first: list[float | None] = [None] * n
        deadline = t0 + timeout
        while any(x is None for x in loaded) and time.perf_counter() < deadline:
            for i, (p, port) in enumerate(zip(procs, ports)):
                if loaded[i] is None and p.poll() is None and _get(f"http://127.0.0.1:{port}/health", 0.5) == 200:
                    loaded[i] = time.perf_counter() - t0
            if any(p.poll() is not None for p in procs):
                break
            time.sleep(0.02)
        for i, port in enumerate(ports):
            if loaded[i] is not None:
                ok = (
                    _get(
                        f"http://127.0.0.1:{port}/completion",
                        timeout,
                        {"prompt": "hello", "n_predict": 1, "cache_prompt": False},
                    )
                    == 200
                )
                first[i] = time.perf_counter() - t0 if ok else None
        dead = [p for p in procs if p.poll() is not None]
        if dead or any(x is None for x in first):
            err = ""
            if dead:
                with contextlib.suppress(Exception):
                    err = [x for x in (dead[0].stderr.read() or "").splitlines() if x.strip()][-1]
            return {"case": case, "error": err or "an engine did not answer in time"}
        # Memory, once every engine answered.
        statuses = [read_status("/", p.pid) for p in procs]
        return {
            "case": case,
            "error": None,
            "loaded_s": loaded,
            "first_token_s": first,
            "pss_kb": sum(_private_pss_kb(p.pid) for p in procs),
            "hugetlb_kb": sum(_kb(s, "HugetlbPages") for s in statuses),
            "vmlck_kb": sum(_kb(s, "VmLck") for s in statuses),
            # The staged copy's pages count for the staged case only (it waits, unused, meanwhile).
            "pool_used_kb": max(0, _pool_used_kb(root) - pool_before) if case == "staged" else 0,
            "page_cache_kb": int((resident_fraction(source or model) or 0) * os.path.getsize(source or model)) >> 10,
        }
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def run(
    model: str,
    n: int = 2,
    cases: list[str] | None = None,
    rounds: int = 3,
    threads: int = 1,
    server: str | None = None,
    timeout: float = 300.0,
    root="/",
    seed: int = 0,
    log=lambda m: None,
    state_dir=None,
) -> dict:
    if not os.path.isfile(model):
        raise UsageError(f"no such model file: {model}")
    if n < 1 or rounds < 1:
        raise UsageError("--engines and --rounds must be at least 1")
    server = server or (str(engines.find_llama("llama-server") or "") or None)
    if not server:
        raise UsageError("llama-server not found (scripts/get-llama.sh, or --server PATH)")
    cases = cases or list(CASES)
    from hugeload.bench.engine import bench_dir

    d = bench_dir(state_dir)
    store_dir = d / "state"
    staged_path, setup_s, skipped = None, None, {}
    out: list[dict] = []
    pool_before = _pool_used_kb(root)
    try:
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
        from hugeload import runner

        empty = d / "empty"
        state.ensure_dir(empty)
        staged_env = runner.environment(runner.PreloadOptions(alloc_threshold=0, log=runner.LogLevel.QUIET), str(empty))
        active = [c for c in cases if c not in skipped]
        rng = random.Random(seed)
        for r in range(rounds):
            order = active[:]
            rng.shuffle(order)
            for c in order:
                log(f"round {r + 1}/{rounds}: {c} x {n}")
                if c in ("cold", "staged"):
                    drop_from_cache(model)  # staged engines do not need the source's page cache
                elif c in ("warm", "mlock"):
                    read_into_cache(model)
                res = _one_case(
                    c,
                    staged_path if c == "staged" else model,
                    server,
                    n,
                    threads,
                    timeout,
                    root,
                    staged_env if c == "staged" else None,
                    pool_before,
                    model,
                )
                res["round"] = r
                out.append(res)
    finally:
        with contextlib.suppress(HugeloadError):
            for m in store.manifests(store_dir):
                store.unstage(m.name, force=True, state_dir=store_dir, root=root)
        with contextlib.suppress(HugeloadError):
            store.gc(store_dir, root)
        shutil.rmtree(d, ignore_errors=True)
    return summarize(model, n, cases, rounds, out, skipped, setup_s)


def _stat(values: list[float]) -> dict | None:
    if not values:
        return None
    med, lo, hi = bootstrap_median_ci(values)
    return {"median": med, "low": lo, "high": hi, "values": values}


def summarize(model, n, cases, rounds, out, skipped, setup_s) -> dict:
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
            "loaded_s": _stat([max(x["loaded_s"]) for x in ok]),
            "first_token_s": _stat([max(x["first_token_s"]) for x in ok]),
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
        "engines": n,
        "rounds": rounds,
        "staging_s": setup_s,
        "results": results,
        "note": "times from spawning the N engines together until the last one answered; memory read once "
        "after all answered; medians over interleaved rounds with bootstrap 95% intervals",
    }
