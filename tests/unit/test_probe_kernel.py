"""probe/kernel.py: kernel release and huge page boot parameters."""

import pytest

from hugeload.probe import kernel

G, M = 1048576, 2048


@pytest.mark.parametrize(
    "name,release,version",
    [
        ("zen-vm", "6.18.44-fc-v669", (6, 18, 44)),
        ("numa2-1g", "4.18.0-553.el8_10.x86_64", (4, 18, 0)),
        ("no1g", "4.19.0-27-amd64", (4, 19, 0)),
        ("container-v2", "5.15.0-113-generic", (5, 15, 0)),
    ],
)
def test_release(tree, name, release, version):
    assert kernel.read_kernel_release(tree(name)) == release
    assert kernel.version_tuple(release) == version


@pytest.mark.parametrize("release,version", [("3.8", (3, 8)), ("6.1.0-rc3", (6, 1, 0)), ("", ()), ("Linux", ())])
def test_version_tuple(release, version):
    assert kernel.version_tuple(release) == version


def test_missing_release(tmp_path):
    assert kernel.read_kernel_release(tmp_path) == ""


@pytest.mark.parametrize(
    "name,hugepages,default_kb,thp",
    [
        ("numa2-1g", {G: 32}, G, "madvise"),
        # zen-vm's command line has init arguments after " -- " and no huge page parameters
        ("zen-vm", {}, None, None),
        ("no1g", {}, None, None),
        # "hugepages=8 default_hugepagesz=1G": a count before any hugepagesz= is the default size's
        ("container-v2", {G: 8}, G, None),
    ],
)
def test_boot_params_per_tree(tree, name, hugepages, default_kb, thp):
    b = kernel.read_boot_params(tree(name))
    assert (b.hugepages, b.default_hugepagesz_kb, b.transparent_hugepage) == (hugepages, default_kb, thp)
    assert b.raw and not b.raw.endswith("\n")


def test_zen_vm_raw_keeps_init_args(tree):
    assert "--firecracker-init" in kernel.read_boot_params(tree("zen-vm")).raw


@pytest.mark.parametrize(
    "cmdline,expected",
    [
        ("hugepages=512", {M: 512}),
        ("quiet hugepages=16 default_hugepagesz=1G", {G: 16}),
        ("default_hugepagesz=1G hugepages=16", {G: 16}),
        ("hugepagesz=1G hugepages=4 hugepagesz=2M hugepages=1024", {G: 4, M: 1024}),
        ("hugepages=100 hugepagesz=1G hugepages=4", {M: 100, G: 4}),
        ("hugepagesz=1GB hugepages=2", {G: 2}),
        ("hugepagesz=1073741824 hugepages=2", {G: 2}),
        # arguments after a lone "--" belong to init
        ("ro quiet -- hugepagesz=1G hugepages=4", {}),
        ("hugepagesz=1G hugepages=4 -- hugepages=9 init=/bin/sh", {G: 4}),
        ("hugepagesz=1G hugepages=4 --foo=bar", {G: 4}),  # "--foo" is not the separator
        ("hugepagesz=1G hugepages=lots", {}),
        ("", {}),
    ],
)
def test_parse_cmdline_pairs(cmdline, expected):
    assert kernel.parse_cmdline(cmdline).hugepages == expected


def test_parse_cmdline_other_fields():
    b = kernel.parse_cmdline("  BOOT_IMAGE=/vmlinuz transparent_hugepage=never default_hugepagesz=2M\n")
    assert (b.default_hugepagesz_kb, b.transparent_hugepage) == (M, "never")
    assert b.raw == "BOOT_IMAGE=/vmlinuz transparent_hugepage=never default_hugepagesz=2M"


def test_missing_cmdline(tmp_path):
    b = kernel.read_boot_params(tmp_path)
    assert (b.hugepages, b.default_hugepagesz_kb, b.raw) == ({}, None, "")


def test_hugepages_after_default_hugepagesz():
    assert kernel.parse_cmdline("hugepagesz=2M hugepages=512 default_hugepagesz=1G hugepages=8").hugepages == {
        M: 512,
        G: 8,
    }


def test_per_node_hugepages():
    assert kernel.parse_cmdline("hugepagesz=1G hugepages=0:16,1:16").hugepages == {G: 32}


def test_malformed_size_on_cmdline_is_ignored():
    assert kernel.parse_cmdline("hugepagesz=huge hugepages=4 default_hugepagesz= quiet").hugepages == {}
