"""What "pools, mounts, the store, the index and the ledger agree" means, checked against the
kernel (/sys pool counts, /proc/mounts) and the files themselves: the recovery check of the
crash and concurrency tests (tests/act/test_crash.py, test_concurrency.py).

Also a way to run the CLI in a forked child of the test process (no interpreter start, so a
kill lands in hugeload's own work rather than in Python's imports) and SIGKILL it."""

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

from hugeload.act import ledger, redirects
from hugeload.act.store import layout, manifest

SYS = Path("/sys/kernel/mm/hugepages")
SIZES = (2048, 1048576)


def pool_count(kb: int) -> int:
    """Persistent pages: nr_hugepages counts surplus pages too, which go by themselves."""
    d = SYS / f"hugepages-{kb}kB"
    return int((d / "nr_hugepages").read_text()) - int((d / "surplus_hugepages").read_text())


def pools() -> dict[int, int]:
    return {kb: pool_count(kb) for kb in SIZES}


def hugetlbfs_mounts() -> set[str]:
    with open("/proc/mounts") as f:
        return {line.split()[1] for line in f if line.split()[2:3] == ["hugetlbfs"]}


def files_on_store_mounts(state_dir) -> set[str]:
    """Every entry under the store's mount directories (lstat, never following a link)."""
    out = set()
    for kb in SIZES:
        top = layout.mount_dir(kb, state_dir)
        if not top.is_dir() or top.is_symlink():
            continue
        for dirpath, dirnames, filenames in os.walk(top):
            out |= {os.path.join(dirpath, f) for f in filenames}
            for d in dirnames:
                p = os.path.join(dirpath, d)
                if not os.listdir(p):
                    out.add(p + "/")  # an empty directory is a leftover too
    return out


def check_consistent(state_dir, baseline: dict[int, int], sources_equal: bool = True) -> list[str]:
    """Problems found (empty: everything agrees).  Call after `hugeload gc`, with nothing else
    running.  `baseline`: the pool counts before the test."""
    problems = []
    data = ledger.load(state_dir)
    if data["intents"]:
        problems.append(f"intents left after gc: {data['intents']}")
    # pools: every page hugeload added is someone's share (system-wide pools: the tests never place)
    for kb in SIZES:
        added = pool_count(kb) - baseline[kb]
        recorded = ledger.share(data, kb, None)
        if added != recorded:
            problems.append(f"{kb} kB pool: {added} pages above the baseline, the ledger accounts for {recorded}")
    models = {m.name: m for m in manifest.manifests(state_dir, readable_only=False)}
    for o in ledger.owners(data):
        if o.is_process and not o.alive():
            problems.append(f"share of a dead process left after gc: {o}")
        if o.kind == "model" and o.name not in models:
            problems.append(f"share of a model that is not staged: {o}")
    # mounts: the ledger lists exactly the hugetlbfs mounts under the state dir
    mine = {p for p in hugetlbfs_mounts() if p.startswith(str(layout.store_dir(state_dir)) + "/")}
    listed = {e["path"] for e in data["mounts"]}
    if mine != listed:
        problems.append(f"mounts {sorted(mine)} but the ledger lists {sorted(listed)}")
    # the store: the files on its mounts are exactly the manifests' files, each ready
    named = set()
    for m in models.values():
        if not m.readable:
            problems.append(f"manifest of {m.name} unreadable: {m.error}")
            continue
        state = manifest.model_state(m)
        if state != "ready":
            problems.append(f"model {m.name} is {state}")
        for c in m.copies:
            for f in c.files:
                for path, _, offset, size in f.pieces(c.page_size_kb):  # a copy in mixed page sizes: each part
                    named.add(path)
                    if sources_equal and os.path.exists(f.source):
                        with open(f.source, "rb") as a, open(path, "rb") as b:
                            a.seek(offset)
                            if a.read(size) != b.read(size):
                                problems.append(f"{path} differs from bytes {offset}.. of {f.source}")
    on_disk = files_on_store_mounts(state_dir)
    if on_disk != named:
        problems.append(
            f"store files no manifest names: {sorted(on_disk - named)[:5]}, missing: {sorted(named - on_disk)[:5]}"
        )
    # the index lists exactly the ready copies
    want = set(manifest.index_entries(list(models.values())))
    have = set(redirects.read(state_dir))
    if want != have:
        problems.append(
            f"index differs from the ready copies: extra {sorted(have - want)[:3]}, missing {sorted(want - have)[:3]}"
        )
    return problems


def fork_cli(argv: list[str], log_path: str | None = None, crash_at: int = 0, count_to: str | None = None) -> int:
    """Run `hugeload ARGV` in a forked child (stdout and stderr to `log_path` or /dev/null);
    returns its pid.  `crash_at`: the child kills itself at that crash point
    (hugeload.act.crashpoint); `count_to`: a file the child writes the number of crash points
    it passed to.  The child never returns into pytest."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        fd = os.open(log_path or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115  pytest replaced the objects: write to the fds
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
        from hugeload.act import crashpoint
        from hugeload.cli import main

        crashpoint.arm(crash_at)
        code = main([str(a) for a in argv])
        if count_to:
            Path(count_to).write_text(str(crashpoint.passed()))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 2
    except BaseException:  # noqa: BLE001 - the parent reads the exit status
        code = 99
    finally:
        os._exit(code if isinstance(code, int) else 1)


def run_and_maybe_kill(
    argv: list[str],
    kill_after: float | None,
    log_path: str | None = None,
    crash_at: int = 0,
    count_to: str | None = None,
) -> tuple[bool, int, float]:
    """(killed, exit status or -signal, seconds it ran).  Killed only if it was still running
    `kill_after` seconds after it started (or when it reached crash point `crash_at`)."""
    t0 = time.monotonic()
    pid = fork_cli(argv, log_path, crash_at, count_to)
    if kill_after is not None:
        deadline = t0 + kill_after
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return False, os.waitstatus_to_exitcode(status), time.monotonic() - t0
            time.sleep(min(0.002, max(0.0, deadline - time.monotonic())))
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return code == -signal.SIGKILL, code, time.monotonic() - t0
