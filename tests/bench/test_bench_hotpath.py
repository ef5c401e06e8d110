"""`hugeload bench hotpath`: the measurement runs, and the library's hot path stays small.

The instruction count is the check: callgrind counts the same instructions whatever else
the machine does, so a bound on it is a test, where a bound on nanoseconds would be noise."""

import json
import shutil

import pytest

from hugeload.bench import hotpath
from hugeload.errors import UsageError

# The library before the preload core was split (csrc/hugeload.c) added 19 instructions per
# malloc(64)/free pair; the split one adds 13.  More than this means the hot path grew.
MAX_EXTRA_INSTRUCTIONS = 19


def test_timing_runs_both_configurations_in_each_round():
    data = hotpath.run(hotpath.HotpathOptions(pairs=20_000, rounds=2, instructions=hotpath.Instructions.SKIP))
    names = [e["library"] for e in data["results"]]
    assert names == ["none", "hugeload"]
    for e in data["results"]:
        assert len(e["ns_per_pair"]["values"]) == 2
        assert all(v > 0 for v in e["ns_per_pair"]["values"])
    assert "extra_ns" in data["results"][1] and "extra_ns" not in data["results"][0]
    assert not data["instructions_counted"]


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed (apt-get install valgrind)")
def test_the_preload_library_adds_few_instructions_per_small_malloc_free_pair():
    data = hotpath.run(hotpath.HotpathOptions(pairs=200_000, rounds=1, instructions=hotpath.Instructions.COUNT))
    none, lib = data["results"]
    assert 20 < none["instructions_per_pair"] < 1000, none  # a real glibc malloc/free was counted
    assert 0 < lib["extra_instructions"] <= MAX_EXTRA_INSTRUCTIONS, lib  # the overrides run, and stay small


def test_bad_input_is_one_line(hugeload_cli):
    with pytest.raises(UsageError, match="no such library"):
        hotpath.run(hotpath.HotpathOptions(pairs=1000, rounds=1, libraries={"old": "/nonexistent/lib.so"}))
    for args in (["--pairs", "10"], ["--library", "old=/nonexistent/lib.so"]):
        p = hugeload_cli("bench", "hotpath", *args)
        assert p.returncode != 0 and "Traceback" not in p.stderr
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert "pairs" in p.stderr or "no such library" in p.stderr, p.stderr


def test_json_output(hugeload_cli):
    p = hugeload_cli("bench", "hotpath", "--pairs", "5000", "--rounds", "1", "--no-instructions", "--json", check=True)
    data = json.loads(p.stdout)
    assert data["pairs"] == 5000 and len(data["results"]) == 2
