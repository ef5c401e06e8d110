"""reserve / release on the real kernel, through the CLI, as a user would run them."""

import json
from pathlib import Path

import pytest

from hugeload.act import ledger
from hugeload.act import pools as act_pools

pytestmark = [pytest.mark.kernel]
GB, MB2 = 1048576, 2048
SYS = Path("/sys/kernel/mm/hugepages")


def count(kb):
    return int((SYS / f"hugepages-{kb}kB" / "nr_hugepages").read_text())


@pytest.fixture(autouse=True)
def _root(needs_root, state_dir):
    yield


def test_reserve_two_1g_pages_and_release_back(hugeload_cli, state_dir):
    before = count(GB)
    out = hugeload_cli("reserve", "--count", 2, "--page-size", "1g", "--json")
    if out.returncode != 0 and "the kernel gave" in out.stderr:
        # Fragmented memory: the short result must have been rolled back, and nothing recorded.
        assert count(GB) == before and ledger.share(ledger.load(state_dir), GB, None) == 0
        pytest.skip(f"the kernel gave fewer than 2 x 1 GB pages (rolled back): {out.stderr.strip()}")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["obtained"] == 2 and count(GB) == before + 2
    assert ledger.share(ledger.load(state_dir), GB, None) == 2
    ledger_file = state_dir / "ledger.json"
    assert ledger_file.stat().st_mode & 0o777 == 0o600
    assert state_dir.stat().st_mode & 0o777 == 0o755  # others reach the store's index through it
    out = hugeload_cli("release", "--json")
    assert out.returncode == 0, out.stderr
    assert count(GB) == before
    assert ledger.share(ledger.load(state_dir), GB, None) == 0
    events = [e for e in ledger.load(state_dir)["events"] if "page_size_kb" in e]  # HVO's are act/hvo's test
    assert [(e["action"], e["before"], e["after"]) for e in events] == [
        ("reserve", before, before + 2),
        ("release", before + 2, before),
    ]


def test_reserve_2m_by_size(hugeload_cli):
    before = count(MB2)
    out = hugeload_cli("reserve", "--size", "8M", "--page-size", "2m")
    assert out.returncode == 0, out.stderr
    assert count(MB2) == before + 4
    assert hugeload_cli("release", "--page-size", "2m").returncode == 0
    assert count(MB2) == before


def test_short_reservation_is_rolled_back(hugeload_cli):
    before = count(GB)
    # More than memory can ever hold: the kernel gives what it can, and hugeload undoes it.
    out = hugeload_cli("reserve", "--count", 64, "--page-size", "1g", "--force")
    assert out.returncode == 3
    assert count(GB) == before
    last = out.stderr.strip().splitlines()[-1]
    assert "rolled back" in last and "boot-config --pages-1g" in last
    assert "Traceback" not in out.stderr


def test_partial_keeps_what_the_kernel_gave(hugeload_cli, state_dir):
    before = count(MB2)
    out = hugeload_cli("reserve", "--count", 100000, "--page-size", "2m", "--partial", "--force", "--json")
    try:
        assert out.returncode == 0, out.stderr
        got = json.loads(out.stdout)["after"] - before
        assert 0 <= got < 100000 and count(MB2) == before + got
        assert ledger.share(ledger.load(state_dir), MB2, None) == got
    finally:
        hugeload_cli("release")
    assert count(MB2) == before


def test_floor_refuses_without_force(hugeload_cli):
    before = count(GB)
    out = hugeload_cli("reserve", "--count", 64, "--page-size", "1g")
    assert out.returncode == 3 and "floor" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert count(GB) == before


def test_release_never_touches_pages_reserved_by_others(hugeload_cli):
    before = count(MB2)
    try:
        (SYS / "hugepages-2048kB" / "nr_hugepages").write_text(str(before + 3))  # someone else's pages
        assert hugeload_cli("reserve", "--count", 2, "--page-size", "2m").returncode == 0
        assert count(MB2) == before + 5
        assert hugeload_cli("release", "--all").returncode == 0
        assert count(MB2) == before + 3
        out = hugeload_cli("release", "--all")
        assert count(MB2) == before + 3 and "nothing to release" in out.stdout
    finally:
        (SYS / "hugepages-2048kB" / "nr_hugepages").write_text(str(before))


def test_release_keeps_pages_in_use(state_dir):
    import mmap

    before = count(MB2)
    act_pools.reserve("/", MB2, 2, state_dir=state_dir)
    m = mmap.mmap(-1, 2 * 2**21, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x40000 | (21 << 26))
    try:
        m[0] = 1  # touch one page: in use; the other is reserved by the mapping
        results = act_pools.release("/", MB2, state_dir=state_dir)
        assert results[0].released == 0 and results[0].kept == 2
        assert "process" in results[0].reason or "reserved" in results[0].reason
        assert count(MB2) == before + 2
    finally:
        m.close()
    results = act_pools.release("/", MB2, state_dir=state_dir)
    assert results[0].released == 2 and count(MB2) == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["reserve", "--count", "0", "--page-size", "1g"], "positive"),
        (["reserve", "--count", "-2", "--page-size", "1g"], "positive"),
        (["reserve", "--count", "1", "--page-size", "3m"], "unknown page size"),
        (["reserve", "--count", "1", "--page-size", "1g", "--node", "99"], "node 99 does not exist"),
        (["reserve", "--size", "3M", "--page-size", "2m"], "not a multiple"),
        (["reserve", "--size", "lots", "--page-size", "2m"], "cannot parse size"),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(hugeload_cli, args, message):
    before = (count(GB), count(MB2))
    out = hugeload_cli(*args)
    assert out.returncode != 0
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert (count(GB), count(MB2)) == before


def test_not_root_names_the_file(tmp_path):
    import os
    import subprocess
    import sys

    # Import first: the interpreter may live where nobody cannot read.
    code = (
        "import os, argparse, json, tempfile, fcntl; from hugeload.cli import main, build_parser; build_parser();"
        "import hugeload.cli.cmd_pools, hugeload.act.ledger, rich.console;"
        "os.setgid(65534); os.setuid(65534);"
        "raise SystemExit(main(['reserve','--count','1','--page-size','2m','--force']))"
    )
    env = dict(os.environ, HUGELOAD_STATE_DIR=str(tmp_path / "s"))
    tmp_path.chmod(0o777)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode != 0
    assert "nr_hugepages" in out.stderr or "ledger" in out.stderr or "permission" in out.stderr.lower()
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_release_forgets_pages_someone_else_already_removed(hugeload_cli, state_dir):
    before = count(MB2)
    assert hugeload_cli("reserve", "--count", 2, "--page-size", "2m").returncode == 0
    (SYS / "hugepages-2048kB" / "nr_hugepages").write_text(str(before))  # an admin shrinks the pool by hand
    out = hugeload_cli("release")
    assert out.returncode == 0 and "kept" not in out.stdout, out.stdout
    assert ledger.share(ledger.load(state_dir), MB2, None) == 0
    assert count(MB2) == before
    assert [e for e in ledger.load(state_dir)["events"] if "page_size_kb" in e][-1]["action"] == "forget"


def test_gc_frees_pages_of_a_killed_benchmark(hugeload_cli, state_dir):
    before = count(MB2)
    dead = 2**22 + 12345  # above pid_max's default: no such process
    act_pools.reserve("/", MB2, 2, owner=f"bench:{dead}", state_dir=state_dir)
    assert count(MB2) == before + 2
    assert hugeload_cli("gc").returncode == 0
    assert count(MB2) == before and ledger.share(ledger.load(state_dir), MB2, None) == 0


def test_new_pages_are_faulted_in_once_and_stay_free(state_dir, needs_root):
    # prefault maps the new pages, touches them from several threads and unmaps them: the
    # pool keeps them, free, and the time is reported.
    from hugeload.act import pools as act_pools
    from hugeload.probe import pools as probe_pools

    before = probe_pools.system_pool("/", 2048)
    r = act_pools.reserve("/", 2048, 32, owner="test", state_dir=state_dir)
    try:
        after = probe_pools.system_pool("/", 2048)
        assert r.prefault_s is not None and r.prefault_s > 0
        assert after.total == before.total + 32 and after.free == before.free + 32
        no = act_pools.reserve("/", 2048, 8, owner="test", state_dir=state_dir, prefault=False)
        assert no.prefault_s is None
    finally:
        act_pools.release("/", 2048, owner="test", state_dir=state_dir)
    assert act_pools.prefault_pages(2048, 1 << 30) is None  # more than the pool can lend: nothing done
