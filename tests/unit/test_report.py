"""hugeload.report: the preload library's report read back, the exact inverse of log.c's escaping.

`encode_what` restates hl_encode_what (csrc/preload/log.c); tests/test_hostile_names.py checks it
against the library itself.  Here: the escaping rule byte by byte, the 64-byte cut, and, for any
name at all, that decoding gives the name back and that a region line parses to its fields."""

import os

from hypothesis import example, given, settings
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


def _line(what, nbytes, mapped, page, fill, addr, pid=7):
    return (
        f"hugeload: region pid={pid} what={what} bytes={nbytes} mapped={mapped} page={page} fill={fill} "
        f"ms=1.0 addr=0x{addr:x} live=1"
    )


def test_an_allocation_in_two_parts_is_one_block():
    gib, mib, a = 1 << 30, 1 << 20, 0x7F0040000000
    text = "\n".join(
        [
            _line("malloc", gib, gib, "1G", "alloc", a),
            _line("model.gguf", 5 * mib, 6 * mib, "2M", "staged", a + gib),  # not an allocation
            _line("malloc", 100 * mib, 100 * mib, "2M", "alloc", a - 100 * mib),  # not where the first ends
            _line("malloc", 7 * mib, 8 * mib, "2M", "alloc", a + gib, pid=8),  # another process
            _line("malloc", 7 * mib, 8 * mib, "2M", "alloc", a + gib),
        ]
    )
    blocks = report.blocks(report.parse(text))
    assert [(b.pid, b.page, b.bytes, b.mapped, b.addr) for b in blocks] == [
        (7, "1G+2M", gib + 7 * mib, gib + 8 * mib, a),
        (7, "2M", 5 * mib, 6 * mib, a + gib),
        (7, "2M", 100 * mib, 100 * mib, a - 100 * mib),
        (8, "2M", 7 * mib, 8 * mib, a + gib),
    ]


@settings(max_examples=200, deadline=None)
# found by hypothesis: a second part listed before its first part was emitted twice
@example([("malloc", 0, "1G", "alloc", 0), ("malloc", 0, "2M", "alloc", 2), ("malloc", 0, "1G", "alloc", 1)])
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["malloc", "realloc"]),
            st.integers(0, 4),
            st.sampled_from(["1G", "2M", "THP"]),
            st.sampled_from(["alloc", "copy"]),
            st.integers(0, 3),
        ),
        max_size=12,
    )
)
def test_joining_parts_keeps_every_byte_and_every_other_region(rows):
    """Whatever the report holds, blocks() only ever joins a 1G allocation with the 2M one that
    starts where it ends: bytes are kept, and no region is dropped or used twice."""
    gib = 1 << 30
    regions = report.parse("\n".join(_line(w, n * gib + 1, n * gib + gib, p, f, a * gib) for w, n, p, f, a in rows))
    blocks = report.blocks(regions)
    assert sum(b.bytes for b in blocks) == sum(r.bytes for r in regions)
    joined = [b for b in blocks if b.page == "1G+2M"]
    assert len(blocks) + len(joined) == len(regions)
    assert all(b.allocation for b in joined)
