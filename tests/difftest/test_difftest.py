"""The preload library's differential tester (difftest.py beside this file): its default subset.

Fixed seeds in each mode (2 MB pages reserved, 1 GB pages where the pool gives them, both pools
empty), and every sequence kept in regressions/ (each one shrunk from a divergence the tester
found, or written for a defect of issue 20: its header says which).  More seeds:
scripts/difftest.sh --seeds N.  HUGELOAD_DIFFTEST_LIB=path/to/libhugeload.so tests another build
(how the regressions were checked against the library before issue 20: they diverge there).
"""

import os
from pathlib import Path

import difftest
import pytest

HERE = Path(__file__).resolve().parent
# Seeds past the fixed ranges once showed a defect of the tester itself (its model of what the program
# knows): 2579, a MADV_DONTFORK'd shared map cut short by ftruncate, is a hole in a fork child.
SEEDS = {"empty": [*range(0, 40)], "2m": [*range(0, 40), 2579], "1g": [*range(0, 4)]}
REGRESSIONS = sorted((HERE / "regressions").glob("*.ops"))
LIB = os.environ.get("HUGELOAD_DIFFTEST_LIB")


@pytest.fixture(scope="module")
def exe():
    return difftest.build()


def header(path: Path, key: str, default: str) -> str:
    for line in path.read_text().splitlines():
        if line.startswith(f"# {key}:"):
            return line.split(":", 1)[1].strip()
    return default


def explain(fails) -> str:
    return "\n\n".join(f"seed {f.seed} ({f.mode}): {f.why}\n{f.program}" for f in fails)


@pytest.mark.kernel
@pytest.mark.parametrize("mode", ["empty", "2m", "1g"])
def test_default_seeds(mode, needs_root, exe):
    # The conftest holds the machine lock for the test: the pools are reserved without it.
    with difftest.pools_for(mode, lock=False) as got:
        if mode == "1g" and not got.get(1048576):
            pytest.skip("the kernel gave no 1 GB page")
        fails = difftest.run_seeds(SEEDS[mode], mode, lib=LIB, exe=exe, log=lambda *a: None)
    assert not fails, explain(fails)


@pytest.mark.kernel
@pytest.mark.parametrize("path", REGRESSIONS, ids=[p.stem for p in REGRESSIONS])
def test_regression(path, needs_root, exe):
    mode = header(path, "mode", "empty")
    with difftest.pools_for(mode, lock=False) as got:
        if mode == "1g" and not got.get(1048576):
            pytest.skip("the kernel gave no 1 GB page")
        ref, lib, why = difftest.Tester(difftest.Config(mode, LIB), exe).check(path.read_text())
    assert ref.rc == 0, ref.err
    assert why is None, f"{path.name}: {why}\n--- stderr with the library\n{lib.err[-3000:]}"


def test_generator_is_deterministic_and_shrinks_keep_annotations():
    a = difftest.render(difftest.generate(1234, "2m"))
    assert a == difftest.render(difftest.generate(1234, "2m"))
    assert a != difftest.render(difftest.generate(1235, "2m"))


def test_comparison_rules():
    """The rules that let the library differ: a 4 KB page unmapped inside a huge page the program
    still maps part of; nothing else (a page mapped where the program unmapped a whole huge page,
    another protection, other bytes)."""
    ref = "obs 1 len=8192 st=3,., huge=0*2, hash=aa,-,"
    assert difftest.compare_obs(ref, "obs 1 len=8192 st=3,3, huge=1,1, hash=aa,bb,") is None
    assert "unmapped" in difftest.compare_obs(ref, "obs 1 len=8192 st=3,3, huge=1,2, hash=aa,bb,")
    assert "unmapped" in difftest.compare_obs(ref, "obs 1 len=8192 st=3,3, huge=0*2, hash=aa,bb,")
    assert "protection" in difftest.compare_obs(ref, "obs 1 len=8192 st=1,., huge=0*2, hash=aa,-,")
    assert "contents" in difftest.compare_obs(ref, "obs 1 len=8192 st=3,., huge=0*2, hash=ab,-,")
    tainted = "obs 1 len=4096 tainted st=3, huge=0, hash=aa,"
    assert difftest.compare_obs(tainted, "obs 1 len=4096 tainted st=3, huge=0, hash=bb,") is None


@pytest.mark.kernel
@pytest.mark.parametrize("seed", [1312])
def test_generated_programs_run_without_the_library(seed, exe):
    """The generator writes only correct programs: seed 1312 (empty pools) freed a block with a
    PROT_NONE page into glibc's heap, and a later calloc faulted there without the library."""
    env = difftest.Config("empty").env(Path("unused"), preload=False)
    ref = difftest.run_program(exe, difftest.render(difftest.generate(seed, "empty")), env)
    assert ref.rc == 0, ref.err
