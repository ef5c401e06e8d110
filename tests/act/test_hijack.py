"""Where hugeload, as root, creates directories and files, a link or a directory planted there
first by another user changes nothing: the command refuses in one line, and the planted
target is untouched.  (Boot files: tests/act/test_boot_config.py.  The bench's /dev/shm copy
and the preload library's report file are tested with their own code.)"""

import os
import re
import subprocess
from pathlib import Path

import pytest

from hugeload.act import state
from hugeload.errors import HugeloadError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def victim(tmp_path) -> Path:
    v = tmp_path / "victim"
    v.mkdir()
    (v / "precious").write_text("keep\n")
    return v


def untouched(victim: Path) -> bool:
    return sorted(p.name for p in victim.iterdir()) == ["precious"] and (victim / "precious").read_text() == "keep\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="lchown to another uid needs root")
def test_a_state_dir_that_is_another_users_link_is_refused(tmp_path, victim, hugeload_cli):
    link = tmp_path / "state"
    link.symlink_to(victim)
    os.lchown(link, 4242, 4242)  # planted by uid 4242
    with pytest.raises(HugeloadError, match="uid 4242"):
        state.write_json(link / "ledger.json", {"shares": {}})
    out = hugeload_cli("run", "--", "true", env={"HUGELOAD_STATE_DIR": str(link)})
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1 and "uid 4242" in out.stderr, out.stderr
    out = hugeload_cli("run", "--", "true", env={"HUGELOAD_STATE_DIR": str(link / "sub")})
    assert out.returncode == 1 and "uid 4242" in out.stderr
    assert untouched(victim)


def test_a_state_dir_under_a_world_writable_directory_is_refused(tmp_path, victim):
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)  # not sticky: anyone could swap what is in it
    with pytest.raises(HugeloadError, match="writable by others"):
        state.ensure_dir(open_dir / "state")
    assert not (open_dir / "state").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
def test_a_state_dir_another_user_made_is_refused(tmp_path, hugeload_cli):
    planted = tmp_path / "state"
    planted.mkdir(mode=0o777)
    os.chown(planted, 4242, 4242)
    with pytest.raises(HugeloadError, match="uid 4242"):
        state.ensure_dir(planted)
    out = hugeload_cli("run", "--", "true", env={"HUGELOAD_STATE_DIR": str(planted)})
    assert out.returncode == 1 and "uid 4242" in out.stderr and not list(planted.iterdir())


def test_a_lock_file_that_is_a_link_is_not_followed(tmp_path, victim):
    d = state.ensure_dir(tmp_path / "state")
    (d / "x.lock").symlink_to(victim / "created-through-the-link")
    with pytest.raises(OSError), state.locked(d / "x.lock", timeout=1):
        pass
    assert untouched(victim)


@pytest.mark.kernel
def test_a_mount_point_that_is_a_link_is_refused(tmp_path, needs_root, state_dir, hugeload_cli):
    empty = tmp_path / "empty"
    empty.mkdir()
    link = tmp_path / "mnt"
    link.symlink_to(empty)
    out = hugeload_cli("mount", "--page-size", "2m", "--dir", link)
    assert out.returncode == 2 and "symlink" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not os.path.ismount(empty)  # and the conftest checks no mount was left


def test_make_model_writes_no_fixed_temporary_name(tmp_path, victim, hugeload_cli):
    pytest.importorskip("gguf")
    out = tmp_path / "m.gguf"
    (tmp_path / "m.gguf.tmp").symlink_to(victim / "precious")  # the name it used to write through
    r = hugeload_cli("make-model", out, "--size", "2M", "--type", "Q8_0")
    assert r.returncode == 0, r.stderr
    assert untouched(victim) and out.stat().st_size > 1 << 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf", "m.gguf.tmp", "victim"]


def test_scripts_write_no_fixed_name_in_tmp():
    """A redirect or tee into /tmp/<fixed name> as root follows a planted link: scripts use
    mktemp, or a checked lock path."""
    bad = []
    for f in sorted((REPO / "scripts").glob("*.sh")):
        for n, line in enumerate(f.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if re.search(r"(>>?|\btee\b[^|]*)\s*/tmp/", code) or re.search(r"exec\s+\d+>\s*/tmp/", code):
                bad.append(f"{f.name}:{n}: {line.strip()}")
    assert not bad, bad


def test_flock_lock_of_the_tests_is_opened_without_following_links():
    src = (REPO / "tests" / "conftest.py").read_text()
    assert "os.O_NOFOLLOW" in src.split("def machine_lock_file", 1)[1].split("yield", 1)[0]
    r = subprocess.run(["grep", "-n", "9>/tmp", str(REPO / "scripts" / "numa-vm.sh")], capture_output=True, text=True)
    assert r.stdout == ""
