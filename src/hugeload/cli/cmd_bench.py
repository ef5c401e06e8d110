"""`hugeload bench`: a group of measurements, one subcommand per benchmark.

To add one, write `add_<name>(bsub)` (its parser, with `func` set to its
handler) and append it to SUBCOMMANDS.
"""

import os

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
    data = tensors.run(size=size, backings=[b.strip().lower() for b in args.backings.split(",") if b.strip()],
                       rounds=args.rounds, reps=args.reps, warmup=args.warmup, reserve=not args.no_reserve,
                       root=args.root, seed=args.seed, log=log)
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
        rows.append([r.backing.upper(), page_size_name(r.page_size_kb), _fmt(r.median_ms),
                     f"{_fmt(r.ci_low_ms)}-{_fmt(r.ci_high_ms)}", _fmt(r.ratio, 3), ratio_ci])
    n_rows, n_cols = data["shape"]
    pct = int(data["confidence"] * 100)
    title = (f"y = W @ x, W {n_rows}x{n_cols} float32 ({data['size'] >> 20} MiB), "
             f"{data['rounds']} rounds x {data['reps']} products")
    render.console.print(render.table(title, ["backing", "pages", "median ms", f"{pct}% CI", "vs 4K",
                                              f"{pct}% CI"], rows))
    for line in notes:
        render.console.print(line)
    render.console.print(f"Pages as verified in /proc/self/smaps. Note: {data['note']}.")
    if not data["pools_restored"]:
        bad = [f"{page_size_name(r.page_size_kb)} (was {r.before})" for r in data["reservations"] if not r.restored]
        render.err_console.print(f"[red]pools not back at their counts: {', '.join(bad)}[/]")
        return 1
    return 0


# --------------------------------------------------------------------------- engine

def add_engine(bsub) -> None:
    p = bsub.add_parser("engine", help="an engine command (llama-bench first) under each backing, interleaved",
                        usage="hugeload bench engine --model FILE [options] -- ENGINE_CMD [ARGS...]")
    p.add_argument("--model", required=True, help="the model file (its source; the bench stages the copies it needs)")
    p.add_argument("--backings", default="default,2m,1g",
                   help="comma-separated, from default, alloc, 2m, 1g, 2m+alloc, 1g+alloc, copy (default: default,2m,1g)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--startup-cmd", help="command timed as start-up, with {model} (default: llama-completion -n 1 when found)")
    p.add_argument("--no-startup", action="store_true", help="do not time start-up separately")
    p.add_argument("--timeout", type=float, default=600, help="seconds one engine run may take (default 600)")
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


def run_engine(args) -> int:
    import shlex

    from hugeload.bench import engine
    from hugeload.probe.cpu import read_cpu

    backings = engine.parse_backings(args.backings)
    startup = None if args.no_startup else (shlex.split(args.startup_cmd) if args.startup_cmd
                                            else engine.default_startup_cmd(args.engine) if args.engine else None)
    log = (lambda msg: None) if args.json else (lambda msg: render.err_console.print(f"[dim]{msg}[/]"))
    data = engine.run(args.model, args.engine, backings, args.rounds, startup, args.timeout, args.root, log=log)
    data["hypervisor"] = read_cpu(args.root).hypervisor
    if args.json:
        render.print_json(data)
        return 0 if any(r["status"] == "ok" for r in data["results"]) else 1
    rows, notes = [], []
    for r in data["results"]:
        if r["status"] != "ok":
            notes.append(f"{r['backing']}: {r['status']}: {r['reason']}")
            if r["status"] in ("skipped", "failed"):
                continue
        weights = "/".join(page_size_name(k) for k in r.get("weights_page_kb", [])) or "?"
        if r.get("file_pmd_mapped_kb"):
            weights += f" ({r['file_pmd_mapped_kb'] >> 10} MiB in 2M PMDs)"
        allocs = "/".join(page_size_name(k) for k in r.get("alloc_page_kb", [])) or "-"
        for test, m in (r.get("metrics") or {}).items():
            unit = "s" if test == "startup_s" else "t/s"
            rows.append([r["backing"], weights, allocs, "start-up" if test == "startup_s" else test,
                         f"{_interval(m, 2 if unit == 's' else 1)} {unit}", _ratio(m),
                         f"{r['hugetlb_kb'] >> 10} MiB", f"{r['vmpte_kb']} kB"])
        if r.get("munmap_failed"):
            notes.append(f"{r['backing']}: the engine printed 'munmap failed'")
    title = f"{data['command']}  on {os.path.basename(data['model'])} ({data['model_size'] >> 20} MiB), {data['rounds']} rounds"
    render.console.print(render.table(title, ["backing", "weights", "large allocs", "test", "median (95% CI)",
                                              "x default (CI)", "HugetlbPages", "page tables"], rows))
    for n in notes:
        render.console.print(n)
    render.console.print("~ marks a ratio whose interval includes 1: within noise. " + data["note"] + ".")
    if data["hypervisor"]:
        render.console.print("This is a virtual machine: a guest's TLB entries are no larger than the host's backing pages, "
                             "so 1G and 2M pages can measure the same here.")
    return 0 if any(r["status"] == "ok" for r in data["results"]) else 1


SUBCOMMANDS = [add_tensors, add_engine]
