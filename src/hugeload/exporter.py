"""`hugeload exporter`: Prometheus metrics of the pools, the staged models and who maps them,
and (with --release-under-pressure) the node agent that gives back idle reserved pages.

One scrape reads each file once: the pool counters, the store's manifests, /proc/PID/status
of every process (one small file each; HugetlbPages tells which processes hold huge pages)
and /proc/PID/maps only of those.  A mapping is matched to a staged file by device and inode,
which a container's process shows the same as the host, whatever path its mount namespace
gives the file.
"""

import logging
import os
import time
from collections import Counter
from typing import NamedTuple

from hugeload.act import ledger, store
from hugeload.act import pools as act_pools
from hugeload.plan import pressure as plan_pressure
from hugeload.probe import pools as probe_pools
from hugeload.probe.files import listdir, read_text
from hugeload.probe.memory import read_meminfo, read_pressure
from hugeload.units import KiB, page_size_name

log = logging.getLogger("hugeload.agent")


class Proc(NamedTuple):
    pid: int
    comm: str
    hugetlb_kb: int
    files: frozenset  # (dev, ino) of hugetlb file mappings


def _read(path: str) -> bytes | None:
    """One read of a small /proc file (status is under 2 kB): a third of the cost of
    Path.read_text, which matters with thousands of processes per scrape."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.read(fd, 8192)
    except OSError:
        return None
    finally:
        os.close(fd)


def _status_fields(text: bytes) -> tuple[str, int]:
    """Name and HugetlbPages (kB) of a /proc/PID/status."""
    i = text.find(b"HugetlbPages:")
    kb = int(text[i + 13 : text.index(b"kB", i)]) if i >= 0 else 0
    name = text[6 : text.find(b"\n")].strip().decode(errors="replace") if text.startswith(b"Name:") else ""
    return name, kb


def _mapped_files(text: str) -> frozenset:
    out = set()
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) >= 6 and parts[4] != "0":
            major, _, minor = parts[3].partition(":")
            try:
                out.add((os.makedev(int(major, 16), int(minor, 16)), int(parts[4])))
            except ValueError:
                continue
    return frozenset(out)


def huge_page_procs(root="/") -> list[Proc]:
    """Processes holding hugetlb pages, in one walk of /proc."""
    out = []
    proc = os.path.join(str(root), "proc")
    for name in listdir(root, "proc"):
        if not name.isdigit():
            continue
        status = _read(f"{proc}/{name}/status")
        if not status:
            continue  # gone since the listing
        comm, kb = _status_fields(status)
        if kb <= 0:
            continue
        out.append(Proc(int(name), comm, kb, _mapped_files(read_text(root, f"proc/{name}/maps", "") or "")))
    return out


class ModelState(NamedTuple):
    name: str
    page_size_kb: int
    pages: int
    node: int
    ready: bool
    keys: frozenset  # (dev, ino) of its staged files


def model_states(state_dir=None) -> list[ModelState]:
    out = []
    for m in store.manifests(state_dir):
        keys, ready = set(), bool(m.files)
        for f in m.files:
            try:
                st = os.stat(f.staged)
                keys.add((st.st_dev, st.st_ino))
            except OSError:  # unloaded while we read: not ready, no mappers
                ready = False
                continue
            ready = ready and store.file_state(f) == "ready"
        out.append(ModelState(m.name, m.page_size_kb, m.pages, getattr(m, "node", -1), ready, frozenset(keys)))
    return out


class Snapshot(NamedTuple):
    pools: list
    models: list[ModelState]
    procs: list[Proc]
    seconds: float


def snapshot(root="/", state_dir=None) -> Snapshot:
    t0 = time.perf_counter()
    pools = probe_pools.read_pools(root)
    models = model_states(state_dir)
    procs = huge_page_procs(root)
    return Snapshot(pools, models, procs, time.perf_counter() - t0)


class Agent:
    """Release under pressure: samples PSI and MemAvailable, and while pressure holds gives
    back the pages of releasable owners (plan/pressure.py), logging and counting each."""

    def __init__(self, thresholds: plan_pressure.Thresholds, root="/", state_dir=None, window_s: float = 600):
        self.t, self.root, self.state_dir, self.window_s = thresholds, root, state_dir, window_s
        self.history: list[plan_pressure.Sample] = []
        self.released = Counter()  # page size name -> pages
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
        for o in plan_pressure.releasable_owners(owners, lambda pid: store._owner_alive(pid, self.root)):
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


def collector(root="/", state_dir=None, agent: Agent | None = None):
    """A prometheus_client collector that takes a fresh snapshot on every scrape."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    class Collector:
        def collect(self):
            snap = snapshot(root, state_dir)
            pool = GaugeMetricFamily(
                "hugeload_pool_pages",
                "Huge pages per pool, by state (total, free, reserved = promised to a mapping, surplus)",
                labels=["page_size", "node", "state"],
            )
            for p in snap.pools:
                node = "all" if p.node is None else str(p.node)
                for state, v in (
                    ("total", p.total),
                    ("free", p.free),
                    ("reserved", p.reserved),
                    ("surplus", p.surplus),
                ):
                    if v is not None:
                        pool.add_metric([page_size_name(p.page_size_kb), node, state], v)
            yield pool
            pages = GaugeMetricFamily(
                "hugeload_model_pages", "Huge pages a staged model holds", labels=["model", "page_size", "node"]
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
                pages.add_metric([m.name, page_size_name(m.page_size_kb), str(m.node)], m.pages)
                ready.add_metric([m.name], 1 if m.ready else 0)
                mappers.add_metric([m.name], sum(1 for p in snap.procs if p.files & m.keys))
            yield pages
            yield ready
            yield mappers
            proc = GaugeMetricFamily(
                "hugeload_process_hugetlb_bytes", "hugetlb memory a process maps (HugetlbPages)", labels=["pid", "comm"]
            )
            for p in snap.procs:
                proc.add_metric([str(p.pid), p.comm], p.hugetlb_kb * KiB)
            yield proc
            yield GaugeMetricFamily(
                "hugeload_scrape_duration_seconds", "Time this scrape took to read /proc and /sys", value=snap.seconds
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


def registry(root="/", state_dir=None, agent: Agent | None = None):
    from prometheus_client import CollectorRegistry

    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector(root, state_dir, agent))
    return reg


def render(root="/", state_dir=None, agent: Agent | None = None) -> str:
    from prometheus_client import generate_latest

    return generate_latest(registry(root, state_dir, agent)).decode()
