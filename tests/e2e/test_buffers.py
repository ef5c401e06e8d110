"""plan/buffers' prediction against llama.cpp itself, on this machine's CPU.

llama.cpp logs "<TYPE> model buffer size = X MiB" for every buffer it fills while loading;
the prediction must name the same heap buffers with the same sizes (to its 0.01 MiB), for
a Q8_0 and a Q4_0 model.  Which buffers appear depends on this CPU (and the build): the
test asserts what the prediction says this CPU does, and that the prediction agrees with
the CPU's flags (Q4_0 is repacked exactly when the CPU has AVX2 or the build has AMX).
`hugeload run`'s summary must then name the heap copy the report shows."""

import re
import subprocess

import pytest

from hugeload import engines, runner
from hugeload.plan import buffers
from hugeload.probe import cpu
from hugeload.report import parse as parse_report

BENCH = engines.find_llama("llama-bench")
pytestmark = [
    pytest.mark.llama,
    pytest.mark.slow,
    pytest.mark.skipif(BENCH is None, reason="llama-bench not found: build it with scripts/get-llama.sh"),
]
BUFFER_LINE = re.compile(r"(\w+) model buffer size =\s+([\d.]+) MiB")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from hugeload.modelgen import ModelSpec, make_model  # what `hugeload make-model OUT --size 100M --type T` writes

    d = tmp_path_factory.mktemp("buffers")
    out = {}
    for qtype in ("Q8_0", "Q4_0"):
        out[qtype] = d / f"tiny-{qtype}.gguf"
        make_model(out[qtype], ModelSpec(100 << 20, qtype))
    return out


def llama_buffers(model) -> dict[str, float]:
    r = subprocess.run(
        [str(BENCH), "-m", str(model), "-p", "0", "-n", "1", "-r", "1", "-t", "2", "-v"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return {m.group(1): float(m.group(2)) for m in BUFFER_LINE.finditer(r.stderr + r.stdout)}


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0"])
def test_prediction_matches_llama_log(models, qtype):
    p = runner.predict_buffers(str(models[qtype]), str(BENCH))
    assert p is not None, "the gguf package is needed to read tensor types"
    logged = llama_buffers(models[qtype])
    heap_logged = {k: v for k, v in logged.items() if k not in ("CPU_Mapped", "CPU")}
    heap_predicted = {str(b.buffer): round(b.bytes / 2**20, 2) for b in p.heap}
    assert heap_predicted == pytest.approx(heap_logged, abs=0.006), (logged, p)
    flags = cpu.read_cpu("/").flags
    copied = bool(p.heap)
    if qtype == "Q4_0":
        assert copied == ("avx2" in flags or p.engine.amx), (flags, p)
    else:  # Q8_0: only AMX converts it on x86
        assert copied == p.engine.amx, p


def test_run_summary_names_the_heap_copy(models, hugeload_cli, state_dir, tmp_path):
    model = models["Q4_0"]
    p = runner.predict_buffers(str(model), str(BENCH))
    report = tmp_path / "report.txt"
    r = hugeload_cli(
        "run",
        "--files",
        "*.gguf",
        "--alloc-threshold",
        "8M",
        "--report",
        report,
        "--",
        BENCH,
        "-m",
        model,
        "-p",
        "0",
        "-n",
        "1",
        "-r",
        "1",
        "-t",
        "2",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    line = next(x for x in r.stderr.splitlines() if x.startswith(f"hugeload: {model.name}: inference reads"))
    regions = parse_report(report.read_text())
    mapping = next(g for g in regions if g.is_file(model))
    if not p.heap:
        assert line.endswith(f"inference reads the mapping (fill={mapping.fill}, page={mapping.page})"), line
        return
    (copy,) = p.heap
    alloc = next(g for g in regions if g.allocation and g.bytes == copy.bytes)
    assert (
        f"a {copy.buffer} heap copy ({copy.bytes / 2**20:.2f} MiB, {copy.tensors} tensors, "
        f"what={alloc.name}, page={alloc.page})" in line
    ), line
    assert f"from the mapping (fill={mapping.fill}, page={mapping.page})" in line, line


@pytest.mark.kernel
def test_load_reserve_covers_the_heap_copy(models, hugeload_cli, state_dir, needs_root):
    """load --reserve --pin both grows the 2M pool by the staged file plus the predicted heap
    copy, and unload gives all of it back (what --pin reads pins: tests/act/test_stage_pin.py)."""
    from hugeload.act import pools as act_pools

    model = models["Q4_0"]
    p = runner.predict_buffers(str(model), str(BENCH))
    heap = runner.heap_pages({str(model): p}, None, 64 << 20)
    before = act_pools.read_pool("/", 2048)
    r = hugeload_cli("load", "--reserve", "--pin", "both", "--page-size", "2m", "--name", "buftest", model)
    try:
        assert r.returncode == 0, r.stderr
        # it says what the engine will read; a staged copy the engine hardly reads is a note
        advice, _ = buffers.advise(runner.weights_split([str(model)], str(BENCH)))
        said = next(line for line in r.stderr.splitlines() if "llama.cpp on this CPU: inference reads" in line)
        assert said.startswith("note:") == (advice is buffers.Advice.HEAP), said
        after = act_pools.read_pool("/", 2048)
        staged_pages = -(-model.stat().st_size // (2 << 20))
        # pages left free for the engine's copy, when it will make one on this CPU (in 2M pages)
        if heap.get(2048):
            assert after.total - before.total >= staged_pages + heap[2048] - max(0, before.available)
            assert after.available >= heap[2048]
        else:
            assert after.total - before.total <= staged_pages
    finally:
        hugeload_cli("unload", "buftest")
    assert act_pools.read_pool("/", 2048).total == before.total
