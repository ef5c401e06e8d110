"""`hugeload exporter`: Prometheus metrics; with --release-under-pressure, the node agent."""

import logging
import signal
import sys
import threading

from hugeload.cli.common import add_state_dir
from hugeload.errors import UsageError
from hugeload.plan.container import AGENT_PORT
from hugeload.plan.pressure import Thresholds
from hugeload.units import parse_size

DEFAULT_LISTEN = f"127.0.0.1:{AGENT_PORT}"


def register(sub) -> None:
    p = sub.add_parser("exporter", help="Prometheus metrics of pools, staged models and their users (the node agent)")
    p.add_argument(
        "--listen", default=DEFAULT_LISTEN, metavar="ADDR:PORT", help="where to serve /metrics (default %(default)s)"
    )
    p.add_argument("--once", action="store_true", help="print the metrics once and exit")
    p.add_argument(
        "--release-under-pressure",
        action="store_true",
        help="give back idle pages hugeload reserved while memory pressure lasts (never staged models, never pages in use)",
    )
    p.add_argument(
        "--psi-threshold",
        type=float,
        default=Thresholds.some_avg10,
        metavar="PCT",
        help="memory PSI some avg10 that counts as pressure (default %(default)s)",
    )
    p.add_argument(
        "--min-available",
        default="0",
        metavar="SIZE",
        help="MemAvailable below this counts as pressure too (default: PSI only)",
    )
    p.add_argument(
        "--hold",
        type=float,
        default=Thresholds.hold_s,
        metavar="S",
        help="pressure must last this long (default %(default)s s)",
    )
    p.add_argument(
        "--interval",
        type=float,
        default=5.0,
        metavar="S",
        help="how often the agent samples pressure (default %(default)s s)",
    )
    add_state_dir(p)
    p.set_defaults(func=run)


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--listen {text!r} is not ADDR:PORT (e.g. 127.0.0.1:9464)")
    return host.strip("[]") or "0.0.0.0", int(port)


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
            Thresholds(args.psi_threshold, parse_size(args.min_available) // 1024, args.hold), args.root, args.state_dir
        )
        logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="hugeload agent: %(asctime)s %(message)s")
    if args.once:
        if agent:
            agent.step()
        sys.stdout.write(exporter.render(args.root, args.state_dir, agent))
        return 0
    host, port = parse_listen(args.listen)
    from prometheus_client import start_http_server

    try:
        server, _thread = start_http_server(port, host, exporter.registry(args.root, args.state_dir, agent))
    except OSError as e:
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    print(
        f"hugeload exporter: serving http://{host}:{port}/metrics"
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
