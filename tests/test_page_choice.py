"""The preload library applies the page-size rule Python decides with (contract C2).

libhugeload.so exports `int hugeload_page_choice_kb(unsigned long long bytes, const char
*page_size, const char *policy)`: the first page size its cascade tries for a mapping or
allocation of `bytes`, given HUGELOAD_PAGE_SIZE and HUGELOAD_POLICY (NULL: the defaults).
This test compares it with hugeload.pages.first_page() at every size between 1 and 4 GiB
where the answer changes, one byte either side, and the forced-1g boundary, under the
default policy and under another one passed the way the runner passes it.
"""

import ctypes
import functools

import pytest

from hugeload import native, pages
from hugeload.pages import PAGE_1G, PAGE_2M, Policy
from hugeload.units import GiB, MiB

SYMBOL = "hugeload_page_choice_kb"
CUSTOM = Policy(auto_1g_min=3 * GiB // 2, auto_1g_max_waste_ppm=50_000, forced_1g_min=512 * MiB)


@functools.cache
def _load():
    path = native.library_path()
    assert path.exists(), f"{path} is missing: reinstall hugeload (pip install .)"
    lib = ctypes.CDLL(str(path))  # RTLD_LOCAL: the interposers stay inactive in this process
    fn = getattr(lib, SYMBOL, None)
    if fn is None:
        return None
    fn.argtypes = [ctypes.c_ulonglong, ctypes.c_char_p, ctypes.c_char_p]
    fn.restype = ctypes.c_int
    return fn


def native_choice():
    """The C function; fails the calling test (not an error in a fixture) when it is missing."""
    fn = _load()
    if fn is None:
        # a failure, not a skip: a library without the export is the bug this test exists for
        pytest.fail(
            f"{native.library_path().name} does not export {SYMBOL} (contract C2: the C side of the one page-size "
            f"rule); without it nothing checks that the preload library picks what `hugeload plan` says",
            pytrace=False,
        )
    return fn


def auto_change_points(policy: Policy) -> list[int]:
    """Sizes b in [1 GiB, 4 GiB + 1] where auto's answer for b differs from b - 1: candidates
    from the rule's arithmetic, kept where Python's answer changes (the test below checks on a
    1 MiB grid that it changes nowhere else)."""
    points = {policy.auto_1g_min}
    for n in range(1, 6):
        # 1G needs (n GiB - b) * 1e6 <= b * ppm: from ceil(n GiB * 1e6 / (1e6 + ppm)) up to n GiB
        points.add(max(policy.auto_1g_min, -(-n * GiB * 1_000_000 // (1_000_000 + policy.auto_1g_max_waste_ppm))))
        points.add(n * GiB + 1)
    return sorted(
        b
        for b in points
        if GiB <= b <= 4 * GiB + 1 and pages.first_page(b - 1, None, policy) != pages.first_page(b, None, policy)
    )


def sizes_to_check(policy: Policy) -> list[int]:
    out = set()
    for b in [*auto_change_points(policy), policy.forced_1g_min]:
        out |= {b - 1, b, b + 1}
    out |= set(range(GiB, 4 * GiB + 1, 64 * MiB))
    return sorted(out)


def test_change_points_are_where_python_changes_its_answer():
    for policy in (pages.DEFAULT_POLICY, CUSTOM):
        points = auto_change_points(policy)
        assert len(points) >= 5, points
        f = policy.forced_1g_min
        assert pages.first_page(f - 1, PAGE_1G, policy) is PAGE_2M and pages.first_page(f, PAGE_1G, policy) is PAGE_1G
        # nothing changes in between (checked on a 1 MiB grid)
        answers = [pages.first_page(s, None, policy) for s in range(GiB, 4 * GiB + 1, MiB)]
        changes = sum(a != b for a, b in zip(answers, answers[1:], strict=False))
        assert changes == len([b for b in points if GiB < b <= 4 * GiB]), policy


@pytest.mark.parametrize("policy", [None, pages.DEFAULT_POLICY, CUSTOM], ids=["compiled-in", "default", "custom"])
@pytest.mark.parametrize("page_size", [None, "auto", "1g", "2m"])
def test_c_and_python_agree_at_the_boundaries(policy, page_size):
    choice = native_choice()
    py_policy = policy or pages.DEFAULT_POLICY
    requested = pages.parse(page_size or "auto")
    text = None if policy is None else pages.policy_env(policy).encode()
    wrong = []
    for size in sizes_to_check(py_policy):
        want = pages.first_page(size, requested, py_policy).kb
        got = choice(size, None if page_size is None else page_size.encode(), text)
        if got != want:
            wrong.append(f"{size} bytes: C {got} kB, Python {want} kB")
    assert not wrong, f"{len(wrong)} size(s) differ, first: {wrong[:5]}"


def test_c_answers_only_1g_or_2m():
    choice = native_choice()
    assert choice(0, None, None) == PAGE_2M.kb
    assert choice(1 << 50, None, None) == PAGE_1G.kb  # 1 PiB: whole 1 GiB pages, no waste
