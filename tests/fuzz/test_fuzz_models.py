"""The model header readers under fuzzing (a bounded run of tests/fuzz/fuzz_models.py per
format), the corpus of inputs that once failed, and the harness's own limits.

Longer runs: scripts/fuzz-models.sh --examples 100000."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("gguf")
pytest.importorskip("safetensors")

HERE = Path(__file__).resolve().parent
HARNESS = HERE / "fuzz_models.py"
CORPUS = HERE / "corpus"
# What the default suite spends: ~15 s per format on this project's 2-core machines.
EXAMPLES = {"gguf": 2000, "safetensors": 4000}


def harness(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(HARNESS), *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize("fmt", sorted(EXAMPLES))
def test_fuzz(fmt, tmp_path):
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"fuzz {fmt} seed {seed}")  # shown on failure: rerun with --seed
    r = harness("--format", fmt, "--examples", EXAMPLES[fmt], "--seed", seed, "--save", tmp_path / "failed")
    assert r.returncode == 0, f"seed {seed}\n{r.stdout}\n{r.stderr[-4000:]}"
    assert f"{EXAMPLES[fmt]} inputs" in r.stdout
    # The inputs reach past the header checks: some files are accepted and mapped.
    accepted = int(r.stdout.rsplit("(", 1)[1].split()[0])
    assert accepted > EXAMPLES[fmt] // 50, r.stdout


def test_corpus_replays():
    names = sorted(p.name for p in CORPUS.glob("*/*"))
    assert "array-count-2p63.gguf" in names and "shape-0-2p63.safetensors" in names
    r = harness("--replay", CORPUS)
    assert r.returncode == 0, r.stdout + r.stderr[-4000:]
    assert f"replay: {len(names)} inputs, ok" in r.stdout


@pytest.mark.parametrize("what", ["hang", "alloc"])
def test_the_harness_catches_a_hang_and_an_allocation(what, tmp_path):
    """The per-input limits are real: a reader that loops or allocates 8 GiB fails the run
    within the time limit, and the input is saved."""
    t0 = time.monotonic()
    r = harness("--self-test", what, "--time-limit", 2, "--save", tmp_path, timeout=120)
    assert r.returncode != 0
    assert ("InputTimeout" if what == "hang" else "MemoryError") in r.stderr, r.stderr[-2000:]
    assert "input saved to" in r.stdout and list(tmp_path.glob("*/*"))
    assert time.monotonic() - t0 < 90
