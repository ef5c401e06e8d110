"""runner.model_args / estimate_need: which files `hugeload run` plans pages for."""

import os

from hugeload import runner
from hugeload.act import state, store

MiB = 1 << 20


def stage_fake(state_dir, src, staged):
    """A manifest saying `src` is staged at `staged` (a plain file stands in for hugetlbfs)."""
    st = os.stat(src)
    f = store.StagedFile(str(src), str(staged), st.st_size, st.st_dev, st.st_ino, st.st_mtime_ns)
    m = store.Manifest("small", 1048576, 1, [f], 0.0)
    state.write_json(store.manifest_path("small", state_dir), m.to_json())


def test_staged_file_under_min_size_is_a_candidate(tmp_path, tree):
    # A 400 MB staged model is redirected by the library whatever its size, and an engine
    # that repacks it allocates about as much again: --reserve must plan for that.
    src, staged = tmp_path / "small.gguf", tmp_path / "staged.gguf"
    src.write_bytes(b"x" * (3 * MiB))
    staged.write_bytes(b"x" * (3 * MiB))
    sd = tmp_path / "state"
    assert runner.model_args(["llama-bench", "-m", str(src)], [], state_dir=sd) == []
    stage_fake(sd, src, staged)
    cands = runner.model_args(["llama-bench", "-m", str(src)], [], state_dir=sd)
    assert cands == [runner.Candidate(str(src), 3 * MiB, True)]
    need = runner.estimate_need(cands, 1048576, copy=False, alloc=True, root=tree("zen-vm"))
    assert need.pages == 1
    assert runner.estimate_need(cands, 1048576, copy=True, alloc=False, root=tree("zen-vm")).pages == 0


def test_unstaged_small_file_is_not_a_candidate_without_glob(tmp_path):
    src = tmp_path / "small.gguf"
    src.write_bytes(b"x" * MiB)
    assert runner.model_args([f"--model={src}"], [], state_dir=tmp_path / "state") == []
    assert [c.path for c in runner.model_args([f"--model={src}"], ["*.gguf"], state_dir=tmp_path / "state")] == [str(src)]
