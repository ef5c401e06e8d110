"""What the preload library costs a program that never makes a large allocation.

Every malloc and free in a preloaded process passes through the library's
overrides; below the allocation threshold they only compare and forward
(csrc/preload/override.c).  This measures that cost per malloc/free pair of a
small block, two ways:

- time: a child process runs the native loop (`hugeload_malloc_free_ns`,
  clock_gettime around the loop, best of a few repeats) without the library and
  with it, the two interleaved in shuffled order over rounds; the extra cost is
  the median of per-round differences, with a bootstrap interval.  On a shared
  2-core VM single nanoseconds are near the noise: read the interval.
- instructions (where valgrind is installed): callgrind counts the instructions
  a child executes with two loop lengths; the difference divided by the extra
  pairs is the count per pair, without start-up.  Instruction counts do not
  depend on what else the machine is doing.

`--library PATH` adds another build of the library (an older release, say) as a
third configuration, so a change to the hot path can be checked against it.
"""

import os
import random
import re
import shutil
import subprocess
import sys
import tempfile

from hugeload import native
from hugeload.bench.common import bootstrap_median_ci
from hugeload.errors import UsageError

CHILD = (
    "import sys\nfrom hugeload import native\nl = native.load()\n"
    "n, size, reps = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])\n"
    "print(min(l.hugeload_malloc_free_ns(n, size) for _ in range(reps)))\n"
)
NONE = "none"
_TOTAL = re.compile(r"Collected\s*:\s*([0-9]+)")


def _env(lib: str | None, state_dir: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUGELOAD_") and k != "LD_PRELOAD"}
    env["PYTHONHASHSEED"] = "0"  # the same start-up instructions in every child
    env["HUGELOAD_STATE_DIR"] = state_dir  # an empty store: no index to read
    if lib:
        env["LD_PRELOAD"] = lib
    return env


def _child(lib: str | None, pairs: int, size: int, reps: int, state_dir: str, wrap: list[str] = ()) -> str:
    argv = [*wrap, sys.executable, "-c", CHILD, str(pairs), str(size), str(reps)]
    p = subprocess.run(argv, env=_env(lib, state_dir), capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]
        raise UsageError(f"the measuring process failed{' under ' + lib if lib else ''}: {last}")
    return p.stdout + p.stderr


def _instructions(lib: str | None, pairs: int, size: int, state_dir: str) -> int:
    out = _child(lib, pairs, size, 1, state_dir, ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"])
    m = _TOTAL.search(out)
    if not m:
        raise UsageError("callgrind printed no instruction count")
    return int(m.group(1))


def run(
    pairs: int = 2_000_000,
    size: int = 64,
    rounds: int = 10,
    libraries: dict[str, str] | None = None,
    instructions: bool | None = None,
    seed: int = 0,
    log=lambda msg: None,
) -> dict:
    if pairs < 1000 or rounds < 1 or size < 1:
        raise UsageError("--pairs must be at least 1000, --rounds and --size at least 1")
    libs = {NONE: None, "hugeload": str(native.library_path())}
    for name, path in (libraries or {}).items():
        if not os.path.isfile(path):
            raise UsageError(f"no such library: {path}")
        libs[name] = os.path.abspath(path)
    if not os.path.isfile(libs["hugeload"]):
        raise UsageError(f"the preload library is not built: {libs['hugeload']} (pip install .)")
    have_valgrind = shutil.which("valgrind") is not None
    if instructions is None:
        instructions = have_valgrind
    elif instructions and not have_valgrind:
        raise UsageError("--instructions needs valgrind (apt-get install valgrind)")
    rng = random.Random(seed)
    ns: dict[str, dict[int, float]] = {k: {} for k in libs}
    with tempfile.TemporaryDirectory(prefix="hugeload-hotpath-") as state_dir:
        for r in range(rounds):
            order = list(libs)
            rng.shuffle(order)
            log(f"round {r + 1}/{rounds}")
            for name in order:
                ns[name][r] = float(_child(libs[name], pairs, size, 3, state_dir).split()[0])
        counts = {}
        if instructions:
            short, long_ = 100_000, 100_000 + min(pairs, 1_000_000)
            for name, lib in libs.items():
                log(f"counting instructions: {name}")
                a, b = _instructions(lib, short, size, state_dir), _instructions(lib, long_, size, state_dir)
                counts[name] = (b - a) / (long_ - short)
    results = []
    for name in libs:
        vals = [ns[name][r] for r in sorted(ns[name])]
        med, lo, hi = bootstrap_median_ci(vals)
        entry = {
            "library": name,
            "path": libs[name],
            "ns_per_pair": {"median": med, "low": lo, "high": hi, "values": vals},
        }
        if name != NONE:
            diffs = [ns[name][r] - ns[NONE][r] for r in sorted(ns[name])]
            dm, dl, dh = bootstrap_median_ci(diffs, seed=seed)
            entry["extra_ns"] = {"median": dm, "low": dl, "high": dh}
        if name in counts:
            entry["instructions_per_pair"] = counts[name]
            if name != NONE:
                entry["extra_instructions"] = counts[name] - counts[NONE]
        results.append(entry)
    return {
        "pairs": pairs,
        "size": size,
        "rounds": rounds,
        "results": results,
        "instructions_counted": bool(instructions),
        "note": (
            "time: wall-clock of the native loop, best of 3 per process, median over interleaved rounds, "
            "extra = median of per-round differences with a bootstrap 95% interval"
            + (
                "; instructions: callgrind, two loop lengths, difference per pair"
                if instructions
                else "; instructions not counted (no valgrind)"
            )
        ),
    }


__all__ = ["run"]
