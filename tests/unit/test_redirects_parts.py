"""The redirect index with copies in parts (contract C1 version 3) and the manifest's parts,
against a temporary state directory: no root, no huge pages.  The C reader's side is in
tests/native/test_override.c (test_index_parts)."""

import pytest

from hugeload.act import redirects
from hugeload.act.store import manifest
from hugeload.units import GiB, MiB

GB = 1048576


def entry(parts=()):
    return redirects.RedirectEntry(1, 2, 3 * GiB + 5, 4, 5, -1, GB, "/s/mnt-1g/m/a b", parts)


def test_version_3_is_written_only_when_a_copy_has_parts(tmp_path):
    redirects.write(tmp_path, [entry()])
    assert redirects.index_path(tmp_path).read_text().startswith("hugeload-redirects 2\n")
    split = entry((redirects.Part(2 * GiB, 2048, "/s/mnt-2m/m/a b"),))
    redirects.write(tmp_path, [entry(), split])
    text = redirects.index_path(tmp_path).read_text()
    assert text.splitlines()[0] == "hugeload-redirects 3"
    assert text.splitlines()[2].endswith(" /s/mnt-1g/m/a%20b 2147483648 2048 /s/mnt-2m/m/a%20b")
    assert redirects.read(tmp_path) == [entry(), split]


@pytest.mark.parametrize(
    "tail",
    [
        " 2147485696 2048 /p2",  # not a multiple of the first part's page
        " 0 2048 /p2",
        " 4294967296 2048 /p2",  # past the end
        " 1073741824 2048 /p2 2147483648 2048 /p3",  # a third part
        " 1073741824 2048",
        " -1073741824 2048 /p2",
    ],
)
def test_lines_with_bad_parts_do_not_parse(tail):
    line = redirects.format_line(entry()).rstrip("\n") + tail
    assert redirects.parse_line(line) is None
    assert redirects.parse_line(redirects.format_line(entry()).rstrip("\n"), with_parts=False) == entry()
    assert redirects.parse_line(line.split(" 2147485696")[0] + " 1073741824 2048 /p2", with_parts=False) is None


def test_more_parts_than_the_library_maps_are_refused_when_written():
    three = entry((redirects.Part(GiB, 2048, "/a"), redirects.Part(2 * GiB, 2048, "/b")))
    with pytest.raises(ValueError, match="3 parts"):
        redirects.format_line(three)


def test_a_manifest_with_parts_reads_back_and_says_its_split(tmp_path):
    f = manifest.StagedFile("/src/m.bin", "/s/mnt-1g/m/m.bin", GiB + 6 * MiB + 1, 1, 2, 3, None, 4)
    f.parts = [manifest.Part(GiB, "/s/mnt-2m/m/m.bin", 2048)]
    m = manifest.Manifest("m", GB, 1, [f], 0.0)
    back = manifest.Manifest.from_json(m.to_file())
    assert back.files == [f]
    assert back.copies[0].split() == {GB: (GiB, 1), 2048: (6 * MiB + 1, 4)}
    assert back.copies[0].pages_of(2048) == 4 and back.all_paths == ["/s/mnt-1g/m/m.bin", "/s/mnt-2m/m/m.bin"]
    assert m.to_json()["copies"][0]["split"][0] == {"page_size_kb": 2048, "bytes": 6 * MiB + 1, "pages": 4}
    bad = m.to_file()
    bad["files"][0]["parts"] = [{"offset": 2 * GiB, "staged": "/x", "page_size_kb": 2048}]  # past the end
    with pytest.raises(manifest.ManifestError, match="not in order"):
        manifest.Manifest.from_json(bad)
