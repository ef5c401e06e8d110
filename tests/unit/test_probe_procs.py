"""probe/procs.py: /proc/PID/status and /proc/PID/smaps."""

import pytest

from hugeload.probe import procs

MiB, GiB = 1 << 20, 1 << 30
MODEL = "/mnt/hugepages-1gb/model.gguf"


def test_status_fields(tree):
    s = procs.read_status(tree("zen-vm"), 4242)
    assert s["Name"] == "llama-server"
    assert s["HugetlbPages"] == "2097152 kB"
    assert s["VmPTE"] == "784 kB"
    assert s["CapEff"] == "0000000000000000"


@pytest.mark.parametrize(
    "name,vmpte,cap_eff",
    [
        ("zen-vm", 68, "000001fffeffffff"),
        ("numa2-1g", 104, "0000003fffffffff"),
        ("no1g", 96, "0000003fffffffff"),
        ("container-v2", 100, "00000000a80425fb"),
    ],
)
def test_every_tree_has_self_status(tree, name, vmpte, cap_eff):
    s = procs.read_status(tree(name), "self")
    assert s["CapEff"] == cap_eff
    assert procs._kb(s["VmPTE"]) == vmpte
    assert procs._kb(s["HugetlbPages"]) == 0


def test_read_process(tree):
    p = procs.read_process(tree("zen-vm"), 4242)
    assert (p.pid, p.comm, p.hugetlb_kb, p.vmpte_kb) == (4242, "llama-server", 2097152, 784)
    # the default minimum (64 MiB) leaves out the 4 KB mapping of the binary
    assert [m.path for m in p.mappings] == [MODEL, "[anon]", "/srv/models/tokenizer.bin"]


def test_hugetlb_mapping(tree):
    m = procs.read_process(tree("zen-vm"), 4242).mappings[0]
    assert (m.start, m.end, m.size) == (0x7F0000000000, 0x7F0080000000, 2 * GiB)
    assert (m.kernel_page_kb, m.hugetlb_kb, m.rss_kb, m.flags) == (1048576, 2097152, 0, "rw-s")
    assert (m.anon_huge_kb, m.file_pmd_mapped_kb) == (0, 0)


def test_thp_mappings(tree):
    _, anon, file = procs.read_process(tree("zen-vm"), 4242).mappings
    assert (anon.kernel_page_kb, anon.size, anon.anon_huge_kb, anon.rss_kb) == (4, 128 * MiB, 126976, 131072)
    assert (file.kernel_page_kb, file.file_pmd_mapped_kb, file.flags) == (4, 94208, "r--p")


def test_small_mapping_with_min_size_zero(tree):
    maps = procs.read_smaps(tree("zen-vm"), 4242, min_size=0)
    assert len(maps) == 4
    small = maps[0]
    assert (small.path, small.size, small.kernel_page_kb, small.rss_kb) == ("/usr/bin/llama-server", 4096, 4, 4)


def test_smaps_entry_by_address(tree):
    root = tree("zen-vm")
    assert procs.smaps_entry(root, 4242, 0x7F0000000000).path == MODEL
    assert procs.smaps_entry(root, 4242, 0x7F0080000000 - 1).kernel_page_kb == 1048576
    assert procs.smaps_entry(root, 4242, 0x10) is None
    assert procs.smaps_entry(root, 99999, 0x7F0000000000) is None


def test_status_is_read_by_key_first_line_wins(tmp_path):
    # A process may name itself anything: its Name line never yields another key.
    (tmp_path / "proc" / "7").mkdir(parents=True)
    (tmp_path / "proc" / "7" / "status").write_text(
        "Name:\tHugetlbPages: 99999999 kB\nHugetlbPages:\t  2048 kB\nHugetlbPages:\t1 kB\nbroken line\n"
    )
    s = procs.read_status(tmp_path, 7)
    assert s["Name"] == "HugetlbPages: 99999999 kB"
    assert procs.status_kb(s, "HugetlbPages") == 2048 and procs.status_kb(s, "VmLck") == 0


def test_smaps_rollup_by_key(tmp_path):
    (tmp_path / "proc" / "7").mkdir(parents=True)
    (tmp_path / "proc" / "7" / "smaps_rollup").write_text(
        "55d0-7ffd ---p 00000000 00:00 0                          [rollup]\n"
        "Rss:                1024 kB\nPss:                 512 kB\nPss_Anon:  100 kB\nAnonHugePages: 2048 kB\n"
    )
    assert procs.read_smaps_rollup(tmp_path, 7) == {"Rss": 1024, "Pss": 512, "Pss_Anon": 100, "AnonHugePages": 2048}
    assert procs._thp_kb(tmp_path, 7) == 2048
    assert procs.read_smaps_rollup(tmp_path, 8) == {}


def test_pids(tree):
    assert procs.pids(tree("zen-vm")) == [1, 4242, 4300]  # proc/1 holds only init's cgroup
    assert procs.pids(tree("numa2-1g")) == [1]


def test_huge_page_users_lists_hugetlb_processes(tree):
    assert 4242 in [p.pid for p in procs.huge_page_users(tree("zen-vm"))]
    assert procs.huge_page_users(tree("numa2-1g")) == []


def test_huge_page_users_includes_thp_only_processes(tree):
    assert 4300 in [p.pid for p in procs.huge_page_users(tree("zen-vm"))]


def test_missing_process(tree):
    assert procs.read_process(tree("zen-vm"), 99999) is None
    assert procs.read_status(tree("zen-vm"), 99999) == {}
    assert procs.read_smaps(tree("zen-vm"), 99999) == []


def test_parse_smaps_paths():
    text = (
        "7f0000000000-7f0000200000 rw-p 00000000 00:00 0 \n"
        "Size:               2048 kB\n"
        "KernelPageSize:        4 kB\n"
        "AnonHugePages:      2048 kB\n"
        "VmFlags: rd wr mr mw me ac \n"
        "7f0000200000-7f0000201000 r--p 00000000 fe:00 42                         /opt/my models/a b.bin (deleted)\n"
        "Shared_Hugetlb:        0 kB\n"
        "Private_Hugetlb:       0 kB\n"
        "THPeligible:           1\n"
        "7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]\n"
    )
    maps = procs.parse_smaps(text)
    assert [m.path for m in maps] == ["[anon]", "/opt/my models/a b.bin (deleted)", "[stack]"]
    assert maps[0].anon_huge_kb == 2048
    assert maps[2].kernel_page_kb == 4  # no KernelPageSize line: 4 KB
    assert procs.parse_smaps(text, min_size=2 * MiB)[0].path == "[anon]"
    assert len(procs.parse_smaps(text, min_size=2 * MiB)) == 1
    assert procs.parse_smaps("") == []


def test_shared_and_private_hugetlb_add_up():
    text = (
        "40000000-c0000000 rw-s 00000000 00:2f 7 /dev/hugepages/w\n"
        "KernelPageSize:  1048576 kB\nShared_Hugetlb:  1048576 kB\nPrivate_Hugetlb: 1048576 kB\n"
    )
    assert procs.parse_smaps(text)[0].hugetlb_kb == 2097152
