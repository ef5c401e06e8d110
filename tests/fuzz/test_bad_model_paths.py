"""Every path that reads a model's header refuses a bad file the same way: the project's
FormatError in one line, exit 2, within seconds and a bounded address space, and nothing
staged, reserved or left behind.  The files are the corpus's (inputs that once hung
hugeload, ate its memory, aliased the header or raised NumPy's errors)."""

import resource
import subprocess
import time
from pathlib import Path

import pytest

import hugeload
import hugeload.gguf as hg
import hugeload.safetensors as hs
from hugeload.act import ledger, store

pytest.importorskip("gguf")

CORPUS = Path(__file__).resolve().parent / "corpus"
# The corpus also keeps files that once failed the fuzzer and are valid ("valid-" names).
BAD_GGUF = sorted(p for p in (CORPUS / "gguf").glob("*.gguf") if not p.name.startswith("valid-"))
BAD_SAFETENSORS = sorted(p for p in (CORPUS / "safetensors").glob("*.safetensors") if not p.name.startswith("valid-"))
ADDRESS_SPACE = 3 << 30  # far above what the CLI needs, far below what the old reader took


def limited():
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


@pytest.fixture
def cli(hugeload_cli):
    """hugeload under an address space limit and a clock: (CompletedProcess, seconds)."""
    exe = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "hugeload"

    def run(*args):
        t0 = time.monotonic()
        r = subprocess.run(
            [str(exe), *map(str, args)], capture_output=True, text=True, timeout=120, preexec_fn=limited, check=False
        )
        return r, time.monotonic() - t0

    if not exe.exists():
        pytest.skip("no .venv/bin/hugeload (scripts/setup.sh)")
    return run


def refused(r, seconds, fmt="GGUF"):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith(f"hugeload: error: not a valid {fmt} file"), lines[0]
    assert seconds < 30


@pytest.mark.parametrize("bad", BAD_GGUF + BAD_SAFETENSORS, ids=lambda p: p.name)
def test_plan(cli, bad):
    refused(*cli("plan", bad), "GGUF" if bad.suffix == ".gguf" else "safetensors")


@pytest.mark.parametrize("bad", BAD_GGUF, ids=lambda p: p.name)
def test_run_buffer_prediction(cli, bad, state_dir):
    refused(*cli("run", "--files", "*.gguf", "--", "true", bad))


@pytest.mark.parametrize("bad", BAD_GGUF, ids=lambda p: p.name)
def test_api_gguf_tensors(bad):
    with pytest.raises(hugeload.FormatError, match="^not a valid GGUF file") as e:
        hg.tensors(bad, page_size="4k", staged=False)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("bad", BAD_SAFETENSORS, ids=lambda p: p.name)
def test_api_safetensors_load(bad):
    with pytest.raises(hugeload.FormatError, match="^not a valid safetensors file") as e:
        hs.load(bad, page_size="4k", staged=False)
    assert "\n" not in str(e.value)


def test_a_header_of_many_small_json_lists_is_refused_before_parsing(tmp_path):
    """100 MB of `[],` would be 33M Python lists (2 GB); the bracket count refuses it first."""
    raw = b'{"a":[' + b"[]," * 4_000_000 + b"[]]}"
    path = tmp_path / "lists.safetensors"
    path.write_bytes(len(raw).to_bytes(8, "little") + raw)
    t0 = time.monotonic()
    with pytest.raises(hugeload.FormatError, match="JSON arrays and objects"):
        hs.read_header(path)
    assert time.monotonic() - t0 < 2


def test_a_fifo_named_like_a_model_does_not_hang(tmp_path):
    import os

    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    assert not hg.is_gguf(fifo)
    with pytest.raises(hugeload.UsageError, match="not a regular file"):
        hg.read_header(fifo)
    st = tmp_path / "model.safetensors"
    os.mkfifo(st)
    with pytest.raises(hugeload.UsageError, match="not a regular file"):
        hs.read_header(st)


@pytest.mark.kernel
def test_stage_reserve_and_container_args(cli, needs_root, state_dir):
    """stage --reserve predicts the heap copy before it stages: a bad file stages nothing and
    reserves nothing.  A bad file staged without --reserve (stage copies bytes, it does not
    parse) is refused by container-args --engine k8s, which sizes the pod's heap copy."""
    bad = CORPUS / "gguf" / "array-count-2p63.gguf"
    refused(*cli("stage", bad, "--page-size", "2m", "--reserve"))
    assert not store.manifests(state_dir)
    assert not ledger.load(state_dir)["shares"]
    r, _ = cli("reserve", "--count", "1", "--page-size", "2m")
    assert r.returncode == 0, r.stderr
    try:
        r, _ = cli("stage", bad, "--page-size", "2m", "--name", "bad")
        assert r.returncode == 0, r.stderr
        refused(*cli("container-args", "--engine", "k8s", "bad"))
        r, _ = cli("container-args", "--engine", "podman", "bad")  # no header needed: still works
        assert r.returncode == 0, r.stderr
    finally:
        cli("clear", "--force")
        cli("release", "--page-size", "2m")
