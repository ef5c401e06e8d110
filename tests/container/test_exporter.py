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
    assert plan_pressure.releasable_owners(owners, lambda o: o == "run:1") == ["reserve", "run:2", "bench:3"]


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


# ---------------------------------------------------------------- families, keys, walks (fixture trees)

MACHINES = REPO / "tests" / "fixtures" / "machines"


def test_pools_follow_node_exporter_conventions():
    """System pools and node pools are two families: no node="all" beside per-node series,
    so a sum() over a family counts every page once."""
    m = samples(exporter.render(str(MACHINES / "numa2-1g"), state_dir="/nonexistent-hugeload-state"))
    assert not [k for k in m if ("node", "all") in k[1]]
    system = value(m, "hugeload_pool_pages", page_size="1G", state="total")
    per_node = [
        v for (name, labels), v in m.items() if name == "hugeload_node_pool_pages" and ("state", "total") in labels
    ]
    assert system == 32 and sorted(per_node) == [0, 0, 16, 16]  # 1G: 16 + 16; 2M: 0 + 0
    assert (
        sum(
            v
            for (name, labels), v in m.items()
            if name == "hugeload_node_pool_pages" and ("page_size", "1G") in labels and ("state", "total") in labels
        )
        == system
    )


def fake_proc(root: Path, pid: int, name: str, hugetlb_kb: int) -> None:
    d = root / "proc" / str(pid)
    d.mkdir(parents=True)
    (d / "status").write_text(
        f"Name:\t{name}\nUmask:\t0022\nState:\tS (sleeping)\nPid:\t{pid}\nVmPTE:\t  12 kB\n"
        f"HugetlbPages:\t{hugetlb_kb:8d} kB\nThreads:\t1\n"
    )
    (d / "maps").write_text("7f0000000000-7f0000200000 rw-s 00000000 00:2f 1234 /dev/hugepages/x (deleted)\n")


def test_status_is_read_by_line_key_not_by_substring(tmp_path):
    """A process may name itself "HugetlbPages: 9 kB": its Name line is not its HugetlbPages line."""
    root = fixture_tree(tmp_path, 1.0)
    fake_proc(root, 100, "HugetlbPages:", 0)
    fake_proc(root, 101, "HugetlbPages: 9", 2048)
    fake_proc(root, 102, "kB HugetlbPages", 0)
    procs, complete = exporter.huge_page_procs(str(root))
    assert complete and [(p.pid, p.comm, p.hugetlb_kb) for p in procs] == [(101, "HugetlbPages: 9", 2048)]
    assert procs[0].files == {(os.makedev(0, 0x2F), 1234)}
    m = samples(exporter.render(str(root), state_dir=tmp_path / "state"))
    assert value(m, "hugeload_process_hugetlb_bytes", pid="101", comm="HugetlbPages: 9") == 2048 * 1024


def test_a_walk_stops_at_its_budget(tmp_path):
    root = fixture_tree(tmp_path, 1.0)
    for pid in range(100, 110):
        fake_proc(root, pid, "x", 2048)
    snap = exporter.snapshot(str(root), tmp_path / "state", budget_s=0)
    assert not snap.complete and len(snap.procs) < 10
    assert exporter.snapshot(str(root), tmp_path / "state").complete
    cache = exporter.SnapshotCache(str(root), tmp_path / "state", max_age=0, budget_s=0)
    from prometheus_client import generate_latest

    m = samples(generate_latest(exporter.registry(str(root), tmp_path / "state", cache=cache)).decode())
    assert value(m, "hugeload_scrape_complete") == 0


def test_concurrent_scrapes_share_one_walk(tmp_path, monkeypatch):
    """Scrapes that arrive while a walk runs wait for it: eight at once cost one walk."""
    import threading

    root = fixture_tree(tmp_path, 1.0)
    real, walks = exporter.snapshot, []

    def slow_snapshot(*a, **kw):
        walks.append(1)
        time.sleep(0.5)
        return real(*a, **kw)

    monkeypatch.setattr(exporter, "snapshot", slow_snapshot)
    cache = exporter.SnapshotCache(str(root), tmp_path / "state", max_age=5)
    got = []
    threads = [threading.Thread(target=lambda: got.append(cache.get())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(walks) == 1 == cache.walks and len(got) == 8 and len({id(g) for g in got}) == 1
    cache.max_age = 0
    cache.get()
    assert len(walks) == 2


def test_listen_defaults_to_loopback():
    from hugeload.cli.cmd_exporter import exposure, parse_listen

    assert parse_listen(":9464") == ("127.0.0.1", 9464)
    assert parse_listen("0.0.0.0:9464") == ("0.0.0.0", 9464)
    assert parse_listen("[::]:9464") == ("::", 9464)
    assert exposure("127.0.0.1") == exposure("::1") == "loopback only"
    assert exposure("0.0.0.0").startswith("ALL addresses") and exposure("::").startswith("ALL addresses")


# ---------------------------------------------------------------- the live machine


def listening(port: int) -> list[str]:
    """Local addresses of the LISTEN sockets on `port` (/proc/net/tcp and tcp6, state 0A)."""
    out = []
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            addr, _, p = f[1].rpartition(":")
            if f[3] == "0A" and int(p, 16) == port:
                out.append(addr)
    return out


def start_exporter(*args) -> tuple[subprocess.Popen, str]:
    srv = subprocess.Popen([*exe(), "exporter", *args], stderr=subprocess.PIPE, text=True)
    return srv, srv.stderr.readline()


def stop(srv: subprocess.Popen) -> int:
    srv.terminate()
    return srv.wait(timeout=30)


@pytest.mark.parametrize(
    "listen,words,address",
    [(":{}", "loopback only", "0100007F"), ("0.0.0.0:{}", "ALL addresses", "00000000")],
)
def test_listen_binds_what_it_says(listen, words, address, state_dir):
    port = free_port()
    srv, line = start_exporter("--listen", listen.format(port))
    try:
        assert "serving" in line and words in line, line
        assert listening(port) == [address]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
            assert r.status == 200
    finally:
        assert stop(srv) == 0


def test_a_silent_client_is_dropped_and_others_are_served(state_dir):
    """A client that connects and sends nothing holds a thread only for --request-timeout;
    scrapes go on meanwhile."""
    port = free_port()
    srv, line = start_exporter("--listen", f"127.0.0.1:{port}", "--request-timeout", "1")
    try:
        assert "serving" in line
        idle = socket.create_connection(("127.0.0.1", port), timeout=30)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
            assert r.status == 200
        t0 = time.monotonic()
        assert idle.recv(1) == b""  # closed by the server
        assert time.monotonic() - t0 < 10
        idle.close()
    finally:
        assert stop(srv) == 0


def test_concurrent_http_scrapes_cost_one_walk(state_dir):
    import concurrent.futures

    port = free_port()
    srv, line = start_exporter("--listen", f"127.0.0.1:{port}", "--cache-seconds", "60")
    try:
        assert "serving" in line

        def scrape(_):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60) as r:
                return value(samples(r.read().decode()), "hugeload_scrape_walks_total")

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            walks = list(pool.map(scrape, range(8)))
        assert walks == [1] * 8
    finally:
        assert stop(srv) == 0


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
            assert value(m, "hugeload_pool_pages", page_size="2M", state=state) == sys_int(P2M / f)
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
        assert value(m, "hugeload_scrape_complete") == 1
        # The per-node family adds up to the system's pool: nothing counted twice.
        nodes = [
            v
            for (n, lb), v in m.items()
            if n == "hugeload_node_pool_pages" and ("page_size", "2M") in lb and ("state", "total") in lb
        ]
        assert not nodes or sum(nodes) == sys_int(P2M / "nr_hugepages")
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


NAMED_CHILD = (
    "import ctypes, mmap, os, sys\n"
    "ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)  # PR_SET_NAME\n"
    "m = None\n"
    "if sys.argv[2]:\n"
    "    fd = os.open(sys.argv[2], os.O_RDONLY)\n"
    "    m = mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ)\n"
    "    sum(m[i] for i in range(0, len(m), 2 << 20))\n"
    "print('ready', flush=True)\n"
    "sys.stdin.read()\n"
)


@pytest.mark.kernel
def test_a_process_named_like_a_status_key_does_not_break_scrapes(staged_2m):
    """Real processes rename themselves with prctl(PR_SET_NAME): one "HugetlbPages:" that maps
    the staged model's 2 MB pages, one "HugetlbPages: 9" that maps none.  The scrape reads
    each by its own HugetlbPages line."""
    kids = [
        subprocess.Popen(
            [sys.executable, "-c", NAMED_CHILD, name, path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for name, path in (("HugetlbPages:", staged_2m["path"]), ("HugetlbPages: 9", ""))
    ]
    try:
        for k in kids:
            assert k.stdout.readline().strip() == "ready"
        assert [Path(f"/proc/{k.pid}/comm").read_text().strip() for k in kids] == ["HugetlbPages:", "HugetlbPages: 9"]
        m = samples(exporter.render())
        assert value(m, "hugeload_process_hugetlb_bytes", pid=str(kids[0].pid), comm="HugetlbPages:") == 6 << 20
        assert not [k for k in m if ("pid", str(kids[1].pid)) in k[1]]
        assert value(m, "hugeload_model_mappers", model="e") == 1
    finally:
        for k in kids:
            k.stdin.close()
            k.wait(timeout=30)


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
