"""`stage --reserve` pins what the engine will read on this CPU (plan/pin.py), on the real kernel:
the pools grow by exactly the pages the decision names, `staged --json` shows the file's, and
unstage gives every page back.  Models are generated Q4_K (llama.cpp repacks all its matmul
weights on AVX2: advice HEAP) and Q4_K_M (its Q6_K weights stay in the mapping: BOTH), large
enough (90 MB) that the heap copy passes `hugeload run`'s 64 MiB allocation threshold."""

import json
from pathlib import Path

import pytest

from hugeload import runner
from hugeload.plan.buffers import Advice
from hugeload.plan.pin import Pin
from hugeload.probe import cpu

pytestmark = [pytest.mark.kernel]
POOL = Path("/sys/kernel/mm/hugepages/hugepages-2048kB")
FIELDS = ("nr_hugepages", "free_hugepages", "resv_hugepages", "surplus_hugepages")
MiB = 1 << 20


def pool() -> dict[str, int]:
    return {f: int((POOL / f).read_text()) for f in FIELDS}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from hugeload.modelgen import ModelSpec, make_model

    if "avx2" not in cpu.read_cpu("/").flags:
        pytest.skip("llama.cpp repacks Q4_K only with AVX2: every advice here is STAGE")
    d = tmp_path_factory.mktemp("pin")
    out = {}
    for qtype in ("Q4_K", "Q4_K_M"):
        out[qtype] = d / f"pin-{qtype}.gguf"
        make_model(out[qtype], ModelSpec(90 * MiB, qtype))
    return out


@pytest.fixture(autouse=True)
def _clean(needs_root, state_dir, hugeload_cli):
    yield
    hugeload_cli("clear", "--force")
    hugeload_cli("gc")


def stage(hugeload_cli, model, *extra):
    r = hugeload_cli("stage", "--reserve", "--page-size", "2m", "--json", *extra, model)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def expect_pinned(before, after, file_pages, heap_pages):
    """The pool grew by what the model's copy and its kept-free heap pages need beyond the
    pages already free, and no more; the heap pages stay free (no mapping promised them)."""
    available = before["free_hugepages"] - before["resv_hugepages"]
    assert after["nr_hugepages"] - before["nr_hugepages"] == max(0, file_pages + heap_pages - available), (
        before,
        after,
    )
    assert after["free_hugepages"] - after["resv_hugepages"] == max(available - file_pages, heap_pages), (before, after)
    assert after["surplus_hugepages"] == before["surplus_hugepages"]


def staged_pages(hugeload_cli) -> list[int]:
    r = hugeload_cli("staged", "--json")
    assert r.returncode == 0, r.stderr
    return [m["pages"] for m in json.loads(r.stdout)["models"]]


def test_heap_model_is_refused_unless_asked(models, hugeload_cli):
    model = models["Q4_K"]
    pins = runner.stage_pins([str(model)], Pin.READS)
    assert pins.plan.advice is Advice.HEAP and not pins.plan.file
    file_pages = -(-model.stat().st_size // (2 * MiB))
    heap = dict(runner.stage_pins([str(model)], Pin.BOTH).heap_pages)
    assert set(heap) == {2048} and heap[2048] > 0  # the copy passes the 64 MiB threshold

    # default: one line, nothing reserved, nothing staged
    before = pool()
    r = hugeload_cli("stage", "--reserve", "--page-size", "2m", model)
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and "hugeload run --reserve" in r.stderr, r.stderr
    assert pool() == before and staged_pages(hugeload_cli) == []

    # --pin file: the staged file only
    data = stage(hugeload_cli, model, "--pin", "file")
    assert data["pinned"]["file"] and not data["pinned"]["heap"] and data["pinned"]["heap_pages"] == []
    assert data["pinned"]["advice"] == "heap"
    expect_pinned(before, pool(), file_pages, 0)
    assert staged_pages(hugeload_cli) == [file_pages]
    assert hugeload_cli("unstage", data["name"]).returncode == 0
    assert pool() == before

    # --pin both: the file and the heap copy's pages, given back on unstage
    data = stage(hugeload_cli, model, "--pin", "both")
    assert data["pinned"]["heap_pages"] == [{"page_size_kb": 2048, "pages": heap[2048]}]
    expect_pinned(before, pool(), file_pages, heap[2048])
    assert staged_pages(hugeload_cli) == [file_pages]
    assert hugeload_cli("unstage", data["name"]).returncode == 0
    assert pool() == before


def test_model_read_from_both_pins_both(models, hugeload_cli):
    model = models["Q4_K_M"]
    pins = runner.stage_pins([str(model)], Pin.READS)
    assert pins.plan.advice is Advice.BOTH and pins.plan.file and pins.plan.heap
    heap = dict(pins.heap_pages)
    assert heap.get(2048, 0) > 0
    before = pool()
    data = stage(hugeload_cli, model)
    assert data["pinned"]["pin"] == "reads" and data["pinned"]["advice"] == "both"
    file_pages = -(-model.stat().st_size // (2 * MiB))
    expect_pinned(before, pool(), file_pages, heap[2048])
    assert hugeload_cli("unstage", data["name"]).returncode == 0
    assert pool() == before


def test_pin_needs_reserve(models, hugeload_cli):
    before = pool()
    r = hugeload_cli("stage", "--pin", "both", models["Q4_K"])
    assert r.returncode == 2 and "--reserve" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert pool() == before
