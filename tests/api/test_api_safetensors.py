"""hugeload.safetensors against the safetensors package, in 1 GB pages, and malformed files."""

import json
import struct

import numpy as np
import pytest
from api_helpers import KB_1G, available
from safetensors.numpy import load_file as st_load_numpy
from safetensors.numpy import save_file as st_save_numpy

import hugeload
import hugeload.safetensors as hs
from hugeload import api


def numpy_tensors(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "embed": rng.standard_normal((256, 64)).astype(np.float32),
        "w64": rng.standard_normal((3, 5)),
        "half": rng.standard_normal((17,)).astype(np.float16),
        "ids": rng.integers(-(2**40), 2**40, (4, 4), dtype=np.int64),
        "i32": rng.integers(-9, 9, (7,), dtype=np.int32),
        "i16": rng.integers(-9, 9, (2, 3), dtype=np.int16),
        "i8": rng.integers(-9, 9, (5,), dtype=np.int8),
        "u8": rng.integers(0, 255, (3, 3), dtype=np.uint8),
        "mask": rng.integers(0, 2, (9,)).astype(bool),
        "scalar": np.array(1.5, dtype=np.float32),
        "empty": np.zeros((0, 4), dtype=np.float32),
    }


@pytest.fixture
def st_file(tmp_path):
    path = tmp_path / "model.safetensors"
    st_save_numpy(numpy_tensors(), str(path), metadata={"format": "np"})
    return path


def assert_same_numpy(ours, ref):
    assert set(ours) == set(ref)
    for k, v in ref.items():
        assert ours[k].dtype == v.dtype and ours[k].shape == v.shape, k
        assert np.array_equal(ours[k], v), k
        assert not ours[k].flags.writeable, k


def test_numpy_arrays_equal_the_reference(st_file):
    ours = hs.load(st_file, page_size="4k")
    assert_same_numpy(ours, st_load_numpy(str(st_file)))
    assert ours.metadata == {"format": "np"} and ours.dtypes["embed"] == "F32"


def test_views_keep_the_mapping_alive(st_file):
    ref = st_load_numpy(str(st_file))
    ours = hs.load(st_file, page_size="4k")
    embed, mapping = ours["embed"], ours.mapping
    del ours
    mapping.close()  # views alive: deferred, never a crash
    assert mapping.deferred and not mapping.released
    assert np.array_equal(embed, ref["embed"])
    del embed
    assert mapping.released


class _no_warnings:
    def __enter__(self):
        import warnings

        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        self._cm.__exit__(*exc)


def torch_tensors():
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(0)
    t = {
        "w": torch.randn(64, 32, generator=g),
        "bf16": torch.randn(33, 5, generator=g).to(torch.bfloat16),
        "f16": torch.randn(8, generator=g).to(torch.float16),
        "i64": torch.arange(10),
        "flag": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 3),
    }
    for name in ("float8_e4m3fn", "float8_e5m2"):
        if hasattr(torch, name):
            t[name] = torch.randn(12, generator=g).to(getattr(torch, name))
    return t


def assert_same_torch(ours, ref):
    torch = pytest.importorskip("torch")
    assert set(ours) == set(ref)
    for k, v in ref.items():
        assert ours[k].dtype == v.dtype and ours[k].shape == v.shape, k
        if v.dtype.is_floating_point and v.dtype.itemsize == 1:  # float8: compare the bits
            assert torch.equal(ours[k].view(torch.uint8), v.view(torch.uint8)), k
        else:
            assert torch.equal(ours[k], v), k


def test_torch_tensors_equal_the_reference(tmp_path):
    pytest.importorskip("torch")
    from safetensors.torch import load_file, save_file

    path = tmp_path / "model.safetensors"
    save_file(torch_tensors(), str(path))
    with _no_warnings():  # a private copy is writable: no torch warning
        ours = hs.load(path, framework="pt", page_size="4k")
    assert_same_torch(ours, load_file(str(path)))


def test_bf16_for_numpy_is_uint16_bits(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    path = tmp_path / "bf16.safetensors"
    x = torch.randn(4, 6).to(torch.bfloat16)
    save_file({"x": x}, str(path))
    ours = hs.load(path, page_size="4k")
    assert ours["x"].dtype == np.uint16 and ours.dtypes["x"] == "BF16"
    assert np.array_equal(hs.bf16_to_f32(ours["x"]), x.float().numpy())


def test_in_1g_pages_per_smaps(reserve, tmp_path):
    """The acceptance test: arrays equal to the reference, backed by 1 GB pages
    according to /proc/self/smaps, and the pool back where it was after close."""
    path = tmp_path / "model.safetensors"
    st_save_numpy(numpy_tensors(3), str(path))
    ref = st_load_numpy(str(path))
    with reserve(KB_1G, 1):
        free_before = available(KB_1G)
        ours = hs.load(path, page_size="1g", fallback=False)
        assert_same_numpy(ours, ref)
        assert ours.mapping.page_size == KB_1G and ours.mapping.backing == "1g"
        assert all(api.page_size_of(a) == KB_1G for a in ours.values() if a.size)
        assert available(KB_1G) == free_before - 1
        ours.mapping.close()
        assert not ours.mapping.released  # the arrays still hold it
        ours.clear()
        assert available(KB_1G) == free_before

        try:
            import torch  # noqa: F401
        except ImportError:
            return
        from safetensors.torch import load_file, save_file

        save_file(torch_tensors(), str(path))
        with _no_warnings():
            ours = hs.load(path, framework="pt", page_size="1g", fallback=False)
        assert_same_torch(ours, load_file(str(path)))
        assert all(api.page_size_of(t) == KB_1G for t in ours.values() if t.numel())
        mapping = ours.mapping
        del ours
        assert mapping.released is False
        mapping.close()
        assert mapping.released and available(KB_1G) == free_before


# --------------------------------------------------------------------------- malformed files


def build(header: dict | bytes, data: bytes = b"", length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


GOOD = {
    "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
    "b": {"dtype": "U8", "shape": [4], "data_offsets": [8, 12]},
}


def entry(**kw):
    e = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    e.update(kw)
    return e


BAD = {
    "too short": b"\x01\x00",
    "length past EOF": build(GOOD, b"\0" * 12, length=10_000),
    "huge length": build(GOOD, b"\0" * 12, length=2**63),
    "bad JSON": build(b'{"a": {', b""),
    "not UTF-8": build(b'{"\xff": 1}'),
    "not an object": build(b"[1, 2]"),
    "NaN": build(b'{"a": NaN}'),
    "duplicate key": build(
        b'{"a": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}, '
        b'"a": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}}'
    ),
    "deep nesting": build(b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    "unknown dtype": build({"a": entry(dtype="F33")}, b"\0" * 8),
    "dtype not a string": build({"a": entry(dtype=4)}, b"\0" * 8),
    "missing key": build({"a": {"dtype": "F32", "shape": [2]}}, b"\0" * 8),
    "negative dim": build({"a": entry(shape=[-2])}, b"\0" * 8),
    "float dim": build({"a": entry(shape=[2.0])}, b"\0" * 8),
    "bool dim": build({"a": entry(shape=[True, 2])}, b"\0" * 8),
    "shape/size mismatch": build({"a": entry(shape=[3])}, b"\0" * 8),
    "offsets reversed": build({"a": entry(data_offsets=[8, 0])}, b"\0" * 8),
    "offsets past the end": build({"a": entry(data_offsets=[8, 16])}, b"\0" * 8),
    "three offsets": build({"a": entry(data_offsets=[0, 4, 8])}, b"\0" * 8),
    "overlap": build({"a": entry(), "b": entry(dtype="U8", shape=[4], data_offsets=[4, 8])}, b"\0" * 8),
    "gap": build({"a": entry(data_offsets=[4, 12])}, b"\0" * 12),
    "trailing bytes": build(GOOD, b"\0" * 13),
    "metadata not strings": build({"__metadata__": {"k": 1}, **GOOD}, b"\0" * 12),
    "entry not an object": build({"a": [1]}, b"\0" * 8),
}


@pytest.mark.parametrize("name", list(BAD))
def test_malformed_files_raise_format_error(name, tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(BAD[name])
    with pytest.raises(hugeload.FormatError, match="not a valid safetensors file"):
        hs.load(path, page_size="4k")


def test_extra_entry_keys_are_ignored_as_by_the_reference(tmp_path):
    path = tmp_path / "extra.safetensors"
    path.write_bytes(build({"a": entry(extra=1)}, b"\0" * 8))
    assert list(hs.load(path, page_size="4k")) == list(st_load_numpy(str(path))) == ["a"]


def test_valid_hand_built_file(tmp_path):
    path = tmp_path / "ok.safetensors"
    data = np.array([1.0, 2.0], dtype="<f4").tobytes() + b"\x01\x02\x03\x04"
    path.write_bytes(build(GOOD, data))
    out = hs.load(path, page_size="4k")
    assert out["a"].tolist() == [1.0, 2.0] and out["b"].tolist() == [1, 2, 3, 4]


def test_malformed_file_touches_no_pool(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(BAD["overlap"])
    with pytest.raises(hugeload.FormatError):
        hs.load(path, page_size="1g")  # raises before asking for any page


def test_unknown_framework(st_file):
    with pytest.raises(hugeload.UsageError):
        hs.load(st_file, framework="jax")
