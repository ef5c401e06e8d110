"""boot-config on real GRUB layouts, checked by bash itself: after --apply, every file bash -n
accepts, and sourcing them as grub-mkconfig does gives a GRUB_CMDLINE_LINUX that holds the huge
page parameters and every original word, and nothing from a comment.  Then idempotence,
removal, backups, fstab's nofail, the parser against bash on generated files, planted symlinks
and foreign-owned directories, and the systemd units."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hugeload.act import boot as act_boot
from hugeload.plan import boot

BASH = shutil.which("bash")
SEED_LINE = 'GRUB_CMDLINE_LINUX="hugepagesz=1G hugepages=32 default_hugepagesz=1G"'
PARAMS = ["hugepagesz=1G", "hugepages=32", "hugepagesz=2M", "hugepages=512", "default_hugepagesz=1G"]

# Five layouts seen on real machines.  Every word after a '#' is a comment and must stay out.
DEBIAN_GRUB = """\
# If you change this file, run 'update-grub' afterwards to update
# /boot/grub/grub.cfg.
# For full documentation of the options in this file, see:
#   info -f grub -n 'Simple configuration'

GRUB_DEFAULT=0
GRUB_TIMEOUT=5
GRUB_DISTRIBUTOR=`lsb_release -i -s 2> /dev/null || echo Debian`
GRUB_CMDLINE_LINUX_DEFAULT="quiet"
GRUB_CMDLINE_LINUX="console=ttyS0,115200n8 net.ifnames=0"

# Uncomment to disable graphical terminal (grub-pc only)
#GRUB_TERMINAL=console
"""
UBUNTU_DROPIN = 'GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT init=/lib/systemd/systemd-bootchart"\n'
LAYOUTS = {
    "debian-grub.d": (
        DEBIAN_GRUB,
        {
            "50-cloudimg-settings.cfg": 'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX rootdelay=3"\n',
            "init-select.cfg": UBUNTU_DROPIN,
        },
    ),
    "comments": (
        '#GRUB_CMDLINE_LINUX="init=/bin/sh"\n'
        'GRUB_CMDLINE_LINUX="quiet splash"  # note init=/bin/sh\n'
        "GRUB_TIMEOUT=5 # seconds\n",
        None,
    ),
    "export": ('export GRUB_CMDLINE_LINUX="root=/dev/sda1 ro"\nexport GRUB_TIMEOUT=1\n', None),
    "default": ('GRUB_CMDLINE_LINUX_DEFAULT="quiet splash mitigations=off"\nGRUB_CMDLINE_LINUX=""\n', None),
    "second-assignment": (
        'GRUB_CMDLINE_LINUX="console=tty0 root=UUID=1234-abcd"\n'
        'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX hugepages=16" # the old way\n',
        None,
    ),
}


def make_layout(root: Path, name: str) -> None:
    grub, dropins = LAYOUTS[name]
    d = root / "etc/default"
    d.mkdir(parents=True)
    (d / "grub").write_text(grub)
    if dropins is not None:
        (d / "grub.d").mkdir()
        for f, text in dropins.items():
            (d / "grub.d" / f).write_text(text)
    (root / "etc/fstab").write_text("UUID=abc / ext4 defaults 0 1\n")


def sourced(root: Path) -> tuple[str, str]:
    """GRUB_CMDLINE_LINUX and _DEFAULT as grub-mkconfig (Debian's) sources them, by bash."""
    script = (
        'set -e; lsb_release() { echo Test; }; . "$1/etc/default/grub"\n'
        'for x in "$1"/etc/default/grub.d/*.cfg; do if [ -e "$x" ]; then . "$x"; fi; done\n'
        'printf "%s\\n%s" "$GRUB_CMDLINE_LINUX" "$GRUB_CMDLINE_LINUX_DEFAULT"'
    )
    r = subprocess.run(
        [BASH, "--norc", "--noprofile", "-c", script, "bash", str(root)], capture_output=True, text=True, env={}
    )
    assert r.returncode == 0, r.stderr
    linux, default = r.stdout.split("\n")
    return linux, default


def grub_files(root: Path) -> list[Path]:
    return [root / "etc/default/grub", *sorted((root / "etc/default/grub.d").glob("*.cfg"))]


@pytest.mark.skipif(BASH is None, reason="no bash to source the files with")
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_apply_on_real_layouts(layout, tmp_path, hugeload_cli):
    make_layout(tmp_path, layout)
    before = {p: p.read_bytes() for p in grub_files(tmp_path)}
    linux0, default0 = sourced(tmp_path)
    args = ["boot-config", "--pages-1g", 32, "--pages-2m", 512, "--apply", "--target-root", tmp_path, "--json"]
    out = hugeload_cli(*args)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    for f in grub_files(tmp_path):
        check = subprocess.run([BASH, "-n", str(f)], capture_output=True, text=True)
        assert check.returncode == 0, f"{f}: {check.stderr}"
    linux, default = sourced(tmp_path)
    words = linux.split()
    assert words[: len(linux0.split())] == linux0.split(), "every original word, first and in order"
    assert words[len(linux0.split()) :] == PARAMS
    assert "init=/bin/sh" not in words and "note" not in words
    assert default == default0  # _DEFAULT is not ours: recovery entries need the pages too
    # What hugeload reports is what bash sourced.
    assert data["grub_now"] == {"GRUB_CMDLINE_LINUX": linux, "GRUB_CMDLINE_LINUX_DEFAULT": default}
    dropin = tmp_path / "etc/default/grub.d/hugeload.cfg"
    if LAYOUTS[layout][1] is not None:
        # Debian and Ubuntu read grub.d: /etc/default/grub is not touched at all.
        assert dropin.exists() and all(p.read_bytes() == b for p, b in before.items())
        assert data["grub_file"] == "/etc/default/grub.d/hugeload.cfg"
    else:
        assert not dropin.exists()
        assert (tmp_path / "etc/default/grub").read_text().startswith(LAYOUTS[layout][0])
        assert (tmp_path / "etc/default/grub.hugeload.bak").read_bytes() == before[tmp_path / "etc/default/grub"]
    if layout == "second-assignment":
        assert any("hugepages=16" in n for n in data["grub_notes"])
    # Idempotent, then removable: back to the original bytes.
    first = {p: p.read_bytes() for p in grub_files(tmp_path)}
    assert hugeload_cli(*args).returncode == 0
    assert {p: p.read_bytes() for p in grub_files(tmp_path)} == first
    assert hugeload_cli("boot-config", "--remove", "--target-root", tmp_path).returncode == 0
    assert {p: p.read_bytes() for p in grub_files(tmp_path)} == before
    assert (tmp_path / "etc/fstab").read_text() == "UUID=abc / ext4 defaults 0 1\n"


def test_output_for_32_gigantic_pages_matches_the_seed(hugeload_cli):
    out = hugeload_cli("boot-config", "--pages-1g", 32, "--json")
    data = json.loads(out.stdout)
    assert data["grub_line"] == SEED_LINE
    assert data["grub_cmdline_linux"] == "hugepagesz=1G hugepages=32 default_hugepagesz=1G"
    assert "none /mnt/hugepages-1gb hugetlbfs pagesize=1G,size=32G,nofail 0 0" in data["fstab"]


def test_fstab_lines_are_nofail_replaced_not_repeated(hugeload_cli, tmp_path):
    make_layout(tmp_path, "export")
    fstab = tmp_path / "etc/fstab"
    fstab.write_text("UUID=abc / ext4 defaults 0 1\nnone /mnt/hugepages-1gb hugetlbfs pagesize=1G,size=4G 0 0\n")
    args = ["boot-config", "--pages-1g", 32, "--pages-2m", 512, "--apply", "--target-root", tmp_path]
    assert hugeload_cli(*args).returncode == 0
    assert hugeload_cli(*args).returncode == 0
    lines = fstab.read_text().splitlines()
    assert lines == [
        "UUID=abc / ext4 defaults 0 1",
        "none /mnt/hugepages-1gb hugetlbfs pagesize=1G,size=32G,nofail 0 0",
        "none /mnt/hugepages-2mb hugetlbfs pagesize=2M,size=1G,nofail 0 0",
    ]


def test_needs_a_count(hugeload_cli):
    out = hugeload_cli("boot-config")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- the parser against bash

word = st.text(alphabet="abcz019=/,._-", min_size=1, max_size=6)
value_piece = st.one_of(
    word,
    word.map(lambda w: f'"{w} x"'),
    word.map(lambda w: f"'{w} $A'"),
    st.sampled_from(['"$A"', "$A", '"${B} y"', "\\ ", '"a\\"b"', '""', "''"]),
)
statement = st.one_of(
    st.tuples(st.sampled_from(["A", "B", "GRUB_CMDLINE_LINUX"]), st.lists(value_piece, min_size=0, max_size=3)).map(
        lambda t: f"{t[0]}={''.join(t[1])}"
    ),
    st.sampled_from(["# c init=/bin/sh", "", "export A", "#B=x"]),
)
line = st.tuples(st.sampled_from(["", "export "]), statement, st.sampled_from(["", "  # note x=1", ";", " ; B=q"])).map(
    lambda t: f"{t[0] if '=' in t[1] and not t[1].startswith('#') else ''}{t[1]}{t[2]}"
)


@pytest.mark.skipif(BASH is None, reason="no bash")
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(line, max_size=6))
def test_the_parser_assigns_what_bash_assigns(lines):
    text = "\n".join(lines) + "\n"
    script = 'eval "$1" || exit 3; printf "%s\\0%s\\0%s" "${A-}" "${B-}" "${GRUB_CMDLINE_LINUX-}"'
    r = subprocess.run([BASH, "--norc", "--noprofile", "-c", script, "bash", text], capture_output=True, env={})
    if r.returncode:
        return  # not valid sh (e.g. '; ;'): nothing to compare
    want = r.stdout.decode().split("\0")
    got = boot.parse_shell_vars(text).values
    assert [got.get("A", ""), got.get("B", ""), got.get("GRUB_CMDLINE_LINUX", "")] == want, text


# ---------------------------------------------------------------- hostile paths


def test_a_symlinked_grub_d_is_not_followed(hugeload_cli, tmp_path):
    make_layout(tmp_path, "debian-grub.d")
    victim = tmp_path / "victim"
    victim.mkdir()
    shutil.rmtree(tmp_path / "etc/default/grub.d")
    (tmp_path / "etc/default/grub.d").symlink_to(victim)
    out = hugeload_cli("boot-config", "--pages-1g", 2, "--apply", "--target-root", tmp_path)
    assert out.returncode == 2 and "is a symlink" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not list(victim.iterdir())


def test_a_planted_backup_link_is_not_written_through(hugeload_cli, tmp_path):
    make_layout(tmp_path, "comments")
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / "etc/default/grub.hugeload.bak").symlink_to(victim)
    out = hugeload_cli("boot-config", "--pages-1g", 2, "--apply", "--target-root", tmp_path)
    assert out.returncode == 2 and "symlink" in out.stderr
    assert victim.read_text() == "precious\n"
    assert (tmp_path / "etc/default/grub").read_text() == LAYOUTS["comments"][0]


@pytest.mark.parametrize("how", ["foreign-owner", "world-writable"])
def test_a_directory_others_can_write_is_refused(how, hugeload_cli, tmp_path):
    if os.geteuid() != 0 and how == "foreign-owner":
        pytest.skip("chown to another uid needs root")
    make_layout(tmp_path, "comments")
    d = tmp_path / "etc/default"
    if how == "foreign-owner":
        os.chown(d, 4242, 4242)
    else:
        d.chmod(0o777)
    out = hugeload_cli("boot-config", "--pages-1g", 2, "--apply", "--target-root", tmp_path)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert ("uid 4242" if how == "foreign-owner" else "writable by others") in out.stderr
    assert (d / "grub").read_text() == LAYOUTS["comments"][0] and not (d / "grub.hugeload.bak").exists()


def test_units_are_not_written_through_a_symlinked_directory(hugeload_cli, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (tmp_path / "etc/systemd").mkdir(parents=True)
    (tmp_path / "etc/systemd/system").symlink_to(victim)
    out = hugeload_cli("boot-config", "--systemd", "--apply", "--target-root", tmp_path)
    assert out.returncode == 2 and "symlink" in out.stderr and not list(victim.iterdir())


# ---------------------------------------------------------------- systemd units, python -m hugeload


def test_python_m_hugeload(tmp_path):
    r = subprocess.run(
        [sys.executable, "-I", "-m", "hugeload", "--version"], capture_output=True, text=True, cwd=tmp_path
    )
    assert r.returncode == 0 and r.stdout.startswith("hugeload "), r.stderr
    r = subprocess.run([sys.executable, "-m", "hugeload", "boot-config"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("hugeload: error:")


def test_units_run_this_interpreter_isolated_and_hardened(hugeload_cli, tmp_path):
    out = hugeload_cli("boot-config", "--systemd", "--apply", "--target-root", tmp_path, "--json")
    assert out.returncode == 0, out.stderr
    unit = (tmp_path / "etc/systemd/system/hugeload-restore.service").read_text()
    lines = dict(ln.split("=", 1) for ln in unit.splitlines() if "=" in ln and not ln.startswith("#"))
    # The interpreter the CLI ran with (the venv's python or python3, as pip wrote the script's
    # shebang): named inside the venv, never resolved out of it.
    exe = lines["ExecStart"].split()[0]
    assert Path(exe).parent == Path(__file__).resolve().parents[2] / ".venv/bin"
    assert os.path.realpath(exe) == os.path.realpath(sys.executable)
    assert lines["ExecStart"] == f"{exe} -I -m hugeload restore"
    assert lines["ExecStop"] == f"{exe} -I -m hugeload clear --force --keep-persisted"
    assert lines["NoNewPrivileges"] == "yes" and "CAP_SYS_ADMIN" in lines["CapabilityBoundingSet"]
    assert "ProtectSystem" not in lines  # it would keep the store's mounts from the host (see plan/boot.py)
    exporter = (tmp_path / "etc/systemd/system/hugeload-exporter.service").read_text()
    assert "ProtectSystem=strict" in exporter and "ProtectHome=read-only" in exporter
    assert "--listen 127.0.0.1:9464" in exporter
    if shutil.which("systemd-analyze"):
        for name in ("hugeload-restore.service", "hugeload-exporter.service"):
            r = subprocess.run(
                ["systemd-analyze", "verify", "--man=no", str(tmp_path / "etc/systemd/system" / name)],
                capture_output=True,
                text=True,
            )
            problems = [ln for ln in r.stderr.splitlines() if name in ln or "hugeload" in ln]
            assert not problems, r.stderr
    assert hugeload_cli("boot-config", "--systemd", "--remove", "--target-root", tmp_path).returncode == 0
    assert not list((tmp_path / "etc/systemd/system").iterdir())


def test_a_unit_refuses_an_interpreter_another_user_can_change(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("chown needs root")
    venv = tmp_path / "home-alice" / "venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").symlink_to(sys.executable)
    os.chown(tmp_path / "home-alice", 4242, 4242)
    why = act_boot.unit_command_problem(str(venv / "python"))
    assert why and "uid 4242" in why
    assert act_boot.unit_command_problem(sys.executable) is None or "uid" in act_boot.unit_command_problem(
        sys.executable
    )


def test_cma_goes_beside_the_hugepages_line_and_the_last_one_counts(hugeload_cli, tmp_path):
    """The marked block appends to the user's line and leaves it as it is; the kernel takes the last
    `hugetlb_cma=` (an early_param), so the block's area is the one grub-mkconfig hands it."""
    grub = tmp_path / "etc/default/grub"
    grub.parent.mkdir(parents=True)
    user_line = 'GRUB_CMDLINE_LINUX="quiet hugetlb_cma=2G splash"\n'
    grub.write_text(user_line)
    args = ["boot-config", "--pages-2m", 512, "--cma", "0:4G,1:4G", "--apply", "--target-root", tmp_path, "--json"]
    out = hugeload_cli(*args)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["cma"] == "hugetlb_cma=0:4G,1:4G" and "--count 8" in data["cma_next_step"]
    first = grub.read_text()
    assert first.startswith(user_line)
    block = [ln for ln in first.splitlines()[1:] if ln.startswith("GRUB_CMDLINE_LINUX=")]
    assert block == ['GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX hugepagesz=2M hugepages=512 hugetlb_cma=0:4G,1:4G"']
    now = data["grub_now"]["GRUB_CMDLINE_LINUX"].split()
    assert [w for w in now if w.startswith("hugetlb_cma=")][-1] == "hugetlb_cma=0:4G,1:4G", now
    assert hugeload_cli(*args).returncode == 0
    assert grub.read_text() == first  # applied twice: the same file
    # Back to boot-time pages: the block no longer names an area; the user's own line is kept.
    assert hugeload_cli("boot-config", "--pages-1g", 2, "--apply", "--target-root", tmp_path).returncode == 0
    text = grub.read_text()
    assert text.startswith(user_line) and "hugetlb_cma=0:4G" not in text and "hugepages=2" in text


def test_cma_alone_and_its_explanation(hugeload_cli):
    out = hugeload_cli("boot-config", "--cma", "8G")
    assert out.returncode == 0, out.stderr
    assert 'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX hugetlb_cma=8G"' in out.stdout
    assert "hugeload reserve --page-size 1g --count 8" in out.stdout.replace("\n", "")
    help_text = " ".join(hugeload_cli("boot-config", "--help").stdout.split())
    assert "movable allocations" in help_text and "gone for everything else" in help_text


@pytest.mark.parametrize(
    "args, message",
    [
        (["--cma", "3M"], "multiple of 1G"),
        (["--cma", "0:4G,0:4G"], "named twice"),
        (["--cma", "x:4G"], "NODE:SIZE"),
        (["--cma", "4G", "--pages-1g", "2"], "skips boot-time 1 GB pages"),
        (["--cma", "0:4G,7:4G"], "node(s) 7"),
    ],
)
def test_bad_cma_is_one_line(hugeload_cli, tmp_path, args, message):
    out = hugeload_cli("boot-config", *args)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert message in out.stderr
