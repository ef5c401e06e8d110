"""`hugeload plan`: pages, waste and TLB reach per page size for a model."""

import os

from hugeload import modelfile
from hugeload.cli import render
from hugeload.cli.common import add_json, require_hugetlb
from hugeload.errors import UsageError
from hugeload.plan import pages
from hugeload.probe import cpu as probe_cpu
from hugeload.probe.machine import read_machine
from hugeload import pages as vocab
from hugeload.units import KiB, format_bytes, parse_size


def register(sub) -> None:
    p = sub.add_parser("plan", help="what a model costs in 4K, 2M and 1G pages, and which to use")
    p.add_argument("files", nargs="*", metavar="FILE", help="model files (their sizes are added up)")
    p.add_argument("--size", help="a size instead of files: 30G, 30GiB, 512M, bytes")
    p.add_argument(
        "--page-size",
        default=None,
        type=vocab.arg_type(("1g", "2m", "4k")),
        metavar="SIZE",
        help="auto (default), 1g, 2m or 4k",
    )
    p.add_argument(
        "--threshold-1g",
        default=None,
        help=f"smallest model that gets 1G pages under auto (default {vocab.size_words(vocab.DEFAULT_POLICY.auto_1g_min)})",
    )
    p.add_argument(
        "--nodes", action="store_true", help="per NUMA node: what a copy needs and whether the node can hold it"
    )
    add_json(p)
    p.set_defaults(func=run)


def file_sizes(files: list[str]) -> list[int]:
    sizes = []
    for f in files:
        if not os.path.exists(f):
            raise UsageError(f"no such file: {f}")
        if os.path.isdir(f):
            raise UsageError(f"{f} is a directory, not a model file")
        modelfile.read_header(f)  # a malformed GGUF or safetensors file: one line, before any plan
        sizes.append(os.path.getsize(f))
    return sizes


def make_plan(
    machine,
    sizes: list[int],
    requested_kb: int | None,
    threshold: int | None = None,
    policy: vocab.Policy = vocab.DEFAULT_POLICY,
) -> dict:
    sizes_kb = machine.page_sizes_kb
    cpu_tlb = {kb: probe_cpu.data_tlb_entries(machine.cpu, kb) for kb in [4, *sizes_kb]}
    pool_free = {p.page_size_kb: p.free for p in machine.pools if p.node is None}
    opts = pages.options(sizes, sizes_kb, cpu_tlb, pool_free)
    supports_1g = machine.cpu.pdpe1gb or vocab.PAGE_1G.kb in sizes_kb and not machine.cpu.vendor
    # For planning, a size is obtainable when its pool has free pages or can be grown by us;
    # whether today's free memory holds the whole model is a separate note.
    obtainable = {kb: pool_free.get(kb, 0) > 0 or machine.is_root for kb in sizes_kb}
    rec = pages.recommend(sizes, sizes_kb, supports_1g, obtainable, threshold, requested_kb, policy)
    notes = []
    chosen = next(o for o in opts if o.page_size_kb == rec.page_size_kb)
    avail = machine.meminfo.get("MemAvailable", 0) * KiB
    if chosen.page_size_kb != pages.BASE_PAGE_KB:
        missing = max(0, chosen.pages - (chosen.pool_free or 0)) * chosen.page_size_kb * KiB
        if missing > avail:
            notes.append(
                f"needs {format_bytes(missing)} more huge pages than are free but only {format_bytes(avail)} of memory is available"
            )
    return {
        "sizes": sizes,
        "total_bytes": sum(sizes),
        "options": opts,
        "recommended_page_size_kb": rec.page_size_kb,
        "reason": rec.reason,
        "notes": notes,
        "tlb_source": machine.cpu.tlb_source,
        "tlb_detail": machine.cpu.tlb_detail,
    }


def run(args) -> int:
    if bool(args.files) == bool(args.size):
        raise UsageError("give either --size SIZE or model files")
    requested = args.page_size.kb if args.page_size else None
    sizes = [parse_size(args.size)] if args.size else file_sizes(args.files)
    require_hugetlb(args.root)
    threshold = parse_size(args.threshold_1g) if args.threshold_1g is not None else None
    plan = make_plan(read_machine(args.root), sizes, requested, threshold)
    if args.nodes:
        from hugeload.plan import numa as plan_numa
        from hugeload.probe import numa as probe_numa

        kb = plan["recommended_page_size_kb"] if plan["recommended_page_size_kb"] != 4 else 2048
        plan["nodes"] = plan_numa.fit_nodes(sum(sizes), probe_numa.read_nodes(args.root), kb)
    if args.json:
        render.print_json(plan)
        return 0
    rows = []
    for o in plan["options"]:
        tlb = ", ".join(f"L{lvl} {n}" for lvl, n in sorted(o.cpu_tlb_entries.items())) or "unknown"
        mark = " <- recommended" if o.page_size_kb == plan["recommended_page_size_kb"] else ""
        rows.append(
            [
                vocab.name(o.page_size_kb) + mark,
                o.pages,
                format_bytes(o.bytes),
                format_bytes(o.waste_bytes),
                o.tlb_entries,
                tlb,
                "-" if o.pool_free is None else o.pool_free,
            ]
        )
    render.console.print(
        render.table(
            f"Plan for {format_bytes(plan['total_bytes'])}",
            ["page", "pages", "bytes", "waste", "TLB entries needed", f"CPU TLB ({plan['tlb_source']})", "pool free"],
            rows,
        )
    )
    render.console.print(f"recommended: {vocab.name(plan['recommended_page_size_kb'])} ({plan['reason']})")
    for n in plan["notes"]:
        render.console.print(f"[yellow]note:[/] {n}")
    if args.nodes:
        from hugeload.plan import numa as plan_numa

        rows = [
            [
                f.node,
                plan_numa.format_cpulist(f.cpus) or "-",
                format_bytes(f.mem_total_kb * KiB),
                format_bytes(f.mem_free_kb * KiB),
                f"{f.pages} x {vocab.name(f.page_size_kb)}",
                f.pool_free,
                "yes" if f.fits else "no",
                f.note,
            ]
            for f in plan["nodes"]
        ]
        render.console.print(
            render.table(
                "One copy per NUMA node",
                ["node", "cpus", "memory", "free", "copy needs", "pool free", "fits", "note"],
                rows,
            )
            if rows
            else "no NUMA nodes listed by this kernel"
        )
    return 0
