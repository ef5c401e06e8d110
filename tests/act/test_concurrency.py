"""Several hugeload commands at once on one store: stage, unstage, gc, staged, restore and
readers (map_file), in separate processes for a while; then every listed model must be
readable and equal to its source, and the index must list exactly the ready copies.

What used to go wrong (issue 19): gc deleted a model staged a moment before (the copy was
renamed into place before its manifest existed), two writers of the redirect index or of
models.json each dropped the other's entries, and unstage resolved the model outside its
lock.  The workers here run the real CLI (`main()` in forked children, as in test_crash.py)
and hugeload.map_file(); every failure must be one clean line, a reader must never get bytes
that differ from the source, and a reader holding the store lock must always see a whole
state (check_now).  Seeded (HUGELOAD_CONCURRENCY_SEED; printed).
"""

import json
import os
import random
import signal
import sys
import time
from pathlib import Path

import pytest
from store_check import check_consistent, files_on_store_mounts, pools, run_and_maybe_kill

pytestmark = [pytest.mark.kernel]
MiB = 1 << 20
WORKERS = 4
SECONDS = float(os.environ.get("HUGELOAD_CONCURRENCY_SECONDS", "15"))


@pytest.fixture(autouse=True)
def _root(needs_root, state_dir):
    yield


def check_now() -> list[str]:
    """What a reader holding the store lock (shared, as `hugeload staged` does) sees must be a
    whole state: every manifest's model ready, the index exactly its ready copies, no file on
    the store's mounts that no manifest names (work directories of copies being made aside)."""
    from hugeload.act import redirects
    from hugeload.act.store import lock, manifest

    state_dir = os.environ["HUGELOAD_STATE_DIR"]
    with lock.store_lock(state_dir, shared=True):
        models = manifest.manifests(state_dir, readable_only=False)
        out = [f"{m.name} is {manifest.model_state(m)}" for m in models if manifest.model_state(m) != "ready"]
        if set(redirects.read(state_dir)) != set(manifest.index_entries(models)):
            out.append("the index is not the ready copies")
        named = {f.staged for m in models for f in m.all_files}
        extra = {f for f in files_on_store_mounts(state_dir) if "/.staging-" not in f} - named
        if extra:
            out.append(f"files no manifest names: {sorted(extra)[:3]}")
    return out


def worker(seed: int, sources: dict, log: str, deadline: float) -> None:
    """The loop of one worker process (never returns)."""
    rng = random.Random(seed)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115  pytest replaced the objects: write to the fds
    sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
    code = 0
    ops: dict[str, int] = {}
    try:
        import hugeload
        from hugeload.cli import main

        while time.monotonic() < deadline:
            name = rng.choice(sorted(sources))
            op = rng.choices(["stage", "unstage", "gc", "staged", "restore", "read", "check"], [5, 3, 2, 2, 1, 3, 2])[0]
            ops[op] = ops.get(op, 0) + 1
            if op == "stage":
                persist = ["--persist"] if rng.random() < 0.3 else []
                main(["stage", str(sources[name]), "--page-size", "2m", "--reserve", "--name", name, *persist])
            elif op == "unstage":
                main(["unstage", name, "--force"])
            elif op == "read":
                data = sources[name].read_bytes()
                with hugeload.map_file(sources[name]) as m:
                    if bytes(m.buffer) != data:
                        print(f"MISMATCH: map_file({name}) (staged={m.staged}) differs from the source", flush=True)
                        code = 98
            elif op == "check":
                for problem in check_now():
                    print(f"INCONSISTENT: {problem}", flush=True)
                    code = 97
            else:
                main([op, *(["--json"] if op == "staged" else [])])
    except BaseException as e:  # noqa: BLE001 - reported through the exit status and the log
        print(f"WORKER DIED: {type(e).__name__}: {e}", flush=True)
        code = 99
    print("OPS " + json.dumps(ops), flush=True)
    os._exit(code)


def test_commands_at_once_keep_the_store_consistent(state_dir, tmp_path, capsys):
    seed = int(os.environ.get("HUGELOAD_CONCURRENCY_SEED") or random.SystemRandom().randrange(2**32))
    with capsys.disabled():
        print(f"\nconcurrency test seed {seed}")
    rng = random.Random(seed)
    sources = {}
    for i, size in enumerate((5 * MiB, 9 * MiB + 1, 14 * MiB - 3, 3 * MiB)):
        p = tmp_path / f"model{i}.bin"
        p.write_bytes(rng.randbytes(size))
        sources[f"c{i}"] = p
    baseline = pools()
    deadline = time.monotonic() + SECONDS
    logs = [str(tmp_path / f"worker{i}.log") for i in range(WORKERS)]
    pids = []
    try:
        for i in range(WORKERS):
            pid = os.fork()
            if pid == 0:
                worker(seed + i, sources, logs[i], deadline)
            pids.append(pid)
        codes = []
        for pid in pids:
            _, status = os.waitpid(pid, 0)
            codes.append(os.waitstatus_to_exitcode(status))
        pids = []
        text = "\n".join(Path(p).read_text() for p in logs)
        bad = [
            line
            for line in text.splitlines()
            if any(w in line for w in ("internal error", "Traceback", "MISMATCH", "WORKER DIED", "INCONSISTENT"))
        ]
        assert codes == [0] * WORKERS and not bad, f"seed {seed}: exit {codes}, {bad[:5]}"
        assert run_and_maybe_kill(["gc"], None)[1] == 0
        problems = check_consistent(state_dir, baseline)
        assert not problems, f"seed {seed}: {problems}"
        ops: dict[str, int] = {}
        for line in text.splitlines():
            if line.startswith("OPS "):
                for k, v in json.loads(line[4:]).items():
                    ops[k] = ops.get(k, 0) + v
        with capsys.disabled():
            print(f"concurrency test seed {seed}: {WORKERS} workers for {SECONDS:.0f} s, {dict(sorted(ops.items()))}")
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        run_and_maybe_kill(["clear", "--force"], None)
        run_and_maybe_kill(["gc"], None)
        run_and_maybe_kill(["release", "--all"], None)
    assert pools() == baseline
