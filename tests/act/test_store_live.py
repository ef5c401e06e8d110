"""The model store on the real kernel: stage, map, unload, and every way a load can go wrong."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hugeload.act import store
from hugeload.pages import PAGE_2M
from hugeload.probe import procs

pytestmark = [pytest.mark.kernel]
GB, MB2 = 1048576, 2048
SYS = Path("/sys/kernel/mm/hugepages")
MiB = 1 << 20


def count(kb):
    return int((SYS / f"hugepages-{kb}kB" / "nr_hugepages").read_text())


def free(kb):
    return int((SYS / f"hugepages-{kb}kB" / "free_hugepages").read_text())


def available(kb):
    """Free pages nobody has promised to a mapping: what load --reserve uses before growing the pool."""
    return free(kb) - int((SYS / f"hugepages-{kb}kB" / "resv_hugepages").read_text())


@pytest.fixture(autouse=True)
def _clean(needs_root, state_dir, hugeload_cli):
    yield
    # Whatever a test did, leave no staged file, mount or page behind.
    hugeload_cli("clear", "--force")
    hugeload_cli("gc")


@pytest.fixture
def model(tmp_path):
    def make(size=300 * MiB, name="model.bin"):
        p = tmp_path / name
        with open(p, "wb") as f:
            f.write(os.urandom(1 * MiB) * (size // MiB) + os.urandom(size % MiB))
        return p

    return make


def mapper(path):
    """A process that maps the staged file read-only MAP_SHARED, as llama.cpp does, and waits."""
    code = (
        "import mmap,os,sys; f=open(sys.argv[1],'rb'); "
        "m=mmap.mmap(f.fileno(),0,flags=mmap.MAP_SHARED,prot=mmap.PROT_READ);"
        "s=sum(m[i] for i in range(0,len(m),1<<21)); print('ready',flush=True); sys.stdin.read()"
    )
    p = subprocess.Popen(
        [sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert p.stdout.readline().strip() == "ready"
    return p


@pytest.mark.parametrize("page, kb", [("1g", GB), ("2m", MB2)])
def test_stage_map_unload(hugeload_cli, model, page, kb, state_dir):
    src = model(300 * MiB + 12345)
    before, idle = count(kb), available(kb)
    out = hugeload_cli("load", src, "--page-size", page, "--reserve", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["page_size_kb"] == kb and data["size"] == src.stat().st_size
    staged = Path(data["path"])
    assert data["pages"] == -(-src.stat().st_size // (kb * 1024))
    assert count(kb) == before + max(0, data["pages"] - idle)  # --reserve grows the pool by what is missing
    # The staged file is the source followed by zero padding to a page multiple.
    fd = os.open(staged, os.O_RDONLY)
    try:
        assert os.pread(fd, src.stat().st_size, 0) == src.read_bytes()
        assert set(os.pread(fd, 4096, src.stat().st_size)) <= {0}
    finally:
        os.close(fd)
    listed = json.loads(hugeload_cli("loaded", "--json").stdout)["models"]
    assert [(m["name"], m["state"], m["page_size_kb"], m["path"]) for m in listed] == [
        ("model", "ready", kb, str(staged))
    ]
    p = mapper(staged)
    try:
        assert {x.kernel_page_kb for x in procs.read_smaps("/", p.pid, 0) if x.path == os.path.realpath(staged)} == {kb}
        refused = hugeload_cli("unload", "model")
        assert refused.returncode != 0 and str(p.pid) in refused.stderr
        assert str(p.pid) in json.dumps(json.loads(hugeload_cli("loaded", "--json").stdout))
    finally:
        p.stdin.close()
        p.wait()
    assert hugeload_cli("unload", "model").returncode == 0
    assert count(kb) == before and not staged.exists()
    assert hugeload_cli("loaded", "--json").stdout.count('"name"') == 0


def test_second_load_is_instant_and_changed_source_is_restaged(hugeload_cli, model):
    src = model(20 * MiB)
    assert hugeload_cli("load", src, "--page-size", "2m", "--reserve").returncode == 0
    again = json.loads(hugeload_cli("load", src, "--page-size", "2m", "--reserve", "--json").stdout)
    assert again["already_staged"] is True
    with open(src, "r+b") as f:
        f.write(b"changed!")
    third = json.loads(hugeload_cli("load", src, "--page-size", "2m", "--reserve", "--json").stdout)
    assert third["already_staged"] is False
    with open(third["path"], "rb") as f:
        assert f.read(8) == b"changed!"


def test_auto_falls_back_to_2m_when_the_1g_pool_cannot_hold_it(hugeload_cli, model):
    if available(GB) >= 2:
        pytest.skip("the 1G pool holds free pages (someone reserved them): cannot test an empty pool")
    src = model(2 * 1024 * MiB)  # 2 x 1G by the size rule; without --reserve the empty 1G pool cannot hold it
    out = hugeload_cli("load", src)
    assert out.returncode == 3 and "2M pool" in out.stderr  # falls back to 2M, whose pool is empty too
    from hugeload.act.store import choose_page_size

    kb, reason = choose_page_size(src.stat().st_size, None, False)
    assert kb == MB2 and "1G pool cannot hold 2 page(s)" in reason
    assert choose_page_size(src.stat().st_size, None, True) == (
        GB,
        "model is at least 1 GiB and 1G pages waste at most 1/8, and the 1G pool can hold it",
    )


def test_split_gguf_parts_are_staged_side_by_side(hugeload_cli, tmp_path):
    for i in range(1, 4):
        (tmp_path / f"m-{i:05d}-of-00003.gguf").write_bytes(os.urandom(3 * MiB))
    out = hugeload_cli("load", tmp_path / "m-00002-of-00003.gguf", "--page-size", "2m", "--reserve", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["name"] == "m" and data["path"].endswith("m-00001-of-00003.gguf") and data["pages"] == 6
    staged_dir = Path(data["path"]).parent
    assert sorted(p.name for p in staged_dir.iterdir()) == [f"m-{i:05d}-of-00003.gguf" for i in range(1, 4)]
    for i in range(1, 4):
        name = f"m-{i:05d}-of-00003.gguf"
        assert (staged_dir / name).read_bytes()[: 3 * MiB] == (tmp_path / name).read_bytes()


def test_concurrent_loads_copy_once(hugeload_cli, model):
    src = model(200 * MiB)
    before, idle = count(MB2), available(MB2)
    results = []

    def load():
        results.append(hugeload_cli("load", src, "--page-size", "2m", "--reserve", "--json"))

    threads = [threading.Thread(target=load) for _ in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    flags = sorted(json.loads(r.stdout)["already_staged"] for r in results)
    assert flags == [False, True]
    assert count(MB2) == before + max(0, 100 - idle)  # one copy's worth of pages
    assert len(json.loads(hugeload_cli("loaded", "--json").stdout)["models"]) == 1


def test_kill_in_the_middle_leaves_nothing_ready_and_gc_frees_every_page(hugeload_cli, model, state_dir):
    src = model(1024 * MiB)
    before = count(MB2)
    exe = Path(sys.executable).with_name("hugeload")
    p = subprocess.Popen(
        [str(exe), "load", str(src), "--page-size", "2m", "--reserve", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 60
    while time.time() < deadline and not store.staging_dirs(state_dir):
        time.sleep(0.01)
    staging = store.staging_dirs(state_dir)
    assert staging, "the load never started staging"
    while time.time() < deadline and not any(f.stat().st_size for f in staging[0].iterdir()):
        time.sleep(0.01)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    models = json.loads(hugeload_cli("loaded", "--json").stdout)["models"]
    assert all(m["state"] != "ready" for m in models)
    assert count(MB2) > before  # the killed load's pages are still held
    out = hugeload_cli("gc", "--json")
    assert out.returncode == 0, out.stderr
    assert count(MB2) == before and not store.staging_dirs(state_dir)
    assert json.loads(hugeload_cli("loaded", "--json").stdout)["models"] == []


def test_a_file_that_changes_while_copying_is_not_staged(model, state_dir):
    src = model(256 * MiB)
    stop = threading.Event()

    def scribble():
        while not stop.is_set():
            with open(src, "r+b") as f:
                f.seek(100 * MiB)
                f.write(b"x")
            time.sleep(0.001)

    t = threading.Thread(target=scribble)
    t.start()
    try:
        with pytest.raises(store.SourceChanged):
            store.stage(str(src), store.StageOptions(page_size=PAGE_2M, reserve=True), state_dir=state_dir)
    finally:
        stop.set()
        t.join()
    assert store.staged(state_dir) == [] and not store.staging_dirs(state_dir)


@pytest.mark.parametrize(
    "args, message",
    [
        (["load", "/nonexistent/model.gguf"], "no such file"),
        (["load", "/tmp"], "is a directory"),
        (["load", "__SRC__", "--name", "a/b"], "not allowed"),
        (["load", "__SRC__", "--page-size", "3m"], "unknown page size"),
        (["load", "__SRC__", "--page-size", "2m"], "hugeload reserve --count"),
        (["unload", "nothing-here"], "no staged model"),
    ],
)
def test_bad_input(hugeload_cli, model, args, message):
    src = model(5 * MiB)
    pools = (count(GB), count(MB2))
    out = hugeload_cli(*[str(src) if a == "__SRC__" else a for a in args])
    assert out.returncode != 0 and message in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert (count(GB), count(MB2)) == pools


def test_gc_frees_the_pages_of_a_killed_run(hugeload_cli, tmp_path, state_dir):
    # `hugeload run --reserve` gives its pages back when the engine exits; SIGKILLed, it cannot.
    f = tmp_path / "weights.bin"
    f.write_bytes(b"\0" * (4 * MiB))
    before = count(MB2)
    exe = Path(sys.executable).with_name("hugeload")
    # --copy: the 4 MiB file's private copy is what is reserved (a file this small makes no heap
    # copy of 64 MiB or more, so without it nothing would be).
    p = subprocess.Popen(
        [
            str(exe),
            "run",
            "--page-size",
            "2m",
            "--copy",
            "--reserve",
            "--files",
            "*.bin",
            "--",
            "sh",
            "-c",
            "exec sleep 60",
            "sh",
            str(f),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    engine = []
    try:
        deadline = time.time() + 30
        while time.time() < deadline and count(MB2) == before and p.poll() is None:
            time.sleep(0.05)
        assert count(MB2) == before + 2, p.stderr.read1() if p.poll() is not None else "no reservation"
        engine += [int(c) for t in Path(f"/proc/{p.pid}/task").glob("*/children") for c in t.read_text().split()]
        assert json.loads(hugeload_cli("gc", "--json").stdout)["released"] == []  # still running: kept
        assert count(MB2) == before + 2
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    finally:
        for pid in [p.pid, *engine]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        p.wait()
    (report,) = (state_dir / "run").glob(f"report-{p.pid}@*.txt")  # named by the run's pid and start time
    assert report.exists()  # the killed run's report, which it could not remove itself
    out = hugeload_cli("gc", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["released"] and count(MB2) == before
    assert str(report) in data["removed"] and not report.exists()
