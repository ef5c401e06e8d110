"""map_file / alloc / HugeMapping: page sizes, fallback, lifetime, changing files."""

import os
import time

import numpy as np
import pytest
from api_helpers import KB_1G, KB_2M, available

import hugeload
from hugeload import api
from hugeload.probe.thp import read_thp
from hugeload.units import GiB, MiB


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 3 * MiB + 123, dtype=np.uint8).tobytes())
    return path


# --------------------------------------------------------------------------- basics (no pools needed)


def test_map_file_4k_holds_the_file(data_file):
    with hugeload.map_file(data_file, page_size="4k") as m:
        assert len(m) == data_file.stat().st_size
        assert bytes(m.buffer) == data_file.read_bytes()
        assert m.buffer.readonly and not m.staged and m.path == str(data_file)
        assert m.backing == "4k" and m.page_size == 4
    assert m.closed and m.released


def test_map_file_threads_and_chunks_cover_every_byte(data_file, monkeypatch):
    monkeypatch.setattr(api, "READ_CHUNK", 4096 * 3)  # many chunks, uneven ranges
    with hugeload.map_file(data_file, page_size="4k", threads=3) as m:
        assert bytes(m.buffer) == data_file.read_bytes()


def test_alloc_is_writable_and_zeroed():
    with hugeload.alloc(5 * MiB + 1, page_size="4k") as m:
        assert len(m) == 5 * MiB + 1 and m.writable
        a = np.frombuffer(m.buffer, dtype=np.uint8)
        assert not a.any() and a.flags.writeable
        a[:] = 7
        assert bytes(m.buffer[-3:]) == b"\x07\x07\x07"
        del a


def test_thp_backing_is_aligned_and_verified():
    with hugeload.alloc(8 * MiB, page_size="thp") as m:
        assert m.backing == "thp" and m.address % (2 * MiB) == 0
        np.frombuffer(m.buffer, dtype=np.uint8)[:] = 1  # fault it in
        if read_thp("/").enabled in ("madvise", "always"):
            assert m.page_size == KB_2M


def test_empty_file(tmp_path):
    p = tmp_path / "empty"
    p.write_bytes(b"")
    with hugeload.map_file(p, page_size="1g") as m:  # nothing to put in pages: never an error
        assert len(m) == 0 and bytes(m.buffer) == b""


def test_bad_arguments(tmp_path):
    with pytest.raises(hugeload.UsageError, match="page size"):
        hugeload.alloc(10, page_size="3m")
    with pytest.raises(hugeload.UsageError, match="no such file"):
        hugeload.map_file(tmp_path / "missing")
    with pytest.raises(hugeload.UsageError):
        hugeload.map_file(tmp_path)


def test_cascade_rules():
    assert api._cascade("auto", GiB, None) == ["1g", "2m", "thp", "4k"]
    assert api._cascade("auto", GiB - 1, None) == ["2m", "thp", "4k"]
    assert api._cascade("auto", GiB, False) == ["1g"]
    assert api._cascade("1G", 10, None) == ["1g"]
    assert api._cascade("2m", 10, True) == ["2m", "thp", "4k"]
    assert api._cascade("thp", 0, None) == ["4k"]


def test_short_reads_and_eintr_are_retried(data_file, monkeypatch):
    real = os.preadv
    calls = []

    def preadv(fd, buffers, offset):
        calls.append(offset)
        if len(calls) == 2:
            raise InterruptedError(4, "Interrupted system call")
        return real(fd, [memoryview(buffers[0])[:1000]], offset)  # at most 1000 bytes a call

    monkeypatch.setattr(os, "preadv", preadv)
    with hugeload.map_file(data_file, page_size="4k", threads=2) as m:
        assert bytes(m.buffer) == data_file.read_bytes()
    assert len(calls) > data_file.stat().st_size // 1000


# --------------------------------------------------------------------------- lifetime


def test_close_with_live_numpy_views_defers_and_never_crashes(data_file):
    m = hugeload.map_file(data_file, page_size="4k")
    view = np.frombuffer(m.buffer, dtype=np.uint8)[10:20]
    expected = data_file.read_bytes()[10:20]
    m.close()
    assert m.closed and m.deferred and not m.released
    assert view.tobytes() == expected  # still mapped
    with pytest.raises(ValueError):
        m.buffer
    m.close()  # idempotent
    del view
    assert m.released


def test_close_with_live_torch_views_defers():
    torch = pytest.importorskip("torch")
    m = hugeload.alloc(MiB, page_size="4k")
    t = torch.frombuffer(m.buffer, dtype=torch.float32)  # torch keeps the object, not the export
    t[:4] = 2.0
    m.close()
    assert m.deferred and not m.released
    assert float(t[:4].sum()) == 8.0
    del t
    assert m.released


def test_garbage_collection_releases(data_file):
    m = hugeload.map_file(data_file, page_size="4k")
    ref = m._mm_ref
    del m
    assert ref() is None


# --------------------------------------------------------------------------- real pools (root)


def test_2m_pages_are_used_and_given_back(reserve, data_file):
    need = -(-data_file.stat().st_size // (2 * MiB))
    with reserve(KB_2M, need):
        free_before = available(KB_2M)
        m = hugeload.map_file(data_file, page_size="2m")
        assert m.backing == "2m" and m.page_size == KB_2M and not m.fallbacks
        assert api.page_size_of(np.frombuffer(m.buffer, np.uint8)) == KB_2M
        assert bytes(m.buffer) == data_file.read_bytes()
        assert available(KB_2M) == free_before - need
        m.close()
        assert m.released and available(KB_2M) == free_before


def test_explicit_1g_without_free_pages_raises_pool_error(data_file):
    if available(KB_1G) > 0:
        pytest.skip("the 1G pool holds free pages (someone reserved them): cannot test an empty pool")
    with pytest.raises(hugeload.PoolError, match="hugeload reserve --page-size 1g --count 1"):
        hugeload.map_file(data_file, page_size="1g")
    with pytest.raises(hugeload.PoolError):
        hugeload.alloc(10, page_size="1g", fallback=False)


def test_auto_falls_back_when_the_1g_pool_is_empty(data_file):
    if available(KB_1G) > 0:
        pytest.skip("the 1G pool holds free pages: cannot test an empty pool")
    with hugeload.alloc(GiB) as m:  # auto: 1g first for 1 GiB
        assert m.fallbacks[0][0] == "1g" and "reserve" in m.fallbacks[0][1]
        assert m.backing in ("2m", "thp", "4k")
        if available(KB_2M) == 0:
            assert [b for b, _ in m.fallbacks] == ["1g", "2m"]
    with hugeload.map_file(data_file, page_size="1g", fallback=True) as m:
        assert m.backing != "1g" and bytes(m.buffer) == data_file.read_bytes()


def test_auto_uses_2m_for_small_files(reserve, data_file):
    with reserve(KB_2M, 2), hugeload.map_file(data_file) as m:
        assert m.backing == "2m" and m.page_size == KB_2M


# --------------------------------------------------------------------------- files that change


def _patch_first_read(monkeypatch, action):
    real = os.preadv
    calls = []

    def preadv(fd, buffers, offset):
        if not calls:
            calls.append(offset)
            action()
        return real(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", preadv)


@pytest.mark.parametrize("change", ["grow", "rewrite", "truncate"])
def test_file_changing_while_read_raises_and_frees(change, data_file, monkeypatch):
    size = data_file.stat().st_size

    def act():
        time.sleep(0.01)  # past the timestamp granularity of older kernels
        if change == "grow":
            with open(data_file, "ab") as f:
                f.write(b"more")
        elif change == "rewrite":
            with open(data_file, "r+b") as f:
                f.write(b"X" * 100)
        else:
            os.truncate(data_file, size // 2)

    seen = []
    real_close = api.HugeMapping.close
    monkeypatch.setattr(api.HugeMapping, "close", lambda self: (seen.append(self), real_close(self))[1])
    _patch_first_read(monkeypatch, act)
    with pytest.raises(hugeload.FormatError, match="while it was being read|while being read"):
        hugeload.map_file(data_file, page_size="4k")
    assert seen and all(m.released for m in seen)


def test_file_changing_frees_huge_pages(reserve, data_file, monkeypatch):
    with reserve(KB_2M, 2):
        free_before = available(KB_2M)

        def act():
            with open(data_file, "ab") as f:
                f.write(b"more")

        _patch_first_read(monkeypatch, act)
        with pytest.raises(api.FileChanged):
            hugeload.map_file(data_file, page_size="2m")
        assert available(KB_2M) == free_before


# --------------------------------------------------------------------------- staged files (the store)


@pytest.fixture
def stage(needs_root, state_dir, tmp_path):
    """stage(payload) -> source path, staged in 2M pages by hugeload's store
    (reserving them); unstaged and the pages given back after the test."""
    staged = []

    def make(payload: bytes, name="weights.bin"):
        src = tmp_path / name
        src.write_bytes(payload)
        staged.append(hugeload.stage(src, page_size="2m", reserve=True))
        return src

    yield make
    for model in staged:
        hugeload.unstage(model)


def test_staged_file_is_mapped_shared_read_only(stage):
    payload = np.random.default_rng(2).integers(0, 256, MiB + 7, dtype=np.uint8).tobytes()
    src = stage(payload)
    free = available(KB_2M)
    with hugeload.map_file(src) as m:
        assert m.staged and m.backing == "2m" and m.page_size == KB_2M
        assert len(m) == len(payload) and bytes(m.buffer) == payload
        assert available(KB_2M) == free  # MAP_SHARED: no second set of pages
        assert m.buffer.readonly
        a = np.frombuffer(m.buffer, np.uint8)
        assert not a.flags.writeable and api.page_size_of(a) == KB_2M
        del a
    # staged=False or another page size makes a private copy instead
    with hugeload.map_file(src, staged=False, page_size="4k") as m:
        assert not m.staged and bytes(m.buffer) == payload
    with hugeload.map_file(src, page_size="4k") as m:
        assert not m.staged


def test_edited_source_is_not_served_from_a_stale_copy(stage):
    src = stage(b"a" * 5000)
    time.sleep(0.01)
    src.write_bytes(b"b" * 5000)
    with hugeload.map_file(src, page_size="4k") as m:
        assert not m.staged and bytes(m.buffer) == b"b" * 5000


def test_staged_safetensors_numpy_and_torch(stage, tmp_path):
    import warnings

    from safetensors.numpy import save_file

    import hugeload.safetensors as hs

    ref = {"w": np.arange(600, dtype=np.float32).reshape(20, 30), "b": np.ones(5, np.int16)}
    save_file(ref, str(tmp_path / "m.safetensors"))
    src = stage((tmp_path / "m.safetensors").read_bytes(), "staged.safetensors")
    out = hs.load(src)
    assert out.mapping.staged and all(np.array_equal(out[k], v) for k, v in ref.items())
    assert api.page_size_of(out["w"]) == KB_2M
    out.mapping.close()
    del out
    torch = pytest.importorskip("torch")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # read-only shared pages: no "not writable" warning either
        out = hs.load(src, framework="pt")
    assert out.mapping.staged and torch.equal(out["w"], torch.from_numpy(ref["w"]))
    assert api.page_size_of(out["w"]) == KB_2M
    mapping = out.mapping
    del out
    mapping.close()
    assert mapping.released
