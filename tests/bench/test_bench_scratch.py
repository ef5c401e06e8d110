"""Where a bench writes, another local user may have planted a symlink or a directory of their own:
root must neither write through it nor use what it holds (bench/scratch.py), and `bench engine`'s
tmpfs copy must stay out of it while `hugeload gc` still finds the copy after a kill -9."""

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from hugeload.bench import copies, engine, scratch
from hugeload.errors import HugeloadError

NOBODY = 65534
FAKE = ["sh", "-c", "echo '10 tokens per second' # {model}"]


def test_private_dir_is_fresh_and_0700(tmp_path):
    d = scratch.private_dir(tmp_path, "bench-1")
    st = os.lstat(d)
    assert d == tmp_path / "bench-1" and stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700


def test_a_planted_symlink_is_not_followed(tmp_path):
    target = tmp_path / "victim"
    target.mkdir()
    (tmp_path / "bench-1").symlink_to(target)
    d = scratch.private_dir(tmp_path, "bench-1")
    assert d != tmp_path / "bench-1" and d.parent == tmp_path and d.name.startswith("bench-1-")
    assert os.path.islink(tmp_path / "bench-1") and list(target.iterdir()) == []
    (d / "model.gguf").symlink_to(target / "model.gguf")  # a link where a file is to be created
    with pytest.raises(HugeloadError, match="exists already"):
        scratch.copy_private(__file__, d / "model.gguf")
    assert list(target.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to plant a directory another user owns")
def test_a_foreign_directory_is_left_alone(tmp_path):
    planted = tmp_path / "bench-1"
    planted.mkdir(mode=0o777)
    (planted / "model.gguf").write_bytes(b"the user's file")
    os.chown(planted, NOBODY, NOBODY)
    d = scratch.private_dir(tmp_path, "bench-1")
    assert d != planted and (planted / "model.gguf").read_bytes() == b"the user's file"


def test_a_leftover_of_ours_is_replaced(tmp_path):
    old = tmp_path / "bench-1"
    old.mkdir(mode=0o755)
    (old / "stale").write_text("x")
    d = scratch.private_dir(tmp_path, "bench-1")
    assert d == old and list(d.iterdir()) == [] and stat.S_IMODE(os.lstat(d).st_mode) == 0o700


def test_files_are_created_exclusively(tmp_path):
    src = tmp_path / "src"
    src.write_bytes(os.urandom(100_000))
    scratch.copy_private(src, tmp_path / "copy")
    assert (tmp_path / "copy").read_bytes() == src.read_bytes()
    assert stat.S_IMODE(os.lstat(tmp_path / "copy").st_mode) == 0o600
    with pytest.raises(HugeloadError, match="exists already"):
        scratch.copy_private(src, tmp_path / "copy")


@pytest.mark.kernel
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to plant a directory another user owns")
@pytest.mark.parametrize("plant", ["symlink", "foreign-directory"])
def test_bench_engine_tmpfs_copy_stays_out_of_what_was_planted(tmp_path, state_dir, plant):
    model = tmp_path / "model.gguf"
    model.write_bytes(os.urandom(1 << 20))
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "model.gguf").write_bytes(b"not the model")
    name = os.path.join(copies.SHM_DIR, copies.shm_name())  # what this process's bench would use
    if plant == "symlink":
        os.symlink(victim, name)
    else:
        os.mkdir(name, 0o777)
        (open(os.path.join(name, "model.gguf"), "wb")).close()
        os.chown(name, NOBODY, NOBODY)
    try:
        data = engine.run(str(model), FAKE, ["pagecache-4k"], engine.EngineOptions(rounds=1, bandwidth=False))
        assert data["results"][0]["status"] in ("ok", "skipped"), data["results"]
        assert (victim / "model.gguf").read_bytes() == b"not the model"  # nothing written through the link
        if plant == "symlink":
            assert os.path.islink(name)
        else:
            assert os.lstat(name).st_uid == NOBODY and os.path.getsize(os.path.join(name, "model.gguf")) == 0
        # the bench's own directory (mkdtemp beside the planted name) is gone
        mine = [e for e in os.listdir(copies.SHM_DIR) if e.startswith(copies.shm_name() + "-")]
        assert mine == []
    finally:
        if os.path.islink(name):
            os.unlink(name)
        else:
            shutil.rmtree(name, ignore_errors=True)


def test_the_model_copy_is_what_the_engine_reads(tmp_path, state_dir):
    # Without anything planted, the copy is in /dev/shm/hugeload-bench-<pid>: the name gc knows.
    model = tmp_path / "model.gguf"
    model.write_bytes(os.urandom(1 << 20))
    seen = tmp_path / "seen"
    argv = [sys.executable, "-c", f"import sys; open({str(seen)!r}, 'a').write(sys.argv[1] + '\\n')", "{model}"]
    engine.run(str(model), argv, ["pagecache-4k"], engine.EngineOptions(rounds=1, bandwidth=False))
    paths = set(seen.read_text().split())
    assert paths == {os.path.join(copies.SHM_DIR, copies.shm_name(), "model.gguf")}


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to plant a directory another user owns")
def test_gc_removes_a_dead_benchs_own_tmpfs_dirs_and_nothing_planted(tmp_path, state_dir):
    # A killed bench's tmpfs copy is at shm_name(pid), or at mkdtemp's shm_name(pid)-XXXXXXXX when
    # someone else held that name. gc removes the bench's own directories under either name and
    # leaves a planted link (and what it points to), another user's directory and other runs' names.
    from hugeload.act import store

    dead = subprocess.Popen(["true"])
    dead.wait()
    (state_dir / "bench" / str(dead.pid)).mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_bytes(b"the user's file")
    shm = Path(copies.SHM_DIR)
    name = copies.shm_name(dead.pid)
    link, foreign = shm / name, shm / f"{name}-foreign"
    ours, ours_nested, other_run = shm / f"{name}-abcd1234", shm / f"{name}-x" / "sub", shm / f"{name}0"
    made = [link, foreign, ours, ours_nested.parent, other_run]
    try:
        link.symlink_to(victim)
        foreign.mkdir(mode=0o777)
        (foreign / "model.gguf").write_bytes(b"theirs")
        os.chown(foreign, NOBODY, NOBODY)
        for d in (ours, ours_nested, other_run):
            d.mkdir(mode=0o700, parents=True)
        (ours / "model.gguf").write_bytes(b"copy")
        (ours_nested / "escape").symlink_to(victim / "keep")  # rmtree must unlink the link, not follow it

        store.gc(state_dir)

        assert not ours.exists() and not ours_nested.parent.exists()
        assert not (state_dir / "bench" / str(dead.pid)).exists()
        assert os.path.islink(link) and (victim / "keep").read_bytes() == b"the user's file"
        assert os.lstat(foreign).st_uid == NOBODY and (foreign / "model.gguf").read_bytes() == b"theirs"
        assert other_run.is_dir()
    finally:
        for p in made:
            if os.path.islink(p):
                os.unlink(p)
            else:
                shutil.rmtree(p, ignore_errors=True)
