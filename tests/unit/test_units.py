"""units.py: sizes (page sizes: test_pages.py)."""

import pytest

from hugeload.errors import UsageError
from hugeload.units import GiB, KiB, MiB, TiB, arg_type, ceil_div, format_bytes, parse_size


@pytest.mark.parametrize(
    "text,value",
    [
        ("30G", 30 * GiB),
        ("30GiB", 30 * GiB),
        ("30GB", 30 * GiB),
        ("30g", 30 * GiB),
        ("30 G", 30 * GiB),
        ("512M", 512 * MiB),
        ("512MiB", 512 * MiB),
        ("4096", 4096),
        ("4096B", 4096),
        ("1K", KiB),
        ("2T", 2 * TiB),
        ("1.5G", 3 * GiB // 2),
        (" 7 ", 7),
        ("0", 0),
        (4096, 4096),
        (0, 0),
    ],
)
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "G", "30X", "thirty", "-1", "1e3", "1.5", "0.3K", "30 GiBs", "1,5G", -1])
def test_parse_size_rejects(text):
    with pytest.raises(UsageError) as e:
        parse_size(text)
    assert e.value.exit_code == 2
    assert "\n" not in str(e.value)


def test_size_arg_type_parses_at_parse_time():
    import argparse

    convert = arg_type(minimum=KiB)
    assert convert("2M") == 2 * MiB
    for bad in ("lots", "10"):
        with pytest.raises(argparse.ArgumentTypeError) as e:
            convert(bad)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "n,text",
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.5 KiB"),
        (30 * GiB, "30.0 GiB"),
        (5 * TiB, "5.0 TiB"),
        (2048 * TiB, "2048.0 TiB"),
    ],
)
def test_format_bytes(n, text):
    assert format_bytes(n) == text


def test_ceil_div():
    assert (ceil_div(0, 4), ceil_div(1, 4), ceil_div(4, 4), ceil_div(5, 4)) == (0, 1, 1, 2)
