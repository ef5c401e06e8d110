"""`hugeload doctor`: can this machine give a model 1 GB pages, and if not, what fixes it."""

from hugeload.act import pools as act_pools
from hugeload.cli import render
from hugeload.cli.common import add_json, require_hugetlb
from hugeload.pages import PAGE_1G
from hugeload.plan import doctor
from hugeload.probe.machine import read_machine


def register(sub) -> None:
    p = sub.add_parser("doctor", help="check kernel, CPU, pools, mounts, cgroup and THP for 1 GB pages")
    p.add_argument(
        "--try",
        dest="try_",
        action="store_true",
        help="reserve one 1 GB page and give it back, to test runtime reservation",
    )
    p.add_argument("--model", metavar="FILE", help="also say whether this model fits one NUMA node")
    add_json(p)
    p.set_defaults(func=run)


def _engine(machine):
    """The llama.cpp build doctor speaks of: the one engines.find_llama() finds, judged by its
    build stamp; on a fixture tree (--root) only the tree's CPU, with the default build."""
    from hugeload import engines
    from hugeload.plan import buffers

    stamp = engines.build_stamp(engines.find_llama()) if str(machine.root) == "/" else None
    return buffers.engine_for(machine.cpu.flags, buffers.amx_built_from_stamp(stamp))


def run(args) -> int:
    require_hugetlb(args.root)
    machine = read_machine(args.root)
    tried = None
    if args.try_ and PAGE_1G.kb in machine.page_sizes_kb and machine.is_root:
        tried = doctor.TryResult(*act_pools.try_one_page(args.root, PAGE_1G.kb))
    checks = doctor.run_checks(machine, tried, _engine(machine))
    checks.append(_numa_check(args))
    usable = doctor.usable_1g(checks)
    if args.json:
        render.print_json({"checks": checks, "usable_1g": usable, "tried": tried})
    else:
        rows = [[c.name, render.status_text(c.status), c.detail, c.fix] for c in checks]
        render.console.print(render.table("hugeload doctor", ["check", "status", "detail", "fix"], rows))
        render.console.print(
            "1G pages: [green]usable[/]" if usable else "1G pages: [red]not usable[/] (see the failed checks)"
        )
    return 0 if usable else 1


def _numa_check(args):
    import os

    from hugeload.errors import UsageError
    from hugeload.plan import numa as plan_numa
    from hugeload.probe import numa as probe_numa

    size = None
    if args.model:
        if not os.path.isfile(args.model):
            raise UsageError(f"no such file: {args.model}")
        size = os.path.getsize(args.model)
    return plan_numa.doctor_check(probe_numa.read_nodes(args.root), size)
