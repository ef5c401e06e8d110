"""`hugeload bench`: a group of measurements, one subcommand per benchmark.

To add one, write `add_<name>(bsub)` (its parser, with `func` set to its
handler) and append it to SUBCOMMANDS.
"""

from hugeload.bench.common import VM_NOTE, parse_backings
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
    data = tensors.run(size=size, backings=parse_backings(args.backings),
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
    if data["hypervisor"]:
        render.console.print(f"Note: {VM_NOTE}.")
    if not data["pools_restored"]:
        bad = [f"{page_size_name(r.page_size_kb)} (was {r.before})" for r in data["reservations"] if not r.restored]
        render.err_console.print(f"[red]pools not back at their counts: {', '.join(bad)}[/]")
        return 1
    return 0


SUBCOMMANDS = [add_tensors]
