"""HVO on the real kernel (issue 20, item 3): reserve turns vm.hugetlb_optimize_vmemmap on and
shows the saving measured, release puts it back; a value set outside hugeload stays."""

import json
import os
from pathlib import Path

import pytest

from hugeload.act import ledger
from hugeload.pages import PAGE_1G
from hugeload.plan import hvo as plan_hvo
from hugeload.probe.hvo import HVO_PATH, HVO_SYSCTL, read_hvo
from hugeload.units import KiB, MiB

pytestmark = [pytest.mark.kernel]
SYSCTL = Path("/") / HVO_PATH


@pytest.fixture(autouse=True)
def hvo_off(needs_root, state_dir):
    """HVO available and off before each test (as on the development machine), and off after."""
    value = read_hvo("/")
    if value is None:
        pytest.skip("this kernel has no HVO (vm.hugetlb_optimize_vmemmap)")
    if value != 0:
        pytest.skip(f"HVO is {value} already (set outside these tests): these tests need it off")
    try:
        yield
    finally:
        SYSCTL.write_text("0\n")


def test_reserve_1g_turns_hvo_on_shows_the_saving_and_release_puts_it_back(hugeload_cli, state_dir):
    out = hugeload_cli("reserve", "--count", 1, "--page-size", "1g", "--json")
    if out.returncode != 0 and "the kernel gave" in out.stderr:
        assert read_hvo("/") == 0  # nothing kept: HVO back off too
        pytest.skip(f"the kernel gave no 1 GB page now (fragmented): {out.stderr.strip()}")
    try:
        assert out.returncode == 0, out.stderr
        data = json.loads(out.stdout)
        assert data["hvo"] == "on (turned on by hugeload)"
        assert read_hvo("/") == 1  # read back from the kernel, not from hugeload's word
        assert ledger.load(state_dir)["sysctls"][HVO_SYSCTL]["previous"] == 0
        before, after = data["hvo_measured"]["before"], data["hvo_measured"]["after"]
        assert after is not None, "one plain write: measured"
        used_rise = (after["used_kb"] - before["used_kb"]) * KiB
        print(f"1 x 1G reserved with HVO on: used memory rose by {used_rise / MiB:.1f} MiB; {data['hvo_line']}")
        if before["memmap_kb"] is not None:
            # The kernel's own struct page count (Linux 6.11+) falls by exactly what HVO gives back.
            fell = (before["memmap_kb"] - after["memmap_kb"]) * KiB
            assert fell >= 14 * MiB, data["hvo_line"]
            assert fell == plan_hvo.saved_per_page(PAGE_1G.kb), data["hvo_line"]
        assert data["hvo_saved_computed"] == plan_hvo.saved_per_page(PAGE_1G.kb)
        assert "per GiB" in data["hvo_line"]
    finally:
        out = hugeload_cli("release", "--json")
    assert out.returncode == 0, out.stderr
    assert read_hvo("/") == 0
    assert ledger.load(state_dir)["sysctls"] == {}


def test_a_value_set_by_the_user_is_left_on(hugeload_cli, state_dir):
    SYSCTL.write_text("1\n")  # the user's sysctl -w
    out = hugeload_cli("reserve", "--count", 8, "--page-size", "2m", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["hvo"] == "on (set outside hugeload)"
    assert hugeload_cli("release").returncode == 0
    assert read_hvo("/") == 1
    assert ledger.load(state_dir)["sysctls"] == {}


@pytest.mark.parametrize("how", ["option", "environment"])
def test_leave_never_writes_it(hugeload_cli, state_dir, how):
    args = ["reserve", "--count", 8, "--page-size", "2m", "--json"]
    out = (
        hugeload_cli(*args, "--hvo", "leave") if how == "option" else hugeload_cli(*args, env={"HUGELOAD_HVO": "leave"})
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["hvo"] == "off (left alone: --hvo leave)"
    assert read_hvo("/") == 0 and ledger.load(state_dir)["sysctls"] == {}
    assert hugeload_cli("release").returncode == 0


def test_stage_reserve_turns_it_on_until_unstage(hugeload_cli, state_dir, tmp_path):
    f = tmp_path / "m.bin"
    f.write_bytes(os.urandom(4 * MiB))
    out = hugeload_cli("stage", f, "--page-size", "2m", "--reserve", "--name", "hvo-m")
    assert out.returncode == 0, out.stderr
    assert read_hvo("/") == 1
    assert ledger.load(state_dir)["sysctls"][HVO_SYSCTL]["owner"] == "model:hvo-m"
    out = hugeload_cli("unstage", "hvo-m")
    assert out.returncode == 0, out.stderr
    assert read_hvo("/") == 0 and ledger.load(state_dir)["sysctls"] == {}
