"""`hugeload boot-config`: reserve huge pages at boot, where 1 GB pages are reliable."""

import sys

from hugeload.act import boot as act_boot
from hugeload.act.mounts import DEFAULT_DIRS
from hugeload.cli import render
from hugeload.cli.common import add_json
from hugeload.errors import UsageError
from hugeload.plan import boot as plan_boot
from hugeload.plan import cma as plan_cma
from hugeload.probe import pools as probe_pools


def register(sub) -> None:
    p = sub.add_parser(
        "boot-config", help="GRUB, fstab and sysctl lines for boot-time huge pages (--apply writes them)"
    )
    p.add_argument("--pages-1g", type=int, help="1 GB pages to reserve at boot")
    p.add_argument("--pages-2m", type=int, help="2 MB pages to reserve at boot")
    p.add_argument(
        "--cma",
        type=plan_cma.arg_type,
        metavar="SIZE|NODE:SIZE,...",
        help="hugetlb_cma=: set aside SIZE (a multiple of 1G; per node as 0:4G,1:4G) at boot for 1 GB pages "
        "reserved at run time. Unlike --pages-1g, whose pages are taken at boot and are gone for everything "
        "else, the area serves movable allocations (page cache, anonymous memory) until `hugeload reserve` "
        "takes pages from it, and those reservations then succeed however fragmented memory is. Needs a "
        "kernel with CONFIG_CMA (hugeload doctor says); the kernel skips boot-time 1 GB pages when it is set, "
        "so it does not go with --pages-1g",
    )
    p.add_argument(
        "--apply",
        action="store_true",
        help="write /etc/default/grub.d/hugeload.cfg (or a marked block at the end of /etc/default/grub where "
        "grub has no grub.d) and the fstab lines (a .hugeload.bak copy of each edited file is kept)",
    )
    p.add_argument(
        "--remove",
        action="store_true",
        help="take out what --apply wrote (with --systemd: the unit files)",
    )
    p.add_argument(
        "--etc-root",
        "--target-root",
        dest="target_root",
        default=None,
        help="apply to files under this root instead of / (for images and tests)",
    )
    p.add_argument(
        "--systemd",
        action="store_true",
        help="the systemd units that run `hugeload restore` at boot and the exporter (--apply installs them)",
    )
    add_json(p)
    p.set_defaults(func=run)


def unit_command() -> str:
    """`python -I -m hugeload` for the interpreter running now, once it is shown that only root
    can change that interpreter and package; UsageError saying why not otherwise."""
    why = act_boot.unit_command_problem(sys.executable)
    if why:
        raise UsageError(
            f"a unit would run {sys.executable} -m hugeload as root at every boot, but {why}: "
            "install hugeload where only root can write (e.g. pip install as root into /usr/local or a "
            "root-owned venv) and run boot-config --systemd with that python"
        )
    return plan_boot.hugeload_command(sys.executable)


def run_systemd(args) -> int:
    target = args.target_root or args.root
    names = [plan_boot.SYSTEMD_UNIT_NAME, plan_boot.EXPORTER_UNIT_NAME]
    if args.remove:
        removed = [act_boot.remove_unit(target, n) for n in names]
        if args.json:
            render.print_json({"removed": removed})
        for a in [] if args.json else removed:
            render.err_console.print(f"{'removed' if a.changed else 'not there'}: {a.path}")
        if not args.json:
            render.err_console.print(f"run systemctl disable {' '.join(names)} && systemctl daemon-reload")
        return 0
    exe = unit_command()
    unit = plan_boot.systemd_unit(exe)
    exporter_unit = plan_boot.exporter_unit(exe)
    applied = (
        [act_boot.install_unit(target, unit), act_boot.install_unit(target, exporter_unit, names[1])]
        if args.apply
        else []
    )
    if args.json:
        render.print_json(
            {
                "unit_name": plan_boot.SYSTEMD_UNIT_NAME,
                "unit": unit,
                "units": {names[0]: unit, names[1]: exporter_unit},
                "applied": applied,
                "next_steps": ["systemctl daemon-reload", f"systemctl enable {' '.join(names)}"] if args.apply else [],
            }
        )
        return 0
    print(f"# /etc/systemd/system/{names[0]}\n{unit}\n# /etc/systemd/system/{names[1]}\n{exporter_unit}", end="")
    for a in applied:
        render.err_console.print(f"{'installed' if a.changed else 'unchanged'}: {a.path}")
    if applied:
        render.err_console.print(f"now run systemctl daemon-reload && systemctl enable {' '.join(names)}")
    return 0


def cma_step(cma) -> str | None:
    if cma is None:
        return None
    return (
        f"take up to {cma.pages_1g} x 1G from the area when needed: hugeload reserve --page-size 1g "
        f"--count {cma.pages_1g} (or stage --reserve); `hugeload doctor` shows how many it can still give"
    )


def report_lines(report: act_boot.GrubReport) -> list[str]:
    out = [f"{var}={value!r}" for var, value in report.values.items()]
    return out + [f"note: {n}" for n in report.notes]


def run(args) -> int:
    if args.apply and args.remove:
        raise UsageError("give --apply or --remove, not both")
    if args.systemd:
        return run_systemd(args)
    target = args.target_root or args.root
    if args.remove:
        removed = act_boot.remove(target, list(DEFAULT_DIRS.values()))
        if args.json:
            render.print_json({"removed": removed, "next_steps": ["update-grub"]})
            return 0
        for a in removed:
            render.console.print(f"{'updated' if a.changed else 'unchanged'}: {a.path}")
        render.console.print("now run update-grub (or grub2-mkconfig -o /boot/grub2/grub.cfg)")
        return 0
    for name in ("pages_1g", "pages_2m"):
        v = getattr(args, name)
        if v is not None and v < 0:
            raise UsageError(f"--{name.replace('_', '-')} must not be negative")
    if not args.pages_1g and not args.pages_2m and args.cma is None:
        raise UsageError("give --pages-1g N, --pages-2m N and/or --cma SIZE")
    if args.cma is not None and args.pages_1g:
        raise UsageError(
            "--cma and --pages-1g do not go together: with hugetlb_cma= set the kernel skips boot-time 1 GB pages; "
            "choose pages reserved at boot (--pages-1g) or an area to reserve them from at run time (--cma)"
        )
    if args.cma is not None and not args.target_root:  # an image's machine is not this one
        plan_cma.check_nodes(args.cma, probe_pools.nodes(args.root))
    params = plan_boot.kernel_params(args.pages_1g, args.pages_2m, args.cma)
    fstab = plan_boot.fstab_lines(args.pages_1g, args.pages_2m, DEFAULT_DIRS)
    sysctl = plan_boot.sysctl_line(args.pages_1g, args.pages_2m)
    dropin = act_boot.has_grub_dropins(target)
    applied = act_boot.apply(target, params, fstab) if args.apply else []
    report = act_boot.grub_report(target)
    out = {
        "grub_cmdline_linux": " ".join(params),
        "grub_line": f'GRUB_CMDLINE_LINUX="{" ".join(params)}"',
        "grub_file": f"/{act_boot.GRUB_DROPIN_DIR}/{plan_boot.GRUB_DROPIN}" if dropin else f"/{act_boot.GRUB_FILE}",
        "grub_text": plan_boot.grub_dropin(params) if dropin else plan_boot.merge_grub("", params),
        "grub_now": report.values,
        "grub_notes": report.notes,
        "fstab": fstab,
        "sysctl": sysctl,
        "applied": applied,
        "next_steps": ["update-grub", "reboot", "hugeload doctor"] if args.apply else [],
        "cma": args.cma.param() if args.cma is not None else None,
        "cma_next_step": cma_step(args.cma),
    }
    if args.json:
        render.print_json(out)
        return 0
    where = "a drop-in of its own" if dropin else "a marked block at its end"
    render.console.print(f"# {out['grub_file']} ({where}: the existing lines are kept as they are)")
    render.console.print(str(out["grub_text"]).rstrip("\n"), soft_wrap=True, markup=False)
    if fstab:
        render.console.print("# /etc/fstab (nofail: a machine without the page size still boots)")
    for line in fstab:
        render.console.print(line, soft_wrap=True)
    if args.pages_1g or args.pages_2m:
        render.console.print("# /etc/sysctl.d/90-hugeload.conf (optional: retries the reservation after boot)")
        render.console.print(sysctl)
    if args.cma is not None:
        render.console.print(f"# {args.cma.param()}: after the reboot, {out['cma_next_step']}")
    render.console.print(f"# what grub-mkconfig will read ({', '.join(report.files) or 'no /etc/default/grub'})")
    for line in report_lines(report):
        render.console.print(line, soft_wrap=True, markup=False)
    for a in applied:
        render.console.print(
            f"{'updated' if a.changed else 'unchanged'}: {a.path}"
            + (f" (backup {a.backup})" if a.changed and a.backup else "")
        )
    if args.apply:
        render.console.print(
            "now run update-grub (or grub2-mkconfig -o /boot/grub2/grub.cfg) and reboot; "
            "then `hugeload doctor` checks that the booted pools match"
        )
    return 0
