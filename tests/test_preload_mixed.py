"""Mixed page sizes on the real kernel (issue 23, deliverable 2): a model staged while the 1 GB
pool holds fewer pages than it needs is one copy in two parts, its first GiB in 1 GB pages and
the rest in 2 MB pages, which the preload library maps side by side as one range.

The harness (tests/native/harness.c `map`) maps the source file as llama.cpp does, compares
every byte with the file, and then unmaps it in 4 KB pieces ending at an unaligned size, across
both parts.  The file is kept near 1 GiB: fresh 1 GB pages are touched at ~0.4 GB/s here.
"""

import json
import re

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_preload import (  # noqa: F401 - build and pools are fixtures
    GIB,
    MIB,
    P1G,
    P2M,
    assert_clean,
    build,
    pool,
    pools,
    run_harness,
    smaps_vma,
)

from hugeload import exporter
from hugeload.act import store
from hugeload.pages import PAGE_1G

SIZE = GIB + 6 * MIB + 12345  # one 1 GB page, then four 2 MB pages (the last one part-filled)
TAIL_PAGES = 4


@pytest.fixture(scope="module")
def big_model(tmp_path_factory):
    """A file a bit over 1 GiB whose every 8 bytes differ, so a part mapped at a wrong offset is caught."""
    np = pytest.importorskip("numpy")
    path = tmp_path_factory.mktemp("mixed") / "big.bin"
    words = np.arange(SIZE // 8 + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    with open(path, "wb") as f:
        f.write(memoryview(words).cast("B")[:SIZE])
    return path


def store_mounts(state_dir) -> list[str]:
    with open("/proc/mounts") as f:
        return [fields[1] for fields in (line.split() for line in f) if fields[1].startswith(str(state_dir))]


def vma_bounds(pid: int, addr: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            a, b = (int(x, 16) for x in line.split()[0].split("-"))
            if a <= addr < b:
                return a, b
    return 0, 0


@pytest.mark.kernel
def test_a_copy_the_1g_pool_cannot_hold_is_staged_and_mapped_in_1g_then_2m(
    build,  # noqa: F811 - test_preload's fixtures, by name
    big_model,
    pools,  # noqa: F811
    state_dir,
    hugeload_cli,
    tmp_path,
):
    pools(P1G, 1)  # skips, saying so, when the kernel gives no 1 GB page
    pools(P2M, TAIL_PAGES)
    try:
        staged = hugeload_cli("stage", big_model, "--page-size", "1g")
        assert staged.returncode == 0, staged.stderr
        assert "1 x 1G + 4 x 2M pages" in staged.stderr and "holds 1 of 2 page(s)" in staged.stderr, staged.stderr
        # the staged path is only the 1G part: what the user is told to run is the source, under the library
        assert staged.stdout.strip() == str(big_model) and "hugeload run -- ENGINE" in staged.stderr
        (copy,) = store.resolve("big", state_dir).copies
        assert copy.split() == {PAGE_1G.kb: (GIB, 1), 2048: (SIZE - GIB, TAIL_PAGES)}
        assert (pool(P1G), pool(P2M)) == (0, 0)  # the pages are the staged files'
        found = store.find_staged(str(big_model), state_dir)  # what `run` and map_file() read: the index
        assert (found.split, found.page_size_kb) == (GIB, PAGE_1G.kb), found

        out = hugeload_cli("staged", "--json")
        assert out.returncode == 0, out.stderr
        (listed,) = json.loads(out.stdout)["models"]
        assert listed["state"] == "ready"
        assert listed["copies"][0]["split"] == [
            {"page_size_kb": 2048, "bytes": SIZE - GIB, "pages": TAIL_PAGES},
            {"page_size_kb": PAGE_1G.kb, "bytes": GIB, "pages": 1},
        ]
        table = hugeload_cli("staged")
        assert re.search(r"1G\s*\+\s*2M", table.stdout), table.stdout
        samples = {
            (x.name, x.labels.get("page_size")): x.value
            for family in text_string_to_metric_families(exporter.render(state_dir=state_dir))
            for x in family.samples
            if x.labels.get("model") == "big"
        }
        assert samples[("hugeload_model_pages", "1G")] == 1 and samples[("hugeload_model_bytes", "1G")] == GIB
        assert samples[("hugeload_model_pages", "2M")] == TAIL_PAGES
        assert samples[("hugeload_model_bytes", "2M")] == SIZE - GIB

        def on_ready(pid, addr, size):
            first, second = smaps_vma(pid, addr), smaps_vma(pid, addr + GIB)
            return (
                addr % GIB,
                vma_bounds(pid, addr),
                first.get("KernelPageSize"),
                vma_bounds(pid, addr + GIB)[0],
                second.get("KernelPageSize"),
                pool(P1G),
                pool(P2M),
            )

        r = run_harness(build, "map", big_model, "--cycles", "2", "--pause", tmp=tmp_path, on_ready=on_ready)
        assert_clean(r)  # no ERROR line: every byte read through the map equals the file's
        ((align, (a, b), kps1, start2, kps2, free1g, free2m),) = r.ready
        assert (align, b - a, kps1) == (0, GIB, 1048576), r.log  # the first GiB: one 1 GB page, 1 GiB-aligned
        assert (start2, kps2) == (b, 2048), r.log  # right after it, the rest in 2 MB pages
        assert (free1g, free2m) == (0, 0), r.log  # shared maps of the staged files: no second set of pages
        assert [(x["page"], x["fill"], x["bytes"]) for x in r.regions] == [
            ("1G", "staged", str(GIB)),
            ("2M", "staged", str(SIZE - GIB)),
        ] * 2, r.log
        assert "hugeload: " not in r.stderr, r.log  # nothing fell back
    finally:
        if store.staged(state_dir):
            store.unstage("big", force=True, state_dir=state_dir)
    assert store_mounts(state_dir) == []  # both store mounts given back
    assert (pool(P1G), pool(P2M)) == (1, TAIL_PAGES)  # every page free again (the fixture restores the pools)


@pytest.mark.kernel
def test_an_allocation_the_1g_pool_cannot_hold_takes_1g_then_2m(build, pools, tmp_path):  # noqa: F811
    """A large allocation takes the 1 GB pages the pool has and 2 MB pages for the rest, in one
    range; a shrinking realloc gives back the 2 MB pages past the new size, free gives back all."""
    pools(P1G, 1)  # skips, saying so, when the kernel gives no 1 GB page
    pools(P2M, TAIL_PAGES)
    newsize = GIB + 2 * MIB + 1  # keeps two of the four 2 MB pages

    def on_ready(pid, addr, size):
        return (
            addr % GIB,
            vma_bounds(pid, addr),
            smaps_vma(pid, addr).get("KernelPageSize"),
            vma_bounds(pid, addr + GIB)[0],
            smaps_vma(pid, addr + GIB).get("KernelPageSize"),
            pool(P1G),
            pool(P2M),
        )

    r = run_harness(
        build, "shrink", SIZE, newsize, tmp=tmp_path, timeout=180, env={"HUGELOAD_PAGE_SIZE": "1g"}, on_ready=on_ready
    )
    assert_clean(r)  # every byte written, the last one kept by realloc
    (align, (a, b), kps1, start2, kps2, free1g, free2m), after = r.ready
    assert (align, b - a, kps1) == (0, GIB, 1048576), r.log  # the first GiB: one 1 GB page, 1 GiB-aligned
    assert (start2, kps2) == (b, 2048), r.log  # right after it, the rest in 2 MB pages
    assert (free1g, free2m) == (0, 0), r.log
    assert after[5:] == (0, TAIL_PAGES - 2), r.log  # the shrink gave two 2 MB pages back while mapped
    assert [(x["page"], x["fill"], x["bytes"]) for x in r.regions] == [
        ("1G", "alloc", str(GIB)),
        ("2M", "alloc", str(SIZE - GIB)),
    ], r.log
    assert "hugeload: the 1 GB pool has 1 of the 2 pages" in r.stderr, r.log
    assert (pool(P1G), pool(P2M)) == (1, TAIL_PAGES)  # free gave every page back


@pytest.mark.kernel
def test_forked_children_write_to_an_allocation_in_two_parts(build, pools, tmp_path):  # noqa: F811
    """Each part is what a whole allocation of its page size is at fork (1 GB: the library's
    memfd, copied by the child; 2 MB: private hugetlb): children write with no spare page."""
    pools(P1G, 1)
    pools(P2M, TAIL_PAGES)
    r = run_harness(
        build, "forkwrite", SIZE, "--forks", "2", tmp=tmp_path, timeout=180, env={"HUGELOAD_PAGE_SIZE": "1g"}
    )
    assert_clean(r)
    assert "FORKWRITE ok" in r.stdout, r.log
    assert [x["page"] for x in r.regions if x["fill"] == "alloc"] == ["1G", "2M"], r.log
    assert (pool(P1G), pool(P2M)) == (1, TAIL_PAGES)
