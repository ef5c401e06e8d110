"""Crash consistency by fault injection: SIGKILL at random points, then recovery, then a check
that nothing is unaccounted for.

Modelled on how databases test crash consistency rather than on unit tests of each step:
SQLite's crash tests kill (or simulate the loss of) a process at random points of a
transaction and check the database after recovery; the ALICE study (Pillai et al., "All File
Systems Are Not Created Equal", OSDI 2014) found applications losing data exactly between two
writes that each looked right on their own.  Here the "transaction" is a hugeload command
(`stage --reserve` in 2M and 1G pages, `reserve`, `unstage`, `release`, `gc`), the recovery is
`hugeload gc`, and the check (store_check.check_consistent) compares the kernel's pools and
mounts, the store's files, the redirect index and the ledger.  At the end everything is
unstaged and released, and the pools must be exactly where they were: pages leaked = 0.

Two kinds of kill, both a real SIGKILL of the command's process:
  timed   after a random delay drawn over the command's measured running time (what a user's
          kill -9 or the OOM killer does);
  point   at a random one of the crash points the command passes (hugeload.act.crashpoint:
          between an intent and its write, a write and its record, a rename and its manifest),
          windows a few microseconds wide that timed kills almost never hit.
Seeded: HUGELOAD_CRASH_SEED=<n> replays a run (the seed is printed); HUGELOAD_CRASH_KILLS sets
the kills of each kind (default 50).  Commands run in forked children of this process, so no
kill is spent in the interpreter's start-up.  scripts/crash-test.sh --seeds N runs more seeds.
"""

import os
import random
import time
from pathlib import Path

import pytest
from store_check import check_consistent, pools, run_and_maybe_kill

from hugeload.act import ledger

pytestmark = [pytest.mark.kernel]
MiB = 1 << 20
KILLS = int(os.environ.get("HUGELOAD_CRASH_KILLS", "50"))
TIME_BUDGET_S = float(os.environ.get("HUGELOAD_CRASH_SECONDS", "80"))


@pytest.fixture(autouse=True)
def _root(needs_root, state_dir):
    yield


def one_gb_held(state_dir) -> int:
    return ledger.share(ledger.load(state_dir), 1048576, None)


def test_kill_9_at_random_points_leaks_nothing(state_dir, tmp_path, capsys):
    seed = int(os.environ.get("HUGELOAD_CRASH_SEED") or random.SystemRandom().randrange(2**32))
    rng = random.Random(seed)
    with capsys.disabled():
        print(f"\ncrash test seed {seed} (HUGELOAD_CRASH_SEED={seed} replays it)")
    sources = {}
    for i, size in enumerate((6 * MiB + 123, 13 * MiB, 20 * MiB - 7)):
        p = tmp_path / f"src{i}.bin"
        p.write_bytes(rng.randbytes(size))
        sources[f"m{i}"] = p
    small = tmp_path / "one-page.bin"
    small.write_bytes(rng.randbytes(3 * MiB))
    counted = tmp_path / "points"
    log = str(tmp_path / "commands.log")
    baseline = pools()

    def ops():
        name = rng.choice(sorted(sources))
        yield "stage-2m", ["stage", sources[name], "--page-size", "2m", "--reserve", "--name", name]
        yield "reserve-2m", ["reserve", "--count", rng.randint(1, 6), "--page-size", "2m", "--force"]
        yield "unstage", ["unstage", rng.choice([*sources, "big"]), "--force"]
        yield "release", ["release", *(["--all"] if rng.random() < 0.5 else [])]
        yield "gc", ["gc"]
        if one_gb_held(state_dir) == 0:  # at most one 1 GB page at a time, hugeload's or not
            for _ in range(2):  # twice as likely: the slow 1 GB writes and retries are where kills leaked
                yield "stage-1g", ["stage", small, "--page-size", "1g", "--reserve", "--name", "big"]
                yield "reserve-1g", ["reserve", "--count", "1", "--page-size", "1g", "--force"]

    took: dict[str, float] = {}  # the longest each kind of command ran when not killed
    points: dict[str, int] = {}  # the most crash points it passed
    kills: dict[str, dict[str, int]] = {"timed": {}, "point": {}}
    checks = 0
    t0 = time.monotonic()

    def total(how):
        return sum(kills[how].values())

    try:
        while (total("timed") < KILLS or total("point") < KILLS) and time.monotonic() - t0 < TIME_BUDGET_S:
            kind, argv = rng.choice(list(ops()))
            if kind not in took or rng.random() < 0.1:
                how, delay, at = "learn", None, 0  # how long it runs, how many points it passes
            elif total("timed") < KILLS and (total("point") >= KILLS or rng.random() < 0.5):
                how, delay, at = "timed", rng.uniform(0, 1.3 * took[kind]), 0
            else:
                how, delay, at = "point", None, rng.randint(1, max(1, points[kind]))
            counted.unlink(missing_ok=True)
            with open(log, "a") as _f:
                _f.write(f"=== {kind} {[str(a) for a in argv]} how={how} delay={delay} at={at}\n")
            killed, code, secs = run_and_maybe_kill(argv, delay, log, at, str(counted))
            if killed:
                kills[how][kind] = kills[how].get(kind, 0) + 1
            else:
                assert code in (0, 1, 2, 3), f"{kind} exited {code} (seed {seed}); see {log}"
                took[kind] = max(took.get(kind, 0.0), secs)
                if counted.exists():
                    points[kind] = max(points.get(kind, 0), int(counted.read_text()))
            if killed and rng.random() < 0.2:
                assert run_and_maybe_kill(["gc"], None, log)[1] == 0, f"gc failed (seed {seed})"
                problems = check_consistent(state_dir, baseline)
                checks += 1
                assert not problems, f"{how} kill of {kind} (seed {seed}): {problems}"
        assert run_and_maybe_kill(["gc"], None, log)[1] == 0
        problems = check_consistent(state_dir, baseline)
        assert not problems, f"after {total('timed') + total('point')} kills (seed {seed}): {problems}"
    finally:
        run_and_maybe_kill(["clear", "--force"], None, log)
        run_and_maybe_kill(["gc"], None, log)
        run_and_maybe_kill(["release", "--all"], None, log)
    leaked = {kb: n - baseline[kb] for kb, n in pools().items()}
    with capsys.disabled():
        print(
            f"crash test seed {seed}: {total('timed')} timed kills {dict(sorted(kills['timed'].items()))}, "
            f"{total('point')} crash-point kills {dict(sorted(kills['point'].items()))}, {checks + 1} recovery "
            f"checks, pages leaked {leaked}, {time.monotonic() - t0:.0f} s; longest runs {took}, points {points}"
        )
    assert leaked == {2048: 0, 1048576: 0}, f"seed {seed}"
    assert total("timed") >= KILLS, f"only {total('timed')} timed kills in {TIME_BUDGET_S:.0f} s (seed {seed})"


def test_kill_at_the_crash_points_of_a_mixed_stage_leaks_nothing(state_dir, tmp_path, capsys):
    """A copy in mixed page sizes (its first GiB in the one free 1 GB page, the rest in 2 MB
    pages: two work directories in two mounts, two files, two renames) killed at random crash
    points: after gc the store, mounts, index and ledger agree, and unstage gives everything back.
    A file near 1 GiB: the 1 GB page is touched once at ~0.4 GB/s, then reused by each stage."""
    seed = int(os.environ.get("HUGELOAD_CRASH_SEED") or random.SystemRandom().randrange(2**32))
    rng = random.Random(seed)
    sys_dir = "/sys/kernel/mm/hugepages/hugepages-{}kB/nr_hugepages"
    before = pools()
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.write(rng.randbytes(MiB) * 1024 + rng.randbytes(4 * MiB + 99))
    log = str(tmp_path / "commands.log")
    counted = tmp_path / "points"
    try:
        for kb, n in ((1048576, 1), (2048, 3)):
            with open(sys_dir.format(kb), "w") as f:
                f.write(str(n))
        if pools()[1048576] < 1:
            pytest.skip("the kernel gives no 1 GB page now")
        baseline = pools()
        argv = ["stage", big, "--page-size", "1g", "--name", "big"]
        killed, code, _ = run_and_maybe_kill(argv, None, log, 0, str(counted))
        assert not killed and code == 0, Path(log).read_text()
        n_points = int(counted.read_text())
        assert run_and_maybe_kill(["unstage", "big", "--force"], None, log)[1] == 0
        ats = sorted(rng.sample(range(1, n_points + 1), min(4, n_points)))
        with capsys.disabled():
            print(f"\nmixed crash test seed {seed}: {n_points} points, killing at {ats}")
        for at in ats:
            killed, code, _ = run_and_maybe_kill(argv, None, log, at)
            assert killed, f"not killed at point {at} of {n_points} (seed {seed})"
            assert run_and_maybe_kill(["gc"], None, log)[1] == 0, f"gc failed (seed {seed})"
            problems = check_consistent(state_dir, baseline)
            assert not problems, f"kill at point {at} of a mixed stage (seed {seed}): {problems}"
            run_and_maybe_kill(["unstage", "big", "--force"], None, log)
        assert run_and_maybe_kill(argv, None, log)[1] == 0  # and staged whole after all that
        assert not check_consistent(state_dir, baseline)
    finally:
        run_and_maybe_kill(["clear", "--force"], None, log)
        run_and_maybe_kill(["gc"], None, log)
        free = {kb: int(Path(sys_dir.format(kb)).with_name("free_hugepages").read_text()) for kb in before}
        for kb, n in before.items():
            with open(sys_dir.format(kb), "w") as f:
                f.write(str(n))
    assert free == baseline, f"seed {seed}: pages not back in the pool after clear"
