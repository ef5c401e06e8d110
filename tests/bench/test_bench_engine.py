"""hugeload bench engine with a real llama.cpp: the interleaved table, verified page sizes, nothing left behind."""

import importlib
import json

import pytest

from hugeload import engines, runner
from hugeload.bench import engine, summary
from hugeload.pages import PAGE_1G, PAGE_2M

pytestmark = [pytest.mark.kernel, pytest.mark.llama]
BENCH = engines.find_llama("llama-bench")


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    from hugeload import modelgen

    p = tmp_path_factory.mktemp("m") / "small-q4_0.gguf"
    modelgen.make_model(p, modelgen.ModelSpec(100 << 20, "Q4_0"))  # repack buffer above the 64 MiB threshold
    return p


@pytest.mark.skipif(BENCH is None, reason="llama.cpp not built (scripts/get-llama.sh)")
def test_engine_table_with_verified_page_sizes(hugeload_cli, small_model, needs_root):
    out = hugeload_cli(
        "bench",
        "engine",
        "--model",
        small_model,
        "--rounds",
        2,
        "--backings",
        "default,2m,2m+alloc",
        "--json",
        "--",
        BENCH,
        "-p",
        8,
        "-n",
        4,
        "-r",
        1,
        "-t",
        2,
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    by = {r["backing"]: r for r in data["results"]}
    assert set(by) == {"default", "2m", "2m+alloc"}
    assert by["2m"]["status"] == "ok" and by["2m"]["weights_page_kb"] == [2048], by["2m"]
    assert by["2m+alloc"]["alloc_page_kb"] and set(by["2m+alloc"]["alloc_page_kb"]) <= {2048}
    # its pool sized from the predicted heap copy (what `hugeload run` reserves), not the model
    heap = runner.heap_pages({"": runner.predict_buffers(str(small_model), str(BENCH))}, PAGE_2M, 64 << 20)
    assert [k for k in data["setup_s"] if k.startswith("pool-")] == [f"pool-2048-{n}" for n in heap.values()]
    assert not any(r["munmap_failed"] for r in data["results"])
    for r in data["results"]:
        assert r["runs"] == 2
        m = r["metrics"]
        assert {"pp8", "tg4", "startup_s"} <= set(m)
        assert m["tg4"]["low"] <= m["tg4"]["median"] <= m["tg4"]["high"] and m["tg4"]["median"] > 0
        if r["backing"] == "default":
            assert m["tg4"]["ratio"] is None
        else:
            assert m["tg4"]["ratio"] > 0 and isinstance(m["tg4"]["within_noise"], bool)


@pytest.mark.skipif(BENCH is None, reason="llama.cpp not built (scripts/get-llama.sh)")
def test_a_backing_that_cannot_be_had_is_skipped_not_timed(small_model, needs_root, monkeypatch):
    # A 1G pool the kernel cannot grow: the 1g backing is skipped with the reason, the others still run.
    # where stage() looks it up (the package's name `stage` is the function, not this module)
    store_stage = importlib.import_module("hugeload.act.store.stage")
    from hugeload.errors import PoolError

    def refuse(*a, **k):
        raise PoolError("the 1G pool cannot grow (test)")

    real = store_stage.ensure_pages
    monkeypatch.setattr(
        store_stage, "ensure_pages", lambda kb, *a, **k: refuse() if kb == PAGE_1G.kb else real(kb, *a, **k)
    )
    argv = [str(BENCH), "-p", "8", "-n", "4", "-r", "1", "-t", "2"]
    data = engine.run(str(small_model), argv, ["default", "1g"], engine.EngineOptions(rounds=1))
    by = {r["backing"]: r for r in data["results"]}
    assert by["1g"]["status"] == "skipped" and "cannot grow" in by["1g"]["reason"]
    assert by["default"]["status"] == "ok"


def test_rates_from_other_engines():
    assert engine.parse_rates("generated 12 tokens, 34.5 tokens per second\n") == {"rate": 34.5}
    assert engine.parse_rates("nothing here") == {}
    assert engine.command_for(["x", "--model", "{model}"], "/m") == ["x", "--model", "/m"]
    assert engine.command_for(["llama-bench", "-p", "8"], "/m") == ["llama-bench", "-m", "/m", "-p", "8"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--backings", "default,5g"], "unknown backing"),
        (["--rounds", "0"], "at least 1"),
    ],
)
def test_bad_input(hugeload_cli, small_model, args, message):
    out = hugeload_cli("bench", "engine", "--model", small_model, *args, "--", "true")
    assert out.returncode == 2 and message in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_missing_model(hugeload_cli):
    out = hugeload_cli("bench", "engine", "--model", "/nonexistent.gguf", "--", "true")
    assert out.returncode == 2 and "no such model" in out.stderr


def test_plot_draws_every_test(tmp_path):
    pytest.importorskip("matplotlib")
    m = {"median": 10.0, "low": 9.0, "high": 11.0}
    data = {
        "model": "/m.gguf",
        "rounds": 2,
        "hypervisor": True,
        "results": [
            {"backing": "default", "metrics": {"tg4": m, "startup_s": m}},
            {"backing": "1g", "metrics": {"tg4": m, "startup_s": m}},
            {"backing": "2m", "status": "skipped", "metrics": None},
        ],
    }
    summary.plot(data, str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
