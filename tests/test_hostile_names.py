"""Model files whose names hold '%', '=', spaces, non-ASCII or more bytes than the report keeps
are reported correctly by `hugeload run` and `bench engine`: the preload library escapes and
cuts the name (log.c), and hugeload.report matches it back exactly.  This checks the Python
side against the C library itself, with real reports."""

import os
import sys

import pytest

from hugeload import report
from hugeload.bench import engine, verify

NAMES = [
    "100% = sure model.gguf",
    "naïve 模型 v2.gguf",
    "a" * 30 + " é%=" + "b" * 40 + ".gguf",  # longer than the report's 64 bytes: cut
]
MAPPER = (
    "import mmap, sys\n"
    "f = open(sys.argv[1], 'rb')\n"
    "m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)\n"
    "print(m[0], '10 tokens per second')\n"
)


@pytest.fixture(params=NAMES, ids=["percent-equals", "non-ascii", "cut"])
def hostile_model(request, tmp_path):
    p = tmp_path / request.param
    p.write_bytes(os.urandom(4 << 20))  # a mapping the library manages (>= 2 MB)
    return p


def test_run_reports_the_file_by_its_own_name(hugeload_cli, hostile_model, state_dir, tmp_path):
    kept = tmp_path / "report.txt"
    out = hugeload_cli("run", "--files", "*.gguf", "--report", kept, "--", sys.executable, "-c", MAPPER, hostile_model)
    assert out.returncode == 0, out.stderr
    regions = report.parse(kept.read_text())
    mine = [r for r in regions if r.is_file(hostile_model)]
    assert len(mine) == 1 and mine[0].fill == "none" and mine[0].page == "4K", regions  # managed, not staged
    assert hostile_model.name.encode().startswith(os.fsencode(mine[0].name))
    # The summary names the mapping the library recorded, not "not managed".
    line = f"hugeload: {hostile_model.name}: inference reads the mapping (fill=none, page=4K)"
    assert any(x.startswith(line) for x in out.stderr.splitlines()), out.stderr


@pytest.mark.kernel
def test_bench_engine_takes_the_pages_from_the_report(hostile_model, state_dir, needs_root, monkeypatch):
    # Only the report may tell the page sizes here: the smaps sampler sees nothing.
    monkeypatch.setattr(verify.Sampler, "sample", lambda self: None)
    argv = [sys.executable, "-c", MAPPER, "{model}"]
    data = engine.run(str(hostile_model), argv, ["2m"], engine.EngineOptions(rounds=1, bandwidth=False))
    (r,) = data["results"]
    if r["status"] == "skipped" and "could not set up" in r["reason"]:
        pytest.skip(f"no 2M pages here: {r['reason']}")
    assert r["status"] == "ok" and r["weights_page_kb"] == [2048], r
