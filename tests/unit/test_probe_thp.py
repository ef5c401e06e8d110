"""probe/thp.py."""

import pytest

from hugeload.probe import thp
from hugeload.probe.thp import Thp


@pytest.mark.parametrize(
    "name,expected",
    [
        ("zen-vm", Thp("madvise", "madvise", "never")),
        ("numa2-1g", Thp("madvise", "madvise", "never")),
        ("no1g", Thp("always", "madvise", "never")),
        ("container-v2", Thp("madvise", "madvise", "never")),
    ],
)
def test_read_thp(tree, name, expected):
    assert thp.read_thp(tree(name)) == expected


@pytest.mark.parametrize(
    "text,expected",
    [
        ("always [madvise] never\n", "madvise"),
        ("[always] madvise never", "always"),
        ("always defer defer+madvise [madvise] never", "madvise"),
        ("always within_size advise [never] deny force", "never"),
        ("madvise\n", "madvise"),  # no brackets: the whole value
        ("", None),
        (None, None),
    ],
)
def test_selected(text, expected):
    assert thp.selected(text) == expected


def test_kernel_without_thp(tmp_path):
    assert thp.read_thp(tmp_path) == Thp(None, None, None)
