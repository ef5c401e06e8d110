"""The preload library (csrc/preload/) under LD_PRELOAD, driven by tests/native/harness.c.

The harness replays llama.cpp's calls (one whole-file mmap, advice, mlock of
growing prefixes, 4 KB munmaps ending at an unaligned size, repeated cycles,
big buffers) and prints ERROR lines for any failed call.  Tests marked
`kernel` reserve real huge pages and mount hugetlbfs; the conftest's autouse
fixture holds the machine lock and checks the pools come back unchanged, and
the `pools` fixture here restores the counts it changed.
"""

import ctypes
import mmap
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from hugeload import native
from hugeload.act import redirects

REPO = Path(__file__).resolve().parent.parent
HUGEPAGES = Path("/sys/kernel/mm/hugepages")
P1G, P2M = "hugepages-1048576kB", "hugepages-2048kB"
GIB, MIB = 1 << 30, 1 << 20
MODEL_SIZE = 300 * MIB + 12345  # not a multiple of 4 KB, like real model files
THRESHOLD = 64 * MIB


# ---------------------------------------------------------------- helpers


def parse_report(text: str) -> list[dict[str, str]]:
    """The region lines of a hugeload report, as dicts of their key=value fields."""
    out = []
    for line in text.splitlines():
        if line.startswith("hugeload: region "):
            out.append(dict(field.split("=", 1) for field in line.split()[2:]))
    return out


def pool(kind: str, counter: str = "free_hugepages") -> int:
    return int((HUGEPAGES / kind / counter).read_text())


def smaps_vma(pid: int, addr: int) -> dict[str, int]:
    """The smaps fields (kB values) of the mapping of pid that contains addr."""
    vma, found = {}, False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            m = re.match(r"^([0-9a-f]+)-([0-9a-f]+) ", line)
            if m:
                if found:
                    break
                found = int(m.group(1), 16) <= addr < int(m.group(2), 16)
            elif found and line.split()[-1:] == ["kB"]:
                key, value = line.split(":", 1)
                vma[key] = int(value.split()[0])
    return vma


def stage(src: Path, mount: Path, state_dir: Path, page: int, name: str = "model staged.bin") -> Path:
    """Copies src into hugetlbfs the way the store will: ftruncate to a page multiple, mmap, copy."""
    dst = mount / name
    padded = -(-src.stat().st_size // page) * page
    fd = os.open(dst, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, padded)
        with mmap.mmap(fd, padded, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) as m, open(src, "rb") as f:
            off = 0
            while chunk := f.read(64 * MIB):
                m[off : off + len(chunk)] = chunk
                off += len(chunk)
    finally:
        os.close(fd)
    write_index(state_dir, [(src, dst)])
    return dst


def write_index(state_dir: Path, pairs, node: int = -1) -> None:
    """Publishes the redirects index with the store's own writer; pairs are (source, staged[, node])."""
    entries = [redirects.entry_for(p[0], p[1], p[2] if len(p) > 2 else node) for p in pairs]
    redirects.write(state_dir, entries)


def run_harness(build, *args, env=None, lib=None, on_ready=None, tmp=None, timeout=90, preload=True):
    """Runs the harness preloaded; on_ready(pid, addr, size) is called at each pause."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("HUGELOAD_") and k != "LD_PRELOAD"}
    if preload:
        full["LD_PRELOAD"] = str(lib or build.lib)
    full["HUGELOAD_STATE_DIR"] = str(tmp / "state")
    full["HUGELOAD_REPORT"] = str(tmp / "report.txt")
    full.update(env or {})
    report = Path(full["HUGELOAD_REPORT"])
    if report == tmp / "report.txt":  # a test's own report file is the test's to keep
        report.unlink(missing_ok=True)
    p = subprocess.Popen(
        [str(build.harness), *map(str, args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full,
    )
    watchdog = threading.Timer(timeout, p.kill)
    watchdog.start()
    stderr_chunks = []
    reader = threading.Thread(target=lambda: stderr_chunks.append(p.stderr.read()))
    reader.start()
    out, ready = [], []
    try:
        for line in p.stdout:
            out.append(line)
            if line.startswith("READY"):
                f = dict(kv.split("=", 1) for kv in line.split()[1:])
                ready.append(on_ready(p.pid, int(f["addr"], 16), int(f["size"])) if on_ready else None)
                try:
                    p.stdin.write("\n")
                    p.stdin.flush()
                except BrokenPipeError:  # the harness is gone (a test killed it)
                    pass
        p.wait()
    finally:
        watchdog.cancel()
        reader.join()
    stdout, stderr = "".join(out), "".join(stderr_chunks)
    report_text = report.read_text() if report.is_file() and not report.is_symlink() else ""
    left = re.search(r"HUGE_LEFT vmas=(\d+) kb=(\d+)", stdout)
    return SimpleNamespace(
        rc=p.returncode,
        stdout=stdout,
        stderr=stderr,
        report=report_text,
        regions=parse_report(report_text),
        ready=ready,
        huge_left=int(left.group(1)) if left else None,
        log=f"rc={p.returncode}\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- report\n{report_text}",
    )


def kernel_names_anon_vmas() -> bool:
    """Whether PR_SET_VMA_ANON_NAME works here (CONFIG_ANON_VMA_NAME; refused for hugetlb in any case)."""
    libc = ctypes.CDLL(None, use_errno=True)
    with mmap.mmap(-1, 1 << 16) as m:
        addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
        ok = libc.prctl(0x53564D41, 0, ctypes.c_ulong(addr), ctypes.c_ulong(1 << 16), ctypes.c_char_p(b"t")) == 0
        del addr
    return ok


def assert_clean(r):
    """Every call the harness checked succeeded, no munmap was refused, nothing huge left mapped."""
    assert r.rc == 0, r.log
    assert "ERROR" not in r.stdout, r.log
    assert "munmap failed" not in r.stdout and "Invalid argument" not in r.stdout, r.log
    assert r.huge_left == 0, r.log


# ---------------------------------------------------------------- fixtures


PRELOAD_SOURCES = REPO / "csrc/preload"
# HUGELOAD_TEST_CSRC=DIR: test the library built from DIR instead (how the regression tests of
# issue 20 were checked against the sources before it: they fail there).
TEST_CSRC = os.environ.get("HUGELOAD_TEST_CSRC")


def compile_library(cc: str, src: Path, out: Path, *flags: str) -> Path:
    sources = sorted(str(p) for p in src.glob("*.c"))
    cmd = [cc, "-O2", "-std=gnu11", "-fPIC", "-shared", "-fvisibility=hidden", "-pthread", *flags, *sources]
    subprocess.run([*cmd, "-o", str(out), "-ldl"], check=True)
    return out


@pytest.fixture(scope="session")
def build(tmp_path_factory):
    """The installed library (or one built from HUGELOAD_TEST_CSRC), a fault-injection build of the
    same source, the harness, and lockprobe.so (tests/native/lockprobe.c)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler")
    d = tmp_path_factory.mktemp("native")
    src = Path(TEST_CSRC) if TEST_CSRC else PRELOAD_SOURCES
    lib = compile_library(cc, src, d / "libhugeload.so") if TEST_CSRC else native.library_path()
    if not lib.exists():
        pytest.skip("libhugeload.so not built: pip install -e .")
    harness, probe = d / "harness", d / "lockprobe.so"
    subprocess.run(
        [cc, "-O1", "-g", "-Wall", "-pthread", str(REPO / "tests/native/harness.c"), "-o", str(harness)], check=True
    )
    subprocess.run(
        [cc, "-O1", "-g", "-shared", "-fPIC", "-pthread", str(REPO / "tests/native/lockprobe.c"), "-o", str(probe)],
        check=True,
    )
    fault = compile_library(cc, src, d / "libhugeload-fault.so", "-DHUGELOAD_FAULT_INJECTION")
    return SimpleNamespace(lib=lib, fault=fault, harness=harness, probe=probe, src=src)


@pytest.fixture(scope="session")
def model(tmp_path_factory) -> Path:
    """A model-sized file whose every 8 bytes differ, so a wrong offset is caught."""
    np = pytest.importorskip("numpy")
    path = tmp_path_factory.mktemp("model") / "model.bin"
    words = np.arange(MODEL_SIZE // 8 + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    path.write_bytes(words.tobytes()[:MODEL_SIZE])
    return path


@pytest.fixture
def pools(needs_root):
    """reserve(kind, n): sets a pool and reads it back (skips when it comes back short); restores after."""
    if not (HUGEPAGES / P1G).exists():
        pytest.skip("no 1 GB huge page support")
    before = {k: pool(k, "nr_hugepages") for k in (P1G, P2M)}

    def reserve(kind: str, n: int) -> int:
        (HUGEPAGES / kind / "nr_hugepages").write_text(str(n))
        got = pool(kind, "nr_hugepages")
        if got < n:
            pytest.skip(f"{kind}: asked for {n} pages, the kernel gave {got}")
        return got

    try:
        yield reserve
    finally:
        for kind, n in before.items():
            (HUGEPAGES / kind / "nr_hugepages").write_text(str(n))


@pytest.fixture
def hugetlbfs(tmp_path, pools):
    """mount(pagesize) -> a fresh hugetlbfs mount point; unmounted (pages freed) before pools are restored."""
    mounts = []

    def mount(pagesize: str) -> Path:
        d = tmp_path / f"hugetlbfs-{pagesize}"
        d.mkdir()
        subprocess.run(["mount", "-t", "hugetlbfs", "-o", f"pagesize={pagesize},mode=0700", "none", str(d)], check=True)
        mounts.append(d)
        return d

    try:
        yield mount
    finally:
        for d in reversed(mounts):
            for f in d.iterdir():
                f.unlink()
            subprocess.run(["umount", str(d)], check=True)


# ---------------------------------------------------------------- without the kernel's pools


def test_inert_when_loaded_by_ctypes(build):
    """Python loads the same .so for CPUID: no interposition, no output, even with every knob set."""
    code = (
        "import ctypes; from hugeload import native; native.load();"
        "libc = ctypes.CDLL(None); libc.malloc.restype = ctypes.c_void_p;"
        "p = libc.malloc(200 << 20); print(p % (2 << 20)); libc.free(ctypes.c_void_p(p))"
    )
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    env.update(HUGELOAD_LOG="2", HUGELOAD_ALLOC_THRESHOLD="1M", HUGELOAD_COPY="1")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert "hugeload" not in r.stderr
    assert r.stdout.strip() != "0"  # glibc's pointer, not a 2 MB-aligned one of ours


def test_benchmark_kernels(build):
    lib = native.load()

    # The chain is one cycle through every slot.
    slots, stride = 97, 64
    small = (ctypes.c_char * (slots * stride))()
    base = ctypes.addressof(small)
    assert lib.hugeload_chase_init(base, slots * stride, stride, 42) == 0
    seen, p = set(), base
    for _ in range(slots):
        seen.add(p)
        p = ctypes.c_void_p.from_address(p).value
    assert p == base and len(seen) == slots and all((a - base) % stride == 0 for a in seen)
    assert lib.hugeload_chase_init(base, stride, stride, 1) == -1  # one slot: no cycle
    assert lib.hugeload_chase_init(base, slots * stride, 12, 1) == -1  # misaligned stride

    size = 32 * MIB
    with mmap.mmap(-1, size) as a, mmap.mmap(-1, size) as b:
        pa = ctypes.addressof(ctypes.c_char.from_buffer(a))
        pb = ctypes.addressof(ctypes.c_char.from_buffer(b))
        assert lib.hugeload_chase_init(pa, size, 64, 7) == 0
        assert 0 < lib.hugeload_chase_ns(pa, 200_000) < 10_000
        assert lib.hugeload_seq_read_gbps(pa, size, 2) > 0.1
        assert lib.hugeload_memcpy_gbps(pb, pa, size, 2) > 0.1
        assert b[:4096] == a[:4096]
        assert lib.hugeload_chase_ns(None, 10) == -1
        assert lib.hugeload_seq_read_gbps(pa, 0, 1) == -1
        del pa, pb


def test_unstaged_file_without_copy_stays_on_real_mmap(build, model, tmp_path):
    r = run_harness(build, "map", model, "--cycles", "2", tmp=tmp_path, env={"HUGELOAD_MIN_FILE_SIZE": "1M"})
    assert_clean(r)
    assert r.stderr.count("hugeload: model.bin is not staged and HUGELOAD_COPY is off") == 1, r.log
    assert [(x["page"], x["fill"], x["bytes"]) for x in r.regions] == [("4K", "none", str(MODEL_SIZE))] * 2


def test_files_globs_select(build, model, tmp_path):
    env = {"HUGELOAD_COPY": "1", "HUGELOAD_PAGE_SIZE": "2m", "HUGELOAD_FAULT": "2m"}
    r = run_harness(
        build, "map", model, "--private", tmp=tmp_path, lib=build.fault, env={**env, "HUGELOAD_FILES": "*.gguf"}
    )
    assert_clean(r)
    assert r.regions == [], r.log
    r = run_harness(
        build,
        "map",
        model,
        "--private",
        tmp=tmp_path,
        lib=build.fault,
        env={**env, "HUGELOAD_FILES": "/nonexistent/*:model.b?n"},
    )
    assert_clean(r)
    assert [(x["what"], x["fill"]) for x in r.regions] == [("model.bin", "copy")], r.log
    # A relative glob with a directory matches the tail of the path.
    r = run_harness(
        build,
        "map",
        model,
        "--private",
        tmp=tmp_path,
        lib=build.fault,
        env={**env, "HUGELOAD_FILES": f"{model.parent.name}/*.bin"},
    )
    assert [(x["what"], x["fill"]) for x in r.regions] == [("model.bin", "copy")], r.log
    r = run_harness(
        build, "map", model, "--private", tmp=tmp_path, lib=build.fault, env={**env, "HUGELOAD_FILES": "zz/*.bin"}
    )
    assert r.regions == [], r.log
    # Below the default minimum size and no glob: not touched.
    r = run_harness(build, "map", model, "--private", tmp=tmp_path, lib=build.fault, env=env)
    assert_clean(r)
    assert r.regions == [], r.log


def test_no_huge_pages_at_all_falls_back_to_real_mmap(build, model, tmp_path):
    env = {
        "HUGELOAD_COPY": "1",
        "HUGELOAD_MIN_FILE_SIZE": "1M",
        "HUGELOAD_PAGE_SIZE": "1g",
        "HUGELOAD_FAULT": "1g,2m,thp",
    }
    r = run_harness(build, "map", model, "--private", "--cycles", "2", tmp=tmp_path, lib=build.fault, env=env)
    assert_clean(r)
    for msg in ("1 GB pages unavailable", "2 MB pages unavailable", "transparent huge pages unavailable"):
        assert r.stderr.count(f"hugeload: {msg}") == 1, r.log
    assert [(x["page"], x["fill"]) for x in r.regions] == [("4K", "none")] * 2, r.log


def test_allocation_cascade_faults(build, tmp_path):
    r = run_harness(build, "alloc", THRESHOLD, tmp=tmp_path, lib=build.fault, env={"HUGELOAD_FAULT": "2m"})
    assert_clean(r)
    allocs = [x for x in r.regions if x["fill"] == "alloc"]
    assert allocs and {x["page"] for x in allocs} == {"THP"}, r.log
    assert all(int(x["addr"], 16) % (2 * MIB) == 0 for x in allocs)
    assert all(int(x["bytes"]) >= THRESHOLD for x in allocs)
    r = run_harness(build, "alloc", THRESHOLD, tmp=tmp_path, lib=build.fault, env={"HUGELOAD_FAULT": "1g,2m,thp"})
    assert_clean(r)
    assert {x["page"] for x in r.regions} == {"4K"}, r.log
    r = run_harness(build, "alloc", THRESHOLD, tmp=tmp_path, env={"HUGELOAD_ALLOC_THRESHOLD": "0"})
    assert_clean(r)
    assert r.regions == [], r.log


def test_forked_child_reports_only_its_own_regions(build, tmp_path):
    r = run_harness(build, "fork", THRESHOLD, tmp=tmp_path, lib=build.fault, env={"HUGELOAD_FAULT": "2m"})
    assert_clean(r)
    by_pid = {}
    for x in r.regions:
        by_pid.setdefault(x["pid"], []).append((x["what"], x["bytes"], x["page"]))
    assert sorted(by_pid.values()) == [[("malloc", str(2 * THRESHOLD), "THP")], [("malloc", str(THRESHOLD), "THP")]], (
        r.log
    )


def test_sigusr1_keeps_its_default_action(build, model, tmp_path):
    """The library installs no signal handler (issue 20, item 9): SIGUSR1 still ends the program,
    where the old library caught it to write a report."""

    def on_ready(pid, addr, size):
        os.kill(pid, signal.SIGUSR1)
        time.sleep(0.5)

    env = {"HUGELOAD_COPY": "1", "HUGELOAD_MIN_FILE_SIZE": "1M", "HUGELOAD_FAULT": "1g,2m"}
    r = run_harness(
        build, "map", model, "--private", "--pause", tmp=tmp_path, lib=build.fault, env=env, on_ready=on_ready
    )
    assert r.rc == -signal.SIGUSR1, r.log


# ---------------------------------------------------------------- with real pools and mounts


@pytest.mark.kernel
def test_staged_model_maps_zero_copy_on_1g_pages(build, model, pools, hugetlbfs, tmp_path):
    pools(P1G, 1)
    mnt = hugetlbfs("1G")
    stage(model, mnt, tmp_path / "state", GIB)
    assert pool(P1G) == 0

    def on_ready(pid, addr, size):
        return smaps_vma(pid, addr).get("KernelPageSize"), pool(P1G)

    r = run_harness(build, "map", model, "--cycles", "3", "--pause", tmp=tmp_path, on_ready=on_ready)
    assert_clean(r)
    assert r.ready == [(1048576, 0)], r.log  # on 1 GB pages, and no second set of pages taken
    assert [(x["page"], x["fill"], x["bytes"], x["mapped"]) for x in r.regions] == [
        ("1G", "staged", str(MODEL_SIZE), str(GIB))
    ] * 3, r.log
    assert "hugeload: " not in r.stderr, r.log  # nothing fell back
    assert pool(P1G) == 0  # the staged file still holds its page; the process held none


@pytest.mark.kernel
def test_cli_load_then_run_maps_the_staged_copy(build, model, pools, state_dir, hugeload_cli, tmp_path):
    """End to end: `hugeload load` stages with the real store, `hugeload run` preloads the library."""
    report = tmp_path / "cli-report.txt"
    try:
        out = hugeload_cli("load", model, "--page-size", "2m", "--reserve", "--json")
        assert out.returncode == 0, out.stderr
        r = hugeload_cli("run", "--report", report, "--", build.harness, "map", model, "--cycles", "2")
        assert r.returncode == 0 and "ERROR" not in r.stdout, r.stdout + r.stderr
        assert [(x["page"], x["fill"]) for x in parse_report(report.read_text())] == [("2M", "staged")] * 2
    finally:
        hugeload_cli("clear", "--force")
        hugeload_cli("gc")


@pytest.mark.kernel
def test_index_is_reread_when_it_changes(build, model, pools, hugetlbfs, tmp_path):
    pools(P2M, 160)
    mnt = hugetlbfs("2M")
    state = tmp_path / "state"
    other = tmp_path / "other.bin"
    other.write_bytes(b"x" * 4096)
    write_index(state, [(other, mnt / "nothing")])
    cycle = []

    def on_ready(pid, addr, size):
        kps = smaps_vma(pid, addr).get("KernelPageSize")
        if not cycle:
            stage(model, mnt, state, 2 * MIB)  # published while the engine runs
        cycle.append(kps)
        return kps

    env = {"HUGELOAD_MIN_FILE_SIZE": "1M"}
    r = run_harness(build, "map", model, "--cycles", "2", "--pause-all", tmp=tmp_path, env=env, on_ready=on_ready)
    assert_clean(r)
    assert r.ready == [4, 2048], r.log
    assert [(x["page"], x["fill"]) for x in r.regions] == [("4K", "none"), ("2M", "staged")], r.log


@pytest.mark.kernel
def test_engine_mapping_hugetlbfs_private_gets_shared(build, model, pools, hugetlbfs, tmp_path):
    """MAP_PRIVATE of a hugetlbfs file would reserve a second page: with one page only, it must be shared."""
    pools(P1G, 1)
    mnt = hugetlbfs("1G")
    staged = stage(model, mnt, tmp_path / "unused-state", GIB)

    def on_ready(pid, addr, size):
        return smaps_vma(pid, addr).get("KernelPageSize"), pool(P1G)

    r = run_harness(build, "map", staged, "--cycles", "2", "--pause", "--private", tmp=tmp_path, on_ready=on_ready)
    assert_clean(r)
    assert r.ready == [(1048576, 0)], r.log
    assert [(x["page"], x["fill"]) for x in r.regions] == [("1G", "direct")] * 2, r.log
    # Control: without the library the engine's pattern fails exactly as on a real system.
    r = run_harness(build, "map", staged, tmp=tmp_path, preload=False)
    assert r.rc != 0 and "munmap failed: Invalid argument" in r.stdout, r.log
    r = run_harness(build, "map", staged, "--private", tmp=tmp_path, preload=False)
    assert "mmap: Cannot allocate memory" in r.stdout, r.log  # the private second set does not fit


@pytest.mark.kernel
def test_copy_uses_2m_when_1g_pool_is_empty(build, model, pools, tmp_path):
    pools(P1G, 0)
    pools(P2M, 160)

    def on_ready(pid, addr, size):
        return smaps_vma(pid, addr).get("KernelPageSize"), pool(P2M)

    env = {"HUGELOAD_COPY": "1", "HUGELOAD_MIN_FILE_SIZE": "1M", "HUGELOAD_PAGE_SIZE": "1g"}
    r = run_harness(
        build, "map", model, "--private", "--cycles", "2", "--pause", tmp=tmp_path, env=env, on_ready=on_ready
    )
    assert_clean(r)
    need = -(-MODEL_SIZE // (2 * MIB))
    assert r.ready == [(2048, 160 - need)], r.log
    assert r.stderr.count("hugeload: 1 GB pages unavailable") == 1, r.log
    assert "for model.bin" in r.stderr
    assert [(x["page"], x["fill"]) for x in r.regions] == [("2M", "copy")] * 2, r.log
    assert pool(P2M) == 160  # every page came back


def whole_pages_unmapped(size: int, page: int) -> int:
    """Huge pages wholly inside the two fragments the harness unmaps (its unmap_fragment calls)."""

    def frag(first, last):
        first, last = -(-first // 4096) * 4096, last // 4096 * 4096
        return max(0, last // page - -(-first // page))

    return frag(size // 3 + 123, 2 * (size // 3) + 77) + frag(0, size // 5 + 1)


@pytest.mark.kernel
def test_pages_are_given_back_as_fragments_are_unmapped(build, model, pools, tmp_path):
    pools(P2M, 160)

    def on_ready(pid, addr, size):
        return pool(P2M)

    env = {"HUGELOAD_COPY": "1", "HUGELOAD_MIN_FILE_SIZE": "1M", "HUGELOAD_PAGE_SIZE": "2m"}
    r = run_harness(
        build, "map", model, "--private", "--pause", "--pause-mid", tmp=tmp_path, env=env, on_ready=on_ready
    )
    assert_clean(r)
    need = -(-MODEL_SIZE // (2 * MIB))
    released = whole_pages_unmapped(MODEL_SIZE, 2 * MIB)
    assert released > 50
    assert r.ready == [160 - need, 160 - need + released], r.log
    assert pool(P2M) == 160


@pytest.mark.kernel
def test_copy_on_1g_pages(build, model, pools, tmp_path):
    pools(P1G, 1)

    def on_ready(pid, addr, size):
        return smaps_vma(pid, addr).get("KernelPageSize"), pool(P1G)

    env = {"HUGELOAD_COPY": "1", "HUGELOAD_MIN_FILE_SIZE": "1M", "HUGELOAD_PAGE_SIZE": "1g"}
    r = run_harness(
        build, "map", model, "--private", "--cycles", "2", "--pause", tmp=tmp_path, env=env, on_ready=on_ready
    )
    assert_clean(r)
    assert r.ready == [(1048576, 0)], r.log
    assert [(x["page"], x["fill"]) for x in r.regions] == [("1G", "copy")] * 2, r.log
    assert "hugeload: " not in r.stderr, r.log
    assert pool(P1G) == 1


@pytest.mark.kernel
def test_empty_pools_fall_back_to_thp(build, model, pools, tmp_path):
    pools(P1G, 0)
    pools(P2M, 0)
    env = {"HUGELOAD_COPY": "1", "HUGELOAD_MIN_FILE_SIZE": "1M", "HUGELOAD_PAGE_SIZE": "1g"}
    r = run_harness(build, "map", model, "--private", "--cycles", "2", tmp=tmp_path, env=env)
    assert_clean(r)
    assert r.stderr.count("hugeload: 1 GB pages unavailable") == 1, r.log
    assert r.stderr.count("hugeload: 2 MB pages unavailable") == 1, r.log
    assert [(x["page"], x["fill"]) for x in r.regions] == [("THP", "copy")] * 2, r.log


@pytest.mark.kernel
@pytest.mark.parametrize("fault", ["pread", "eof"])
def test_read_failure_falls_back_and_returns_pages(build, model, pools, tmp_path, fault):
    pools(P2M, 160)

    def on_ready(pid, addr, size):
        return smaps_vma(pid, addr).get("KernelPageSize"), pool(P2M)

    env = {"HUGELOAD_COPY": "1", "HUGELOAD_MIN_FILE_SIZE": "1M", "HUGELOAD_PAGE_SIZE": "2m", "HUGELOAD_FAULT": fault}
    r = run_harness(
        build,
        "map",
        model,
        "--private",
        "--cycles",
        "2",
        "--pause",
        tmp=tmp_path,
        lib=build.fault,
        env=env,
        on_ready=on_ready,
    )
    assert_clean(r)
    assert r.ready == [(4, 160)], r.log  # the real mmap, and the copy's pages already given back
    assert r.stderr.count("hugeload: reading model.bin for its huge page copy failed") == 1, r.log
    assert [(x["page"], x["fill"]) for x in r.regions] == [("4K", "none")] * 2, r.log


@pytest.mark.kernel
def test_allocations_around_threshold(build, pools, tmp_path):
    pools(P2M, 320)
    r = run_harness(build, "alloc", THRESHOLD, tmp=tmp_path, env={"HUGELOAD_PAGE_SIZE": "auto"})
    assert_clean(r)
    allocs = [x for x in r.regions if x["fill"] == "alloc"]
    assert len(allocs) >= 20, r.log
    assert {x["page"] for x in allocs} == {"2M"}, r.log
    assert min(int(x["bytes"]) for x in allocs) == THRESHOLD  # THRESHOLD - 1 went to glibc
    assert all(x["live"] == "0" for x in allocs)
    assert "hugeload: " not in r.stderr, r.log
    assert pool(P2M) == 320


@pytest.mark.kernel
def test_one_gib_allocation_on_a_1g_page(build, pools, tmp_path):
    pools(P1G, 1)

    def on_ready(pid, addr, size):
        return smaps_vma(pid, addr).get("KernelPageSize"), pool(P1G)

    r = run_harness(
        build,
        "alloc",
        THRESHOLD,
        "--big",
        GIB,
        "--pause",
        tmp=tmp_path,
        on_ready=on_ready,
        env={"HUGELOAD_FAULT": "2m"},
        lib=build.fault,
    )
    assert_clean(r)
    assert r.ready == [(1048576, 0)], r.log
    assert [x["page"] for x in r.regions if x["bytes"] == str(GIB)] == ["1G"], r.log
    assert pool(P1G) == 1


@pytest.mark.kernel
def test_threads_share_the_pools(build, model, pools, tmp_path):
    pools(P2M, 200)
    env = {"HUGELOAD_COPY": "1", "HUGELOAD_MIN_FILE_SIZE": "1M", "HUGELOAD_PAGE_SIZE": "2m", "HUGELOAD_LOG": "0"}
    r = run_harness(build, "threads", THRESHOLD, 4, 12, model, tmp=tmp_path, env=env)
    assert_clean(r)
    assert {x["fill"] for x in r.regions} >= {"alloc", "copy"}, r.log
    assert pool(P2M) == 200


# ---------------------------------------------------------------- issue 11: semantics the kernel would give


def test_page_choice_matches_the_policy_at_the_boundaries(build):
    """C applies the rule of contract C2 (the parity test against Python lives with hugeload/pages.py)."""
    choice = native.page_choice_kb
    assert choice(GIB) == 1048576 and choice(GIB - 1) == 2048
    # auto: waste at most 1/8 of the bytes; 2 GiB - waste w: 1G iff w <= (2 GiB - w) / 8
    w = (2 * GIB) // 9
    assert choice(2 * GIB - w) == 1048576 and choice(2 * GIB - w - 2) == 2048
    assert choice(256 * MIB, "1g") == 1048576 and choice(256 * MIB - 1, "1g") == 2048
    assert choice(8 * GIB, "2m") == 2048
    assert choice(GIB, "auto", "auto_1g_min=2147483648") == 2048
    assert choice(GIB, "auto", "auto_1g_min=1,auto_1g_max_waste_ppm=0,forced_1g_min=5") == 1048576
    assert choice(GIB, "huge") == -1 and choice(GIB, None, "bogus=1") == -1


def test_cancelled_thread_leaves_no_lock_held(build, tmp_path):
    """A thread cancelled while the library logs must not leave the lock held (every later big malloc hung)."""
    env = {"HUGELOAD_FAULT": "1g,2m", "HUGELOAD_LOG": "2"}
    r = run_harness(build, "cancel", THRESHOLD, 15, tmp=tmp_path, lib=build.fault, env=env, timeout=60)
    assert_clean(r)
    assert "CANCEL ok" in r.stdout, r.log


def test_full_stderr_pipe_does_not_stall_other_threads(build, tmp_path):
    """A thread blocked writing a log line to a full pipe holds no lock: others keep going."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUGELOAD_") and k != "LD_PRELOAD"}
    env.update(
        LD_PRELOAD=str(build.fault),
        HUGELOAD_FAULT="1g,2m",
        HUGELOAD_LOG="2",
        HUGELOAD_STATE_DIR=str(tmp_path / "state"),
    )
    rfd, wfd = os.pipe()
    try:
        p = subprocess.Popen(
            [str(build.harness), "stall", str(THRESHOLD)], stdout=subprocess.PIPE, stderr=wfd, text=True, env=env
        )
        os.close(wfd)
        try:
            out, _ = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            pytest.fail("the main thread waited for the lock held by a thread blocked in write()")
    finally:
        os.close(rfd)
    assert "STALL ok" in out and p.returncode == 0, out


def test_thp_regions_get_the_real_madvise_and_mlock(build, tmp_path):
    """On THP (ordinary memory) MADV_DONTNEED really drops, mlock really locks, and the VMA is named."""
    enabled = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not enabled.exists() or "[never]" in enabled.read_text():
        pytest.skip("transparent huge pages are disabled")

    def on_ready(pid, addr, size):
        return [
            line
            for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
            if int(line.split("-")[0], 16) <= addr < int(line.split()[0].split("-")[1], 16)
        ]

    r = run_harness(
        build, "thp", THRESHOLD, tmp=tmp_path, lib=build.fault, env={"HUGELOAD_FAULT": "1g,2m"}, on_ready=on_ready
    )
    assert_clean(r)
    kb = {k: int(v) for k, v in re.findall(r"VMA (\w+)_kb=(-?\d+)", r.stdout)}
    assert kb["rss"] >= THRESHOLD // 1024 * 9 // 10, r.log
    assert kb["after_dontneed"] < THRESHOLD // 1024 // 10, r.log
    assert kb["locked"] >= THRESHOLD // 1024 * 9 // 10, r.log
    ((line,),) = r.ready
    if kernel_names_anon_vmas():
        assert line.endswith("[anon:hugeload:malloc]"), line
    assert [(x["page"], x["fill"]) for x in r.regions] == [("THP", "alloc")], r.log


@pytest.mark.kernel
def test_mapping_in_a_given_back_hole_is_owned_by_the_new_region(build, model, pools, tmp_path):
    total = 160 + 4
    pools(P2M, total)
    need = -(-MODEL_SIZE // (2 * MIB))
    env = {
        "HUGELOAD_COPY": "1",
        "HUGELOAD_MIN_FILE_SIZE": "1M",
        "HUGELOAD_PAGE_SIZE": "2m",
        "HUGELOAD_ALLOC_THRESHOLD": "2M",
    }
    r = run_harness(build, "hole", model, 6 * MIB, tmp=tmp_path, env=env, on_ready=lambda *a: pool(P2M))
    assert_clean(r)
    assert "HOLE hit=1" in r.stdout, r.log  # the kernel did put the allocation in the hole
    # The hole: 4 pages of the copy given back; 3 taken by the allocation, and back after its free.
    assert r.ready == [total - need + 1, total - need + 4], r.log
    assert pool(P2M) == total  # every page back: nothing swallowed by the old region


@pytest.mark.kernel
def test_private_maps_never_write_a_hugetlbfs_file(build, model, pools, hugetlbfs, tmp_path):
    pools(P2M, 160)
    mnt = hugetlbfs("2M")
    state = tmp_path / "state"
    staged = stage(model, mnt, state, 2 * MIB)
    before = staged.read_bytes()[:8192]
    # The program maps the hugetlbfs file itself, opened O_RDWR, private and read-only, then mprotects it.
    r = run_harness(build, "privw", staged, tmp=tmp_path)
    assert r.rc == 0 and "ERROR" not in r.stdout, r.log
    assert "file_changed=0" in r.stdout, r.log
    # The same through the redirect: the staged copy is shared by every engine.
    r = run_harness(build, "privw", model, tmp=tmp_path)
    assert "file_changed=0" in r.stdout, r.log
    assert staged.read_bytes()[:8192] == before
    assert [x["fill"] for x in r.regions] == ["staged"], r.log


@pytest.mark.kernel
def test_a_1g_copy_is_private_and_forked_children_read_it(build, model, pools, tmp_path):
    """1 GB copies live in a memfd mapped shared; the program's mprotect(PROT_WRITE) of its
    private map succeeds as the kernel's would (the unit goes to ordinary memory first), its
    write stays private, and a forked child reads the pages with no spare page in the pool."""
    pools(P1G, 1)
    env = {"HUGELOAD_COPY": "1", "HUGELOAD_MIN_FILE_SIZE": "1M", "HUGELOAD_PAGE_SIZE": "1g"}
    before = model.read_bytes()[:8192]
    r = run_harness(build, "privw", model, tmp=tmp_path, env=env)
    assert r.rc == 0 and "ERROR" not in r.stdout, r.log
    assert "PRIVW mprotect=0 file_changed=0 child_ok=1" in r.stdout, r.log
    assert [(x["page"], x["fill"]) for x in r.regions] == [("1G", "copy")], r.log
    assert model.read_bytes()[:8192] == before
    assert pool(P1G) == 1


@pytest.mark.kernel
@pytest.mark.parametrize("how", ["", "--dontfork", "--wipeonfork"])
def test_forked_child_writes_with_no_spare_pages(build, pools, tmp_path, how):
    """Python multiprocessing and prefork servers write to inherited buffers: never SIGBUS."""
    pools(P2M, THRESHOLD // (2 * MIB))  # exactly the allocation: no spare page for copy-on-write
    r = run_harness(build, "forkwrite", THRESHOLD, *([how] if how else []), tmp=tmp_path)
    assert_clean(r)
    assert "FORKWRITE ok" in r.stdout, r.log
    parent = [x for x in r.regions if x["bytes"] == str(THRESHOLD)]
    assert [x["page"] for x in parent] == ["2M"], r.log  # the parent did get hugetlb pages
    assert pool(P2M) == THRESHOLD // (2 * MIB)


@pytest.mark.kernel
def test_forked_children_write_to_a_1g_allocation_with_no_spare_page(build, pools, tmp_path):
    """The kernel here drops a private 1 GB page's entry from about half the children at
    fork (scripts/repro/fork-1g.c); the library's memfd-backed 1 GB pages must not care.
    Four children one after another: a regression fails this with probability ~15/16."""
    pools(P1G, 1)
    r = run_harness(build, "forkwrite", GIB, "--forks", "4", tmp=tmp_path, timeout=180)
    assert_clean(r)
    assert "FORKWRITE ok" in r.stdout, r.log
    assert [x["page"] for x in r.regions if x["bytes"] == str(GIB)] == ["1G"], r.log
    assert pool(P1G) == 1


@pytest.mark.kernel
def test_shrinking_a_1g_allocation_gives_the_page_back(build, pools, tmp_path):
    """1 GB pages live in a memfd: giving a unit back must punch it out of the file."""
    pools(P1G, 2)  # skips when the kernel gives fewer
    r = run_harness(
        build,
        "shrink",
        2 * GIB,
        GIB + 64 * MIB,
        tmp=tmp_path,
        timeout=180,
        env={"HUGELOAD_PAGE_SIZE": "1g"},
        on_ready=lambda *a: pool(P1G),
    )
    assert_clean(r)
    assert [x["page"] for x in r.regions if x["bytes"] == str(2 * GIB)] == ["1G"], r.log
    assert r.ready == [0, 0], r.log  # 1 GiB + 64 MiB still needs both pages
    r = run_harness(
        build,
        "shrink",
        2 * GIB,
        GIB - 64 * MIB,
        tmp=tmp_path,
        timeout=180,
        env={"HUGELOAD_PAGE_SIZE": "1g"},
        on_ready=lambda *a: pool(P1G),
    )
    assert_clean(r)
    assert r.ready == [0, 1], r.log  # the second page is back in the pool while mapped
    assert pool(P1G) == 2


@pytest.mark.kernel
def test_shrinking_realloc_gives_the_tail_back(build, pools, tmp_path):
    pools(P2M, 160)
    r = run_harness(build, "shrink", 200 * MIB, 70 * MIB, tmp=tmp_path, on_ready=lambda *a: pool(P2M))
    assert_clean(r)
    assert r.ready == [160 - 100, 160 - 35], r.log
    assert pool(P2M) == 160


@pytest.mark.kernel
def test_failed_prefault_falls_back_instead_of_sigbus(build, pools, tmp_path):
    pools(P2M, 64)
    r = run_harness(build, "alloc", THRESHOLD, tmp=tmp_path, lib=build.fault, env={"HUGELOAD_FAULT": "populate"})
    assert_clean(r)
    assert r.stderr.count("hugeload: pre-faulting 2 MB pages failed") == 1, r.log
    assert {x["page"] for x in r.regions if x["fill"] == "alloc"} <= {"THP", "4K"}, r.log
    assert pool(P2M) == 64


@pytest.mark.kernel
def test_hostile_file_names_are_staged_correctly(build, model, pools, hugetlbfs, tmp_path):
    pools(P2M, 160)
    mnt = hugetlbfs("2M")
    state = tmp_path / "state"
    src = tmp_path / "mo del\n1 2 3 4 5 6 7\t%41.bin"
    os.link(model, src)
    staged = stage(src, mnt, state, 2 * MIB, name="st aged\nfake 1 2 3 4 5 6 %2Fetc%2Fpasswd%.bin")
    (entry,) = redirects.read(state)
    assert entry.staged_path == str(staged)
    assert len((state / "store/redirects").read_text().splitlines()) == 2  # header + one line
    r = run_harness(build, "map", src, tmp=tmp_path)
    assert_clean(r)
    assert [(x["page"], x["fill"]) for x in r.regions] == [("2M", "staged")], r.log
    assert "%0A" in r.regions[0]["what"]


@pytest.mark.kernel
def test_untrusted_index_or_staged_file_is_ignored(build, model, pools, hugetlbfs, tmp_path):
    pools(P2M, 160)
    mnt = hugetlbfs("2M")
    state = tmp_path / "state"
    staged = stage(model, mnt, state, 2 * MIB)
    env = {"HUGELOAD_MIN_FILE_SIZE": "1M"}
    os.chmod(state / "store/redirects", 0o664)
    r = run_harness(build, "map", model, "--cycles", "2", tmp=tmp_path, env=env)
    assert_clean(r)
    assert [x["fill"] for x in r.regions] == ["none"] * 2, r.log
    assert r.stderr.count("writable by group or others: ignored") == 1, r.log
    os.chmod(state / "store/redirects", 0o644)
    os.chmod(staged, 0o620)
    r = run_harness(build, "map", model, tmp=tmp_path, env=env)
    assert [x["fill"] for x in r.regions] == ["none"], r.log
    assert r.stderr.count(f"staged copy {staged} is not owned by root or is writable") == 1, r.log


@pytest.mark.kernel
def test_model_replaced_with_its_old_mtime_is_not_served_stale(build, model, pools, hugetlbfs, tmp_path):
    pools(P2M, 160)
    mnt = hugetlbfs("2M")
    state = tmp_path / "state"
    src = tmp_path / "replaced.bin"
    shutil.copyfile(model, src)
    stage(src, mnt, state, 2 * MIB)
    env = {"HUGELOAD_MIN_FILE_SIZE": "1M"}
    r = run_harness(build, "map", src, tmp=tmp_path, env=env)
    assert [x["fill"] for x in r.regions] == ["staged"], r.log
    st = os.stat(src)
    with open(src, "r+b") as f:  # same inode, same size, new content ...
        f.seek(4096)
        f.write(b"new!")
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))  # ... and the old mtime put back
    assert os.stat(src).st_mtime_ns == st.st_mtime_ns and os.stat(src).st_ctime_ns != st.st_ctime_ns
    r = run_harness(build, "map", src, tmp=tmp_path, env=env)
    assert_clean(r)  # the harness compares the mapping with pread: the new content
    assert [(x["page"], x["fill"]) for x in r.regions] == [("4K", "none")], r.log


@pytest.mark.kernel
def test_node_local_copy_is_chosen(build, model, pools, hugetlbfs, tmp_path):
    """An index with a copy per node: the process's node's copy; HUGELOAD_NODE picks another; a missing
    node falls back."""
    pools(P2M, 2 * 160)
    mnt = hugetlbfs("2M")
    state = tmp_path / "state"
    n1 = stage(model, mnt, state, 2 * MIB, name="copy-node1")
    n0 = stage(model, mnt, state, 2 * MIB, name="copy-node0")
    write_index(state, [(model, n1, 1), (model, n0, 0)])
    cpu_nodes = {int(d.name[4:]) for d in Path("/sys/devices/system/node").glob("node[0-9]*")}
    if cpu_nodes != {0}:
        pytest.skip("this test assumes a one-node machine (node 0)")

    def on_ready(pid, addr, size):
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= addr < hi:
                return line.split(maxsplit=5)[5]

    r = run_harness(build, "map", model, "--pause", tmp=tmp_path, on_ready=on_ready)
    assert_clean(r)
    assert r.ready == [str(n0)], r.log
    assert "hugeload: " not in r.stderr, r.log
    r = run_harness(build, "map", model, "--pause", tmp=tmp_path, on_ready=on_ready, env={"HUGELOAD_NODE": "1"})
    assert_clean(r)
    assert r.ready == [str(n1)], r.log
    write_index(state, [(model, n1, 1)])
    r = run_harness(build, "map", model, "--pause", "--cycles", "2", tmp=tmp_path, on_ready=on_ready)
    assert_clean(r)
    assert r.ready == [str(n1)], r.log
    assert r.stderr.count("hugeload: no copy of model.bin on node 0; using node 1") == 1, r.log


# ---------------------------------------------------------------- issue 20: one discipline for slow paths


def test_every_frame_is_under_1_kb(build, tmp_path):
    """Every function of the library keeps its frame under 1 KB (gcc -fstack-usage), with no
    variable-size frame: mmap() of a 4 MB file used to take 13 KB, and a thread with a 16 KB
    stack crashed.  (tests/difftest runs each interposer on a 16 KB stack too.)"""
    cc = shutil.which("cc") or shutil.which("gcc")
    for c in sorted(build.src.glob("*.c")):
        subprocess.run(
            [cc, "-O2", "-std=gnu11", "-fPIC", "-fvisibility=hidden", "-pthread", "-fstack-usage", "-c", str(c)],
            cwd=tmp_path,
            check=True,
        )
    frames = []
    for su in tmp_path.glob("*.su"):
        for line in su.read_text().splitlines():
            where, size, kind = line.rsplit("\t", 2)
            frames.append((int(size), kind, where))
    assert len(frames) > 50, frames
    big = [f for f in frames if f[0] >= 1024 or "dynamic" in f[1] and "bounded" not in f[1]]
    assert not big, big


# libc's doors to the kernel: the library reaches them only through os.c (hl_os_*, r_*), so one
# file says how it talks to the kernel and the fake OS of tests/native can stand in for it
KERNEL_CALLS = frozenset(
    [
        "mmap",
        "mmap64",
        "munmap",
        "mremap",
        "mprotect",
        "madvise",
        "posix_madvise",
        "msync",
        "mlock",
        "munlock",
        "mincore",
        "open",
        "open64",
        "openat",
        "creat",
        "close",
        "read",
        "write",
        "pread",
        "pread64",
        "pwrite",
        "pwrite64",
        "fstat",
        "fstat64",
        "stat",
        "stat64",
        "lstat",
        "fstatat",
        "fstatfs",
        "statfs",
        "ftruncate",
        "fallocate",
        "fcntl",
        "ioctl",
        "memfd_create",
        "pipe",
        "pipe2",
        "prctl",
        "readlink",
        "unlink",
        "mkdir",
        "syscall",
        "sysconf",
        "sched_getaffinity",
        "getpid",
        "gettid",
        "geteuid",
        "getuid",
        "fork",
        "vfork",
        "clone",
        "kill",
        "raise",
        "sigaction",
        "signal",
        "sigprocmask",
        "pthread_sigmask",
        "pthread_create",
        "pthread_join",
        "pthread_kill",
        "clock_gettime",
        "nanosleep",
        "usleep",
        "getrandom",
        "mbind",
        "set_mempolicy",
        "get_mempolicy",
        "fopen",
        "fdopen",
        "fread",
        "fwrite",
        "fprintf",
        "dprintf",
        "perror",
    ]
)


def test_only_os_c_talks_to_the_kernel(build, tmp_path):
    """Issue 20, deliver 3: no part of the library but os.c calls a libc function that enters the
    kernel (each object's undefined symbols, as the linker sees them)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    calls = {}
    for c in sorted(build.src.glob("*.c")):
        obj = tmp_path / f"{c.stem}.o"
        subprocess.run(
            [cc, "-O2", "-std=gnu11", "-fPIC", "-fvisibility=hidden", "-pthread", "-c", str(c), "-o", str(obj)],
            check=True,
        )
        nm = subprocess.run(["nm", "-u", str(obj)], capture_output=True, text=True, check=True).stdout
        calls[c.name] = {line.split()[-1].split("@")[0] for line in nm.splitlines() if line.strip()}
    assert calls["os.c"] & KERNEL_CALLS, calls["os.c"]  # the check sees what os.c calls
    others = {name: sorted(used & KERNEL_CALLS) for name, used in calls.items() if name != "os.c"}
    assert not any(others.values()), others


def lockprobe_run(build, model, tmp_path, lib, env):
    """The harness's lockprobe mode with lockprobe.so preloaded after the library."""
    r = run_harness(build, "lockprobe", model, tmp=tmp_path, lib=f"{lib} {build.probe}", env=env, timeout=300)
    m = re.search(r"LOCKPROBE violations=(\d+) sysreads=(\d+)", r.stdout)
    assert r.rc == 0 and m, r.log
    return int(m.group(1)), int(m.group(2)), r


def test_slow_paths_hold_no_lock_across_munmap_or_sys_reads(build, model, tmp_path):
    """With every huge page size failing (fault build): no munmap, big memset/memcpy or /sys read
    while the library's lock is held, and the pools' free counts are read for the first warnings
    only, not on every fallback (they were read twice per allocation)."""
    env = {"HUGELOAD_FAULT": "1g,2m", "HUGELOAD_PAGE_SIZE": "1g", "HUGELOAD_COPY": "1", "HUGELOAD_FILES": "*.bin"}
    violations, sysreads, r = lockprobe_run(build, model, tmp_path, build.fault, env)
    assert violations == 0, r.log
    assert sysreads <= 2, r.log


@pytest.mark.kernel
def test_zeroing_and_real_munmaps_run_outside_the_lock(build, model, pools, tmp_path):
    """On real 2 MB pages: MADV_DONTNEED on an allocation is a memset (a dropped hugetlb page would
    need a new one), and it runs with the lock released; so does the real munmap of a piece of a
    range nobody owns any more."""
    pools(P2M, 340)
    env = {"HUGELOAD_PAGE_SIZE": "2m", "HUGELOAD_COPY": "1", "HUGELOAD_FILES": "*.bin"}
    violations, _, r = lockprobe_run(build, model, tmp_path, build.lib, env)
    assert violations == 0, r.log
    assert pool(P2M) == 340


def test_report_file_is_never_one_another_user_can_steer(build, tmp_path):
    """HUGELOAD_REPORT (hugeload run --report) is opened O_NOFOLLOW|O_CLOEXEC and used only when it is
    this user's regular file, with one link and no write for others (issue 21): the library runs as
    root inside engines, and a report path in a shared directory must not become a write elsewhere."""
    env = {"HUGELOAD_FAULT": "1g,2m"}
    target = tmp_path / "precious"
    target.write_text("keep\n")
    cases = {}
    link = tmp_path / "report-link"
    link.symlink_to(target)
    cases["symlink"] = link
    foreign = tmp_path / "report-foreign"
    foreign.write_text("")
    os.chown(foreign, 65534, 65534)
    cases["another user's file"] = foreign
    open_to_all = tmp_path / "report-666"
    open_to_all.write_text("")
    os.chmod(open_to_all, 0o666)
    cases["writable by others"] = open_to_all
    hard = tmp_path / "report-hardlink"
    os.link(target, hard)
    cases["hard link"] = hard
    for why, path in cases.items():
        r = run_harness(
            build, "alloc", THRESHOLD, tmp=tmp_path, lib=build.fault, env={**env, "HUGELOAD_REPORT": str(path)}
        )
        assert r.rc == 0, r.log
        assert target.read_text() == "keep\n", why
        assert "hugeload: report pid=" not in (path.read_text() if not path.is_symlink() else ""), why
        assert "hugeload: report pid=" in r.stderr, (why, r.log)  # it went to stderr instead, with a warning
    fresh = tmp_path / "report-new"
    r = run_harness(
        build, "alloc", THRESHOLD, tmp=tmp_path, lib=build.fault, env={**env, "HUGELOAD_REPORT": str(fresh)}
    )
    assert "hugeload: report pid=" in fresh.read_text(), r.log
    assert fresh.stat().st_mode & 0o777 == 0o600 and fresh.stat().st_uid == os.geteuid()


def test_overrides_linked_in(build, tmp_path):
    """tests/native/test_override.c: cases a program cannot reach from outside (issue 20, item 13:
    realloc(p, 0) of a pointer from the bootstrap arena allocated instead of freeing; fork did not
    wait for a lookup in another thread to let go of the redirect index)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    exe = tmp_path / "test_override"
    sources = sorted(str(p) for p in build.src.glob("*.c"))
    subprocess.run(
        [cc, "-O1", "-g", "-std=gnu11", "-pthread", "-I", str(build.src), str(REPO / "tests/native/test_override.c")]
        + sources
        + ["-o", str(exe), "-ldl"],
        check=True,
    )
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60, env={"PATH": os.environ["PATH"]})
    assert r.returncode == 0 and "PASSED" in r.stdout, r.stdout + r.stderr


@pytest.mark.kernel
def test_a_child_that_cannot_copy_keeps_the_parents_1g_pages(build, pools, tmp_path):
    """Issue 20, item 4: a forked child whose copy of a 1 GB allocation fails (no address space for
    it here) keeps reading the parent's memfd pages; the parent must then never punch them out of
    the file when it frees them (the child read zeros, or died of SIGBUS)."""
    pools(P1G, 1)
    r = run_harness(build, "forkfail", GIB, tmp=tmp_path, timeout=180, env={"HUGELOAD_PAGE_SIZE": "1g"})
    assert r.rc == 0, r.log
    assert "FORKFAIL child=0" in r.stdout, r.log
    assert [x["page"] for x in r.regions if x["bytes"] == str(GIB)] == ["1G"], r.log
    assert pool(P1G) == 1


@pytest.mark.kernel
def test_a_1g_read_only_copy_gives_each_page_back_as_it_is_unmapped(build, pools, tmp_path):
    """Issue 20, item 4: a read-only 1 GB copy was sealed (remapped from a read-only memfd fd), so
    punching its pages failed (EACCES, unchecked) and a page the program unmapped stayed taken
    until the last one went."""
    pools(P1G, 2)
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(GIB + 256 * MIB)  # sparse: reading it is quick
    env = {"HUGELOAD_COPY": "1", "HUGELOAD_FILES": "big.bin", "HUGELOAD_PAGE_SIZE": "1g"}
    r = run_harness(build, "unmap1g", big, tmp=tmp_path, env=env, timeout=180, on_ready=lambda *a: pool(P1G))
    assert r.rc == 0 and "ERROR" not in r.stdout, r.log
    assert [(x["page"], x["fill"]) for x in r.regions] == [("1G", "copy")], r.log
    assert r.ready == [0, 1], r.log  # the second page is back as soon as the program unmapped it
    assert pool(P1G) == 2


@pytest.mark.kernel
def test_the_kernel_refuses_what_it_refuses_on_staged_and_hugetlbfs_maps(build, model, pools, hugetlbfs, tmp_path):
    """Issue 20, item 10: a map of an O_WRONLY or O_PATH fd fails (EACCES, EBADF); the old library
    reopened staged and hugetlbfs files by path and the map succeeded."""
    pools(P2M, 2 * 160)
    mnt = hugetlbfs("2M")
    state = tmp_path / "state"
    staged = stage(model, mnt, state, 2 * MIB)
    expected = run_harness(build, "accmode", model, tmp=tmp_path, preload=False)
    assert "ACCMODE wronly=13 path=9" in expected.stdout, expected.log
    for path in (model, staged):  # through the redirect index, and the hugetlbfs file itself
        r = run_harness(build, "accmode", path, tmp=tmp_path, env={"HUGELOAD_MIN_FILE_SIZE": "1M"})
        assert r.rc == 0 and "ACCMODE wronly=13 path=9" in r.stdout, r.log
