"""`hugeload run -- CMD ARGS...`: an unmodified engine on huge pages."""

import os

from hugeload import pages, runner
from hugeload.act import pools as act_pools
from hugeload.cli import render
from hugeload.cli.common import add_state_dir
from hugeload.errors import PoolError, UsageError
from hugeload.units import parse_size


def register(sub) -> None:
    p = sub.add_parser("run", help="run an engine with the preload library (staged models mapped zero-copy)",
                       usage="hugeload run [options] -- CMD [ARGS...]")
    p.add_argument("--page-size", default=None, type=pages.arg_type(), metavar="SIZE", help="auto (default), 1g or 2m")
    p.add_argument("--copy", action="store_true", help="copy unstaged model files into private huge pages")
    p.add_argument("--alloc-threshold", default="64M", help="allocations this large come from huge pages (0 disables; default 64M)")
    p.add_argument("--files", action="append", default=[], metavar="GLOB", help="manage files matching GLOB (repeatable)")
    p.add_argument("--report", metavar="FILE", help="write the per-region report here instead of stderr")
    p.add_argument("--strict", action="store_true", help="refuse to run when the pools cannot hold what the run needs")
    p.add_argument("--reserve", action="store_true", help="reserve what is missing for the run and give it back after")
    p.add_argument("--quiet", action="store_true", help="only warnings from the library")
    p.add_argument("--verbose", action="store_true", help="log every managed call")
    add_state_dir(p)
    p.add_argument("command", nargs="*", metavar="CMD")
    p.set_defaults(func=run)


def run(args) -> int:
    argv = args.command
    if not argv:
        raise UsageError("give the command to run after --, e.g. hugeload run -- llama-bench -m model.gguf")
    threshold = parse_size(args.alloc_threshold)
    log = runner.LogLevel.QUIET if args.quiet else runner.LogLevel.VERBOSE if args.verbose else runner.LogLevel.NORMAL
    options = runner.PreloadOptions(page_size=args.page_size, copy=args.copy, alloc_threshold=threshold,
                                    files=tuple(args.files), report=args.report, log=log)
    candidates = runner.model_args(argv, args.files, state_dir=args.state_dir)
    need_kb = runner.first_page(candidates, options.page_size, options.policy).kb
    need = runner.estimate_need(candidates, need_kb, args.copy, threshold > 0, args.root)
    reserved_owner = None
    if need.missing:
        if args.reserve:
            reserved_owner = f"run:{os.getpid()}"
            try:
                got = act_pools.reserve(args.root, need.page_size_kb, need.missing, partial=True, owner=reserved_owner,
                                        state_dir=args.state_dir)
                if got.obtained < need.missing:
                    render.err_console.print(
                        f"hugeload: note: the kernel gave {got.obtained} of the {need.missing} missing "
                        f"{pages.name(need.page_size_kb)} pages; what does not fit falls back to smaller pages")
            except PoolError as e:
                render.err_console.print(f"hugeload: warning: {e}")
        elif args.strict:
            raise PoolError(runner.describe_need(need))
        else:
            render.err_console.print(f"hugeload: note: {runner.describe_need(need)}; running anyway on the fallback")
    env = runner.environment(options, args.state_dir)
    try:
        return runner.run(argv, env)
    finally:
        if reserved_owner:
            act_pools.release(args.root, None, owner=reserved_owner, state_dir=args.state_dir)
