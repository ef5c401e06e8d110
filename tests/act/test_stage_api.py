"""hugeload.stage() / unstage(): the store from Python."""

import mmap
import os

import pytest

import hugeload
from hugeload.errors import HugeloadError
from hugeload.probe import procs

pytestmark = [pytest.mark.kernel]


def test_stage_then_map_then_unstage(needs_root, state_dir, tmp_path):
    src = tmp_path / "w.bin"
    src.write_bytes(os.urandom(5 << 20))
    before = int(open("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages").read())
    m = hugeload.stage(src, page_size="2m", reserve=True)
    try:
        assert (m.page_size, m.size, m.pages) == (2048, 5 << 20, 3)
        assert hugeload.stage(src, page_size="2m", reserve=True) == m  # already staged: same answer
        with open(m.path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
            assert mm[: 5 << 20] == src.read_bytes()
            assert procs.mapping_page_sizes("/", os.getpid(), m.path) == {2048}
            mm.close()
    finally:
        hugeload.unstage(m)
    assert int(open("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages").read()) == before
    assert not os.path.exists(m.path)


def test_unstage_refuses_while_this_process_maps_the_model(needs_root, state_dir, tmp_path):
    # Unlinking a staged file that is still mapped cannot free its pages: the pool share and
    # the store's mount would be left behind.  The caller's own mappings count too.
    src = tmp_path / "w.bin"
    src.write_bytes(os.urandom(3 << 20))
    m = hugeload.stage(src, page_size="2m", reserve=True)
    try:
        with open(m.path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        with pytest.raises(HugeloadError, match=f"mapped by {os.getpid()} "):
            hugeload.unstage(m)
        assert os.path.exists(m.path)
        mm.close()
    finally:
        hugeload.unstage(m)
    assert not os.path.exists(m.path)
