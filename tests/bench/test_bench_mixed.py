"""`bench engine`'s `1g+2m` on the real kernel: when the kernel gives fewer 1 GB pages than the
model needs, the bench stages it in 1 GB + 2 MB pages and runs the engine on the source under
the preload library, which maps both parts as one range (a copy in two parts is no one file
an engine could be given).  The engine here is a Python reader that checks marks on both sides
of the split; the kernel "gives" no further 1 GB page (act/pools.reserve answers 0 for 1 GB),
so the one page this test reserves is all the copy gets."""

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from hugeload.act import pools as act_pools
from hugeload.bench import engine
from hugeload.pages import PAGE_1G, PAGE_2M

GIB, MIB = 1 << 30, 1 << 20
SIZE = GIB + 6 * MIB
MARKS = (0, GIB - 8, GIB, SIZE - 8)
P1G = Path("/sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages")

READER = r"""
import mmap, os, sys, time
path, marks = sys.argv[1], [int(x) for x in sys.argv[2].split(",")]
fd = os.open(path, os.O_RDONLY)
mm = mmap.mmap(fd, os.fstat(fd).st_size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
for off in range(0, len(mm), 4096):
    mm[off]
bad = [m for m in marks if int.from_bytes(mm[m:m + 8], "little") != m + 1]
time.sleep(0.3)  # mapped long enough for the verification run's 50 ms sampler to see it
print(f"marks wrong at {bad}" if bad else "generated, 10.5 tokens per second")
sys.exit(1 if bad else 0)
"""


@pytest.fixture
def one_1g_page(needs_root):
    before = int(P1G.read_text())
    P1G.write_text(str(before + 1))
    try:
        if int(P1G.read_text()) < before + 1:
            pytest.skip("the kernel gave no 1 GB page")
        yield
    finally:
        P1G.write_text(str(before))


@pytest.mark.kernel
def test_1g_plus_2m_runs_the_engine_on_a_copy_in_both_page_sizes(tmp_path, state_dir, one_1g_page, monkeypatch):
    model = tmp_path / "model.bin"
    with open(model, "wb") as f:  # sparse but for the marks: staging it is quick
        f.truncate(SIZE)
        for m in MARKS:
            f.seek(m)
            f.write((m + 1).to_bytes(8, "little"))
    real = act_pools.reserve

    def reserve(root, kb, count, *args, **kwargs):
        if kb == PAGE_1G.kb:  # fragmented memory: no further 1 GB page
            return SimpleNamespace(obtained=0)
        return real(root, kb, count, *args, **kwargs)

    monkeypatch.setattr(act_pools, "reserve", reserve)
    argv = [sys.executable, "-c", READER, "{model}", ",".join(map(str, MARKS))]
    data = engine.run(str(model), argv, ["default", "1g", "1g+2m"], engine.EngineOptions(1, bandwidth=False))
    by = {r["backing"]: r for r in data["results"]}
    assert by["default"]["status"] == "ok", by["default"]
    assert by["1g"]["status"] == "skipped", by["1g"]  # whole 1 GB pages only: the pool holds 1 of 2
    mixed = by["1g+2m"]
    assert mixed["status"] == "ok", (mixed["reason"], mixed)  # the engine read every mark through both parts
    assert mixed["weights_page_kb"] == [PAGE_2M.kb, PAGE_1G.kb], mixed
    assert not list((state_dir / "bench").glob("*")), "the bench left its store behind"
