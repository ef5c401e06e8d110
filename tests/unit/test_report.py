"""hugeload.report: the preload library's report read back, the exact inverse of log.c's escaping.

`encode_what` restates hl_encode_what (csrc/preload/log.c); tests/test_hostile_names.py checks it
against the library itself.  Here: the escaping rule byte by byte, the 64-byte cut, and, for any
name at all, that decoding gives the name back and that a region line parses to its fields."""

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from hugeload import report

# No file is named "." or "..": those name the directory (realpath drops them).
NAME_BYTES = st.binary(min_size=1, max_size=80).filter(
    lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b"..")
)


def test_escaping_is_log_c_s():
    assert report.encode_what("/m/tiny model.gguf") == "tiny%20model.gguf"
    assert report.encode_what("/m/100%=ok.gguf") == "100%25%3Dok.gguf"
    assert report.encode_what("/m/naïve.gguf") == "na%C3%AFve.gguf"
    assert report.encode_what(b"/m/\x01\x7f\xff.bin") == "%01%7F%FF.bin"
    assert report.encode_what("/m/") == "/m/"  # a path ending in '/': log.c keeps it whole
    assert report.encode_what("") == "?"


def test_the_cut_at_64_bytes_never_splits_an_escape():
    what = report.encode_what("/m/" + "é" * 40)  # 80 bytes, 240 encoded
    assert len(what) <= report.WHAT_SIZE - 2 and len(what) % 3 == 0 and what.startswith("%C3%A9")
    assert len(report.encode_what("/m/" + "a" * 100)) == report.WHAT_SIZE - 4


@settings(max_examples=500, deadline=None)
@given(NAME_BYTES)
def test_decode_is_the_inverse_of_encode(name):
    what = report.encode_what(b"/models/" + name)
    assert not any(c.isspace() or c == "=" for c in what)  # one token of the line, whatever the name
    decoded = os.fsencode(report.decode_what(what))
    assert name.startswith(decoded)  # the whole name, or its start when log.c cut it
    if len(what) < report.WHAT_SIZE - 5:
        assert decoded == name


@settings(max_examples=200, deadline=None)
@given(NAME_BYTES, st.integers(0, 2**40), st.sampled_from(["1G", "2M", "THP", "4K"]))
def test_a_region_line_parses_to_its_fields_and_matches_its_file(tmp_path_factory, name, nbytes, page):
    d = tmp_path_factory.mktemp("r")
    path = os.path.join(os.fsencode(d), name)
    what = report.encode_what(path)
    line = (
        f"hugeload: region pid=7 what={what} bytes={nbytes} mapped={nbytes} page={page} fill=staged ms=1.5 "
        "addr=0x7f00 live=1"
    )
    (r,) = report.parse(f"noise\nhugeload: report pid=7 regions=1 dropped=0\n{line}\n")
    assert (r.pid, r.what, r.bytes, r.page, r.fill, r.ms, r.addr, r.live) == (
        7,
        what,
        nbytes,
        page,
        "staged",
        1.5,
        0x7F00,
        True,
    )
    assert r.is_file(os.fsdecode(path)) and not r.is_file(os.path.join(os.fsdecode(d), "other"))
    assert r.page_kb == {"1G": 1048576, "2M": 2048, "THP": 2048, "4K": 4}[page]


def test_an_allocation_is_no_file_and_bad_numbers_read_as_0():
    (r,) = report.parse("hugeload: region pid=x what=malloc bytes=12q page=9X fill=alloc addr=zz")
    assert (r.pid, r.bytes, r.page_kb, r.addr, r.live, r.ms) == (0, 0, 0, 0, False, 0.0)
    assert r.allocation and not r.is_file("/m/malloc")
    assert report.weights_page_kb([r], "/m/malloc") == set()
