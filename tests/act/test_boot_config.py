"""boot-config on fixture files: merging, idempotence, backups."""

import json

from hugeload.plan import boot

SEED_LINE = 'GRUB_CMDLINE_LINUX="hugepagesz=1G hugepages=32 default_hugepagesz=1G"'


def test_output_for_32_gigantic_pages_matches_the_seed(hugeload_cli):
    out = hugeload_cli("boot-config", "--pages-1g", 32, "--json")
    data = json.loads(out.stdout)
    assert data["grub_line"] == SEED_LINE
    assert "none /mnt/hugepages-1gb hugetlbfs pagesize=1G,size=32G 0 0" in data["fstab"]


def test_apply_twice_gives_the_same_files(hugeload_cli, tmp_path):
    grub = tmp_path / "etc/default/grub"
    grub.parent.mkdir(parents=True)
    original = 'GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX="quiet hugepagesz=2M hugepages=4 splash"\n'
    grub.write_text(original)
    fstab = tmp_path / "etc/fstab"
    fstab.write_text("UUID=abc / ext4 defaults 0 1\nnone /mnt/hugepages-1gb hugetlbfs pagesize=1G,size=4G 0 0\n")
    args = ["boot-config", "--pages-1g", 32, "--pages-2m", 512, "--apply", "--target-root", tmp_path]
    assert hugeload_cli(*args).returncode == 0
    first = (grub.read_text(), fstab.read_text())
    assert hugeload_cli(*args).returncode == 0
    assert (grub.read_text(), fstab.read_text()) == first
    assert first[0].splitlines()[1] == (
        'GRUB_CMDLINE_LINUX="quiet splash hugepagesz=1G hugepages=32 hugepagesz=2M hugepages=512 default_hugepagesz=1G"'
    )
    lines = first[1].splitlines()
    assert lines[0] == "UUID=abc / ext4 defaults 0 1"
    assert sum("/mnt/hugepages-1gb" in x for x in lines) == 1
    assert "none /mnt/hugepages-1gb hugetlbfs pagesize=1G,size=32G 0 0" in lines
    assert "none /mnt/hugepages-2mb hugetlbfs pagesize=2M,size=1G 0 0" in lines
    # The backup keeps the user's original, not the first edit.
    assert (tmp_path / "etc/default/grub.hugeload.bak").read_text() == original


def test_apply_adds_the_variable_when_missing(tmp_path):
    text = boot.merge_grub("GRUB_TIMEOUT=5\n", boot.kernel_params(8, None))
    assert text == 'GRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX="hugepagesz=1G hugepages=8 default_hugepagesz=1G"\n'


def test_needs_a_count(hugeload_cli):
    out = hugeload_cli("boot-config")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
