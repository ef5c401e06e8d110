"""Shared fixtures for the unit tests: the fixture machine trees, and a guard that
fails any test that reads the live /proc, /sys or CPU."""

from pathlib import Path

import pytest

from hugeload.probe import cpu, files

MACHINES = Path(__file__).resolve().parent.parent / "fixtures" / "machines"
TREE_NAMES = ("zen-vm", "numa2-1g", "no1g", "container-v2", "intel-spr-vm", "intel-spr", "intel-snb")


@pytest.fixture
def tree():
    """tree("zen-vm") -> the fixture tree's path as a string (what --root takes)."""

    def get(name: str) -> str:
        p = MACHINES / name
        assert p.is_dir(), f"no fixture tree {name}"
        return str(p)

    return get


@pytest.fixture(autouse=True)
def no_live_machine(monkeypatch):
    real_path = files.path

    def guarded(root, rel):
        if Path(root).resolve() == Path("/"):
            raise AssertionError(f"a unit test read the live machine: /{rel.lstrip('/')}")
        return real_path(root, rel)

    def no_cpuid():
        raise AssertionError("a unit test ran CPUID on the live CPU")

    monkeypatch.setattr(files, "path", guarded)
    monkeypatch.setattr(cpu, "path", guarded)
    monkeypatch.setattr(cpu, "native_cpuid", no_cpuid)
