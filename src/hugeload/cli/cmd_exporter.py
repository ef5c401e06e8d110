"""`hugeload exporter`: Prometheus metrics; with --release-under-pressure, the node agent."""

import ipaddress
import logging
import signal
import sys
import threading

from hugeload import units
from hugeload.cli.common import add_state_dir
from hugeload.errors import UsageError
from hugeload.plan.container import AGENT_PORT
from hugeload.plan.pressure import Thresholds

DEFAULT_LISTEN = f"127.0.0.1:{AGENT_PORT}"
# The numeric options: flag, default, metavar, help.
NUMBERS = (
    ("--cache-seconds", None, "S", "scrapes within this time share one walk of /proc (default 2)"),
    ("--request-timeout", None, "S", "a client must send its request and read the answer within this (default 10)"),
    (
        "--psi-threshold",
        Thresholds.some_avg10,
        "PCT",
        "memory PSI some avg10 that counts as pressure (default %(default)s)",
    ),
    ("--hold", Thresholds.hold_s, "S", "pressure must last this long (default %(default)s s)"),
    ("--interval", 5.0, "S", "how often the agent samples pressure (default %(default)s s)"),
)


def register(sub) -> None:
    p = sub.add_parser("exporter", help="Prometheus metrics of pools, staged models and their users (the node agent)")
    p.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="ADDR:PORT",
        help="where to serve /metrics (default %(default)s; ':PORT' is loopback too; "
        "all addresses only when asked: 0.0.0.0:PORT or [::]:PORT)",
    )
    p.add_argument("--once", action="store_true", help="print the metrics once and exit")
    p.add_argument(
        "--release-under-pressure",
        action="store_true",
        help="give back idle pages hugeload reserved while memory pressure lasts "
        "(never staged models, never pages in use)",
    )
    p.add_argument(
        "--min-available",
        default=0,
        type=units.arg_type(),
        metavar="SIZE",
        help="MemAvailable below this counts as pressure too (default: PSI only)",
    )
    for flag, default, metavar, text in NUMBERS:
        p.add_argument(flag, type=float, default=default, metavar=metavar, help=text)
    add_state_dir(p)
    p.set_defaults(func=run)


LOOPBACK = "127.0.0.1"


def parse_listen(text: str) -> tuple[str, int]:
    """(host, port) of --listen.  An empty host is loopback, like the default: the exporter
    shows the pid and name of every process with huge pages, so all addresses (0.0.0.0, ::)
    must be named to be had."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--listen {text!r} is not ADDR:PORT (e.g. 127.0.0.1:9464)")
    return host.strip("[]") or LOOPBACK, int(port)


def exposure(host: str) -> str:
    """How far the address reaches, in words for the line the exporter says at start."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return f"{host} (a name: whatever addresses it resolves to)"
    if ip.is_loopback:
        return "loopback only"
    if ip.is_unspecified:
        return "ALL addresses: every host that reaches this one can read it (asked for with --listen)"
    return "that address only: every host that reaches it can read it"


def run(args) -> int:
    try:
        import prometheus_client

        del prometheus_client
    except ImportError:
        raise UsageError("the exporter needs prometheus_client: pip install 'hugeload[exporter]'") from None
    from hugeload import exporter

    if args.interval <= 0 or args.hold < 0:
        raise UsageError("--interval must be positive and --hold not negative")
    agent = None
    if args.release_under_pressure:
        agent = exporter.Agent(
            Thresholds(args.psi_threshold, args.min_available // 1024, args.hold), args.root, args.state_dir
        )
        logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="hugeload agent: %(asctime)s %(message)s")
    if args.once:
        if agent:
            agent.step()
        sys.stdout.write(exporter.render(args.root, args.state_dir, agent))
        return 0
    host, port = parse_listen(args.listen)
    if args.cache_seconds is not None and args.cache_seconds < 0:
        raise UsageError("--cache-seconds must not be negative")
    if args.request_timeout is not None and args.request_timeout <= 0:
        raise UsageError("--request-timeout must be positive")
    cache = exporter.SnapshotCache(
        args.root, args.state_dir, exporter.CACHE_SECONDS if args.cache_seconds is None else args.cache_seconds
    )
    try:
        server = exporter.serve(
            host,
            port,
            exporter.registry(args.root, args.state_dir, agent, cache),
            timeout=args.request_timeout or exporter.REQUEST_TIMEOUT_SECONDS,
        )
    except OSError as e:
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    shown = f"[{host}]" if ":" in host else host
    print(
        f"hugeload exporter: serving http://{shown}:{port}/metrics on {exposure(host)}"
        + (" (releasing idle reserved pages under memory pressure)" if agent else ""),
        file=sys.stderr,
        flush=True,
    )
    try:
        while not stop.is_set():
            if agent:
                agent.step()
            stop.wait(args.interval)
    finally:
        server.shutdown()
        server.server_close()
    return 0
