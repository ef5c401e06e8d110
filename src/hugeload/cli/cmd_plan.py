"""`hugeload plan`: pages, waste and TLB reach per page size for a model."""

import os

from hugeload import modelfile, runner, units
from hugeload import pages as vocab
from hugeload.cli import render
from hugeload.cli.common import add_json, require_hugetlb
from hugeload.errors import UsageError
from hugeload.plan import pages
from hugeload.probe.machine import read_machine
from hugeload.units import KiB, format_bytes


def register(sub) -> None:
    p = sub.add_parser("plan", help="what a model costs in 4K, 2M and 1G pages, and which to use")
    p.add_argument("files", nargs="*", metavar="FILE", help="model files (their sizes are added up)")
    p.add_argument("--size", type=units.arg_type(), help="a size instead of files: 30G, 30GiB, 512M, bytes")
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
        type=units.arg_type(),
        help="smallest model that gets 1G pages under auto "
        f"(default {vocab.size_words(vocab.DEFAULT_POLICY.auto_1g_min)})",
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


def run(args) -> int:
    if bool(args.files) == (args.size is not None):
        raise UsageError("give either --size SIZE or model files")
    requested = args.page_size.kb if args.page_size else None
    sizes = [args.size] if args.size is not None else file_sizes(args.files)
    require_hugetlb(args.root)
    plan = pages.plan_for(read_machine(args.root), sizes, requested, args.threshold_1g)
    if args.nodes:
        from hugeload.plan import numa as plan_numa
        from hugeload.probe import numa as probe_numa

        rec = plan["recommended_page_size_kb"]
        kb = rec if rec != pages.BASE_PAGE_KB else vocab.PAGE_2M.kb
        plan["nodes"] = plan_numa.fit_nodes(sum(sizes), probe_numa.read_nodes(args.root), kb)
    reads = runner.weights_advice(args.files, root=args.root) if args.files else None
    if reads:
        plan["reads"] = reads
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
    if reads:
        render.console.print(f"llama.cpp on this CPU: {reads['why']}.")
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
