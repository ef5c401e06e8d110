"""`hugeload boot-config`: reserve huge pages at boot, where 1 GB pages are reliable."""

from hugeload.act import boot as act_boot
from hugeload.act.mounts import DEFAULT_DIRS
from hugeload.cli import render
from hugeload.cli.common import add_json
from hugeload.errors import UsageError
from hugeload.plan import boot as plan_boot


def register(sub) -> None:
    p = sub.add_parser("boot-config", help="GRUB, fstab and sysctl lines for boot-time huge pages (--apply edits them)")
    p.add_argument("--pages-1g", type=int, help="1 GB pages to reserve at boot")
    p.add_argument("--pages-2m", type=int, help="2 MB pages to reserve at boot")
    p.add_argument(
        "--apply", action="store_true", help="edit /etc/default/grub and /etc/fstab (a .hugeload.bak copy is kept)"
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
        help="the systemd unit that runs `hugeload restore` at boot (--apply installs it)",
    )
    add_json(p)
    p.set_defaults(func=run)


def run_systemd(args) -> int:
    import shutil
    import sys

    exe = shutil.which("hugeload") or f"{sys.executable} -m hugeload.cli"
    unit = plan_boot.systemd_unit(exe)
    exporter_unit = plan_boot.exporter_unit(exe)
    names = f"{plan_boot.SYSTEMD_UNIT_NAME} {plan_boot.EXPORTER_UNIT_NAME}"
    applied = (
        [
            act_boot.install_unit(args.target_root or args.root, unit),
            act_boot.install_unit(args.target_root or args.root, exporter_unit, plan_boot.EXPORTER_UNIT_NAME),
        ]
        if args.apply
        else []
    )
    if args.json:
        render.print_json(
            {
                "unit_name": plan_boot.SYSTEMD_UNIT_NAME,
                "unit": unit,
                "units": {plan_boot.SYSTEMD_UNIT_NAME: unit, plan_boot.EXPORTER_UNIT_NAME: exporter_unit},
                "applied": applied,
                "next_steps": ["systemctl daemon-reload", f"systemctl enable {names}"] if args.apply else [],
            }
        )
        return 0
    print(
        f"# /etc/systemd/system/{plan_boot.SYSTEMD_UNIT_NAME}\n{unit}\n# /etc/systemd/system/{plan_boot.EXPORTER_UNIT_NAME}\n{exporter_unit}",
        end="",
    )
    for a in applied:
        render.err_console.print(f"{'installed' if a.changed else 'unchanged'}: {a.path}")
    if applied:
        render.err_console.print(f"now run systemctl daemon-reload && systemctl enable {names}")
    return 0


def run(args) -> int:
    if args.systemd:
        return run_systemd(args)
    for name in ("pages_1g", "pages_2m"):
        v = getattr(args, name)
        if v is not None and v < 0:
            raise UsageError(f"--{name.replace('_', '-')} must not be negative")
    if not args.pages_1g and not args.pages_2m:
        raise UsageError("give --pages-1g N and/or --pages-2m N")
    params = plan_boot.kernel_params(args.pages_1g, args.pages_2m)
    fstab = plan_boot.fstab_lines(args.pages_1g, args.pages_2m, DEFAULT_DIRS)
    sysctl = plan_boot.sysctl_line(args.pages_1g, args.pages_2m)
    target = args.target_root or args.root
    applied = act_boot.apply(target, params, fstab) if args.apply else []
    out = {
        "grub_cmdline_linux": " ".join(params),
        "grub_line": f'GRUB_CMDLINE_LINUX="{" ".join(params)}"',
        "fstab": fstab,
        "sysctl": sysctl,
        "applied": applied,
        "next_steps": ["update-grub", "reboot", "hugeload doctor"] if args.apply else [],
    }
    if args.json:
        render.print_json(out)
        return 0
    render.console.print("# /etc/default/grub (merged with the parameters already there)")
    render.console.print(out["grub_line"], soft_wrap=True)
    render.console.print("# /etc/fstab")
    for line in fstab:
        render.console.print(line, soft_wrap=True)
    render.console.print("# /etc/sysctl.d/90-hugeload.conf (optional: retries the reservation after boot)")
    render.console.print(sysctl)
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
