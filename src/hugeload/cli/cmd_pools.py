"""`hugeload reserve` / `hugeload release`: grow and shrink huge page pools safely."""

from hugeload import pages
from hugeload.act import pools as act_pools
from hugeload.cli import render
from hugeload.cli.common import add_hvo, add_json, add_state_dir, require_hugetlb
from hugeload.errors import PoolError, UsageError
from hugeload.plan import hvo as plan_hvo
from hugeload.plan import reserve as plan_reserve
from hugeload.probe.memory import read_meminfo, read_pcp_pages, read_pressure, read_vmstat
from hugeload.units import parse_size


def register(sub) -> None:
    p = sub.add_parser("reserve", help="grow a huge page pool, reading back what the kernel really gave")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--count", type=int, help="pages to add to the pool")
    group.add_argument("--size", help="memory to add, a multiple of the page size (e.g. 4G)")
    p.add_argument("--page-size", required=True, type=pages.arg_type(auto=False), help="1g or 2m")
    p.add_argument("--node", type=int, help="reserve on this NUMA node only")
    p.add_argument("--partial", action="store_true", help="keep a short reservation instead of rolling it back")
    p.add_argument("--force", action="store_true", help="reserve even below the MemAvailable floor")
    p.add_argument("--min-available", help="MemAvailable to leave, a size or a percentage of RAM (default 10%%)")
    add_hvo(p)
    add_state_dir(p)
    add_json(p)
    p.set_defaults(func=run_reserve)

    p = sub.add_parser("release", help="give back the pages hugeload reserved (never others', never in use)")
    p.add_argument("--page-size", type=pages.arg_type(auto=False), help="only this page size (1g or 2m)")
    p.add_argument("--all", action="store_true", help="also pages reserved for staged models and runs")
    add_state_dir(p)
    add_json(p)
    p.set_defaults(func=run_release)


def hvo_measure(root) -> plan_hvo.Measure:
    return plan_hvo.Measure(
        plan_hvo.used_kb(read_meminfo(root), read_pcp_pages(root)), plan_hvo.memmap_kb(read_vmstat(root))
    )


def pressure_warning(root) -> str | None:
    pr = read_pressure(root)
    if pr and pr.some_avg10 > 1.0:
        return f"memory pressure: {pr.some_avg10:.1f}% of the last 10 s stalled on memory (some avg10)"
    return None


def run_reserve(args) -> int:
    kb = args.page_size.kb
    require_hugetlb(args.root)
    if args.count is not None:
        count = args.count
        if count <= 0:
            raise UsageError(f"--count must be positive, got {count}")
    else:
        count = plan_reserve.pages_for_size(parse_size(args.size), kb)
    act_pools.validate(args.root, kb, args.node)
    mem = read_meminfo(args.root)
    floor = plan_reserve.parse_floor(args.min_available, mem.get("MemTotal", 0))
    check = plan_reserve.check_floor(count, kb, mem.get("MemAvailable", 0), mem.get("MemTotal", 0), floor)
    if not check.ok and not args.force:
        raise PoolError(check.message)
    # Said after the reservation (which it does not stop), so that a refusal stays one line.
    warning = pressure_warning(args.root)
    measure_before = hvo_measure(args.root)
    try:
        result = act_pools.reserve(
            args.root, kb, count, args.node, args.partial, state_dir=args.state_dir, hvo_mode=args.hvo, prefault=False
        )
    except act_pools.ShortReservation as e:
        if args.json:
            render.print_json({"ok": False, "error": str(e), **e.result._asdict()})
        elif kb >= pages.PAGE_1G.kb:
            render.err_console.print(f"[yellow]{act_pools.fragmentation_note(args.root)}[/]")
        _print_steps(e.result, args.json)
        raise
    # Only for one plain write: a retry's drop_caches frees far more than HVO saves.
    # Read before the pre-fault, which takes seconds in which others allocate too.
    measure_after = hvo_measure(args.root) if len(result.steps) == 1 else None
    result = act_pools.prefaulted(args.root, result)
    hvo_line = plan_hvo.saving_line(result.hvo, kb, result.obtained, measure_before, measure_after)
    if args.json:
        render.print_json(
            {
                "ok": True,
                "obtained": result.obtained,
                **result._asdict(),
                "hvo_saved_computed": plan_hvo.saved([(kb, result.obtained)]) if result.hvo.startswith("on") else 0,
                "hvo_measured": {"before": measure_before, "after": measure_after},
                "hvo_line": hvo_line,
            }
        )
        return 0
    if warning:
        render.err_console.print(f"[yellow]warning:[/] {warning}")
    _print_steps(result, False)
    where = "system-wide" if args.node is None else f"on node {args.node}"
    short = result.after - result.before < count
    render.console.print(
        f"{pages.name(kb)} pool {where}: {result.before} -> {result.after} "
        f"({'+' if result.obtained >= 0 else ''}{result.obtained} of {count} asked"
        f"{', kept short with --partial' if short else ''})"
    )
    render.console.print(hvo_line)
    return 0


def _print_steps(result, as_json: bool) -> None:
    if as_json or len(result.steps) <= 1:
        return
    for s in result.steps:
        render.err_console.print(f"  {s.name}: pool {s.count}{f' (+{s.gained})' if s.gained > 0 else ''}")


def run_release(args) -> int:
    kb = args.page_size.kb if args.page_size else None
    require_hugetlb(args.root)
    results = act_pools.release(args.root, kb, owner=None if args.all else "reserve", state_dir=args.state_dir)
    if args.json:
        render.print_json({"released": results})
    elif not results:
        render.console.print("nothing to release: hugeload holds no pages" + ("" if args.all else " from `reserve`"))
    for r in results if not args.json else []:
        where = "system-wide" if r.node is None else f"node {r.node}"
        render.console.print(
            f"{pages.name(r.page_size_kb)} pool {where}: {r.before} -> {r.after} (released {r.released})"
        )
        if r.kept:
            render.console.print(f"[yellow]kept {r.kept} page(s):[/] in use by {r.reason}")
    return 0 if all(r.kept == 0 for r in results) else 1
