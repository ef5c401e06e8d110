"""`hugeload run -- CMD ARGS...`: an unmodified engine on huge pages."""

import os

from hugeload import runner
from hugeload.act import pools as act_pools
from hugeload.cli import render
from hugeload.cli.common import add_state_dir
from hugeload.errors import PoolError, UsageError
from hugeload.units import page_size_name, parse_page_size, parse_size


def register(sub) -> None:
    p = sub.add_parser("run", help="run an engine with the preload library (staged models mapped zero-copy)",
                       usage="hugeload run [options] -- CMD [ARGS...]")
    p.add_argument("--page-size", default="auto", help="auto (default), 1g or 2m")
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
    kb = parse_page_size(args.page_size, allow_auto=True)
    if kb == 4:
        raise UsageError("--page-size 4k means no huge pages: run the command without hugeload")
    threshold = parse_size(args.alloc_threshold)
    page_name = {None: "auto", 1048576: "1g", 2048: "2m"}[kb]
    candidates = runner.model_args(argv, args.files, state_dir=args.state_dir)
    need_kb = kb or (1048576 if any(c.size >= runner.GiB for c in candidates) else 2048)
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
                        f"{page_size_name(need.page_size_kb)} pages; what does not fit falls back to smaller pages")
            except PoolError as e:
                render.err_console.print(f"hugeload: warning: {e}")
        elif args.strict:
            raise PoolError(runner.describe_need(need))
        else:
            render.err_console.print(f"hugeload: note: {runner.describe_need(need)}; running anyway on the fallback")
    log = 0 if args.quiet else 2 if args.verbose else 1
    env = runner.environment(page_name, args.copy, threshold, args.files, args.report, args.state_dir, log)
    try:
        return runner.run(argv, env)
    finally:
        if reserved_owner:
            act_pools.release(args.root, None, owner=reserved_owner, state_dir=args.state_dir)
