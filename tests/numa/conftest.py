"""The NUMA tests need a machine with two nodes that have memory: scripts/numa-vm.sh
boots one (a two-node guest) and runs them there.  Elsewhere they skip, saying so."""

import os

import pytest

from numa_helpers import MAPPER, NODES


def nodes_with_memory() -> list[int]:
    out = []
    for d in sorted(NODES.glob("node[0-9]*")):
        try:
            text = (d / "meminfo").read_text()
        except OSError:
            continue
        total = next((int(line.split()[3]) for line in text.splitlines() if "MemTotal" in line), 0)
        if total:
            out.append(int(d.name[4:]))
    return out


def pytest_collection_modifyitems(config, items):
    if len(nodes_with_memory()) >= 2 and os.geteuid() == 0:
        return
    why = ("needs two NUMA nodes with memory and root: run scripts/numa-vm.sh (a two-node guest)"
           if os.environ.get("HUGELOAD_NUMA_GUEST") != "1" else None)
    for item in items:
        if "tests/numa/" in str(item.fspath).replace(os.sep, "/"):
            if why:
                item.add_marker(pytest.mark.skip(reason=why))
            else:  # inside the rig a missing node is the rig's failure, not a reason to skip
                item.add_marker(pytest.mark.xfail(reason="the guest has fewer than two memory nodes", strict=True))


@pytest.fixture
def mapper(tmp_path):
    p = tmp_path / "mapper.py"
    p.write_text(MAPPER)
    return p


@pytest.fixture
def model(tmp_path):
    """A 20 MB model file (10 x 2 MB pages): the guest has 2 GB per node."""
    p = tmp_path / "tiny.gguf"
    p.write_bytes(os.urandom(20_000_000))
    return p
