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
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from enum import Enum

from hugeload import launch, native, runner
from hugeload.bench.stats import round_orders, stat
from hugeload.errors import UsageError

CHILD = (
    "import sys\nfrom hugeload import native\nl = native.load()\n"
    "n, size, reps = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])\n"
    "print(f'hugeload-hotpath-ns={min(l.hugeload_malloc_free_ns(n, size) for _ in range(reps))}')\n"
)
NONE = "none"
_NS = re.compile(r"hugeload-hotpath-ns=([0-9.eE+-]+)")
_TOTAL = re.compile(r"Collected\s*:\s*([0-9]+)")


class Instructions(Enum):
    """Whether to count instructions with callgrind."""

    AUTO = "auto"  # when valgrind is installed
    COUNT = "count"
    SKIP = "skip"


@dataclass(frozen=True)
class HotpathOptions:
    pairs: int = 2_000_000  # malloc/free pairs per measurement
    size: int = 64  # bytes per allocation
    rounds: int = 10
    libraries: dict[str, str] = field(default_factory=dict)  # name -> another build of libhugeload.so
    instructions: Instructions = Instructions.AUTO
    seed: int = 0


def _env(lib: str | None, state_dir: str) -> dict:
    """The child's environment: ours without any preload setting, then, for a library, what
    `hugeload run` would set (runner.environment) with that build in LD_PRELOAD."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("HUGELOAD_") and k != "LD_PRELOAD"}
    base["PYTHONHASHSEED"] = "0"  # the same start-up instructions in every child
    if lib is None:
        base["HUGELOAD_STATE_DIR"] = state_dir
        return base
    return runner.environment(runner.PreloadOptions(library=lib), state_dir, base)  # an empty store: no index


def _child(lib: str | None, pairs: int, size: int, reps: int, state_dir: str, wrap: tuple[str, ...] = ()) -> str:
    argv = [*wrap, sys.executable, "-c", CHILD, str(pairs), str(size), str(reps)]
    done = launch.run(launch.Command(argv, _env(lib, state_dir), output=launch.Output.CAPTURE, timeout=600))
    if done.returncode != 0:
        raise UsageError(f"the measuring process failed{' under ' + lib if lib else ''}: {done.last_line()}")
    return done.output


def _ns(lib: str | None, pairs: int, size: int, state_dir: str) -> float:
    m = _NS.search(_child(lib, pairs, size, 3, state_dir))
    if not m:
        raise UsageError("the measuring process printed no time")
    return float(m.group(1))


def _instructions(lib: str | None, pairs: int, size: int, state_dir: str) -> int:
    wrap = ("valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null")
    m = _TOTAL.search(_child(lib, pairs, size, 1, state_dir, wrap))
    if not m:
        raise UsageError("callgrind printed no instruction count")
    return int(m.group(1))


def _libraries(extra: dict[str, str]) -> dict[str, str | None]:
    libs: dict[str, str | None] = {NONE: None, "hugeload": str(native.library_path())}
    for name, path in extra.items():
        if not os.path.isfile(path):
            raise UsageError(f"no such library: {path}")
        libs[name] = os.path.abspath(path)
    if not os.path.isfile(libs["hugeload"] or ""):
        raise UsageError(f"the preload library is not built: {libs['hugeload']} (pip install .)")
    return libs


def run(options: HotpathOptions = HotpathOptions(), *, log=lambda msg: None) -> dict:
    o = options
    if o.pairs < 1000 or o.rounds < 1 or o.size < 1:
        raise UsageError("--pairs must be at least 1000, --rounds and --size at least 1")
    libs = _libraries(o.libraries)
    have_valgrind = shutil.which("valgrind") is not None
    if o.instructions is Instructions.COUNT and not have_valgrind:
        raise UsageError("--instructions needs valgrind (apt-get install valgrind)")
    count = o.instructions is Instructions.COUNT or (o.instructions is Instructions.AUTO and have_valgrind)
    ns: dict[str, list[float]] = {k: [] for k in libs}
    counts = {}
    with tempfile.TemporaryDirectory(prefix="hugeload-hotpath-") as state_dir:
        for r, order in enumerate(round_orders(list(libs), o.rounds, o.seed)):
            log(f"round {r + 1}/{o.rounds}")
            for name in order:
                ns[name].append(_ns(libs[name], o.pairs, o.size, state_dir))
        if count:
            short, long_ = 100_000, 100_000 + min(o.pairs, 1_000_000)
            for name, lib in libs.items():
                log(f"counting instructions: {name}")
                a, b = _instructions(lib, short, o.size, state_dir), _instructions(lib, long_, o.size, state_dir)
                counts[name] = (b - a) / (long_ - short)
    results = []
    for name in libs:
        entry = {"library": name, "path": libs[name], "ns_per_pair": stat(ns[name]).as_dict()}
        if name != NONE:
            diffs = [x - y for x, y in zip(ns[name], ns[NONE], strict=True)]
            entry["extra_ns"] = stat(diffs, seed=o.seed).as_dict()
        if name in counts:
            entry["instructions_per_pair"] = counts[name]
            if name != NONE:
                entry["extra_instructions"] = counts[name] - counts[NONE]
        results.append(entry)
    return {
        "pairs": o.pairs,
        "size": o.size,
        "rounds": o.rounds,
        "results": results,
        "instructions_counted": count,
        "note": (
            "time: wall-clock of the native loop, best of 3 per process, median over interleaved rounds, "
            "extra = median of per-round differences with a bootstrap 95% interval"
            + (
                "; instructions: callgrind, two loop lengths, difference per pair"
                if count
                else "; instructions not counted (no valgrind)"
            )
        ),
    }


__all__ = ["run", "HotpathOptions", "Instructions"]
