"""hugeload.stage() / unstage(): the store from Python."""

import mmap
import os
from pathlib import Path

import pytest

import hugeload
from hugeload.act import persist, store
from hugeload.errors import HugeloadError
from hugeload.pages import PAGE_2M
from hugeload.probe import procs

pytestmark = [pytest.mark.kernel]


def test_stage_then_map_then_unstage(needs_root, state_dir, tmp_path):
    src = tmp_path / "w.bin"
    src.write_bytes(os.urandom(5 << 20))
    before = int(Path("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages").read_text())
    m = hugeload.stage(src, page_size="2m", reserve=True)
    try:
        assert (m.page_size, m.size, m.pages) == (2048, 5 << 20, 3)
        assert hugeload.stage(src, page_size="2m", reserve=True) == m  # already staged: same answer
        with open(m.path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
            assert mm[: 5 << 20] == src.read_bytes()
            mine = [x for x in procs.read_smaps("/", os.getpid(), 0) if x.path == os.path.realpath(m.path)]
            assert {x.kernel_page_kb for x in mine} == {2048}
            mm.close()
    finally:
        hugeload.unstage(m)
    assert int(Path("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages").read_text()) == before
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


def desired(tmp_path) -> list[tuple[str, str, int]]:
    """models.json as (name, source, page_size_kb); the state_dir fixture points HUGELOAD_CONFIG_DIR here."""
    import json

    path = tmp_path / "etc" / "models.json"
    if not path.exists():
        return []
    return [(m["name"], m["source"], m["page_size_kb"]) for m in json.loads(path.read_text())["models"]]


def test_stage_persist_lists_the_model_and_unstage_removes_it(needs_root, state_dir, tmp_path):
    src = tmp_path / "p.bin"
    src.write_bytes(os.urandom(3 << 20))
    m = hugeload.stage(src, page_size="2m", reserve=True, persist=True)
    try:
        assert desired(tmp_path) == [("p", str(src), 2048)]
        again = hugeload.stage(src, page_size="2m", reserve=True, persist=True)  # already staged: listed once
        assert again == m and desired(tmp_path) == [("p", str(src), 2048)]
        assert store.read_manifest("p", state_dir).persist is True
    finally:
        hugeload.unstage(m)
    assert desired(tmp_path) == [] and not os.path.exists(m.path)


def test_stage_without_persist_leaves_models_json_alone(needs_root, state_dir, tmp_path):
    src = tmp_path / "q.bin"
    src.write_bytes(os.urandom(1 << 20))
    m = hugeload.stage(src, page_size="2m", reserve=True)
    hugeload.unstage(m)
    assert not (tmp_path / "etc" / "models.json").exists()


def test_store_clear_is_all_or_nothing_and_restore_brings_persisted_models_back(needs_root, state_dir, tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(os.urandom(2 << 20))
    b.write_bytes(os.urandom(3 << 20))
    pools_before = {kb: procs_count(kb) for kb in (2048, 1048576)}
    try:
        _clear_and_restore(a, b, tmp_path, pools_before)
    finally:
        store.clear(force=True)


def _clear_and_restore(a, b, tmp_path, pools_before):
    store.stage(str(a), store.StageOptions(page_size=PAGE_2M, reserve=True, persist=True)).manifest
    sb = store.stage(str(b), store.StageOptions(page_size=PAGE_2M, reserve=True)).manifest
    with open(sb.path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    try:
        with pytest.raises(HugeloadError, match=f"model 'b' is mapped by {os.getpid()} "):
            store.clear()
        assert {m.name for m in store.manifests()} == {"a", "b"}  # nothing removed
        assert desired(tmp_path) == [("a", str(a), 2048)]
    finally:
        mm.close()
    result = store.clear()
    assert sorted(result["unstaged"]) == ["a", "b"] and store.manifests() == []
    assert desired(tmp_path) == []  # clear is an unstage of every model: models.json follows
    assert {kb: procs_count(kb) for kb in (2048, 1048576)} == pools_before
    # what a reboot leaves: models.json, an empty store
    store.stage(str(a), store.StageOptions(page_size=PAGE_2M, reserve=True, persist=True))
    store.clear(force=True)
    persist.add("a", str(a), 2048)
    persist.add("gone", str(tmp_path / "missing.bin"), 2048)
    done = {r.name: r for r in store.restore()}
    assert done["a"].error is None and not done["a"].already_staged and os.path.exists(done["a"].path)
    assert "no such file" in done["gone"].error and done["gone"].path == ""
    assert [m.name for m in store.staged()] == ["a"] and store.staged()[0].state == "ready"
    assert {r.name: r.already_staged for r in store.restore()} == {"a": True, "gone": False}  # nothing changes
    store.clear(force=True)
    assert {kb: procs_count(kb) for kb in (2048, 1048576)} == pools_before


def procs_count(kb: int) -> int:
    return int(open(f"/sys/kernel/mm/hugepages/hugepages-{kb}kB/nr_hugepages").read())
