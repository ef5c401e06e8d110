"""hugeload.gguf: raw views equal to GGUFReader's data, in huge pages."""

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from api_helpers import KB_2M  # noqa: E402

import hugeload  # noqa: E402
import hugeload.gguf as hg  # noqa: E402
from hugeload import api  # noqa: E402


@pytest.fixture
def gguf_file(tmp_path):
    path = tmp_path / "model.gguf"
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_uint32("test.answer", 42)
    w.add_tensor("f32", rng.standard_normal((4, 6)).astype(np.float32))
    w.add_tensor("f16", rng.standard_normal((3, 5)).astype(np.float16))
    w.add_tensor("i8", np.arange(10, dtype=np.int8))
    # Q8_0: 32 weights in 34-byte blocks; two rows of 64 weights
    w.add_tensor("q8_0", rng.integers(0, 255, (2, 68), dtype=np.uint8), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    # Q4_K: 256 weights in 144-byte blocks
    w.add_tensor("q4_k", rng.integers(0, 255, (3, 144), dtype=np.uint8), raw_dtype=gguf.GGMLQuantizationType.Q4_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def check_equal(ours, path):
    reader = gguf.GGUFReader(str(path))
    assert list(ours) == [t.name for t in reader.tensors]
    for t in reader.tensors:
        v = ours[t.name]
        assert v.dtype == t.data.dtype and v.shape == t.data.shape, t.name
        assert np.array_equal(v, t.data), t.name
        assert not v.flags.writeable
        assert ours.types[t.name] == t.tensor_type.name


def test_views_equal_reader_data(gguf_file):
    ours = hg.tensors(gguf_file, page_size="4k")
    check_equal(ours, gguf_file)
    assert ours["q8_0"].dtype == np.uint8 and ours.types["q4_k"] == "Q4_K"


def test_in_2m_pages(reserve, gguf_file):
    with reserve(KB_2M, 1):
        ours = hg.tensors(gguf_file, page_size="2m")
        check_equal(ours, gguf_file)
        assert api.page_size_of(ours["f32"]) == KB_2M
        mapping = ours.mapping
        del ours
        mapping.close()
        assert mapping.released


def test_not_gguf(tmp_path):
    path = tmp_path / "junk.gguf"
    path.write_bytes(b"GGUF" + b"\xff" * 60)
    with pytest.raises(hugeload.FormatError):
        hg.tensors(path, page_size="4k")
    path.write_bytes(b"nope")
    with pytest.raises(hugeload.FormatError):
        hg.tensors(path, page_size="4k")


def test_truncated_gguf(gguf_file):
    data = gguf_file.read_bytes()
    gguf_file.write_bytes(data[:-100])
    with pytest.raises(hugeload.FormatError):
        hg.tensors(gguf_file, page_size="4k")
