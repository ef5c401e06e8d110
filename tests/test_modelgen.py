"""Tests for hugeload.modelgen (random GGUF models) and hugeload.engines.

The end-to-end tests (marker ``llama``) run llama.cpp's llama-bench on the
generated models; they are skipped unless scripts/get-llama.sh has been run
(or llama-bench is found via $HUGELOAD_LLAMA_BIN / $PATH).
"""

from __future__ import annotations

import subprocess

import pytest

from hugeload.units import parse_size

gguf = pytest.importorskip("gguf")

from hugeload import engines, modelgen
from hugeload.cli import main
from hugeload.modelgen import ModelSpec

MiB = 1 << 20
SIZE = 64 * MiB
TYPES = ("Q4_0", "Q8_0", "F16")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """One ~64 MiB model per type, shared by the tests of this module."""
    d = tmp_path_factory.mktemp("models")
    return {t: modelgen.make_model(d / f"{t}.gguf", ModelSpec(SIZE, t, seed=1)) for t in TYPES}


@pytest.mark.parametrize("qtype", TYPES)
def test_model_is_valid_gguf(models, qtype):
    info = models[qtype]
    assert info.path.stat().st_size == info.file_size
    assert abs(info.file_size - SIZE) / SIZE < 0.03
    r = gguf.GGUFReader(info.path)
    assert len(r.tensors) == info.n_tensors == 9 * info.n_layer + 3
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert types["blk.0.attn_norm.weight"] == "F32"
    assert types["blk.0.ffn_down.weight"] == qtype
    assert types["token_embd.weight"] == qtype
    assert {v for k, v in types.items() if not k.endswith("norm.weight")} == {qtype}
    assert sum(int(t.n_elements) for t in r.tensors) == info.n_params
    assert int(r.fields["llama.block_count"].parts[-1][0]) == info.n_layer
    assert int(r.fields["llama.embedding_length"].parts[-1][0]) == info.n_embd
    assert len(r.fields["tokenizer.ggml.tokens"].data) == info.n_vocab
    ffn_up = next(t for t in r.tensors if t.name == "blk.0.ffn_up.weight")
    assert list(ffn_up.shape) == [info.n_embd, info.n_ff]  # ggml order: ne0 = n_embd


@pytest.mark.parametrize("qtype", ("Q4_0", "Q8_0", "F16"))
def test_weights_are_finite_and_random(models, qtype):
    r = gguf.GGUFReader(models[qtype].path)
    t = next(t for t in r.tensors if t.name == "blk.1.attn_q.weight")
    w = gguf.quants.dequantize(t.data, t.tensor_type)
    assert w.size == t.n_elements
    assert gguf.quants.np.isfinite(w).all()
    assert 0.2 / models[qtype].n_embd ** 0.5 < w.std() < 5 / models[qtype].n_embd ** 0.5


def test_same_seed_same_bytes(tmp_path):
    a = modelgen.make_model(tmp_path / "a.gguf", ModelSpec(4 * MiB, "Q4_0", seed=7))
    b = modelgen.make_model(tmp_path / "b.gguf", ModelSpec(4 * MiB, "Q4_0", seed=7))
    c = modelgen.make_model(tmp_path / "c.gguf", ModelSpec(4 * MiB, "Q4_0", seed=8))
    assert a.path.read_bytes() == b.path.read_bytes() != c.path.read_bytes()
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("size", ["100MiB", "300MiB", "1G", "3G", "9G"])
@pytest.mark.parametrize("qtype", modelgen.QTYPES)
@pytest.mark.parametrize("experts", [0, 8])
def test_plan_hits_size(qtype, size, experts):
    target = parse_size(size)
    s = modelgen.plan(ModelSpec(target, qtype, n_expert=experts, n_expert_used=2 if experts else 0))
    assert s.n_embd % s.n_head == 0 and s.n_ff % modelgen.ff_step(qtype) == 0 and s.n_layer >= 2
    assert s.n_embd % modelgen.QUANT_SIZES[modelgen.tensor_type(qtype, "output.weight", s.n_layer)][0] == 0
    data = sum(t.nbytes for t in modelgen.tensors(s, qtype))
    assert abs(data - target) / target < 0.01, (s, data)


def test_alignment(tmp_path):
    out = tmp_path / "a.gguf"
    assert main(["make-model", str(out), "--size", "2M", "--align", "64K"]) == 0
    r = gguf.GGUFReader(out)
    assert r.alignment == 65536 and all(t.data_offset % 65536 == 0 for t in r.tensors)


def test_explicit_shape(tmp_path):
    spec = ModelSpec(None, "Q8_0", n_layer=2, n_embd=256, n_ff=512, n_vocab=300)
    info = modelgen.make_model(tmp_path / "s.gguf", spec)
    assert (info.n_layer, info.n_embd, info.n_ff, info.n_vocab) == (2, 256, 512, 300)


def test_main_writes_model(tmp_path, capsys):
    out = tmp_path / "m.gguf"
    assert main(["make-model", str(out), "--size", "8M", "--type", "q4_0"]) == 0
    assert out.exists() and "Q4_0" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["x.gguf", "--size", "lots"],
        ["x.gguf", "--size", "1M", "--type", "Q2_K"],
        ["x.gguf", "--size", "1M", "--experts-used", "2"],
        ["x.gguf", "--size", "1M", "--experts", "4", "--experts-used", "5"],
        ["x.gguf", "--size", "1M", "--experts", "1"],
        ["x.gguf", "--size", "1M", "--type", "Q4_K", "--embd", "320"],
        ["x.gguf", "--size", "10"],
        ["x.gguf"],
        ["x.gguf", "--size", "1M", "--align", "3000"],
    ],
)
def test_main_bad_input(tmp_path, capsys, argv):
    argv = [str(tmp_path / argv[0])] + argv[1:]
    with pytest.raises(SystemExit) as e:
        rc = main(["make-model", *argv])
        raise SystemExit(rc)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error" in err
    assert not list(tmp_path.iterdir())


JSON_OUT = """[
  {
    "build_commit": "x", "build_number": 1, "model_type": "llama 1B Q4_0", "n_threads": 2,
    "n_prompt": 16, "n_gen": 0, "n_depth": 0, "avg_ts": 123.5, "stddev_ts": 1.25,
    "samples_ts": [123.5]
  },
  {
    "model_type": "llama 1B Q4_0", "n_threads": 2,
    "n_prompt": 0, "n_gen": 8, "n_depth": 0, "avg_ts": 20.0, "stddev_ts": 0.0
  }
]
"""

MD_OUT = """load_backend: something
| model                          |       size |     params | backend    | threads |            test |                  t/s |
| ------------------------------ | ---------: | ---------: | ---------- | ------: | --------------: | -------------------: |
| llama ?B Q4_0                  |  60.00 MiB |   106.17 M | CPU        |       2 |            pp16 |        450.12 ± 3.40 |
| llama ?B Q4_0                  |  60.00 MiB |   106.17 M | CPU        |       2 |             tg8 |         85.00 ± 0.00 |
| llama ?B Q4_0                  |  60.00 MiB |   106.17 M | CPU        |       2 |   pp16 @ d128 |         99.50 ± 1.00 |

build: deadbeef (1)
"""


def test_parse_llama_bench_json():
    res = engines.parse_llama_bench("log line\n" + JSON_OUT)
    assert [r["test"] for r in res] == ["pp16", "tg8"]
    assert res[0]["tokens_per_s"] == 123.5 and res[0]["stddev"] == 1.25 and res[0]["n_threads"] == 2


def test_parse_llama_bench_jsonl():
    lines = '{"n_prompt": 0, "n_gen": 4, "avg_ts": 3.5, "stddev_ts": 0.1}\n'
    assert engines.parse_llama_bench(lines)[0]["test"] == "tg4"


def test_parse_llama_bench_markdown():
    res = engines.parse_llama_bench(MD_OUT)
    assert [(r["test"], r["n_prompt"], r["n_gen"], r["n_depth"]) for r in res] == [
        ("pp16", 16, 0, 0),
        ("tg8", 0, 8, 0),
        ("pp16 @ d128", 16, 0, 128),
    ]
    assert res[0]["tokens_per_s"] == 450.12 and res[0]["stddev"] == 3.40 and res[1]["n_threads"] == 2


def test_parse_llama_bench_nothing():
    assert engines.parse_llama_bench("error: failed to load model\n") == []


def test_find_llama_env(tmp_path, monkeypatch):
    tool = tmp_path / "bin" / "llama-bench"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    monkeypatch.setenv("HUGELOAD_LLAMA_BIN", str(tool.parent))
    assert engines.find_llama() == tool
    monkeypatch.setenv("HUGELOAD_LLAMA_BIN", str(tool))
    assert engines.find_llama("llama-bench") == tool
    monkeypatch.delenv("HUGELOAD_LLAMA_BIN")
    monkeypatch.setenv("HUGELOAD_LLAMA_DIR", str(tmp_path))
    assert engines.find_llama() == tool
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert engines.find_llama("no-such-llama-tool") is None


def _need(tool):
    exe = engines.find_llama(tool)
    if exe is None:
        pytest.skip(f"{tool} not found (run scripts/get-llama.sh)")
    return exe


@pytest.fixture
def bench():
    return _need("llama-bench")


@pytest.fixture
def completion():
    return _need("llama-completion")


@pytest.mark.llama
@pytest.mark.parametrize("qtype", ("Q4_0", "Q8_0"))
def test_llama_bench_runs(bench, models, qtype):
    p = subprocess.run(
        [str(bench), "-m", str(models[qtype].path), "-p", "16", "-n", "8", "-r", "1", "-t", "2", "-o", "json"],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    res = {r["test"]: r for r in engines.parse_llama_bench(p.stdout)}
    assert set(res) == {"pp16", "tg8"}
    assert all(r["tokens_per_s"] > 0 for r in res.values())


@pytest.mark.llama
def test_llama_completion_produces_tokens(completion, models):
    p = subprocess.run(
        [
            str(completion),
            "-m",
            str(models["Q4_0"].path),
            "-p",
            "hello world",
            "-n",
            "16",
            "-t",
            "2",
            "-c",
            "256",
            "-no-cnv",
            "--ignore-eos",
            "--temp",
            "0",
            "--no-warmup",
        ],
        check=False,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert "hello world" in p.stdout
    assert len(p.stdout.split("hello world", 1)[1].strip()) > 0
