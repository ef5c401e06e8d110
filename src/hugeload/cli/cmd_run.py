"""`hugeload run -- CMD ARGS...`: an unmodified engine on huge pages."""

import contextlib
import dataclasses
import os
import sys
from pathlib import Path

from hugeload import pages, runner
from hugeload.act import pools as act_pools
from hugeload.act import ledger, state, store
from hugeload.cli import render
from hugeload.cli.common import add_state_dir
from hugeload.errors import PoolError, UsageError
from hugeload.units import parse_size


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
        help="allocations this large come from huge pages (0 disables; default 64M)",
    )
    p.add_argument(
        "--files", action="append", default=[], metavar="GLOB", help="manage files matching GLOB (repeatable)"
    )
    p.add_argument("--report", metavar="FILE", help="write the per-region report here instead of stderr")
    p.add_argument("--strict", action="store_true", help="refuse to run when the pools cannot hold what the run needs")
    p.add_argument("--reserve", action="store_true", help="reserve what is missing for the run and give it back after")
    p.add_argument(
        "--node",
        type=int,
        metavar="N",
        help="bind the engine's CPUs and memory to NUMA node N and map "
        "that node's copy (numactl --cpunodebind=N --membind=N; docs/numa.md)",
    )
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
    options = runner.PreloadOptions(
        page_size=args.page_size,
        copy=args.copy,
        alloc_threshold=threshold,
        files=tuple(args.files),
        report=args.report,
        log=log,
    )
    candidates = runner.model_args(argv, args.files, state_dir=args.state_dir)
    from hugeload.act import numa

    bind = None
    if args.node is not None:
        node = numa.check_run_node(args.node, args.root)
        numa.check_copies_for_node(args.node, [c.path for c in candidates if c.staged], args.state_dir)
        bind = (args.node, node.cpus)
    else:
        note = numa.spanning_note([c.path for c in candidates if c.staged], args.state_dir, args.root)
        if note:
            render.err_console.print(f"hugeload: note: {note}")
    repack = runner.repack_enabled(argv)
    predictions = {c.path: runner.predict_buffers(c.path, argv[0], repack=repack, root=args.root) for c in candidates}
    needs = runner.estimate_needs(
        candidates, options.page_size, args.copy, threshold, predictions, args.root, options.policy
    )
    reserved_owner = str(ledger.Owner.process("run"))
    reserved = False
    for need in needs:
        if not need.missing:
            continue
        if args.reserve:
            try:
                reserved = True
                got = act_pools.reserve(
                    args.root,
                    need.page_size_kb,
                    need.missing,
                    partial=True,
                    owner=reserved_owner,
                    state_dir=args.state_dir,
                )
                if got.obtained < need.missing:
                    render.err_console.print(
                        f"hugeload: note: the kernel gave {got.obtained} of the {need.missing} missing "
                        f"{pages.name(need.page_size_kb)} pages; what does not fit falls back to smaller pages"
                    )
            except PoolError as e:
                render.err_console.print(f"hugeload: warning: {e}")
        elif args.strict:
            raise PoolError(runner.describe_need(need))
        else:
            render.err_console.print(f"hugeload: note: {runner.describe_need(need)}; running anyway on the fallback")
    # The report goes to a file so the summary below can read it; without --report that file
    # is temporary and its lines are passed on to stderr as the library would have written them.
    report, start = _report_file(args.report, args.state_dir)
    env = runner.environment(dataclasses.replace(options, report=str(report)), args.state_dir)
    if bind:
        env["HUGELOAD_NODE"] = str(bind[0])
    try:
        return runner.run(argv, env, bind)
    finally:
        try:
            _summarize(report, start, args.report is None, int(log), candidates, predictions, threshold)
        finally:
            if args.report is None:
                with contextlib.suppress(OSError):
                    os.unlink(report)
            if reserved:
                act_pools.release(args.root, None, owner=reserved_owner, state_dir=args.state_dir)


def _report_file(path: str | None, state_dir=None) -> tuple[Path, int]:
    if path is not None:
        p = Path(path)
        try:
            return p, p.stat().st_size  # the library appends: read only this run's lines
        except OSError:
            return p, 0
    # In the state dir, named by our pid, so `hugeload gc` removes it after a kill -9.
    p = store.run_report_path(os.getpid(), state_dir)
    state.ensure_dir(p.parent)
    p.write_bytes(b"")
    os.chmod(p, 0o600)
    return p, 0


def _summarize(report: Path, start: int, forward: bool, log: int, candidates, predictions, threshold: int) -> None:
    try:
        with open(report, "rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
    except OSError:
        text = ""
    regions = runner.parse_report(text)
    if forward and log >= 1 and regions:
        sys.stderr.write("".join(line + "\n" for line in text.splitlines() if line.startswith("hugeload: ")))
    if log >= 1:
        for line in runner.read_summary(candidates, predictions, regions, threshold):
            sys.stderr.write(f"hugeload: {line}\n")  # not through rich: one line each, never wrapped
