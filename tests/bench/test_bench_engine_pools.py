"""`bench engine`'s pool pages for allocations: sized from the predicted heap copy
(plan/buffers), not the model's size; reserved under each copy's own owner, never taken from
free pages that are already there; topped up when staging took them; and a run whose heap
copy fell back (the library's report) is not counted.  Fake predictions and pools, no engine."""

import pytest

from hugeload import report
from hugeload.bench import copies, verify
from hugeload.bench.backings import backing
from hugeload.bench.copies import CopyKey, CopyKind, needs
from hugeload.pages import PAGE_1G, PAGE_2M
from hugeload.plan import buffers
from hugeload.probe.pools import Pool

MiB, GiB = 1 << 20, 1 << 30


def prediction(heap_bytes: int = 0) -> buffers.Prediction:
    uses = [buffers.BufferUse(buffers.Buffer.MAPPING, 50 * MiB, 20, ("Q6_K",))]
    if heap_bytes:
        uses.append(buffers.BufferUse(buffers.Buffer.CPU_REPACK, heap_bytes, 60, ("Q4_K",)))
    return buffers.Prediction(uses, buffers.Engine(True, False, False))


def keys(name: str, size: int, p) -> list[str]:
    return [str(k) for k in needs(backing(name), size, p)]


def test_alloc_pools_follow_the_predicted_heap_copy_not_the_model():
    q4k = prediction(240 * MiB)  # a 300 MB Q4_K_M: the repacked copy, under 256 MiB
    assert keys("alloc-2m", 300 * MiB, q4k) == ["pool-2048-120"]
    assert keys("alloc-1g", 300 * MiB, q4k) == ["pool-2048-120"]  # the size rule: 1G from 256 MiB
    assert keys("alloc", 300 * MiB, q4k) == ["pool-2048-120"]
    big = prediction(3 * GiB - 5 * MiB)
    assert keys("alloc-1g", 3 * GiB, big) == ["pool-1048576-3"]
    assert keys("1g+alloc", 3 * GiB, big) == ["stage-1048576", "pool-1048576-3"]
    assert keys("2m+alloc", 3 * GiB, big) == ["stage-2048", "pool-2048-1534"]
    # glibc's tunable: each copy plus its chunk header, and room for the engine's other mallocs
    assert keys("glibc-hugetlb2", 300 * MiB, q4k) == [f"pool-2048-{121 + copies.GLIBC_HEADROOM_2M}"]
    # copy: the private copy of the file and the heap copy, in one key per page size
    assert keys("copy", 300 * MiB, q4k) == ["pool-2048-270"]
    assert keys("default", 300 * MiB, q4k) == []


def test_a_model_read_from_the_mapping_needs_no_alloc_pool():
    q8 = prediction()  # Q8_0 on AVX2: no heap copy
    assert keys("alloc-2m", GiB, q8) == []
    assert keys("1g+alloc", GiB, q8) == ["stage-1048576"]
    # unpredictable (not GGUF): the model's size, as before
    assert keys("alloc-2m", GiB, None) == ["pool-2048-512"]


class FakePools:
    """A 1 GB pool: `free` pages, what each owner reserved."""

    def __init__(self, free: int):
        self.free, self.by_owner = free, {}

    def system_pool(self, root, kb):
        return Pool(kb, None, 10, self.free, 0, 0, 0)

    def reserve(self, root, kb, count, partial=False, owner="", **kw):
        class Result:
            obtained = count

        self.free += count
        self.by_owner[owner] = self.by_owner.get(owner, 0) + count
        return Result()


@pytest.fixture
def pools(monkeypatch):
    fake = FakePools(free=1)  # one free 1 GB page already there (another user's, or another key's)
    monkeypatch.setattr(copies.act_pools, "reserve", fake.reserve)
    monkeypatch.setattr(copies.probe_pools, "system_pool", fake.system_pool)
    return fake


def test_a_pool_key_reserves_all_its_pages_and_is_topped_up_after_staging(pools, tmp_path):
    c = copies.Copies("/m/x.gguf", GiB, "/", lambda m: None, tmp_path)
    key = CopyKey(CopyKind.POOL, PAGE_1G, 1)
    assert c.setup(key) == ""
    assert pools.by_owner == {c.owner(key): 1}  # its own page, not the free one that was there
    assert c.top_up([key]) is None and pools.by_owner == {c.owner(key): 1}
    pools.free = 0  # a copy staged since took the free pages
    assert c.top_up([CopyKey(CopyKind.STAGED, PAGE_1G), key]) is None
    assert pools.by_owner == {c.owner(key): 2} and pools.free == 1
    assert c.pool_owners == {c.owner(key)}
    assert c.top_up([CopyKey(CopyKind.POOL, PAGE_2M, 0)]) is None


REPORT = (
    "hugeload: region pid=7 what=posix_memalign bytes={n} mapped={n} page={page} fill=alloc ms=0.1 addr=0x2 live=0\n"
)


@pytest.mark.parametrize(
    "page, requested, reason",
    [
        ("2M", None, None),
        ("THP", None, "the CPU_REPACK heap copy (240 MiB) got page=THP, expected 2M"),
        ("2M", PAGE_2M, None),
        ("1G", PAGE_2M, "got page=1G, expected 2M"),
    ],
)
def test_a_heap_copy_that_fell_back_is_named(page, requested, reason):
    p = prediction(240 * MiB)
    regions = report.parse(REPORT.format(n=240 * MiB, page=page))
    got = verify.heap_fell_back(p, regions, requested, 64 * MiB)
    assert got is None if reason is None else reason in (got or "")
    assert (
        verify.heap_fell_back(p, [], requested, 64 * MiB)
        == "the CPU_REPACK heap copy (240 MiB) is not in the library's report"
    )
    assert verify.heap_fell_back(p, [], requested, 512 * MiB) is None  # under the threshold: libc's, as planned


def test_only_llama_cpp_engines_get_a_heap_prediction():
    from hugeload.bench import engine

    assert engine.is_llama("/opt/llama/bin/llama-bench") and engine.is_llama("llama-completion")
    assert not engine.is_llama("/bin/true")  # its heap is not llama.cpp's repacking: pools by size
