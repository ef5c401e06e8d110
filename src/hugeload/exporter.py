"""`hugeload exporter`: Prometheus metrics of the pools, the staged models and who maps them,
and (with --release-under-pressure) the node agent that gives back idle reserved pages.

One walk reads each file once: the pool counters, the store's manifests, /proc/PID/status
of every process (HugetlbPages, found by its line key, tells which processes hold huge
pages) and /proc/PID/maps only of those (probe/procs.py reads both).  A mapping is matched
to a staged file by device and inode, which a container's process shows the same as the
host, whatever path its mount namespace gives the file.

Scrapes are cheap to repeat and safe to expose: a walk is kept for `max_age` seconds and
concurrent scrapes wait for the one walk in progress instead of starting their own; a walk
stops at its time budget (hugeload_scrape_complete then says 0); the server drops a client
that sends nothing within its timeout and refuses connections beyond a small number.
Families follow node_exporter's conventions: system-wide pools and per-node pools are two
families, so a sum() over either counts each page once.
"""

import logging
import os
import threading
import time
from collections import Counter
from typing import NamedTuple

from hugeload.act import ledger, store
from hugeload.act import pools as act_pools
from hugeload.pages import name as page_size_name
from hugeload.plan import pressure as plan_pressure
from hugeload.probe import pools as probe_pools
from hugeload.probe import procs as probe_procs
from hugeload.probe.memory import read_meminfo, read_pressure
from hugeload.units import KiB

log = logging.getLogger("hugeload.agent")

CACHE_SECONDS = 2.0  # a walk serves every scrape that comes within this time
WALK_BUDGET_SECONDS = 10.0  # a walk of /proc stops here (Prometheus' default scrape timeout)
REQUEST_TIMEOUT_SECONDS = 10.0  # a client that sends no request within this is dropped
MAX_CONNECTIONS = 64  # more at once are closed unanswered: threads stay bounded


class Proc(NamedTuple):
    pid: int
    comm: str
    hugetlb_kb: int
    files: frozenset  # (dev, ino) of hugetlb file mappings


def _kb(value: str | None) -> int:
    try:
        return int((value or "0").split()[0])
    except (ValueError, IndexError):
        return 0


def huge_page_procs(root="/", deadline: float | None = None) -> tuple[list[Proc], bool]:
    """Processes holding hugetlb pages, in one walk of /proc, and whether the walk finished
    before `deadline` (time.monotonic())."""
    out: list[Proc] = []
    for pid in probe_procs.pids(root):
        if deadline is not None and time.monotonic() > deadline:
            return out, False
        status = probe_procs.read_status_fields(root, pid, ("Name", "HugetlbPages"))
        kb = _kb(status.get("HugetlbPages"))
        if kb <= 0:
            continue  # none, or gone since the listing
        out.append(Proc(pid, status.get("Name", ""), kb, probe_procs.read_mapped_inodes(root, pid)))
    return out, True


class ModelState(NamedTuple):
    name: str
    page_size_kb: int
    pages: int
    node: int
    ready: bool
    keys: frozenset  # (dev, ino) of its staged files
    split: tuple = ()  # (node, page kB, bytes, pages) per copy and page size: two sizes for a mixed copy


def model_states(state_dir=None) -> list[ModelState]:
    out = []
    for m in store.manifests(state_dir):
        keys, ready = set(), bool(m.files)
        for f in m.files:
            try:
                for path, _, _, _ in f.pieces(m.page_size_kb):  # a copy in mixed page sizes: each part
                    st = os.stat(path)
                    keys.add((st.st_dev, st.st_ino))
            except OSError:  # unloaded while we read: not ready, no mappers
                ready = False
                continue
            ready = ready and store.file_state(f) == "ready"
        split = tuple((c.node, kb, b, n) for c in m.copies for kb, (b, n) in sorted(c.split().items(), reverse=True))
        out.append(ModelState(m.name, m.page_size_kb, m.pages, getattr(m, "node", -1), ready, frozenset(keys), split))
    return out


class Snapshot(NamedTuple):
    pools: list
    models: list[ModelState]
    procs: list[Proc]
    seconds: float
    complete: bool = True  # False: the /proc walk stopped at its time budget


def snapshot(root="/", state_dir=None, budget_s: float | None = WALK_BUDGET_SECONDS) -> Snapshot:
    t0 = time.perf_counter()
    deadline = None if budget_s is None else time.monotonic() + budget_s
    pools = probe_pools.read_pools(root)
    models = model_states(state_dir)
    procs, complete = huge_page_procs(root, deadline)
    return Snapshot(pools, models, procs, time.perf_counter() - t0, complete)


class SnapshotCache:
    """One walk for every scrape within `max_age` seconds.  The lock is held during the walk,
    so scrapes that arrive meanwhile wait for it and share its result: N concurrent scrapes
    cost one walk, not N."""

    def __init__(self, root="/", state_dir=None, max_age: float = CACHE_SECONDS, budget_s=WALK_BUDGET_SECONDS):
        self.root, self.state_dir, self.max_age, self.budget_s = root, state_dir, max_age, budget_s
        self._lock = threading.Lock()
        self._snap: Snapshot | None = None
        self._taken = 0.0
        self.walks = 0

    def get(self) -> Snapshot:
        with self._lock:
            now = time.monotonic()
            if self._snap is None or now - self._taken >= self.max_age:
                self._snap = snapshot(self.root, self.state_dir, self.budget_s)
                self._taken = time.monotonic()
                self.walks += 1
            return self._snap


class Agent:
    """Release under pressure: samples PSI and MemAvailable, and while pressure holds gives
    back the pages of releasable owners (plan/pressure.py), logging and counting each."""

    def __init__(self, thresholds: plan_pressure.Thresholds, root="/", state_dir=None, window_s: float = 600):
        self.t, self.root, self.state_dir, self.window_s = thresholds, root, state_dir, window_s
        self.history: list[plan_pressure.Sample] = []
        self.released: Counter[str] = Counter()  # page size name -> pages
        self.releases = 0
        self.last_reason = ""

    def sample(self, now: float | None = None) -> plan_pressure.Sample:
        p = read_pressure(self.root)
        s = plan_pressure.Sample(
            time.time() if now is None else now,
            p.some_avg10 if p else None,
            read_meminfo(self.root).get("MemAvailable", 0),
        )
        self.history = [h for h in self.history if s.time - h.time <= self.window_s] + [s]
        return s

    def step(self, now: float | None = None) -> list[act_pools.ReleaseResult]:
        self.sample(now)
        reason = plan_pressure.should_release(self.history, self.t)
        self.last_reason = reason
        if not reason:
            return []
        owners = sorted({o for shares in ledger.load(self.state_dir)["shares"].values() for o in shares})
        done = []
        for o in plan_pressure.releasable_owners(owners, lambda o: ledger.Owner.parse(o).alive(self.root)):
            for r in act_pools.release(self.root, None, owner=o, state_dir=self.state_dir):
                if r.released:
                    self.released[page_size_name(r.page_size_kb)] += r.released
                    self.releases += 1
                    done.append(r)
                    log.warning(
                        "memory pressure (%s): released %d x %s pages of %r (pool %d -> %d)",
                        reason,
                        r.released,
                        page_size_name(r.page_size_kb),
                        o,
                        r.before,
                        r.after,
                    )
        return done


def collector(root="/", state_dir=None, agent: Agent | None = None, cache: SnapshotCache | None = None):
    """A prometheus_client collector; each scrape takes the cache's snapshot (default: a fresh
    walk every time, what --once wants)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    cache = cache or SnapshotCache(root, state_dir, max_age=0)

    def pool_states(p):
        return (("total", p.total), ("free", p.free), ("reserved", p.reserved), ("surplus", p.surplus))

    class Collector:
        def collect(self):
            snap = cache.get()
            # node_exporter's convention: the system's pools and each node's are separate
            # families, never a node="all" series beside per-node ones (a sum() would count twice).
            pool = GaugeMetricFamily(
                "hugeload_pool_pages",
                "Huge pages in the system's pool, by state (total, free, reserved = promised to a mapping, surplus)",
                labels=["page_size", "state"],
            )
            node_pool = GaugeMetricFamily(
                "hugeload_node_pool_pages",
                "Huge pages in each NUMA node's pool, by state (total, free, surplus)",
                labels=["page_size", "node", "state"],
            )
            for p in snap.pools:
                for state, v in pool_states(p):
                    if v is None:
                        continue
                    if p.node is None:
                        pool.add_metric([page_size_name(p.page_size_kb), state], v)
                    else:
                        node_pool.add_metric([page_size_name(p.page_size_kb), str(p.node), state], v)
            yield pool
            yield node_pool
            pages = GaugeMetricFamily(
                "hugeload_model_pages", "Huge pages a staged model holds", labels=["model", "page_size", "node"]
            )
            model_bytes = GaugeMetricFamily(
                "hugeload_model_bytes",
                "Bytes of a staged model's copy in pages of this size (two sizes: a copy in mixed page sizes)",
                labels=["model", "page_size", "node"],
            )
            ready = GaugeMetricFamily(
                "hugeload_model_ready", "1 when the staged model is complete and current", labels=["model"]
            )
            mappers = GaugeMetricFamily(
                "hugeload_model_mappers",
                "Processes (containers included) mapping the staged model's pages",
                labels=["model"],
            )
            for m in snap.models:
                for node, kb, nbytes, n in m.split or ((m.node, m.page_size_kb, 0, m.pages),):
                    pages.add_metric([m.name, page_size_name(kb), str(node)], n)
                    model_bytes.add_metric([m.name, page_size_name(kb), str(node)], nbytes)
                ready.add_metric([m.name], 1 if m.ready else 0)
                mappers.add_metric([m.name], sum(1 for p in snap.procs if p.files & m.keys))
            yield pages
            yield model_bytes
            yield ready
            yield mappers
            proc = GaugeMetricFamily(
                "hugeload_process_hugetlb_bytes", "hugetlb memory a process maps (HugetlbPages)", labels=["pid", "comm"]
            )
            for p in snap.procs:
                proc.add_metric([str(p.pid), p.comm], p.hugetlb_kb * KiB)
            yield proc
            yield GaugeMetricFamily(
                "hugeload_scrape_duration_seconds", "Time the last walk took to read /proc and /sys", value=snap.seconds
            )
            yield GaugeMetricFamily(
                "hugeload_scrape_complete",
                "0 when the last walk of /proc stopped at its time budget (process metrics are partial)",
                value=1 if snap.complete else 0,
            )
            yield CounterMetricFamily(
                "hugeload_scrape_walks",
                "Walks of /proc and /sys (scrapes within the cache time share one)",
                value=cache.walks,
            )
            if agent is not None:
                rel = CounterMetricFamily(
                    "hugeload_pressure_released_pages", "Pages given back under memory pressure", labels=["page_size"]
                )
                for size in ("2M", "1G"):
                    rel.add_metric([size], agent.released.get(size, 0))
                yield rel
                yield CounterMetricFamily(
                    "hugeload_pressure_releases", "Releases made under memory pressure", value=agent.releases
                )
                yield GaugeMetricFamily(
                    "hugeload_memory_pressure",
                    "1 while the agent counts memory as under pressure",
                    value=1 if agent.history and plan_pressure.under_pressure(agent.history[-1], agent.t) else 0,
                )

    return Collector()


def registry(root="/", state_dir=None, agent: Agent | None = None, cache: SnapshotCache | None = None):
    from prometheus_client import CollectorRegistry

    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector(root, state_dir, agent, cache))
    return reg


def render(root="/", state_dir=None, agent: Agent | None = None) -> str:
    from prometheus_client import generate_latest

    return generate_latest(registry(root, state_dir, agent)).decode()


def serve(
    host: str,
    port: int,
    reg,
    timeout: float = REQUEST_TIMEOUT_SECONDS,
    max_connections: int = MAX_CONNECTIONS,
):
    """Serve /metrics of `reg` on host:port from a thread; returns the server (shutdown() and
    server_close() stop it).  prometheus_client's own server waits forever on a client that
    sends nothing and starts a thread for every connection: here a client has `timeout`
    seconds to send its request and be answered, and connections beyond `max_connections`
    are closed at once."""
    import socket
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    from prometheus_client import make_wsgi_app

    slots = threading.BoundedSemaphore(max_connections)

    class Handler(WSGIRequestHandler):
        def setup(self):
            self.timeout = timeout  # StreamRequestHandler sets it on the socket
            super().setup()

        def log_message(self, format, *args):  # noqa: A002 (the base class's name)
            pass

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True
        address_family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]

        def process_request(self, request, client_address):
            if not slots.acquire(blocking=False):
                self.shutdown_request(request)
                return
            super().process_request(request, client_address)

        def handle_error(self, request, client_address):
            log.debug("exporter: dropped %s", client_address, exc_info=True)  # a timeout, a reset: not ours

        def process_request_thread(self, request, client_address):
            try:
                super().process_request_thread(request, client_address)
            finally:
                slots.release()

    server = make_server(host, port, make_wsgi_app(reg), Server, handler_class=Handler)
    threading.Thread(target=server.serve_forever, name="hugeload-exporter", daemon=True).start()
    return server
