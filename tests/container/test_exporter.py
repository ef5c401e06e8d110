"""`hugeload exporter`: Prometheus metrics checked against /sys and /proc, and the agent's
release under memory pressure (a fixture PSI tree, then a real memory hog)."""

import json
import mmap
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from hugeload import exporter
from hugeload.plan import pressure as plan_pressure

prom = pytest.importorskip("prometheus_client", reason="prometheus_client is in the test extra")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
P2M = Path("/sys/kernel/mm/hugepages/hugepages-2048kB")


def exe() -> list[str]:
    e = REPO / ".venv" / "bin" / "hugeload"
    return [str(e)] if e.exists() else [sys.executable, "-m", "hugeload.cli"]


def samples(text: str) -> dict:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(metrics: dict, name: str, **labels) -> float | None:
    return metrics.get((name, tuple(sorted(labels.items()))))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sys_int(p: Path) -> int:
    return int(p.read_text())


# ---------------------------------------------------------------- pure decisions


def test_pressure_must_hold():
    t = plan_pressure.Thresholds(some_avg10=10, min_available_kb=0, hold_s=30)
    hist = [plan_pressure.Sample(0, 50, 1 << 20), plan_pressure.Sample(20, 50, 1 << 20)]
    assert plan_pressure.should_release(hist, t) == ""
    hist.append(plan_pressure.Sample(31, 60, 1 << 20))
    assert "PSI some avg10=60.00%" in plan_pressure.should_release(hist, t)
    hist.append(plan_pressure.Sample(40, 1, 1 << 20))  # one quiet sample resets the clock
    assert plan_pressure.should_release(hist, t) == ""
    low = plan_pressure.Thresholds(some_avg10=101, min_available_kb=2 << 20, hold_s=0)
    assert "MemAvailable" in plan_pressure.should_release([plan_pressure.Sample(0, None, 1 << 20)], low)


def test_releasable_owners_never_models_or_live_runs():
    owners = ["reserve", "model:llama", "run:1", "run:2", "bench:3"]
    assert plan_pressure.releasable_owners(owners, lambda pid: pid == "1") == ["reserve", "run:2", "bench:3"]


# ---------------------------------------------------------------- a fixture tree


def fixture_tree(tmp_path: Path, psi_avg10: float, pool_total=10, pool_free=10) -> Path:
    root = tmp_path / "root"
    d = root / "sys/kernel/mm/hugepages/hugepages-2048kB"
    d.mkdir(parents=True)
    for k, v in {
        "nr_hugepages": pool_total,
        "free_hugepages": pool_free,
        "resv_hugepages": 0,
        "surplus_hugepages": 0,
        "nr_overcommit_hugepages": 0,
    }.items():
        (d / k).write_text(f"{v}\n")
    (root / "proc/pressure").mkdir(parents=True)
    (root / "proc/pressure/memory").write_text(
        f"some avg10={psi_avg10:.2f} avg60=1.00 avg300=0.50 total=123\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
    )
    (root / "proc/meminfo").write_text("MemTotal: 24000000 kB\nMemAvailable: 20000000 kB\n")
    return root


def write_ledger(state_dir: Path, shares: dict) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "ledger.json").write_text(json.dumps({"shares": {"2048:all": shares}, "mounts": [], "events": []}))


@pytest.mark.parametrize("psi,released", [(55.0, 6), (2.0, 0)])
def test_agent_on_fixture_psi(tmp_path, psi, released, capsys):
    # 10 pages hugeload added: 6 spare (`reserve`), 4 for a staged model that holds them.
    root = fixture_tree(tmp_path, psi, pool_total=10, pool_free=6)
    state = tmp_path / "state"
    write_ledger(state, {"reserve": 6, "model:m": 4})
    out = subprocess.run(
        [
            *exe(),
            "--root",
            str(root),
            "exporter",
            "--once",
            "--release-under-pressure",
            "--hold",
            "0",
            "--psi-threshold",
            "10",
            "--state-dir",
            str(state),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    pool = root / "sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"
    assert sys_int(pool) == 10 - released
    m = samples(out.stdout)
    assert value(m, "hugeload_pressure_released_pages_total", page_size="2M") == released
    assert value(m, "hugeload_memory_pressure") == (1 if released else 0)
    if released:
        assert (
            "memory pressure (memory PSI some avg10=55.00%" in out.stderr
            and "released 6 x 2M pages of 'reserve'" in out.stderr
        )
    shares = json.loads((state / "ledger.json").read_text())["shares"]
    assert shares["2048:all"] == ({"model:m": 4} if released else {"reserve": 6, "model:m": 4})


# ---------------------------------------------------------------- the live machine


@pytest.fixture
def staged_2m(needs_root, state_dir, tmp_path):
    src = tmp_path / "e.gguf"
    src.write_bytes(os.urandom(5 << 20))
    r = subprocess.run(
        [*exe(), "load", str(src), "--page-size", "2m", "--reserve", "--json"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    yield json.loads(r.stdout)
    subprocess.run([*exe(), "clear", "--force"], capture_output=True)


@pytest.mark.kernel
def test_exporter_serves_what_sys_and_proc_say(staged_2m):
    port = free_port()
    path = staged_2m["path"]
    fd = os.open(path, os.O_RDONLY)
    mm = mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ)
    sum(mm[i] for i in range(0, len(mm), 2 << 20))  # fault the pages in: this process maps them
    srv = subprocess.Popen([*exe(), "exporter", "--listen", f"127.0.0.1:{port}"], stderr=subprocess.PIPE, text=True)
    try:
        assert "serving" in srv.stderr.readline()
        t0 = time.perf_counter()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
            body = r.read().decode()
        scrape_s = time.perf_counter() - t0
        m = samples(body)
        for state, f in (("total", "nr_hugepages"), ("free", "free_hugepages"), ("reserved", "resv_hugepages")):
            assert value(m, "hugeload_pool_pages", page_size="2M", node="all", state=state) == sys_int(P2M / f)
        assert value(m, "hugeload_model_pages", model="e", page_size="2M", node="-1") == 3
        assert value(m, "hugeload_model_ready", model="e") == 1
        assert value(m, "hugeload_model_mappers", model="e") == 1
        status = Path(f"/proc/{os.getpid()}/status").read_text()
        hugetlb_kb = int(next(line for line in status.splitlines() if line.startswith("HugetlbPages:")).split()[1])
        assert (
            value(
                m,
                "hugeload_process_hugetlb_bytes",
                pid=str(os.getpid()),
                comm=Path("/proc/self/comm").read_text().strip(),
            )
            == hugetlb_kb * 1024
            == 6 << 20
        )
        assert value(m, "hugeload_scrape_duration_seconds") < scrape_s + 0.5
        # A second exporter on the same port: one line, no traceback, nothing left running.
        dup = subprocess.run(
            [*exe(), "exporter", "--listen", f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=30
        )
        assert dup.returncode == 2 and len(dup.stderr.strip().splitlines()) == 1 and "cannot listen" in dup.stderr
    finally:
        srv.terminate()
        rc = srv.wait(timeout=30)
        mm.close()
        os.close(fd)
    assert rc == 0


@pytest.mark.kernel
def test_scrape_during_unload(staged_2m):
    """Manifests and files vanish while a scrape reads them: values, not a traceback."""
    unload = subprocess.Popen([*exe(), "unload", "e"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    texts = []
    while unload.poll() is None or not texts:
        texts.append(exporter.render())
    unload.wait(timeout=60)
    for t in texts:
        samples(t)
    assert value(samples(exporter.render()), "hugeload_model_ready", model="e") is None


@pytest.mark.kernel
def test_exporter_once_and_bad_input(needs_root, state_dir):
    out = subprocess.run([*exe(), "exporter", "--once"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "hugeload_pool_pages" in out.stdout
    bad = subprocess.run([*exe(), "exporter", "--listen", "nowhere"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


@pytest.mark.kernel
@pytest.mark.slow
def test_agent_releases_idle_pages_under_a_real_memory_hog(needs_root, state_dir):
    """2 MB pages reserved and free; a child takes ~2 GB; the agent, told that MemAvailable
    below (now - 1 GB) is pressure, gives the pages back, counts and logs it."""
    meminfo = dict(line.split(":") for line in Path("/proc/meminfo").read_text().splitlines())
    avail_kb = int(meminfo["MemAvailable"].split()[0])
    if avail_kb < 6 << 20:
        pytest.skip(f"only {avail_kb >> 10} MiB available: the hog needs room")
    r = subprocess.run([*exe(), "reserve", "--count", "64", "--page-size", "2m"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    before = sys_int(P2M / "nr_hugepages")
    hog = agent = None
    try:
        threshold_kb = avail_kb - (1 << 20)
        agent = subprocess.Popen(
            [
                *exe(),
                "exporter",
                "--listen",
                f"127.0.0.1:{free_port()}",
                "--release-under-pressure",
                "--min-available",
                f"{threshold_kb}K",
                "--hold",
                "1",
                "--interval",
                "0.3",
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        assert "serving" in agent.stderr.readline()
        time.sleep(1)
        assert sys_int(P2M / "nr_hugepages") == before, "released without pressure"
        hog = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import mmap,time\nm=mmap.mmap(-1,2<<30)\n"
                "for i in range(0,len(m),4096): m[i]=1\nprint('full',flush=True); time.sleep(60)",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert hog.stdout.readline().strip() == "full"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sys_int(P2M / "nr_hugepages") > before - 64:
            time.sleep(0.2)
        assert sys_int(P2M / "nr_hugepages") == before - 64
    finally:
        if hog:
            hog.kill()
            hog.wait()
        if agent:
            agent.terminate()
            agent.wait(timeout=30)
        log = agent.stderr.read() if agent else ""
        subprocess.run([*exe(), "release", "--page-size", "2m"], capture_output=True)
    assert "MemAvailable" in log and "released 64 x 2M pages of 'reserve'" in log, log
    ledger = json.loads((state_dir / "ledger.json").read_text())
    assert not ledger["shares"]
