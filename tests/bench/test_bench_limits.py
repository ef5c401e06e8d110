"""bench/limits.bytes_per_token reads the model through the checked GGUF reader; its count is the
one gguf's own GGUFReader gives (the reference), for a dense and a mixture-of-experts model, and
a file that is not a valid GGUF gets no count, not a traceback."""

import os

import pytest

from hugeload import modelgen
from hugeload.bench import limits

gguf = pytest.importorskip("gguf")


def reference(path) -> int:
    r = gguf.GGUFReader(path, "r")
    kv = {f.name: f for f in r.fields.values()}

    def scalar(suffix):
        return next((int(f.parts[f.data[0]][0]) for n, f in kv.items() if n.endswith(suffix) and f.data), None)

    experts, used = scalar(".expert_count"), scalar(".expert_used_count")
    names = {t.name for t in r.tensors}
    total = 0
    for t in r.tensors:
        if t.name == "token_embd.weight" and "output.weight" in names:
            continue
        n = int(t.n_bytes)
        total += n * used // experts if "_exps" in t.name and experts and used else n
    return total


@pytest.mark.parametrize(
    "spec,what",
    [
        (modelgen.ModelSpec(4 << 20, "Q8_0"), "dense"),
        (modelgen.ModelSpec(8 << 20, "Q4_0", n_expert=8, n_expert_used=2), "MoE, 2 of 8 experts active"),
    ],
)
def test_bytes_per_token_is_what_ggufs_reader_counts(tmp_path, spec, what):
    p = tmp_path / "m.gguf"
    modelgen.make_model(p, spec)
    n, said = limits.bytes_per_token(str(p))
    assert (n, said) == (reference(str(p)), what)
    assert 0 < n < os.path.getsize(p)


def test_a_bad_file_gets_no_count(tmp_path):
    p = tmp_path / "bad.gguf"
    p.write_bytes(b"GGUF" + b"\xff" * 64)  # version 0xffffffff
    assert limits.bytes_per_token(str(p)) == (None, "no weight count (FormatError)")
    assert limits.bytes_per_token(str(tmp_path / "missing.gguf"))[0] is None
