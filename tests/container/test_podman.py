"""llama-server in a real podman container, on a model staged in 1 GB pages.

The container runs exactly what `hugeload container-args --engine podman` prints (the
staged mount and the preload library bind-mounted read-only, LD_PRELOAD and HUGELOAD_*),
plus what this machine needs (runc, ulimits under the VM's hard limits) and a unix socket:
the container has no network at all (`--network none`), and llama-server listens on a
socket in a bind-mounted directory that only the host test can reach.  That keeps the
engine off every TCP port, loopback included, and needs no client inside the image.

Asserted, from the host:
  - it answers a completion over the socket;
  - its model mapping has KernelPageSize 1 GB (the container's process's smaps);
  - a host process maps the same staged page: the 1G pool's free count does not move when
    the container maps it (one set of pages, not two);
  - the preload library works inside: on a CPU that llama.cpp repacks Q4_0 for (AVX2, read
    from /proc/cpuinfo), the CPU_REPACK heap copy is an anonymous huge page mapping of about
    the size the plan predicts, and the 2M pool pays for it; elsewhere no such copy exists.
Pages: 1 x 1 GB (the staged model) and about 150 x 2 MB (the copy), all given back.
"""

import contextlib
import http.client
import json
import shlex
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from hugeload.engines import find_llama
from hugeload.plan import container as plan

pytestmark = [pytest.mark.kernel, pytest.mark.llama, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
P1G = Path("/sys/kernel/mm/hugepages/hugepages-1048576kB")
P2M = Path("/sys/kernel/mm/hugepages/hugepages-2048kB")
SERVER = find_llama("llama-server")
PODMAN = shutil.which("podman")
RUN_OPTS = ["--network", "none", "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768"]


def free(pool: Path) -> int:
    return int((pool / "free_hugepages").read_text())


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 60):
        super().__init__("localhost", timeout=timeout)
        self.sock_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.sock_path)


def request(sock: str, path: str, body: dict | None = None, timeout: float = 60) -> dict:
    conn = UnixHTTP(sock, timeout)
    try:
        conn.request(
            "POST" if body is not None else "GET",
            path,
            json.dumps(body) if body is not None else None,
            {"Content-Type": "application/json"},
        )
        r = conn.getresponse()
        return json.loads(r.read() or b"{}")
    finally:
        conn.close()


def smaps(pid: int) -> list[dict]:
    out = []
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and not head[0].endswith(":"):
                lo, hi = head[0].split("-")
                out.append({"size": int(hi, 16) - int(lo, 16), "perms": head[1], "path": " ".join(head[5:])})
            elif out and line.rstrip().endswith(" kB"):
                k, v = line.split(":", 1)
                out[-1][k] = int(v.split()[0])
    return out


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for t in Path(f"/proc/{p}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo += [int(c) for c in t.read_text().split()]
    return out


def podman(*args, timeout=120, check=True) -> subprocess.CompletedProcess:
    r = subprocess.run([PODMAN, "--runtime", "runc", *args], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode:
        raise AssertionError(f"podman {' '.join(args[:3])} failed ({r.returncode}): {r.stderr[-2000:]}")
    return r


@pytest.fixture(scope="module")
def image():
    if PODMAN is None:
        pytest.skip("podman is not installed (scripts/test.sh installs it: apt-get install podman runc)")
    if SERVER is None:
        pytest.skip("llama-server not found: build it with scripts/get-llama.sh")
    tag = f"localhost/hugeload-test-{uuid.uuid4().hex[:8]}:local"
    r = subprocess.run(
        [str(REPO / "scripts/container-image.sh"), "--tag", tag, "--llama-bin", str(SERVER.parent)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if r.returncode:
        pytest.skip(f"cannot build the image with podman here: {r.stderr.strip().splitlines()[-1:]}")
    try:
        probe = podman("run", "--rm", *RUN_OPTS, tag, "llama-server", "--version", check=False, timeout=120)
        if probe.returncode:
            pytest.skip(f"podman cannot run a container here: {(probe.stderr.strip().splitlines() or ['?'])[-1]}")
        yield tag
    finally:
        subprocess.run([str(REPO / "scripts/container-image.sh"), "--tag", tag, "--remove"], timeout=120)


@pytest.fixture
def q4_model(tmp_path, hugeload_cli):
    path = tmp_path / "tiny-q4.gguf"
    r = hugeload_cli("make-model", path, "--size", "300M", "--type", "Q4_0")
    assert r.returncode == 0, r.stderr
    return path


def test_llama_server_in_podman_on_staged_1g_pages(needs_root, state_dir, image, q4_model, hugeload_cli, tmp_path):
    from hugeload import runner
    from hugeload.probe.cpu import read_cpu

    flags = read_cpu().flags
    repack = runner.predict_buffers(str(q4_model)).heap_bytes
    name = f"hugeload-test-{uuid.uuid4().hex[:8]}"
    sockdir = tmp_path / "sock"
    sockdir.mkdir()
    sock = str(sockdir / "llama.sock")
    host_proc = None
    reserved_2m = False
    try:
        # --pin both: the container maps the staged copy and puts its heap copy in huge pages (on
        # AVX2 plain --reserve refuses a Q4_0 model, whose weights llama.cpp reads from its heap copy)
        r = hugeload_cli(
            "load", q4_model, "--name", "tiny", "--page-size", "1g", "--reserve", "--pin", "both", "--json"
        )
        if r.returncode and "gave" in r.stderr:
            pytest.skip(f"no 1 GB page for the model: {r.stderr.strip()}")
        assert r.returncode == 0, r.stderr
        staged = json.loads(r.stdout)["path"]
        if repack:
            need = -(-repack // (2 << 20)) + 4
            r = hugeload_cli("reserve", "--count", need, "--page-size", "2m")
            assert r.returncode == 0, r.stderr
            reserved_2m = True
        # A host process maps and touches the staged page first.
        host_proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                (
                    "import mmap,os,sys,time\n"
                    "f=os.open(sys.argv[1],os.O_RDONLY); m=mmap.mmap(f,0,mmap.MAP_SHARED,mmap.PROT_READ)\n"
                    "s=sum(m[i] for i in range(0,len(m),1<<21)); print('ready',flush=True); time.sleep(600)"
                ),
                staged,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert host_proc.stdout.readline().strip() == "ready"
        free_1g, free_2m = free(P1G), free(P2M)

        out = hugeload_cli(
            "container-args",
            "--engine",
            "podman",
            "--image",
            image,
            "tiny",
            "--",
            "--host",
            "/run/llama/llama.sock",
            "-t",
            "2",
            "-c",
            "256",
            "-np",
            "1",
        )
        assert out.returncode == 0, out.stderr
        argv = shlex.split(out.stdout)
        assert argv[:2] == ["podman", "run"] and "--read-only" in argv
        cmd = [
            "run",
            "-d",
            "--name",
            name,
            *RUN_OPTS,
            "-v",
            f"{sockdir}:/run/llama",
            "-e",
            "HUGELOAD_REPORT=/run/llama/report",
            *argv[2:],
        ]
        podman(*cmd)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError, http.client.HTTPException):
                if request(sock, "/health", timeout=2).get("status") == "ok":
                    break
            state = podman("inspect", "--format", "{{.State.Status}}", name, check=False).stdout.strip()
            assert state in ("running", "created", "configured"), podman("logs", name, check=False).stderr[-3000:]
            time.sleep(0.3)
        else:
            raise AssertionError(
                f"llama-server not healthy in 120 s\n{podman('logs', name, check=False).stderr[-3000:]}"
            )
        done = request(sock, "/completion", {"prompt": "Hello", "n_predict": 4})
        assert done.get("tokens_predicted") == 4 and isinstance(done.get("content"), str), done

        pid = int(podman("inspect", "--format", "{{.State.Pid}}", name).stdout)
        inside = f"{plan.MODELS_INSIDE}/tiny/{q4_model.name}"
        engine = [p for p in descendants(pid) if any(m["path"] == inside for m in smaps(p))]
        assert engine, f"no process of the container maps {inside}"
        maps = smaps(engine[0])
        model_maps = [m for m in maps if m["path"] == inside]
        assert all(m["KernelPageSize"] == 1048576 and m["perms"][3] == "s" for m in model_maps), model_maps
        # One set of pages: the container mapped the page the host process holds, no new one.
        assert free(P1G) == free_1g
        host_maps = [m for m in smaps(host_proc.pid) if m["path"] == staged]
        hugetlb = lambda m: m.get("Shared_Hugetlb", 0) + m.get("Private_Hugetlb", 0)  # noqa: E731
        assert host_maps and host_maps[0]["KernelPageSize"] == 1048576 and hugetlb(host_maps[0]) == 1048576
        # Both map the page: the kernel counts it as shared in each (Shared_Hugetlb), never private.
        assert sum(m.get("Shared_Hugetlb", 0) for m in model_maps) == 1048576, model_maps
        heap = [
            m
            for m in maps
            if m["path"] in ("", "[anon]") or m["path"].startswith(("/anon_hugepage", "/memfd:hugeload:"))
        ]
        huge_heap = [m for m in heap if m.get("KernelPageSize", 4) in (2048, 1048576) and m["size"] >= 64 << 20]
        if "avx2" in flags:
            # llama.cpp repacks Q4_0 on AVX2: the copy is the preload library's huge page allocation.
            assert huge_heap, f"no huge page heap copy in the container; cpu has avx2\n{heap}"
            big = max(m["size"] for m in huge_heap)
            assert 0.9 * repack <= big <= repack + (4 << 20) + (1 << 30) * (big >= 1 << 30), (big, repack)
            assert free_2m - free(P2M) >= 0.9 * repack // (2 << 20)
        else:
            assert repack == 0 and not huge_heap
        podman("stop", "-t", "20", name, timeout=60)
        report = (sockdir / "report").read_text() if (sockdir / "report").exists() else ""
        # The library's own account, written inside the container at exit: the model mapped
        # as it is (direct, 1G), the repack copy from the allocation path in huge pages.
        regions = [
            dict(kv.split("=", 1) for kv in line.split()[2:] if "=" in kv)
            for line in report.splitlines()
            if line.startswith("hugeload: region ")
        ]
        model_regions = [g for g in regions if g.get("what") == q4_model.name]
        assert model_regions and all((g["page"], g["fill"]) == ("1G", "direct") for g in model_regions), report
        if "avx2" in flags:
            allocs = [g for g in regions if g.get("fill") == "alloc" and int(g["bytes"]) >= 0.9 * repack]
            assert allocs and allocs[0]["page"] in ("2M", "1G"), report
    finally:
        podman("rm", "-f", "-t", "0", name, check=False, timeout=60)
        if host_proc:
            host_proc.kill()
            host_proc.wait()
        hugeload_cli("clear", "--force")
        if reserved_2m:
            hugeload_cli("release", "--page-size", "2m")
    assert not podman("ps", "-a", "--filter", f"name={name}", "-q").stdout.strip()
