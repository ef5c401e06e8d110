"""probe/memory.py: meminfo, buddyinfo, pressure."""

import pytest

from hugeload.probe import memory
from hugeload.probe.memory import BuddyZone, Pressure

MiB = 1 << 20


@pytest.mark.parametrize(
    "name,fields",
    [
        (
            "zen-vm",
            {
                "MemTotal": 24684084,
                "MemAvailable": 18179648,
                "HugePages_Total": 512,
                "HugePages_Free": 512,
                "HugePages_Rsvd": 0,
                "Hugepagesize": 2048,
                "Hugetlb": 5242880,
                "AnonHugePages": 1173504,
            },
        ),
        (
            "numa2-1g",
            {
                "MemTotal": 527948180,
                "HugePages_Total": 32,
                "HugePages_Free": 20,
                "Hugepagesize": 1048576,
                "Hugetlb": 33554432,
                "DirectMap1G": 513802240,
            },
        ),
        ("no1g", {"MemAvailable": 7262156, "HugePages_Total": 0, "Hugepagesize": 2048}),
        ("container-v2", {"HugePages_Total": 8, "HugePages_Free": 6, "Hugepagesize": 1048576}),
    ],
)
def test_meminfo(tree, name, fields):
    got = memory.read_meminfo(tree(name))
    assert {k: got[k] for k in fields} == fields


def test_meminfo_keeps_parenthesised_keys(tree):
    assert memory.read_meminfo(tree("numa2-1g"))["Active(anon)"] == 1547324


def test_no1g_has_no_directmap1g(tree):
    assert "DirectMap1G" not in memory.read_meminfo(tree("no1g"))


def test_buddyinfo_two_nodes(tree):
    zones = memory.read_buddyinfo(tree("numa2-1g"))
    assert [(z.node, z.zone) for z in zones] == [(0, "DMA"), (0, "DMA32"), (0, "Normal"), (1, "Normal")]
    assert all(len(z.free_blocks) == 11 for z in zones)
    assert zones[3].free_blocks[10] == 44785
    # order 9 (2 MiB) and order 10 (4 MiB) blocks on node 1
    assert zones[3].free_bytes_at_least(9) == 88 * 2 * MiB + 44785 * 4 * MiB


def test_buddyinfo_captured(tree):
    zones = memory.read_buddyinfo(tree("zen-vm"))
    assert zones[0] == BuddyZone(0, "DMA", (0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 3))
    assert zones[0].free_bytes_at_least(0) == (1 << 8) * 4096 + (1 << 9) * 4096 + 3 * (1 << 10) * 4096


def test_buddyinfo_skips_bad_lines(tmp_path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/buddyinfo").write_text("garbage\nNode 0, zone   Normal      1      2\nNode x, zone Normal 1\n")
    assert memory.read_buddyinfo(tmp_path) == [BuddyZone(0, "Normal", (1, 2))]


@pytest.mark.parametrize(
    "name,expected",
    [
        ("zen-vm", Pressure(0.0, 0.0, 0.0, 0.0)),
        ("numa2-1g", Pressure(0.0, 0.0, 0.0, 0.0)),
        ("no1g", None),  # 4.19: no PSI
        ("container-v2", Pressure(3.52, 1.20, 1.10, 0.38)),
    ],
)
def test_pressure(tree, name, expected):
    assert memory.read_pressure(tree(name)) == expected


def test_missing_files(tmp_path):
    assert memory.read_meminfo(tmp_path) == {}
    assert memory.read_buddyinfo(tmp_path) == []
    assert memory.read_pressure(tmp_path) is None
