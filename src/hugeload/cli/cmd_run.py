"""`hugeload run -- CMD ARGS...`: an unmodified engine on huge pages.  The decisions and the run
are hugeload.runner's (plan_run, execute); this parses the options and prints."""

import sys

from hugeload import pages, runner, units
from hugeload.cli.common import add_state_dir
from hugeload.errors import UsageError


def register(sub) -> None:
    p = sub.add_parser(
        "run",
        help="run an engine with the preload library (staged models mapped zero-copy)",
        usage="hugeload run [options] -- CMD [ARGS...]",
    )
    p.add_argument("--page-size", default=None, type=pages.arg_type(), metavar="SIZE", help="auto (default), 1g or 2m")
    p.add_argument("--copy", action="store_true", help="copy unstaged model files into private huge pages")
    p.add_argument(
        "--alloc-threshold",
        default=runner.DEFAULT_ALLOC_THRESHOLD,
        type=units.arg_type(),
        metavar="SIZE",
        help="allocations this large come from huge pages (0 disables; default 64M)",
    )
    p.add_argument(
        "--files", action="append", default=[], metavar="GLOB", help="manage files matching GLOB (repeatable)"
    )
    p.add_argument("--report", metavar="FILE", help="write the per-region report here instead of stderr")
    _choice(
        p,
        "shortfall",
        ("--strict", runner.Shortfall.REFUSE, "refuse to run when the pools cannot hold what the run needs"),
        ("--reserve", runner.Shortfall.RESERVE, "reserve what is missing for the run and give it back after"),
    )
    p.add_argument(
        "--node",
        type=int,
        metavar="N",
        help="bind the engine's CPUs and memory to NUMA node N and map "
        "that node's copy (numactl --cpunodebind=N --membind=N; docs/numa.md)",
    )
    _choice(
        p,
        "log",
        ("--quiet", runner.LogLevel.QUIET, "only warnings from the library"),
        ("--verbose", runner.LogLevel.VERBOSE, "log every managed call"),
    )
    add_state_dir(p)
    p.add_argument("command", nargs="*", metavar="CMD")
    p.set_defaults(func=run, shortfall=runner.Shortfall.NOTE, log=runner.LogLevel.NORMAL)


def _choice(p, dest: str, *options) -> None:
    """Flags that each pick one value of an enum, at most one of them given."""
    group = p.add_mutually_exclusive_group()
    for flag, value, text in options:
        group.add_argument(flag, dest=dest, action="store_const", const=value, help=text)


def _say(line: str) -> None:
    sys.stderr.write(f"hugeload: {line}\n")  # not through rich: one line each, never wrapped


def run(args) -> int:
    if not args.command:
        raise UsageError("give the command to run after --, e.g. hugeload run -- llama-bench -m model.gguf")
    preload = runner.PreloadOptions(
        page_size=args.page_size,
        copy=args.copy,
        alloc_threshold=args.alloc_threshold,
        files=tuple(args.files),
        report=args.report,
        log=args.log,
    )
    options = runner.RunOptions(preload, node=args.node, shortfall=args.shortfall)
    plan = runner.plan_run(args.command, options, args.root, args.state_dir)
    outcome = runner.execute(plan, _say, args.root, args.state_dir)
    if args.log >= runner.LogLevel.NORMAL:
        if args.report is None and outcome.regions:
            # The report went to a temporary file so the summary could read it: pass its lines on
            # to stderr, as the library would have written them.
            lines = outcome.report_text.splitlines()
            sys.stderr.write("".join(line + "\n" for line in lines if line.startswith("hugeload: ")))
        for line in outcome.summary:
            _say(line)
    return outcome.status
