"""Shared test fixtures.

Every test runs under `machine_unchanged`: it snapshots the huge page pools and
hugetlbfs mounts before the test, and after it fails the test on any
difference (then puts pool sizes back so one leak does not cascade).  Tests
that touch the kernel also hold a machine-wide lock, because the pools are one
shared resource and pytest runs may overlap on a developer's machine.
"""

import contextlib
import fcntl
import os
import subprocess
from pathlib import Path

import pytest

HUGEPAGES = Path("/sys/kernel/mm/hugepages")
HVO = Path("/proc/sys/vm/hugetlb_optimize_vmemmap")  # hugeload turns it on and must put it back
NODES = Path("/sys/devices/system/node")
LOCK_PATH = "/tmp/hugeload-tests.lock"
REPO = Path(__file__).resolve().parent.parent


def pool_snapshot() -> dict[str, str]:
    """Every counter under /sys/kernel/mm/hugepages, and per-node pool sizes."""
    snap = {}
    for f in sorted(HUGEPAGES.glob("hugepages-*/*")):
        with contextlib.suppress(OSError):
            snap[str(f)] = f.read_text().strip()
    for f in sorted(NODES.glob("node*/hugepages/hugepages-*/nr_hugepages")):
        snap[str(f)] = f.read_text().strip()
    if HVO.exists():
        snap[str(HVO)] = HVO.read_text().strip()
    return snap


def hugetlbfs_mounts() -> list[str]:
    with open("/proc/mounts") as f:
        return sorted(line.split()[1] for line in f if line.split()[2:3] == ["hugetlbfs"])


def restore_pools(before: dict[str, str]) -> None:
    for path, value in before.items():
        if (path.endswith("/nr_hugepages") and "/node" not in path) or path == str(HVO):
            with contextlib.suppress(OSError):
                Path(path).write_text(value)


@pytest.fixture(scope="session")
def machine_lock_file():
    # O_NOFOLLOW: a link planted in /tmp would make root create (0666) whatever it points to.
    fd = os.open(LOCK_PATH, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW, 0o666)
    yield fd
    os.close(fd)


@pytest.fixture(autouse=True)
def machine_unchanged(request, machine_lock_file):
    if not HUGEPAGES.exists():
        yield
        return
    fcntl.flock(machine_lock_file, fcntl.LOCK_EX)
    try:
        pools_before, mounts_before = pool_snapshot(), hugetlbfs_mounts()
        yield
        pools_after, mounts_after = pool_snapshot(), hugetlbfs_mounts()
        changed = {k: (pools_before.get(k), v) for k, v in pools_after.items() if pools_before.get(k) != v}
        if changed or mounts_after != mounts_before:
            # Mounts first: a file left on one holds its pages, and the pool cannot shrink below them.
            for m in set(mounts_after) - set(mounts_before):
                subprocess.run(["umount", "-l", m], check=False)
            restore_pools(pools_before)
            pytest.fail(
                f"test left the machine changed: pools {changed}, mounts before {mounts_before} after {mounts_after}"
            )
    finally:
        fcntl.flock(machine_lock_file, fcntl.LOCK_UN)


@pytest.fixture
def needs_root():
    if os.geteuid() != 0:
        pytest.skip("needs root to change huge page pools")


@pytest.fixture
def state_dir(tmp_path, monkeypatch):
    """A private hugeload state directory (and config directory), so tests never touch
    /run/hugeload or /etc/hugeload."""
    d = tmp_path / "state"
    monkeypatch.setenv("HUGELOAD_STATE_DIR", str(d))
    # models.json too: stage(persist=True), unstage and clear keep it, and must never edit /etc/hugeload
    monkeypatch.setenv("HUGELOAD_CONFIG_DIR", str(tmp_path / "etc"))
    return d


@pytest.fixture
def hugeload_cli():
    """Runs the installed `hugeload` command; returns CompletedProcess (text)."""
    exe = REPO / ".venv" / "bin" / "hugeload"
    cmd = [str(exe)] if exe.exists() else ["python", "-m", "hugeload.cli"]

    def run(*args, check=False, env=None, timeout=300):
        full_env = dict(os.environ, **(env or {}))
        return subprocess.run(
            [*cmd, *map(str, args)], capture_output=True, text=True, check=check, env=full_env, timeout=timeout
        )

    return run
