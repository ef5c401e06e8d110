"""probe/procs.holders(): who maps or holds open files, or maps hugetlb pages of a size,
in one walk over a fixture /proc."""

import os

from hugeload.act import mounts as act_mounts
from hugeload.act import pools as act_pools
from hugeload.act import store
from hugeload.probe import procs
from hugeload.probe.procs import Holder

MODEL = "/mnt/hugepages-1gb/model.gguf"  # what pid 4242 of the zen-vm tree maps from 1G pages


def maps_line(path: str, start: int = 0x7F0000000000) -> str:
    return f"{start:x}-{start + 0x1000:x} r--s 00000000 00:2d 12345                      {path}\n"


def make_proc(root, pid: int, comm: str, maps: list[str] = (), fds: list[str] = (), status: str | None = None) -> None:
    d = root / "proc" / str(pid)
    (d / "fd").mkdir(parents=True)
    (d / "comm").write_text(comm + "\n")
    (d / "maps").write_text("".join(maps_line(p, 0x7F0000000000 + i * 0x10000) for i, p in enumerate(maps)))
    for i, target in enumerate(fds):
        os.symlink(target, d / "fd" / str(i + 3))
    if status is not None:
        (d / "status").write_text(status)


def proc_tree(tmp_path):
    root = tmp_path / "root"
    make_proc(root, 10, "llama-server", maps=["/store/mnt-2m/a/a.gguf", "/usr/lib/libc.so.6"])
    make_proc(root, 11, "python3", fds=["/store/mnt-2m/b/b.gguf", "/dev/null"])
    make_proc(root, 12, "both", maps=["/store/mnt-2m/a/a.gguf"], fds=["/store/mnt-2m/a/a.gguf", "/store/mnt-1g/c"])
    make_proc(root, 13, "bash", maps=["/usr/bin/bash"], fds=["/dev/pts/0"])
    (root / "proc" / "self").mkdir()  # not a pid: ignored
    return str(root)


def test_by_paths(tmp_path):
    root = proc_tree(tmp_path)
    found = procs.holders(root, paths=["/store/mnt-2m/a/a.gguf", "/store/mnt-2m/b/b.gguf"])
    assert found == [
        Holder(10, "llama-server", "/store/mnt-2m/a/a.gguf", "map"),
        Holder(11, "python3", "/store/mnt-2m/b/b.gguf", "fd"),
        Holder(12, "both", "/store/mnt-2m/a/a.gguf", "map"),
    ]  # once per process and file
    assert procs.holder_names(found) == ["10 (llama-server)", "11 (python3)", "12 (both)"]
    assert procs.holders(root, paths=["/nothing"]) == [] and procs.holders(root) == []


def test_by_prefix(tmp_path):
    root = proc_tree(tmp_path)
    found = procs.holders(root, prefix="/store/mnt-2m")
    assert [(h.pid, h.path) for h in found] == [
        (10, "/store/mnt-2m/a/a.gguf"),
        (11, "/store/mnt-2m/b/b.gguf"),
        (12, "/store/mnt-2m/a/a.gguf"),
    ]
    assert procs.holders(root, prefix="/store/mnt-2") == []  # a directory prefix, not a string prefix
    assert [h.pid for h in procs.holders(root, prefix="/store/")] == [10, 11, 12, 12]


def test_by_page_size(tree):
    root = tree("zen-vm")
    assert procs.holders(root, kb=1048576) == [Holder(4242, "llama-server", "", "pages")]
    assert procs.holders(root, kb=2048) == []
    # files and pages in the same walk: the smaps read for the pages also gives the paths
    assert procs.holders(root, paths=[MODEL], kb=1048576) == [Holder(4242, "llama-server", MODEL, "map")]


def test_reads_each_file_once(tmp_path, monkeypatch):
    root = proc_tree(tmp_path)
    for pid in (10, 11, 12, 13):
        (tmp_path / "root" / "proc" / str(pid) / "status").write_text("Name:\tx\nHugetlbPages:\t0 kB\n")
    reads = []
    real = procs.read_text
    monkeypatch.setattr(procs, "read_text", lambda r, rel, default=None: reads.append(rel) or real(r, rel, default))
    procs.holders(root, paths=["/store/mnt-2m/a/a.gguf"], kb=2048)
    assert len(reads) == len(set(reads)), sorted(reads)


def test_vanished_process_is_skipped(tmp_path):
    root = tmp_path / "root"
    (root / "proc" / "77").mkdir(parents=True)  # exited between listdir and reading: no files left
    assert procs.holders(str(root), paths=["/x"], kb=2048) == []


def test_callers_use_the_one_scanner(tmp_path, tree):
    assert act_pools.describe_holders(tree("zen-vm"), 1048576).startswith("process 4242 (llama-server)")
    mine = tmp_path / "root"
    make_proc(mine, 10, "llama-server", maps=["/store/mnt-2m/a/a.gguf"])
    assert store.mapped_by(["/store/mnt-2m/a/a.gguf"], str(mine)) == ["10 (llama-server)"]
    assert act_mounts.open_files_under(str(mine), "/store/mnt-2m") == ["10 (llama-server) /store/mnt-2m/a/a.gguf"]
