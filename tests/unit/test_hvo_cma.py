"""HVO and hugetlb_cma on fixture trees: the savings computed from the sizes, the kernel config
reader, --cma parsing, and doctor's two checks (issue 20, items 3 and 4)."""

import gzip
import shutil

import pytest

from hugeload.errors import UsageError
from hugeload.pages import PAGE_1G, PAGE_2M
from hugeload.plan import cma as plan_cma
from hugeload.plan import doctor
from hugeload.plan import hvo as plan_hvo
from hugeload.probe import kconfig
from hugeload.probe.kernel import parse_cmdline
from hugeload.probe.machine import read_machine
from hugeload.units import GiB, MiB

CONFIG_WITH_CMA = "# comment\nCONFIG_HUGETLBFS=y\nCONFIG_CMA=y\nCONFIG_CMA_AREAS=20\n"
CONFIG_WITHOUT_CMA = "CONFIG_HUGETLBFS=y\n# CONFIG_CMA is not set\n"
CMA_MEMINFO = "CmaTotal:        8388608 kB\nCmaFree:         5242880 kB\n"


# ---------------------------------------------------------------- HVO, computed


def test_vmemmap_pages_follow_from_the_sizes():
    # 2**30 / 4096 struct pages of 64 bytes = 4096 pages of vmemmap; 2 MB: 8.
    assert plan_hvo.vmemmap_pages(PAGE_1G.kb) == 4096
    assert plan_hvo.vmemmap_pages(PAGE_2M.kb) == 8
    assert plan_hvo.saved_per_page(PAGE_1G.kb) == 4095 * 4096
    assert plan_hvo.saved_per_page(PAGE_2M.kb) == 7 * 4096
    assert plan_hvo.saved_per_gib(PAGE_2M.kb) == 14 * MiB
    assert plan_hvo.saved_per_gib(PAGE_1G.kb) == 16 * MiB - 4096
    # Other geometries from the same rule: 64 KB base pages (arm64), a 128-byte struct page.
    assert plan_hvo.vmemmap_pages(512 * 1024, base_bytes=65536) == 8
    assert plan_hvo.saved_per_page(PAGE_2M.kb, struct_page=128) == 15 * 4096
    # A huge page whose struct pages fit in one base page saves nothing.
    assert plan_hvo.saved_per_page(64, base_bytes=4096) == 0
    assert plan_hvo.saved([(PAGE_1G.kb, 2), (PAGE_2M.kb, 512)]) == 2 * 4095 * 4096 + 14 * MiB


def test_saving_line_reports_both_measures():
    before = plan_hvo.Measure(used_kb=1_000_000, memmap_kb=400_000)
    after = plan_hvo.Measure(used_kb=1_000_000 + 1008 * 1024, memmap_kb=400_000 - 16380)
    line = plan_hvo.saving_line("on (turned on by hugeload)", PAGE_1G.kb, 1, before, after)
    assert "16.0 MiB of struct page memory given back for 1 x 1G (computed)" in line
    assert "struct page memory fell by 16.0 MiB (16.0 MiB per GiB)" in line
    assert "used memory rose by 1008.0 MiB for 1.0 GiB reserved" in line
    assert plan_hvo.saving_line("off (left alone: --hvo leave)", PAGE_1G.kb, 1, before, after) == (
        "HVO off (left alone: --hvo leave)"
    )
    no_counters = plan_hvo.Measure(1, None)
    assert "fell" not in plan_hvo.saving_line("on (set outside hugeload)", PAGE_2M.kb, 8, no_counters, no_counters)


def test_used_memory_counts_per_cpu_free_pages_as_free():
    assert plan_hvo.used_kb({"MemTotal": 1000, "MemFree": 400}, pcp_pages=25) == 500
    assert plan_hvo.memmap_kb({"nr_memmap_pages": 10, "nr_memmap_boot_pages": 5}) == 60
    assert plan_hvo.memmap_kb({"nr_free_pages": 1}) is None


# ---------------------------------------------------------------- fixture trees


@pytest.fixture
def machine_tree(tmp_path, tree):
    """A copy of zen-vm (kernel 6.18, 4 x 1G and 512 x 2M pages) to add files to."""
    root = tmp_path / "m"
    shutil.copytree(tree("zen-vm"), root, symlinks=True)

    def write(rel: str, text: str | bytes, gz: bool = False):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        data = text.encode() if isinstance(text, str) else text
        p.write_bytes(gzip.compress(data) if gz else data)

    return root, write


def release_of(root) -> str:
    return (root / "proc/sys/kernel/osrelease").read_text().strip()


def test_kernel_config_from_proc_first_then_boot(machine_tree):
    root, write = machine_tree
    assert kconfig.read_kernel_config(root) is None
    write(f"boot/config-{release_of(root)}", CONFIG_WITHOUT_CMA)
    write("boot/config-6.1.0-57-amd64", CONFIG_WITH_CMA)  # another kernel's: not read
    cfg = kconfig.read_kernel_config(root)
    assert cfg.source == f"/boot/config-{release_of(root)}" and not cfg.enabled("CONFIG_CMA")
    write("proc/config.gz", CONFIG_WITH_CMA, gz=True)
    cfg = kconfig.read_kernel_config(root)
    assert cfg.source == "/proc/config.gz" and cfg.enabled("CONFIG_CMA") and cfg.options["CONFIG_CMA_AREAS"] == "20"


def test_kernel_config_that_is_not_gzip_falls_back(machine_tree):
    root, write = machine_tree
    write("proc/config.gz", b"not gzip at all")
    assert kconfig.read_kernel_config(root) is None
    assert kconfig.read_kernel_config(root, release="../../etc/passwd") is None


def checks(root) -> dict:
    return {c.name: c for c in doctor.run_checks(read_machine(root))}


def test_doctor_hvo_off_says_what_the_pools_would_save(machine_tree):
    root, write = machine_tree
    c = checks(root)["hvo"]
    assert (c.status, c.fix) == ("pass", "") and "no HVO in this kernel" in c.detail
    write("proc/sys/vm/hugetlb_optimize_vmemmap", "0\n")
    c = checks(root)["hvo"]
    expected = plan_hvo.saved([(PAGE_1G.kb, 4), (PAGE_2M.kb, 512)])
    assert expected == 4 * (16 * MiB - 4096) + 14 * MiB
    assert c.status == "warn" and "available and off" in c.detail and "4 x 1G, 512 x 2M" in c.detail
    assert "78.0 MiB" in c.detail  # 4 x 16380 KiB + 14 MiB = 79856 KiB
    assert "hugeload reserve" in c.fix
    write("proc/sys/vm/hugetlb_optimize_vmemmap", "1\n")
    c = checks(root)["hvo"]
    assert c.status == "pass" and c.detail.startswith("HVO on: up to 78.0 MiB")


def test_doctor_cma_without_a_config(machine_tree):
    root, _ = machine_tree
    c = checks(root)["hugetlb_cma"]
    assert c.status == "pass" and "cannot tell" in c.detail and "modprobe configs" in c.detail


def test_doctor_cma_kernel_without_cma(machine_tree):
    root, write = machine_tree
    write("proc/config.gz", CONFIG_WITHOUT_CMA, gz=True)
    c = checks(root)["hugetlb_cma"]
    assert c.status == "pass" and "without CONFIG_CMA (/proc/config.gz)" in c.detail
    # Asked for on the command line of a kernel that cannot: said, with what to do instead.
    write("proc/cmdline", "quiet hugetlb_cma=8G\n")
    c = checks(root)["hugetlb_cma"]
    assert c.status == "warn" and "hugetlb_cma=8G on the command line" in c.detail and "--pages-1g" in c.fix


def test_doctor_cma_kernel_with_cma_and_no_area(machine_tree):
    root, write = machine_tree
    write("proc/config.gz", CONFIG_WITH_CMA, gz=True)
    c = checks(root)["hugetlb_cma"]
    assert c.status == "pass" and "can use hugetlb_cma=" in c.detail and "boot-config --cma" in c.detail
    write("proc/cmdline", "quiet hugetlb_cma=0:4G,1:4G\n")  # asked, but CmaTotal is absent (0)
    c = checks(root)["hugetlb_cma"]
    assert c.status == "warn" and "could not reserve it" in c.detail


def test_doctor_cma_area_counts_the_pages_it_can_still_give(machine_tree):
    root, write = machine_tree
    write("proc/config.gz", CONFIG_WITH_CMA, gz=True)
    write("proc/cmdline", "quiet hugetlb_cma=8G\n")
    meminfo = (root / "proc/meminfo").read_text()
    write("proc/meminfo", meminfo + CMA_MEMINFO)
    c = checks(root)["hugetlb_cma"]
    # 8 GiB area, 4 x 1G in the pool (none from hugepages= at boot): 4 more.
    assert c.status == "pass"
    assert "CMA area 8.0 GiB, 5.0 GiB free now; it can still give 4 x 1G" in c.detail
    # Pages reserved at boot come from memblock, not from the area.
    write("proc/cmdline", "quiet hugepagesz=1G hugepages=2 hugetlb_cma=8G\n")
    assert "can still give 6 x 1G" in checks(root)["hugetlb_cma"].detail


def test_pages_left_never_negative():
    assert plan_cma.pages_left({"CmaTotal": 2 * 1048576}, pool_1g_total=9) == 0
    assert plan_cma.pages_left({}, pool_1g_total=0) == 0


# ---------------------------------------------------------------- hugetlb_cma= text


def test_cma_spec_parsing_and_the_kernel_parameter():
    assert plan_cma.parse_spec("8G").param() == "hugetlb_cma=8G"
    assert plan_cma.parse_spec("8GiB").bytes == 8 * GiB
    spec = plan_cma.parse_spec("0:4G, 1:4096M")
    assert spec.param() == "hugetlb_cma=0:4G,1:4G" and spec.pages_1g == 8
    for bad in ("3M", "1.5G", "0", "-4G", "0:4G,0:2G", "x:4G", "0:", "four", "0:4G,,1:4G"):
        with pytest.raises(UsageError):
            plan_cma.parse_spec(bad)
    with pytest.raises(UsageError, match="node"):
        plan_cma.check_nodes(spec, [0])
    plan_cma.check_nodes(spec, [0, 1])


def test_cmdline_keeps_hugetlb_cma_for_the_kernel_only():
    assert parse_cmdline("quiet hugetlb_cma=0:4G,1:4G").hugetlb_cma == "0:4G,1:4G"
    assert parse_cmdline("hugetlb_cma=2G hugetlb_cma=4G").hugetlb_cma == "4G"  # the last one counts
    assert parse_cmdline("quiet -- hugetlb_cma=4G").hugetlb_cma is None  # init's argument
