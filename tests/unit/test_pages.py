"""hugeload/pages.py: the one page-size vocabulary and the one size rule."""

import argparse
import mmap

import pytest

from hugeload import pages
from hugeload.errors import UsageError
from hugeload.pages import PAGE_1G, PAGE_2M, PAGE_4K, Policy
from hugeload.units import GiB, MiB

G, M, K = 1048576, 2048, 4


# --- vocabulary ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,kb",
    [
        ("1g", G),
        ("1G", G),
        ("1GB", G),
        ("1GiB", G),
        ("1048576kB", G),
        ("1073741824", G),
        ("2m", M),
        ("2M", M),
        ("2MB", M),
        ("2048k", M),
        ("2048kB", M),
        ("4k", K),
        ("4K", K),
        ("4096", K),
        (" 2m ", M),
    ],
)
def test_parse(text, kb):
    assert pages.parse(text).kb == kb
    assert pages.parse(text, auto=False).kb == kb


def test_parse_auto():
    assert pages.parse("auto") is None and pages.parse(" AUTO ") is None
    with pytest.raises(UsageError, match="choose one of 1g, 2m, 4k"):
        pages.parse("auto", auto=False)


@pytest.mark.parametrize("text", ["16m", "512M", "16G", "8k", "2048", "0", "huge", "", "1.5g", "thp"])
def test_parse_unknown(text):
    with pytest.raises(UsageError, match="unknown page size") as e:
        pages.parse(text)
    assert "auto, 1g, 2m, 4k" in str(e.value) and e.value.exit_code == 2


def test_parse_refuses_sizes_not_allowed_here():
    with pytest.raises(UsageError, match="not allowed here.*choose one of auto, 1g, 2m$"):
        pages.parse("4k", allow=("1g", "2m"))
    assert pages.parse(PAGE_2M, allow=("2m",)) is PAGE_2M


def test_arg_type_parses_at_parse_time():
    p = argparse.ArgumentParser()
    p.add_argument("--page-size", type=pages.arg_type(), default=None)
    assert p.parse_args(["--page-size", "1GiB"]).page_size is PAGE_1G
    assert p.parse_args(["--page-size", "auto"]).page_size is None
    with pytest.raises(SystemExit):
        p.parse_args(["--page-size", "4k"])


@pytest.mark.parametrize(
    "kb,name", [(4, "4K"), (2048, "2M"), (1048576, "1G"), (16, "16K"), (16384, "16M"), (2097152, "2G"), (3, "3K")]
)
def test_name(kb, name):
    assert pages.name(kb) == name


def test_page_sizes():
    assert [p.name for p in pages.ALL] == ["1g", "2m", "4k"] and pages.HUGE == (PAGE_1G, PAGE_2M)
    assert (PAGE_1G.bytes, PAGE_2M.bytes, PAGE_4K.bytes) == (GiB, 2 * MiB, 4096)
    assert str(PAGE_1G) == "1G" and PAGE_2M.label == "2M"
    assert pages.by_kb(G) is PAGE_1G and pages.by_name("2MB") is PAGE_2M
    assert pages.by_kb(16 * G) == pages.PageSize("16g", 16 * G, True)  # the kernel may offer sizes we have no name for
    assert PAGE_2M.pages_for(2 * MiB + 1) == 2 and PAGE_1G.round_up(1) == GiB


def test_mmap_flags_encode_the_page_size():
    huge = getattr(mmap, "MAP_HUGETLB", pages.MAP_HUGETLB)
    assert huge == pages.MAP_HUGETLB
    assert PAGE_2M.mmap_flags == huge | 21 << pages.MAP_HUGE_SHIFT
    assert PAGE_1G.mmap_flags == huge | 30 << pages.MAP_HUGE_SHIFT
    assert PAGE_4K.mmap_flags == 0


def test_backings_in_fallback_order():
    assert pages.BACKINGS == ("1g", "2m", "thp", "4k")
    assert [b.page.kb for b in pages.Backing] == [G, M, M, K]
    assert [b.hugetlb for b in pages.Backing] == [True, True, False, False]
    assert pages.Backing("thp") == "thp" and f"{pages.Backing.G1}" == "1g"


# --- the size rule ---------------------------------------------------------------------


def first_1g_size(n: int, policy: Policy = pages.DEFAULT_POLICY) -> int:
    """The smallest size that rounds up to n x 1 GiB and that auto puts in 1G pages."""
    # (n GiB - b) * 1e6 <= b * ppm  <=>  b >= n GiB * 1e6 / (1e6 + ppm)
    return -(-n * GiB * 1_000_000 // (1_000_000 + policy.auto_1g_max_waste_ppm))


def test_auto_rule_boundaries():
    assert pages.first_page(GiB - 1) is PAGE_2M and pages.first_page(GiB) is PAGE_1G
    assert pages.first_page(GiB + 1) is PAGE_2M  # one byte over: a second 1 GB page nearly empty
    for n in (2, 3, 4):
        b = first_1g_size(n)
        assert pages.first_page(b - 1) is PAGE_2M and pages.first_page(b) is PAGE_1G
        assert pages.first_page(n * GiB) is PAGE_1G and pages.first_page(n * GiB + 1) is PAGE_2M
    # the sizes the issue found disagreeing: 1.1-1.75 GiB and 2.3 GiB
    for size in (int(1.1 * GiB), int(1.5 * GiB), int(1.75 * GiB), int(2.3 * GiB)):
        assert pages.first_page(size) is PAGE_2M, size


def test_forced_1g_and_2m():
    assert pages.first_page(256 * MiB, PAGE_1G) is PAGE_1G
    assert pages.first_page(256 * MiB - 1, PAGE_1G) is PAGE_2M
    assert pages.first_page(int(1.1 * GiB), PAGE_1G) is PAGE_1G  # waste is accepted when asked for
    assert pages.first_page(30 * GiB, PAGE_2M) is PAGE_2M
    assert pages.first_page(30 * GiB, PAGE_4K) is PAGE_4K


def test_rule_over_files_rounds_each():
    # two 1.5 GiB parts: 4 x 1G pages for 3 GiB = 1/3 waste; one 3 GiB file: none
    assert pages.first_page([3 * GiB // 2, 3 * GiB // 2]) is PAGE_2M
    assert pages.first_page([3 * GiB]) is PAGE_1G and pages.waste_1g([GiB, 1]) == GiB - 1


def test_policy_parameters():
    loose = Policy(auto_1g_min=256 * MiB, auto_1g_max_waste_ppm=1_000_000, forced_1g_min=0)
    assert pages.first_page(512 * MiB, None, loose) is PAGE_1G  # waste 512 MiB: at most the size
    assert pages.first_page(511 * MiB, None, loose) is PAGE_2M
    assert pages.first_page(1, PAGE_1G, loose) is PAGE_1G


def test_policy_env_round_trip():
    assert pages.policy_env() == "auto_1g_min=1073741824,auto_1g_max_waste_ppm=125000,forced_1g_min=268435456"
    custom = Policy(2 * GiB, 50_000, 512 * MiB)
    assert Policy.from_env(pages.policy_env(custom)) == custom
    assert Policy.from_env(None) == pages.DEFAULT_POLICY
    assert Policy.from_env("auto_1g_min=x,bogus=3,forced_1g_min=7") == pages.DEFAULT_POLICY._replace(forced_1g_min=7)


def test_reasons():
    assert pages.why(512 * MiB) == "model is under 1 GiB"
    assert pages.why(2 * GiB) == "model is at least 1 GiB and 1G pages waste at most 1/8"
    assert pages.why(int(1.5 * GiB)) == "1G pages would waste 33 % (more than 1/8) of the model"
    assert pages.why(MiB, PAGE_1G) == "1G requested, but the model is under 256 MiB: 2M"
    assert pages.why(MiB, PAGE_2M) == "2M requested"
