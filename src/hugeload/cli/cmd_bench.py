"""`hugeload bench`: a group of measurements, one subcommand per benchmark.

To add one, write `add_<name>(bsub)` (its parser, with `func` set to its
handler) and append it to SUBCOMMANDS.
"""

import argparse
import os

from hugeload.bench.common import VM_NOTE, check_plot_available, parse_backings
from hugeload.cli import render
from hugeload.cli.common import add_json
from hugeload.errors import UsageError
from hugeload.units import page_size_name, parse_size


def register(sub) -> None:
    p = sub.add_parser("bench", help="measure what huge pages change (tensors, ...)")
    bsub = p.add_subparsers(dest="bench_command", metavar="BENCHMARK", parser_class=type(p))
    for add in SUBCOMMANDS:
        add(bsub)
    p.set_defaults(func=lambda args: _missing(p))


def _missing(parser) -> int:
    parser.print_help()
    return 2


# --------------------------------------------------------------------------- tensors


def add_tensors(bsub) -> None:
    p = bsub.add_parser("tensors", help="NumPy matrix-vector products over weights in 4K, THP, 2M and 1G pages")
    p.add_argument("--size", default="512M", help="weight matrix size (default 512M)")
    p.add_argument("--backings", default="4k,thp,2m,1g", help="comma-separated, from 4k, thp, 2m, 1g")
    p.add_argument("--rounds", type=int, default=10, help="interleaved rounds (default 10)")
    p.add_argument("--reps", type=int, default=3, help="products per measurement (default 3)")
    p.add_argument("--warmup", type=int, default=2, help="untimed products per backing first (default 2)")
    p.add_argument("--no-reserve", action="store_true", help="use free pages already in the pools, reserve none")
    p.add_argument("--seed", type=int, default=0)
    add_json(p)
    p.set_defaults(func=run_tensors)


def _fmt(v, digits=2):
    return "" if v is None else f"{v:.{digits}f}"


def run_tensors(args) -> int:
    from hugeload.bench import tensors

    size = parse_size(args.size)
    if size < 4096 * 4:
        raise UsageError(f"--size {args.size} is too small: at least one 16 KiB row")
    log = (lambda msg: None) if args.json else (lambda msg: render.err_console.print(f"[dim]{msg}[/]"))
    data = tensors.run(
        size=size,
        backings=parse_backings(args.backings),
        rounds=args.rounds,
        reps=args.reps,
        warmup=args.warmup,
        reserve=not args.no_reserve,
        root=args.root,
        seed=args.seed,
        log=log,
    )
    if args.json:
        render.print_json(data)
        return 0 if data["pools_restored"] else 1
    rows, notes = [], []
    for r in data["results"]:
        if r.status != "ok":
            notes.append(f"{r.backing.upper()} skipped: {r.reason}")
            continue
        if r.reason:
            notes.append(f"{r.backing.upper()}: {r.reason}")
        ratio_ci = "" if r.ratio is None else f"{r.ratio_low:.3f}-{r.ratio_high:.3f}"
        rows.append(
            [
                r.backing.upper(),
                page_size_name(r.page_size_kb),
                _fmt(r.median_ms),
                f"{_fmt(r.ci_low_ms)}-{_fmt(r.ci_high_ms)}",
                _fmt(r.ratio, 3),
                ratio_ci,
            ]
        )
    n_rows, n_cols = data["shape"]
    pct = int(data["confidence"] * 100)
    title = (
        f"y = W @ x, W {n_rows}x{n_cols} float32 ({data['size'] >> 20} MiB), "
        f"{data['rounds']} rounds x {data['reps']} products"
    )
    render.console.print(
        render.table(title, ["backing", "pages", "median ms", f"{pct}% CI", "vs 4K", f"{pct}% CI"], rows)
    )
    for line in notes:
        render.console.print(line)
    render.console.print(f"Pages as verified in /proc/self/smaps. Note: {data['note']}.")
    if data["hypervisor"]:
        render.console.print(f"Note: {VM_NOTE}.")
    if not data["pools_restored"]:
        bad = [f"{page_size_name(r.page_size_kb)} (was {r.before})" for r in data["reservations"] if not r.restored]
        render.err_console.print(f"[red]pools not back at their counts: {', '.join(bad)}[/]")
        return 1
    return 0


# --------------------------------------------------------------------------- tlb


def add_tlb(bsub) -> None:
    p = bsub.add_parser("tlb", help="random pointer-chasing and sequential reads in 4K, THP, 2M and 1G pages")
    p.add_argument("--size", default="1G", help="working set per backing (default 1G)")
    p.add_argument("--backings", default="4k,thp,2m,1g", help="comma-separated, from 4k, thp, 2m, 1g")
    p.add_argument("--rounds", type=int, default=10, help="interleaved rounds (default 10)")
    p.add_argument(
        "--accesses", type=int, default=2_000_000, help="dependent reads per random measurement (default 2000000)"
    )
    p.add_argument("--no-reserve", action="store_true", help="use free pages already in the pools, reserve none")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", metavar="FILE.png", help="also draw the results (needs matplotlib: hugeload[plot])")
    add_json(p)
    p.set_defaults(func=run_tlb)


def _ci(s, digits: int) -> str:
    return f"{s.median:.{digits}f} [{s.low:.{digits}f}-{s.high:.{digits}f}]"


def _x(v: float) -> str:
    return f"{v:.2f}x"


def run_tlb(args) -> int:
    from hugeload.bench import tlb

    size = parse_size(args.size)
    backings = parse_backings(args.backings)
    if args.plot:
        check_plot_available()
    log = (lambda msg: None) if args.json else (lambda msg: render.err_console.print(f"[dim]{msg}[/]"))
    data = tlb.run(
        size=size,
        backings=backings,
        rounds=args.rounds,
        accesses=args.accesses,
        reserve=not args.no_reserve,
        root=args.root,
        seed=args.seed,
        log=log,
    )
    if args.plot:
        tlb.plot(data, args.plot)
    if args.json:
        render.print_json(data)
        return 0 if data["pools_restored"] else 1
    pct = int(data["confidence"] * 100)
    rows, ratio_rows, notes, noise = [], [], [], []
    for r in data["results"]:
        name = r.backing.upper()
        if r.status != "ok":
            notes.append(f"{name} skipped: {r.reason}")
            continue
        pages = page_size_name(r.page_size_kb)
        if r.backing == "thp":
            pages += f" ({r.huge_fraction:.0%})"
        rows.append([name, pages, f"{r.fill_ms:.0f}", _ci(r.random_ns, 1), _ci(r.seq_gbps, 2)])
        cells = {}
        for q in r.ratios:
            cells[(q.metric, q.against)] = f"{_x(q.speedup)} [{q.low:.2f}-{q.high:.2f}]" + (
                "~" if q.within_noise else ""
            )
            if q.within_noise:
                what = "random reads" if q.metric == "random_ns" else "sequential reads"
                noise.append(
                    f"{name} vs {q.against.upper()} {what}: {_x(q.speedup)}, within noise ({pct}% intervals overlap)"
                )
        if cells:
            ratio_rows.append([name] + [cells.get((m, a), "") for m in ("random_ns", "seq_gbps") for a in ("4k", "2m")])
    title = (
        f"Reads over {data['size'] >> 20} MiB per backing, median of {data['rounds']} interleaved rounds "
        f"({data['accesses']} dependent reads; {data['seq_passes']} sequential pass(es), best of)"
    )
    render.console.print(
        render.table(
            title,
            ["backing", "pages (smaps)", "fill ms", f"random ns/access [{pct}% CI]", f"seq GB/s [{pct}% CI]"],
            rows,
        )
    )
    if ratio_rows:
        render.console.print(
            render.table(
                f"Speedup (> 1: faster), median of per-round ratios [{pct}% CI]; ~ = within noise",
                ["backing", "random vs 4K", "random vs 2M", "seq vs 4K", "seq vs 2M"],
                ratio_rows,
            )
        )
    for line in notes + noise:
        render.console.print(line)
    for b, c in data["tlb_counters"].items():
        rate = f", hit rate {c['dtlb_hit_rate']:.4%}" if c.get("dtlb_hit_rate") is not None else ""
        render.console.print(
            f"{b.upper()} TLB counters per random measurement: "
            + ", ".join(f"{k} {v}" for k, v in c.items() if k != "dtlb_hit_rate")
            + rate
        )
    if data["tlb_note"]:
        render.console.print(f"TLB counters: {data['tlb_note']}.")
    render.console.print("fill = first touch of every page (faults and zeroing), timed once, not in the reads.")
    render.console.print(f"Pages as verified in /proc/self/smaps. Note: {data['note']}.")
    if data["vm_note"]:
        render.console.print(f"Note: {data['vm_note']}.")
    if args.plot:
        render.console.print(f"plot written to {args.plot}")
    if not data["pools_restored"]:
        bad = [f"{page_size_name(r.page_size_kb)} (was {r.before})" for r in data["reservations"] if not r.restored]
        render.err_console.print(f"[red]pools not back at their counts: {', '.join(bad)}[/]")
        return 1
    return 0


# --------------------------------------------------------------------------- stage


def add_stage(bsub) -> None:
    p = bsub.add_parser(
        "stage", help="staging into hugetlbfs (hugeload load) from a cold and a warm page cache, vs memcpy"
    )
    p.add_argument("--size", default="1G", help="size of the generated file (default 1G)")
    p.add_argument(
        "--page-size", default="auto", help="auto (1g for 1 GiB and more when obtainable, else 2m), 1g or 2m"
    )
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of cold, warm and memcpy (default 3)")
    p.add_argument("--dir", help="where to write the temporary file (default: the system's temporary directory)")
    p.add_argument("--no-reserve", action="store_true", help="use free pages already in the pools, reserve none")
    p.add_argument("--seed", type=int, default=0)
    add_json(p)
    p.set_defaults(func=run_stage)


def run_stage(args) -> int:
    from hugeload.bench import stage

    size = parse_size(args.size)
    log = (lambda msg: None) if args.json else (lambda msg: render.err_console.print(f"[dim]{msg}[/]"))
    data = stage.run(
        size=size,
        page_size=args.page_size.strip().lower(),
        rounds=args.rounds,
        directory=args.dir,
        reserve=not args.no_reserve,
        root=args.root,
        seed=args.seed,
        log=log,
    )
    ok = data["pools_restored"] and data["cleaned"]
    if args.json:
        render.print_json(data)
        return 0 if ok else 1
    pct = int(data["confidence"] * 100)
    rows = []
    for r in data["results"]:
        res = "" if not r.resident_before else f"{max(x or 0 for x in r.resident_before):.0%}"
        ratio = (
            "" if r.vs_memcpy is None else f"{_x(r.vs_memcpy.median)} [{r.vs_memcpy.low:.2f}-{r.vs_memcpy.high:.2f}]"
        )
        what = {"cold": "load, cold cache", "warm": "load, warm cache", "memcpy": "memcpy (1 thread)"}[r.case]
        rows.append([what, _ci(r.gbps, 2), ratio, res])
    title = (
        f"Staging {data['size'] >> 20} MiB into {page_size_name(data['page_size_kb'])} pages "
        f"(hugeload load, file on {data['filesystem']}), median of {data['rounds']} interleaved rounds"
    )
    render.console.print(render.table(title, ["case", f"GB/s [{pct}% CI]", "vs memcpy", "cached before"], rows))
    render.console.print(f"page size: {data['page_size_reason']}.")
    for line in data["notes"]:
        render.console.print(f"Note: {line}.")
    render.console.print(f"Note: {data['note']}.")
    if data["vm_note"]:
        render.console.print(f"Note: {data['vm_note']}.")
    if not data["cleaned"]:
        render.err_console.print("[red]a temporary hugetlbfs mount or file could not be removed[/]")
    if not data["pools_restored"]:
        bad = [f"{page_size_name(r.page_size_kb)} (was {r.before})" for r in data["reservations"] if not r.restored]
        render.err_console.print(f"[red]pools not back at their counts: {', '.join(bad)}[/]")
    return 0 if ok else 1


# --------------------------------------------------------------------------- engine


def add_engine(bsub) -> None:
    from hugeload.bench.engine import BACKINGS, DEFAULT_BACKINGS, PLACEMENT_BACKINGS, PLACEMENTS

    p = bsub.add_parser(
        "engine",
        help="an engine command (llama-bench first) under each backing, interleaved",
        usage="hugeload bench engine --model FILE [options] -- ENGINE_CMD [ARGS...]",
    )
    p.add_argument("--model", required=True, help="the model file (its source; the bench stages the copies it needs)")
    p.add_argument(
        "--backings",
        default=None,
        help=f"comma-separated, from {', '.join(BACKINGS)}; a name given twice is the A/A check "
        f"(default: {','.join(DEFAULT_BACKINGS)}; with --node-placement: {','.join(PLACEMENT_BACKINGS)})",
    )
    p.add_argument(
        "--node-placement",
        metavar="LIST",
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
    add_json(p)
    p.add_argument("engine", nargs="*", metavar="ENGINE_CMD")
    p.set_defaults(func=run_engine)


def _interval(m: dict, digits: int = 1) -> str:
    return f"{m['median']:.{digits}f} ({m['low']:.{digits}f}-{m['high']:.{digits}f})"


def _ratio(m: dict) -> str:
    if m.get("ratio") is None:
        return "1 (baseline)"
    mark = " ~" if m["within_noise"] else ""
    return f"{m['ratio']:.3f} ({m['ratio_low']:.3f}-{m['ratio_high']:.3f}){mark}"


def _pages(kbs) -> str:
    return "/".join(page_size_name(k) for k in kbs) or "-"


def run_engine(args) -> int:
    import shlex

    from hugeload.bench import engine
    from hugeload.probe.cpu import read_cpu

    placements = engine.parse_placements(args.node_placement) if args.node_placement else None
    default = engine.PLACEMENT_BACKINGS if placements else engine.DEFAULT_BACKINGS
    backings = engine.parse_backings(args.backings if args.backings is not None else ",".join(default))
    if args.plot:
        check_plot_available()
    startup = (
        None
        if args.no_startup
        else (
            shlex.split(args.startup_cmd)
            if args.startup_cmd
            else engine.default_startup_cmd(args.engine)
            if args.engine
            else None
        )
    )
    log = (lambda msg: None) if args.json else (lambda msg: render.err_console.print(f"[dim]{msg}[/]"))
    cpu = read_cpu(args.root)
    data = engine.run(
        args.model,
        args.engine,
        backings,
        args.rounds,
        startup,
        args.timeout,
        args.root,
        args.seed,
        log=log,
        bandwidth=not args.no_bandwidth,
        node_placement=placements,
        engine_node=args.node,
    )
    data["hypervisor"] = cpu.hypervisor
    if args.plot:
        engine.plot(data, args.plot)
    if args.json:
        render.print_json(data)
        return 0 if any(r["status"] == "ok" for r in data["results"]) else 1
    rows, notes = [], []
    for r in data["results"]:
        if r["status"] != "ok":
            notes.append(f"{r['backing']}: {r['status']}: {r['reason']}")
            if r["status"] in ("skipped", "failed"):
                continue
        weights = _pages(r["weights_page_kb"]) if r["weights_page_kb"] else "heap"
        if r.get("file_pmd_mapped_kb"):
            weights += f" ({r['file_pmd_mapped_kb'] >> 10} MiB in 2M PMDs)"
        heap = _pages(r["alloc_page_kb"])
        if r.get("thp_kb"):
            heap += f" ({r['thp_kb'] >> 10} MiB THP)"
        for test, m in (r.get("metrics") or {}).items():
            unit = "s" if test == "startup_s" else "t/s"
            share = f"{m['bandwidth_share']:.0%}" if m.get("bandwidth_share") is not None else ""
            rows.append(
                [
                    r["backing"],
                    weights,
                    heap,
                    "start-up" if test == "startup_s" else test,
                    f"{_interval(m, 2 if unit == 's' else 1)} {unit}",
                    _ratio(m),
                    share,
                ]
            )
        if r["failed_runs"]:
            notes.append(f"{r['backing']}: {r['failed_runs']} run(s) failed and are not counted")
        if r.get("munmap_failed"):
            notes.append(f"{r['backing']}: the engine printed 'munmap failed'")
    title = (
        f"{data['command']}  on {os.path.basename(data['model'])} ({data['model_size'] >> 20} MiB), "
        f"{data['rounds']} interleaved rounds"
    )
    render.console.print(
        render.table(
            title,
            [
                "backing",
                "weights",
                "heap (large allocs)",
                "test",
                "median (95% CI)",
                "x default, paired (CI)",
                "of bw limit",
            ],
            rows,
        )
    )
    for t, b in data["best"].items():
        what = "start-up" if t == "startup_s" else t
        render.console.print(
            f"best hugeload vs best alternative, {what}: {b['hugeload']} vs {b['alternative']} "
            f"{b['ratio']:.3f}x ({b['ratio_low']:.3f}-{b['ratio_high']:.3f})"
            f"{' ~ within noise' if b['within_noise'] else ''} (> 1: hugeload better)"
        )
    for pair, per in data.get("gigantic_vs_huge", {}).items():
        for t, m in per.items():
            what = "start-up" if t == "startup_s" else t
            render.console.print(
                f"{pair}, {what}: {m['ratio']:.3f}x ({m['ratio_low']:.3f}-{m['ratio_high']:.3f})"
                f"{' ~ within noise' if m['within_noise'] else ''} (paired per round)"
            )
    bw = data.get("bandwidth_gbps")
    if bw:
        limit = data.get("tg_limit_tps")
        render.console.print(
            f"read bandwidth at {data['threads']} thread(s): {_interval(bw, 1)} GB/s; weights read "
            f"per token {data['bytes_per_token'] / 2**20:.0f} MiB ({data['weights_read']})"
            + (f" -> limit {limit:.1f} t/s" if limit else "")
            if data.get("bytes_per_token")
            else f"read bandwidth at {data['threads']} thread(s): {_interval(bw, 1)} GB/s"
        )
    mem = [
        f"{r['backing']} {r['hugetlb_kb'] >> 10}/{r['vmlck_kb'] >> 10}/{r['pss_kb'] >> 10}"
        for r in data["results"]
        if r["status"] != "skipped"
    ]
    if mem:
        render.console.print("memory (HugetlbPages/VmLck/Pss MiB, verification run): " + ", ".join(mem))
    for k, s in (data.get("setup_s") or {}).items():
        render.console.print(f"setup {k} (not in start-up): {_interval(s, 2)} s over {len(s['values'])} time(s)")
    render.console.print(f"copies held: {data['copies_held']}")
    for r in data["results"]:
        if r.get("tlb"):
            c = r["tlb"]
            rate = f", dTLB hit rate {c['dtlb_hit_rate']:.4%}" if c.get("dtlb_hit_rate") is not None else ""
            render.console.print(
                f"{r['backing']} TLB counters (median run): "
                + ", ".join(f"{k} {v}" for k, v in c.items() if k != "dtlb_hit_rate")
                + rate
            )
    numa = data.get("numa")
    if numa:
        render.console.print(
            f"every run bound to node {numa['engine_node']} (CPUs {','.join(map(str, numa['cpus']))}); "
            + "; ".join(f"{p}: {d}" for p, d in numa["placements"].items())
        )
        for b, nodes in numa.get("copy_nodes", {}).items():
            render.console.print(
                f"{b}: pages per node (numa_maps, when staged): " + ", ".join(f"node {n} {c}" for n, c in nodes.items())
            )
        for b, pr in numa.get("placement_ratios", {}).items():
            for t, m in pr["tests"].items():
                what = "start-up" if t == "startup_s" else t
                render.console.print(
                    f"{b} vs {pr['against']}, {what}: {m['ratio']:.3f}x "
                    f"({m['ratio_low']:.3f}-{m['ratio_high']:.3f}){' ~' if m['within_noise'] else ''}"
                )
        render.console.print(f"NUMA: {numa['note']}.")
    for n in notes:
        render.console.print(n)
    if data["tlb_note"]:
        render.console.print(f"TLB counters: {data['tlb_note']}.")
    render.console.print("~ marks a ratio whose interval includes 1: within noise. " + data["note"] + ".")
    if data["hypervisor"]:
        render.console.print(
            "This is a virtual machine: a guest's TLB entries are no larger than the host's backing pages, "
            "so 1G and 2M pages can measure the same here."
        )
    return 0 if any(r["status"] == "ok" for r in data["results"]) else 1


# --------------------------------------------------------------------------- fleet


def add_fleet(bsub) -> None:
    from hugeload.bench.fleet import CASES

    p = bsub.add_parser(
        "fleet", help="N llama-server engines on one model: start-up, time to first token, memory by backing"
    )
    p.add_argument("--model", required=True, help="the model file")
    p.add_argument("--engines", type=int, default=2, help="engines started together (default 2)")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {', '.join(CASES)}")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--threads", type=int, default=1, help="threads per engine (default 1)")
    p.add_argument("--server", help="llama-server binary (default: the one hugeload finds)")
    p.add_argument("--timeout", type=float, default=300, help="seconds the engines may take to answer (default 300)")
    p.add_argument("--seed", type=int, default=0)
    add_json(p)
    p.set_defaults(func=run_fleet)


def run_fleet(args) -> int:
    from hugeload.bench import fleet

    log = (lambda msg: None) if args.json else (lambda msg: render.err_console.print(f"[dim]{msg}[/]"))
    data = fleet.run(
        args.model,
        args.engines,
        fleet.parse_cases(args.cases),
        args.rounds,
        args.threads,
        args.server,
        args.timeout,
        args.root,
        args.seed,
        log,
    )
    ok = any(r["status"] == "ok" for r in data["results"])
    if args.json:
        render.print_json(data)
        return 0 if ok else 1
    rows, notes = [], []
    for r in data["results"]:
        if r["status"] != "ok":
            notes.append(f"{r['case']}: {r['status']}: {r['reason']}")
            continue
        rows.append(
            [
                r["case"],
                f"{_interval(r['loaded_s'], 2)} s",
                f"{_interval(r['first_token_s'], 2)} s",
                f"{r['memory_kb'] >> 10}",
                f"{r['pss_kb'] >> 10}",
                f"{r['pool_used_kb'] >> 10}",
                f"{r['vmlck_kb'] >> 10}",
                f"{r['page_cache_kb'] >> 10}",
            ]
        )
    title = (
        f"{data['engines']} x llama-server on {os.path.basename(data['model'])} "
        f"({data['model_size'] >> 20} MiB), {data['rounds']} interleaved rounds"
    )
    render.console.print(
        render.table(
            title,
            [
                "case",
                "all loaded (95% CI)",
                "first token, last engine (95% CI)",
                "memory MiB (sum)",
                "anon Pss MiB",
                "huge pages MiB",
                "locked MiB",
                "model in page cache MiB",
            ],
            rows,
        )
    )
    if data["staging_s"] is not None:
        render.console.print(f"staging (once, not in the start-up times): {data['staging_s']:.2f} s")
    for n in notes:
        render.console.print(n)
    render.console.print(f"Note: {data['note']}.")
    return 0 if ok else 1


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
    log = (lambda msg: None) if args.json else (lambda msg: render.err_console.print(f"[dim]{msg}[/]"))
    data = hotpath.run(args.pairs, args.size, args.rounds, libs, args.instructions, args.seed, log)
    if args.json:
        render.print_json(data)
        return 0
    rows = []
    for e in data["results"]:
        extra = _interval(e["extra_ns"], 2) if "extra_ns" in e else "-"
        ins = f"{e['instructions_per_pair']:.1f}" if "instructions_per_pair" in e else "-"
        xins = f"{e['extra_instructions']:+.1f}" if "extra_instructions" in e else "-"
        rows.append([e["library"], _interval(e["ns_per_pair"], 2), extra, ins, xins])
    render.console.print(
        render.table(
            f"malloc({data['size']})/free pairs, {data['rounds']} rounds",
            ["library", "ns/pair (95% CI)", "extra ns (95% CI)", "instructions/pair", "extra instructions"],
            rows,
        )
    )
    render.console.print(data["note"] + ".")
    return 0


SUBCOMMANDS = [add_tensors, add_tlb, add_stage, add_engine, add_fleet, add_hotpath]
