"""`hugeload run --reserve` reserves for every model the engine reads, whatever its size.

The preload library puts any allocation from the threshold (64 MiB) up in huge pages,
whatever file it was copied from, so llama.cpp's heap copy of a 300 MB Q4_K model (repacked
on AVX2) needs pages although the library leaves the file's mapping alone.  For generated
Q4_K models of 300 MB, 700 MB and 1.2 GB, under --page-size 2m and 1g, the heap copy must
land in the page size the plan reserved (the library's report, by the allocation's size), no
fallback warning may name it, and the pools must be back at their counts after the run."""

import pytest

from hugeload import engines, pages, runner, units
from hugeload.act import pools as act_pools
from hugeload.plan import buffers
from hugeload.report import parse as parse_report

BENCH = engines.find_llama("llama-bench")
pytestmark = [
    pytest.mark.llama,
    pytest.mark.slow,
    pytest.mark.kernel,
    pytest.mark.skipif(BENCH is None, reason="llama-bench not found: build it with scripts/get-llama.sh"),
]
SIZES = ("300M", "700M", "1200M")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from hugeload.modelgen import ModelSpec, make_model  # what `hugeload make-model OUT --size S --type Q4_K` writes

    d = tmp_path_factory.mktemp("run-reserve")
    out = {}
    for size in SIZES:
        out[size] = d / f"q4k-{size}.gguf"
        make_model(out[size], ModelSpec(units.parse_size(size), "Q4_K"))
    return out


def pool_counts() -> dict[int, int]:
    return {kb: act_pools.read_count("/", kb) for kb in (pages.PAGE_2M.kb, pages.PAGE_1G.kb)}


@pytest.mark.parametrize("page", ["2m", "1g"])
@pytest.mark.parametrize("size", SIZES)
def test_run_reserve_puts_the_heap_copy_in_huge_pages(
    models, size, page, hugeload_cli, state_dir, tmp_path, needs_root
):
    model = models[size]
    p = runner.predict_buffers(str(model), str(BENCH))
    assert p is not None, "the gguf package is needed to predict the heap copy"
    if not p.heap:
        pytest.skip(f"llama.cpp makes no heap copy of Q4_K on this CPU ({buffers.isa_words(p.engine)})")
    before = pool_counts()
    report = tmp_path / "report.txt"
    argv = [BENCH, "-m", model, "-p", "0", "-n", "1", "-r", "1", "-t", "2"]
    r = hugeload_cli("run", "--page-size", page, "--reserve", "--report", report, "--", *argv)
    assert pool_counts() == before, "the run's pages were not given back"
    assert r.returncode == 0, r.stderr[-3000:]
    short = [line for line in r.stderr.splitlines() if "the kernel gave" in line]
    if short:
        pytest.skip(f"memory fragmented: {short[0]}")
    # Only the weights' heap copies are predicted: the KV cache (69 MiB for the 1.2 GB model at
    # llama-bench's 256 cells) also passes the threshold and may fall back, but never a copy.
    fallbacks = [line for line in r.stderr.splitlines() if "unavailable" in line]
    regions = parse_report(report.read_text())
    for b in p.heap:
        assert not [line for line in fallbacks if f"({b.bytes} bytes)" in line], r.stderr[-3000:]
        want = buffers.alloc_page_kb(b.bytes, pages.parse(page), runner.DEFAULT_ALLOC_THRESHOLD)
        found = [g for g in regions if g.allocation and abs(g.bytes - b.bytes) <= runner.BYTES_SLACK]
        assert found, f"no allocation of the {b.buffer} copy's {b.bytes} bytes in the report: {regions}"
        assert [g.page for g in found] == [pages.name(want)], (b, found)
