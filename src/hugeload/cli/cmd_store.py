"""The model store commands: stage, unstage, staged (aliases load, unload, loaded), list, clear, gc,
restore (container-args: cmd_container.py).  The work is in act/store; these parse and print."""

import os
from pathlib import Path

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from hugeload import pages
from hugeload.act import store
from hugeload.cli import render
from hugeload.cli.common import add_hvo, add_json, add_state_dir, require_hugetlb
from hugeload.errors import UsageError
from hugeload.plan.pages import plan_for as make_plan
from hugeload.plan.pin import PINS, Pin
from hugeload.probe.machine import read_machine
from hugeload.units import format_bytes

MODEL_SUFFIXES = (".gguf", ".safetensors")


def register(sub) -> None:
    p = sub.add_parser(
        "stage", aliases=["load"], help="stage a model into huge pages; prints the path to give the engine"
    )
    p.add_argument("file", metavar="FILE")
    p.add_argument("--page-size", default=None, type=pages.arg_type(), metavar="SIZE", help="auto (default), 1g or 2m")
    p.add_argument("--name", help="store name (default: the file name without .gguf)")
    p.add_argument("--reserve", action="store_true", help="grow the pool by what is missing (given back on unload)")
    p.add_argument(
        "--pin",
        choices=PINS,
        default=None,
        help="with --reserve, what to reserve pages for: reads (default) what llama.cpp will read on this CPU "
        "(the file, its heap copy or both; refuses when it reads only the heap copy), file, or both",
    )
    p.add_argument("--verify", action="store_true", help="compare SHA-256 of source and staged copy")
    p.add_argument("--persist", action="store_true", help="re-stage at boot (hugeload restore)")
    p.add_argument(
        "--group",
        metavar="NAME",
        help="make the staged copies readable by root and this group only (default: by every user)",
    )
    p.add_argument(
        "--wait", type=float, default=store.LOCK_TIMEOUT, help="seconds to wait for another stager of the same model"
    )
    add_hvo(p)
    add_placement(p)
    add_config_dir(p)
    add_state_dir(p)
    add_json(p)
    p.set_defaults(func=run_load)

    p = sub.add_parser("unstage", aliases=["unload"], help="remove a staged model and give back its pages")
    p.add_argument("model", metavar="NAME|PATH")
    p.add_argument("--force", action="store_true", help="even while a process maps it")
    add_config_dir(p)
    add_state_dir(p)
    add_json(p)
    p.set_defaults(func=run_unload)

    p = sub.add_parser("staged", aliases=["loaded"], help="staged models, their pages and who maps them")
    add_state_dir(p)
    add_json(p)
    p.set_defaults(func=run_loaded)

    p = sub.add_parser("list", help="model files under a directory, with the plan for each")
    p.add_argument("dir", nargs="?", default=".", metavar="DIR")
    add_json(p)
    p.set_defaults(func=run_list)

    p = sub.add_parser("clear", help="unstage every staged model")
    p.add_argument("--force", action="store_true", help="even while processes map them")
    p.add_argument(
        "--keep-persisted", action="store_true", help="leave them listed for restore at boot (the boot unit's stop)"
    )
    add_config_dir(p)
    add_state_dir(p)
    add_json(p)
    p.set_defaults(func=run_clear)

    p = sub.add_parser("gc", help="remove what interrupted stagings left behind and free its pages")
    add_state_dir(p)
    add_json(p)
    p.set_defaults(func=run_gc)

    p = sub.add_parser("restore", help="re-stage every model staged with --persist (run at boot)")
    add_config_dir(p)
    add_state_dir(p)
    add_json(p)
    p.set_defaults(func=run_restore)


def add_placement(p) -> None:
    g = p.add_argument_group("NUMA placement (docs/numa.md)")
    g.add_argument("--node", type=int, metavar="N", help="stage every page on NUMA node N (checked from numa_maps)")
    g.add_argument("--replicate", action="store_true", help="one copy per node; engines map the copy on their node")
    g.add_argument(
        "--nodes", metavar="LIST", help="the nodes for --replicate or --interleave, e.g. 0,1 (alone: --replicate)"
    )
    g.add_argument(
        "--interleave", action="store_true", help="one copy, pages spread over the nodes (one engine spanning nodes)"
    )


def placement_from(args):
    from hugeload.plan import numa as plan_numa
    from hugeload.probe import numa as probe_numa

    with_memory = [n.node for n in probe_numa.read_nodes(args.root) if n.has_memory]
    return plan_numa.placement(args.node, args.nodes, args.replicate, args.interleave, with_memory)


def add_config_dir(p) -> None:
    p.add_argument(
        "--config-dir",
        default=None,
        help="where --persist models are listed (default $HUGELOAD_CONFIG_DIR or /etc/hugeload)",
    )


def _progress(total: int, quiet: bool):
    if quiet:
        return None, lambda n: None
    bar = Progress(
        TextColumn("staging"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=render.err_console,
        transient=True,
    )
    task = bar.add_task("copy", total=total)
    return bar, lambda n: bar.update(task, advance=n)


def run_load(args) -> int:
    from hugeload import runner
    from hugeload.plan import buffers

    require_hugetlb(args.root)
    placement = placement_from(args)
    files = store.source_files(args.file)
    total = sum(os.path.getsize(f) for f in files)
    if args.pin is not None and not args.reserve:
        raise UsageError("--pin says what --reserve reserves pages for: add --reserve")
    split = runner.weights_split(files, root=args.root)  # read once: for what to pin, and the advice printed
    pins = runner.stage_pins(files, Pin(args.pin or Pin.READS), root=args.root, split=split) if args.reserve else None
    if pins is not None and not pins.plan.file:
        raise UsageError(pins.plan.why)  # before anything is reserved or copied
    options = store.StageOptions(
        page_size=args.page_size,
        name=args.name,
        reserve=args.reserve,
        verify=args.verify,
        persist=args.persist,
        lock_timeout=args.wait,
        heap_pages=pins.heap_pages if pins else (),
        placement=placement,
        group=args.group,
        hvo=args.hvo,
    )
    bar, progress = _progress(total * max(1, len(placement.copies())), args.json)
    if bar:
        bar.start()
    try:
        m, cached, reason = store.stage(args.file, options, args.state_dir, args.root, progress, args.config_dir)
    finally:
        if bar:
            bar.stop()
    reads = runner.advice_of(split)
    if args.json:
        pinned = None if pins is None else {**pins.plan.to_json(), "heap_pages": _pages_json(pins.heap_pages)}
        render.print_json({**m.to_json(), "already_staged": cached, "reason": reason, "reads": reads, "pinned": pinned})
        return 0
    if reads:
        warn = reads["advice"] == buffers.Advice.HEAP
        render.err_console.print(
            f"{'[yellow]note:[/] ' if warn else ''}llama.cpp on this CPU: {reads['why']}.", soft_wrap=True
        )
    if pins is not None and not cached:
        heap = ", ".join(f"{n} x {pages.name(kb)}" for kb, n in pins.heap_pages)
        render.err_console.print(f"--reserve pins {pins.plan.why}" + (f" (kept free: {heap})" if heap else "."))
    if cached:
        render.err_console.print(f"{m.name}: already staged and unchanged")
    else:
        render.err_console.print(f"{m.name}: {format_bytes(m.size)} in {page_counts(m.copies[0])} pages ({reason})")
        for c in m.copies if m.replicas or m.node >= 0 else []:
            render.err_console.print(f"  node {c.node}: {page_counts(c)} pages at {c.path}")
    if any(f.parts for f in m.files):  # each part is a file of its own: only the library maps them as one
        render.err_console.print(
            f"use it with: hugeload run -- ENGINE -m {m.source}   (the copy is in two parts, 1G then 2M pages: "
            "the preload library maps them as one file)"
        )
        print(m.source)
        return 0
    render.err_console.print(f"use it with: llama-server -m {m.path}   (or hugeload run -- ENGINE -m {m.source})")
    print(m.path)
    return 0


def _pages_json(counts: tuple[tuple[int, int], ...]) -> list[dict]:
    return [{"page_size_kb": kb, "pages": n} for kb, n in counts]


def page_counts(c: store.Copy) -> str:
    """'9 x 1G', or '5 x 1G + 2048 x 2M' for a copy in mixed page sizes (largest first)."""
    return " + ".join(f"{n} x {pages.name(kb)}" for kb, (_, n) in sorted(c.split().items(), reverse=True))


def run_unload(args) -> int:
    m = store.unstage(args.model, args.force, args.state_dir, args.root, args.config_dir)
    if args.json:
        render.print_json({"unloaded": m.to_json()})
    else:
        freed = page_counts(m.copies[0]) if m.files else f"{m.pages} x {pages.name(m.page_size_kb)}"
        render.console.print(f"{m.name}: unstaged, {freed} pages freed")
    return 0


def run_loaded(args) -> int:
    models = store.staged(args.state_dir, args.root)
    if args.json:
        render.print_json({"models": [m.to_json() for m in models]})
        return 0
    if not models:
        render.console.print("no staged models (hugeload stage FILE stages one)")
        return 0
    rows = []
    for m in models:
        if not m.readable:
            rows.append([m.name, "unreadable", "", "", "", "", m.error, ""])
            continue
        for i, c in enumerate(m.copies if m.files else [store.Copy(-1, m.page_size_kb, m.pages, [])]):
            first = i == 0
            rows.append(
                [
                    m.name if first else "",
                    m.state if first else "",
                    "-" if c.node < 0 else c.node,
                    "+".join(pages.name(kb) for kb in sorted(c.split(), reverse=True)),
                    "+".join(str(n) for _, (_, n) in sorted(c.split().items(), reverse=True)),
                    format_bytes(m.size) if m.files and first else "",
                    c.path,
                    (", ".join(m.processes) or "-") if first else "",
                ]
            )
    render.console.print(
        render.table("Staged models", ["name", "state", "node", "page", "pages", "size", "path", "mapped by"], rows)
    )
    return 0


def run_list(args) -> int:
    d = Path(args.dir)
    if not d.is_dir():
        raise UsageError(f"no such directory: {args.dir}")
    require_hugetlb(args.root)
    machine = read_machine(args.root)
    found = sorted(p for p in d.rglob("*") if p.suffix in MODEL_SUFFIXES and p.is_file())
    entries = []
    for p in found:
        plan = make_plan(machine, [p.stat().st_size], None)
        entries.append(
            {
                "path": str(p),
                "size": p.stat().st_size,
                "recommended_page_size_kb": plan["recommended_page_size_kb"],
                "pages": next(o.pages for o in plan["options"] if o.page_size_kb == plan["recommended_page_size_kb"]),
            }
        )
    if args.json:
        render.print_json({"models": entries})
        return 0
    rows = [
        [e["path"], format_bytes(e["size"]), pages.name(e["recommended_page_size_kb"]), e["pages"]] for e in entries
    ]
    render.console.print(
        render.table(f"Models under {d}", ["file", "size", "page", "pages"], rows)
        if rows
        else f"no .gguf or .safetensors files under {d}"
    )
    return 0


def run_clear(args) -> int:
    result = store.clear(args.force, args.state_dir, args.root, args.config_dir, args.keep_persisted)
    done = result.pop("unstaged")
    if args.json:
        render.print_json({"unloaded": done, **result})
    else:
        render.console.print(f"unstaged {len(done)} model(s)" + (f": {', '.join(done)}" if done else ""))
    return 0


def run_gc(args) -> int:
    result = store.gc(args.state_dir, args.root)
    if args.json:
        render.print_json(result)
        return 0
    for r in result["removed"]:
        render.console.print(f"removed {r}")
    for r in result["released"]:
        render.console.print(f"released {r.released} x {pages.name(r.page_size_kb)} pages")
    for r in result["unmounted"]:
        render.console.print(f"unmounted {r}")
    for r in result.get("unreadable", []):
        render.err_console.print(f"[yellow]kept, manifest unreadable:[/] {r} (hugeload unstage NAME removes it)")
    if not any(result.values()):
        render.console.print("nothing to collect")
    return 0


def run_restore(args) -> int:
    require_hugetlb(args.root)
    done = store.restore(args.state_dir, args.root, args.config_dir)
    results = [{"name": r.name, "path": r.path, "already_staged": r.already_staged} for r in done if r.error is None]
    failed = [{"name": r.name, "error": r.error} for r in done if r.error is not None]
    if args.json:
        render.print_json({"restored": results, "failed": failed})
    else:
        for r in results:
            render.console.print(f"{r['name']}: {'already staged' if r['already_staged'] else 'staged'} at {r['path']}")
        for f in failed:
            render.err_console.print(f"[red]{f['name']}: {f['error']}[/]")
    return 1 if failed else 0
