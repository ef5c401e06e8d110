"""Every model type `hugeload make-model` writes, run by the real engines on 1 GB pages.

For F16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K, Q4_K_M, Q5_K_M and a qwen3moe MoE model (Q4_K_M,
8 experts, 2 used): the model is staged into one 1 GB page (`hugeload stage --page-size 1g
--reserve`), then run under `hugeload run --reserve` by llama-bench (t/s > 0), llama-server
(one completion on 127.0.0.1) and llama-cpp-python (a few generated tokens).  Asserted from
the preload report of each run: the model mapping is page=1G fill=staged, and every heap
copy llama.cpp makes on this CPU (hugeload.runner.predict_buffers: CPU_REPACK for Q4_0/Q4_K
on AVX2, AMX where built) is an allocation region of the predicted size in the page size the
one policy (hugeload.pages) gives that size.  The Q4_0 model is large enough (>= 256 MiB
heap copy where the CPU repacks) that `run --page-size 1g` must put its copy in a 1 GB page.

Pages: at most 2 x 1 GB at once (the staged model + the 1 GB heap copy); everything is
unstaged and released after each case, also on failure.  A case whose 1 GB pages the kernel
does not give is skipped with the reason."""

import contextlib
import importlib.util
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from e2e_helpers import free_port, http

from hugeload import pages, runner
from hugeload.engines import find_llama, parse_llama_bench
from hugeload.plan import buffers
from hugeload.report import blocks as report_blocks
from hugeload.report import parse as parse_report

BENCH, SERVER = find_llama("llama-bench"), find_llama("llama-server")
pytestmark = [
    pytest.mark.llama,
    pytest.mark.kernel,
    pytest.mark.slow,
    pytest.mark.skipif(
        BENCH is None or SERVER is None,
        reason="llama.cpp not found (llama-bench and llama-server): build it with scripts/get-llama.sh",
    ),
]
HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None

REPO = Path(__file__).resolve().parents[2]
HUGEPAGES = Path("/sys/kernel/mm/hugepages")
THREADS = "2"
ALLOC_THRESHOLD = 8 << 20  # small enough that the tiny models' heap copies take the allocation path
BIG = "Q4_0"  # its heap copy (where this CPU makes one) is >= 256 MiB: `run --page-size 1g` gives it 1G
# case -> (type, size, experts, experts used)
CASES = {t: (t, 40 << 20, 0, 0) for t in ("F16", "Q8_0", "Q4_K", "Q5_K", "Q6_K", "Q4_K_M", "Q5_K_M")}
CASES[BIG] = (BIG, 300 << 20, 0, 0)
CASES["MoE-Q4_K_M"] = ("Q4_K_M", 80 << 20, 8, 2)

PY_SCRIPT = r"""
import json, math, sys
import llama_cpp
llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=64, n_threads=2, n_batch=16, verbose=False)
tokens = []
for tok in llm.generate(llm.tokenize(b"hello"), top_k=1, temp=0.0):
    tokens.append(tok)
    if len(tokens) == 4:
        break
logits = list(llm.scores[llm.n_tokens - 1])
print("RESULT " + json.dumps({"tokens": tokens, "finite": all(math.isfinite(x) for x in logits),
                              "n_logits": len(logits)}))
llm.close()
"""


def hugeload_exe() -> list[str]:
    exe = REPO / ".venv" / "bin" / "hugeload"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "hugeload.cli"]


def machine_state() -> dict:
    pools = {p.name: int((p / "nr_hugepages").read_text()) for p in sorted(HUGEPAGES.glob("hugepages-*"))}
    with open("/proc/mounts") as f:
        mounts = sorted(line.split()[1] for line in f if line.split()[2:3] == ["hugetlbfs"])
    return {"pools": pools, "mounts": mounts}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    # what `hugeload make-model OUT --size S --type T [--experts N ...]` writes
    from hugeload.modelgen import ModelSpec, make_model

    d = tmp_path_factory.mktemp("model-types")
    out = {}
    for case, (qtype, size, n_expert, n_used) in CASES.items():
        out[case] = d / f"tiny-{case}.gguf"
        make_model(out[case], ModelSpec(size, qtype, n_expert=n_expert, n_expert_used=n_used))
    return out


@contextlib.contextmanager
def staged_1g(cli, model: Path):
    """The model staged in one 1 GB page; afterwards unstaged, released, the machine as before."""
    before = machine_state()
    r = cli("stage", model, "--page-size", "1g", "--reserve", "--pin", "both", "--json")  # staged whatever it reads
    try:
        if r.returncode != 0:
            if "kernel gave" in r.stderr or "free page" in r.stderr:
                pytest.skip(f"the kernel gave no 1 GB page to stage {model.name}: {r.stderr.strip()}")
            raise AssertionError(f"hugeload stage failed:\n{r.stderr}")
        data = json.loads(r.stdout)
        assert data["page_size_kb"] == 1048576 and data["pages"] == 1, data
        yield data
        r = cli("unstage", data["name"])
        assert r.returncode == 0, r.stderr
    finally:
        cli("clear", "--force")
        cli("release", "--all")
        cli("gc")
    after = machine_state()
    assert after == before, f"unstage left the machine changed: before {before}, after {after}"


def check_report(report: Path, model: Path, prediction, requested: pages.PageSize | None, log: str) -> None:
    """The mapping in the staged 1 GB page; each predicted heap copy in the policy's page size."""
    text = report.read_text() if report.exists() else ""
    regions = report_blocks(parse_report(text))  # a heap copy in 1G + 2M parts is one block
    log = f"{log}\n--- report\n{text}\n--- predicted: {prediction.summary()}"
    mapping = [g for g in regions if g.is_file(model)]
    assert mapping, log
    for g in mapping:
        assert (g.page, g.fill) == ("1G", "staged"), log
    allocs = [g for g in regions if g.allocation]
    for copy in prediction.heap:
        kb = buffers.alloc_page_kb(copy.bytes, requested, ALLOC_THRESHOLD)
        assert kb != 4, f"{copy} is below the allocation threshold: the test's threshold is wrong"
        found = [g for g in allocs if g.bytes == copy.bytes]
        assert found, f"no allocation region of {copy.bytes} bytes for the {copy.buffer} heap copy\n{log}"
        short = re.search(r"the kernel gave \d+ of the \d+ missing 1G pages", log)
        if found[0].page != pages.name(kb).upper() and kb == pages.PAGE_1G.kb and short:
            # a short 1G pool: the 1G pages there are, the rest in the 2M pages `run` reserved
            assert found[0].page in ("1G+2M", "2M"), log
            pytest.skip(
                f"{short.group(0)} for the {copy.buffer} heap copy (fragmented memory); "
                f"it took {found[0].page}, as it must"
            )
        assert found[0].page == pages.name(kb).upper(), log


def run_opts(case: str) -> tuple[list[str], pages.PageSize | None]:
    if case == BIG:
        return ["--page-size", "1g"], pages.by_name("1g")
    return [], None


def bench(cli, model: Path, tmp: Path, case: str, prediction) -> None:
    opts, requested = run_opts(case)
    report = tmp / "bench-report.txt"
    r = cli(
        "run",
        *opts,
        "--reserve",
        "--alloc-threshold",
        ALLOC_THRESHOLD,
        "--report",
        report,
        "--",
        BENCH,
        "-m",
        model,
        "-p",
        "16",
        "-n",
        "8",
        "-r",
        "1",
        "-t",
        THREADS,
        timeout=240,
    )
    log = f"llama-bench rc={r.returncode}\n--- stdout\n{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-5000:]}"
    if r.returncode != 0 and "the kernel gave" in r.stderr:
        pytest.skip(f"the kernel gave no page for the heap copy of {model.name}: {r.stderr.strip()[-300:]}")
    assert r.returncode == 0, log
    rows = parse_llama_bench(r.stdout)
    assert [t["test"] for t in rows] == ["pp16", "tg8"], log
    for t in rows:
        assert t["tokens_per_s"] > 0 and t["tokens_per_s"] != float("inf"), log
    check_report(report, model, prediction, requested, log)


def server(model: Path, tmp: Path, prediction) -> None:
    report, logfile = tmp / "server-report.txt", tmp / "server.log"
    proc, answer = None, None
    try:
        for _attempt in range(3):  # the port may be taken between free_port() and bind
            port = free_port()
            cmd = [
                *hugeload_exe(),
                "run",
                "--reserve",
                "--alloc-threshold",
                str(ALLOC_THRESHOLD),
                "--report",
                str(report),
                "--",
                str(SERVER),
                "-m",
                str(model),
                "-t",
                THREADS,
                "-c",
                "128",
                "-np",
                "1",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ]
            with open(logfile, "w") as log:
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            deadline = time.monotonic() + 90
            healthy = False
            while time.monotonic() < deadline and proc.poll() is None and not healthy:
                with contextlib.suppress(OSError, ValueError):
                    healthy = http(port, "/health", timeout=2).get("status") == "ok"
                if not healthy:
                    time.sleep(0.2)
            if healthy:
                answer = http(
                    port,
                    "/completion",
                    {"prompt": "hello", "n_predict": 4, "ignore_eos": True, "temperature": 0},
                    timeout=60,
                )
                break
            if proc.poll() is None or "bind" not in logfile.read_text(errors="replace"):
                break
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # hugeload run forwards it, then gives back its pages
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
    text = logfile.read_text(errors="replace")[-5000:]
    assert answer is not None, f"llama-server gave no completion (rc={proc.returncode})\n{text}"
    assert answer["tokens_predicted"] == 4 and isinstance(answer["content"], str), answer
    assert proc.returncode == 0, f"hugeload run -- llama-server exited {proc.returncode}\n{text}"
    check_report(report, model, prediction, None, text)


def python_engine(model: Path, tmp: Path) -> None:
    prediction = runner.predict_buffers(str(model), sys.executable)
    report = tmp / "python-report.txt"
    cmd = [
        *hugeload_exe(),
        "run",
        "--reserve",
        "--alloc-threshold",
        str(ALLOC_THRESHOLD),
        "--report",
        str(report),
        "--",
        sys.executable,
        "-c",
        PY_SCRIPT,
        str(model),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    log = f"llama-cpp-python rc={r.returncode}\n--- stdout\n{r.stdout[-2000:]}\n--- stderr\n{r.stderr[-5000:]}"
    assert r.returncode == 0, log
    results = [json.loads(x[len("RESULT ") :]) for x in r.stdout.splitlines() if x.startswith("RESULT ")]
    assert results, log
    out = results[0]
    assert len(out["tokens"]) == 4 and out["n_logits"] > 0 and out["finite"], (out, log)
    check_report(report, model, prediction, None, log)


@pytest.mark.parametrize("case", list(CASES))
def test_engines_run_model_type_on_1g_pages(case, models, needs_root, state_dir, hugeload_cli, tmp_path):
    model = models[case]
    prediction = runner.predict_buffers(str(model), str(BENCH))
    assert prediction is not None, "the gguf package is needed to read tensor types"
    with staged_1g(hugeload_cli, model):
        bench(hugeload_cli, model, tmp_path, case, prediction)
        server(model, tmp_path, prediction)
        if HAS_LLAMA_CPP:
            python_engine(model, tmp_path)
    if not HAS_LLAMA_CPP:
        pytest.skip(
            "llama-bench and llama-server passed; llama-cpp-python is not installed "
            "(scripts/get-llama-cpp-python.sh builds it)"
        )


def test_big_case_has_a_1g_heap_copy_where_the_cpu_repacks(models):
    """The case meant to check a 1 GB heap copy really has one >= 256 MiB on a repacking CPU,
    so that check is not vacuous there."""
    prediction = runner.predict_buffers(str(models[BIG]), str(BENCH))
    if not prediction.heap:
        pytest.skip(f"this CPU reads {BIG} from the mapping ({prediction.summary()}): no heap copy to put in 1 GB")
    assert any(
        buffers.alloc_page_kb(c.bytes, pages.by_name("1g"), ALLOC_THRESHOLD) == 1048576 for c in prediction.heap
    ), prediction.summary()
