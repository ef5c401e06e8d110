"""`hugeload bench`: a group of measurements, one subcommand per benchmark.

To add one, write `add_<name>(bsub)` (its parser, with `func` set to its handler) and append
it to SUBCOMMANDS.  A handler turns the arguments into the bench's options, runs it, and prints
its JSON or its tables (cli/bench_tables.py).
"""

import argparse
import os
import shlex

from hugeload import pages, units
from hugeload.bench.backings import (
    CATALOGUE,
    DEFAULT_BACKINGS,
    MEMORY_BACKINGS,
    PLACEMENT_BACKINGS,
    PLACEMENTS,
    parse_backings,
    parse_memory_backings,
    parse_placements,
)
from hugeload.bench.common import check_plot_available
from hugeload.bench.reservations import PoolUse
from hugeload.cli import bench_tables, render
from hugeload.cli.common import add_json, parsed_by
from hugeload.errors import UsageError


def register(sub) -> None:
    p = sub.add_parser("bench", help="measure what huge pages change (tensors, ...)")
    bsub = p.add_subparsers(dest="bench_command", metavar="BENCHMARK", parser_class=type(p))
    for add in SUBCOMMANDS:
        add(bsub)
    p.set_defaults(func=lambda args: _missing(p))


def _missing(parser) -> int:
    parser.print_help()
    return 2


def _log(args):
    """Progress on stderr, dimmed; nothing with --json (its output is for scripts)."""
    if args.json:
        return lambda msg: None
    return lambda msg: render.err_console.print(f"[dim]{msg}[/]")


def _add_memory_options(p, size: str, rounds: int, plot: bool = False) -> None:
    """What the memory benches (tensors, tlb) share: size, backings, rounds, pools, seed."""
    p.add_argument("--size", default=size, type=units.arg_type(), help=f"per backing (default {size})")
    p.add_argument(
        "--backings",
        default=",".join(MEMORY_BACKINGS),
        type=parsed_by(parse_memory_backings, "backings"),
        help=f"comma-separated, from {', '.join(MEMORY_BACKINGS)}",
    )
    p.add_argument("--rounds", type=int, default=rounds, help=f"interleaved rounds (default {rounds})")
    _add_pool_use(p)
    p.add_argument("--seed", type=int, default=0)
    if plot:
        p.add_argument("--plot", metavar="FILE.png", help="also draw the results (needs matplotlib: hugeload[plot])")
    add_json(p)


def _add_pool_use(p) -> None:
    p.add_argument(
        "--no-reserve",
        dest="pool",
        action="store_const",
        const=PoolUse.FREE,
        default=PoolUse.RESERVE,
        help="use free pages already in the pools, reserve none",
    )


def _print(args, data: dict, table, ok: bool) -> int:
    if args.json:
        render.print_json(data)
    else:
        table(data)
    return 0 if ok else 1


# --------------------------------------------------------------------------- tensors


def add_tensors(bsub) -> None:
    p = bsub.add_parser("tensors", help="NumPy matrix-vector products over weights in 4K, THP, 2M and 1G pages")
    _add_memory_options(p, "512M", 10)
    p.add_argument("--reps", type=int, default=3, help="products per measurement (default 3)")
    p.add_argument("--warmup", type=int, default=2, help="untimed products per backing first (default 2)")
    p.set_defaults(func=run_tensors)


def run_tensors(args) -> int:
    from hugeload.bench import tensors

    if args.size < 4096 * 4:
        raise UsageError(f"--size {args.size} is too small: at least one 16 KiB row")
    options = tensors.TensorOptions(
        args.size, tuple(args.backings), args.rounds, args.reps, args.warmup, args.pool, args.seed
    )
    data = tensors.run(options, root=args.root, log=_log(args))
    return _print(args, data, bench_tables.tensors, data["pools_restored"])


# --------------------------------------------------------------------------- tlb


def add_tlb(bsub) -> None:
    p = bsub.add_parser("tlb", help="random pointer-chasing and sequential reads in 4K, THP, 2M and 1G pages")
    _add_memory_options(p, "1G", 10, plot=True)
    p.add_argument(
        "--accesses", type=int, default=2_000_000, help="dependent reads per random measurement (default 2000000)"
    )
    p.set_defaults(func=run_tlb)


def run_tlb(args) -> int:
    from hugeload.bench import tlb

    if args.plot:
        check_plot_available()
    options = tlb.TlbOptions(args.size, tuple(args.backings), args.rounds, args.accesses, args.pool, args.seed)
    data = tlb.run(options, root=args.root, log=_log(args))
    if args.plot:
        tlb.plot(data, args.plot)
    return _print(args, data, lambda d: bench_tables.tlb(d, args.plot), data["pools_restored"])


# --------------------------------------------------------------------------- stage


def add_stage(bsub) -> None:
    p = bsub.add_parser(
        "stage", help="staging into hugetlbfs (hugeload load) from a cold and a warm page cache, vs memcpy"
    )
    p.add_argument("--size", default="1G", type=units.arg_type(), help="size of the generated file (default 1G)")
    p.add_argument(
        "--page-size",
        default=None,
        type=pages.arg_type(),
        metavar="SIZE",
        help="auto (1g for 1 GiB and more when obtainable, else 2m), 1g or 2m",
    )
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of cold, warm and memcpy (default 3)")
    p.add_argument("--dir", help="where to write the temporary file (default: the system's temporary directory)")
    _add_pool_use(p)
    p.add_argument("--seed", type=int, default=0)
    add_json(p)
    p.set_defaults(func=run_stage)


def run_stage(args) -> int:
    from hugeload.bench import stage

    options = stage.StageBenchOptions(args.size, args.page_size, args.rounds, args.dir, args.pool, args.seed)
    data = stage.run(options, root=args.root, log=_log(args))
    return _print(args, data, bench_tables.stage, data["pools_restored"] and data["cleaned"])


# --------------------------------------------------------------------------- engine


def add_engine(bsub) -> None:
    p = bsub.add_parser(
        "engine",
        help="an engine command (llama-bench first) under each backing, interleaved",
        usage="hugeload bench engine --model FILE [options] -- ENGINE_CMD [ARGS...]",
    )
    p.add_argument("--model", required=True, help="the model file (its source; the bench stages the copies it needs)")
    p.add_argument(
        "--backings",
        default=None,
        type=parsed_by(parse_backings, "backings"),
        help=f"comma-separated, from {', '.join(CATALOGUE)}; a name given twice is the A/A check "
        f"(default: {','.join(DEFAULT_BACKINGS)}; with --node-placement: {','.join(PLACEMENT_BACKINGS)})",
    )
    p.add_argument(
        "--node-placement",
        metavar="LIST",
        type=parsed_by(parse_placements, "placements"),
        help=f"multi-socket machines: run each staged backing with its copy placed {', '.join(PLACEMENTS)} "
        "(comma-separated) relative to the engine node; every run is bound to that node",
    )
    p.add_argument(
        "--node", type=int, help="the engine node every run is bound to (default: the first node with memory)"
    )
    p.add_argument("--rounds", type=int, default=10, help="interleaved rounds (default 10)")
    p.add_argument(
        "--startup-cmd", help="command timed as start-up, with {model} (default: llama-completion -n 1 when found)"
    )
    p.add_argument("--no-startup", action="store_true", help="do not time start-up separately")
    p.add_argument("--no-bandwidth", action="store_true", help="do not measure the read bandwidth limit")
    p.add_argument("--timeout", type=float, default=600, help="seconds one engine run may take (default 600)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--plot", metavar="FILE.png", help="also draw the rates and start-up per backing (needs hugeload[plot])"
    )
    p.add_argument(
        "--require-quiet",
        action="store_true",
        help=f"exit {NOISY_EXIT} when the A/A check (a backing named twice) says the run was too noisy to read, "
        "so a script can rerun it",
    )
    add_json(p)
    p.add_argument("engine", nargs="*", metavar="ENGINE_CMD")
    p.set_defaults(func=run_engine)


def _startup_argv(args) -> tuple[str, ...] | None:
    from hugeload.bench import engine

    if args.no_startup:
        return None
    if args.startup_cmd:
        return tuple(shlex.split(args.startup_cmd))
    found = engine.default_startup_cmd(args.engine) if args.engine else None
    return tuple(found) if found else None


# `bench engine --require-quiet` on a run too noisy to read: EX_TEMPFAIL, "try again later".
NOISY_EXIT = 75


def _check_quiet_gate(backings: list[str], rounds: int) -> None:
    """--require-quiet needs an A/A check that can be judged: refused before anything runs."""
    if not any("#" in b for b in backings):
        raise UsageError("--require-quiet needs an A/A check: name a backing twice (--backings default,default,...)")
    if rounds < 2:
        raise UsageError("--require-quiet needs at least 2 rounds: one round gives the A/A check no interval")


def run_engine(args) -> int:
    from hugeload.bench import engine
    from hugeload.probe.cpu import read_cpu

    placements = args.node_placement or []
    backings = args.backings or parse_backings(",".join(PLACEMENT_BACKINGS if placements else DEFAULT_BACKINGS))
    if args.require_quiet:
        _check_quiet_gate(backings, args.rounds)
    if args.plot:
        check_plot_available()
    options = engine.EngineOptions(
        rounds=args.rounds,
        startup_argv=_startup_argv(args),
        timeout=args.timeout,
        seed=args.seed,
        bandwidth=not args.no_bandwidth,
        node_placement=tuple(placements),
        engine_node=args.node,
    )
    cpu = read_cpu(args.root)
    data = engine.run(args.model, args.engine, backings, options, root=args.root, log=_log(args))
    data["hypervisor"] = cpu.hypervisor
    if args.plot:
        from hugeload.bench import summary

        summary.plot(data, args.plot)
    status = _print(args, data, bench_tables.engine, any(r["status"] == "ok" for r in data["results"]))
    if status or not args.require_quiet or data["noisy"] is False:
        return status
    return NOISY_EXIT if data["noisy"] else 1  # None: the A/A twin never ran twice, quiet unproven


# --------------------------------------------------------------------------- fleet


def add_fleet(bsub) -> None:
    from hugeload.bench.fleet import CASES, FleetOptions, parse_cases

    p = bsub.add_parser(
        "fleet", help="N llama-server engines on one model: start-up, time to first token, memory by backing"
    )
    p.add_argument("--model", required=True, help="the model file")
    p.add_argument("--engines", type=int, default=2, help="engines started together (default 2)")
    p.add_argument(
        "--cases",
        default=",".join(CASES),
        type=parsed_by(parse_cases, "cases"),
        help=f"comma-separated, from {', '.join(CASES)}",
    )
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--threads", type=int, default=1, help="threads per engine (default 1)")
    p.add_argument("--server", help="llama-server binary (default: the one hugeload finds)")
    p.add_argument("--timeout", type=float, default=300, help="seconds the engines may take to answer (default 300)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--alloc-threshold",
        type=units.arg_type(),
        default=FleetOptions().alloc_threshold,
        metavar="SIZE",
        help="heap, both: allocations from this size in huge pages, as hugeload run's (default 64M)",
    )
    add_json(p)
    p.set_defaults(func=run_fleet)


def run_fleet(args) -> int:
    from hugeload.bench import fleet

    options = fleet.FleetOptions(
        args.engines,
        tuple(args.cases),
        args.rounds,
        args.threads,
        args.server,
        args.timeout,
        args.seed,
        args.alloc_threshold,
    )
    data = fleet.run(args.model, options, root=args.root, log=_log(args))
    return _print(args, data, bench_tables.fleet, any(r["status"] == "ok" for r in data["results"]))


# --------------------------------------------------------------------------- hotpath


def add_hotpath(bsub) -> None:
    p = bsub.add_parser("hotpath", help="what the preload library costs each small malloc/free (time and instructions)")
    p.add_argument("--pairs", type=int, default=2_000_000, help="malloc/free pairs per measurement (default 2000000)")
    p.add_argument("--size", type=int, default=64, help="bytes per allocation (default 64)")
    p.add_argument("--rounds", type=int, default=10, help="interleaved rounds (default 10)")
    p.add_argument(
        "--library",
        action="append",
        default=[],
        metavar="[NAME=]PATH",
        help="another build of libhugeload.so to compare (repeatable)",
    )
    p.add_argument(
        "--instructions",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="count instructions with callgrind (default: when valgrind is installed)",
    )
    p.add_argument("--seed", type=int, default=0)
    add_json(p)
    p.set_defaults(func=run_hotpath)


def run_hotpath(args) -> int:
    from hugeload.bench import hotpath

    libs = {}
    for item in args.library:
        name, eq, path = item.partition("=")
        libs[name if eq else os.path.basename(item)] = path if eq else item
    count = {None: hotpath.Instructions.AUTO, True: hotpath.Instructions.COUNT, False: hotpath.Instructions.SKIP}
    options = hotpath.HotpathOptions(args.pairs, args.size, args.rounds, libs, count[args.instructions], args.seed)
    data = hotpath.run(options, log=_log(args))
    return _print(args, data, bench_tables.hotpath, True)


def add_hvo(bsub) -> None:
    p = bsub.add_parser("hvo", help="memory HVO (vm.hugetlb_optimize_vmemmap) saves: one reservation with and without")
    p.add_argument("--page-size", default=pages.PAGE_1G, type=pages.arg_type(auto=False), help="1g (default) or 2m")
    p.add_argument("--count", type=int, default=1, help="pages per reservation (default 1)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of without/with (default 3); medians are compared")
    add_json(p)
    p.set_defaults(func=run_hvo)


def run_hvo(args) -> int:
    from hugeload.bench import hvo
    from hugeload.units import format_bytes

    log = (lambda msg: None) if args.json else (lambda msg: render.err_console.print(f"[dim]{msg}[/]"))
    data = hvo.run(args.root, args.page_size.kb, args.count, args.rounds, log=log)
    if args.json:
        render.print_json(data)
        return 0
    words = {
        "used": "MemTotal - MemFree - per-CPU free pages",
        "available": "MemTotal - MemAvailable",
        "memmap": "struct page memory (vmstat nr_memmap*)",
    }
    rows = [
        [words[m], format_bytes(v["saved_bytes"]), format_bytes(v["saved_per_gib_bytes"])]
        for m, v in data["measures"].items()
    ]
    rows.append(["computed from the sizes", format_bytes(data["computed_bytes"]), "-"])
    render.console.print(
        render.table(
            f"HVO: {data['count']} x {data['page_size']} reserved without and with it, "
            f"{data['rounds']} rounds (medians)",
            ["measure", "saved", "per GiB reserved"],
            rows,
        )
    )
    return 0


SUBCOMMANDS = [add_tensors, add_tlb, add_stage, add_engine, add_fleet, add_hotpath, add_hvo]
