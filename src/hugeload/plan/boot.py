"""Boot-time configuration text: GRUB parameters, fstab lines, sysctl line.  Pure."""

import re
import shlex

from hugeload.pages import PAGE_1G, PAGE_2M
from hugeload.units import GiB, MiB

HUGE_PARAMS = ("hugepagesz", "hugepages", "default_hugepagesz")
GRUB_VAR = "GRUB_CMDLINE_LINUX"


def kernel_params(pages_1g: int | None, pages_2m: int | None) -> list[str]:
    """The seed's line, `hugepagesz=1G hugepages=N default_hugepagesz=1G`, plus 2M when asked."""
    out = []
    if pages_1g:
        out += ["hugepagesz=1G", f"hugepages={pages_1g}"]
    if pages_2m:
        out += ["hugepagesz=2M", f"hugepages={pages_2m}"]
    if pages_1g:
        out.append("default_hugepagesz=1G")
    return out


def fstab_lines(pages_1g: int | None, pages_2m: int | None, dirs: dict[int, str]) -> list[str]:
    out = []
    if pages_2m:
        out.append(f"none {dirs[PAGE_2M.kb]} hugetlbfs pagesize=2M,size={size_option(pages_2m * 2 * MiB)} 0 0")
    if pages_1g:
        out.append(f"none {dirs[PAGE_1G.kb]} hugetlbfs pagesize=1G,size={pages_1g}G 0 0")
    return out


def size_option(n: int) -> str:
    return f"{n // GiB}G" if n % GiB == 0 else f"{n // MiB}M"


def sysctl_line(pages_1g: int | None, pages_2m: int | None) -> str:
    """With default_hugepagesz=1G, vm.nr_hugepages counts 1 GB pages; without it, 2 MB pages."""
    if pages_1g:
        return f"vm.nr_hugepages = {pages_1g}"
    return f"vm.nr_hugepages = {pages_2m or 0}"


def merge_cmdline(existing: str, params: list[str]) -> str:
    """Replace every huge page parameter in `existing` with `params`, keeping the rest in order."""
    kept = [w for w in existing.split() if w.partition("=")[0] not in HUGE_PARAMS]
    return " ".join(kept + params)


_GRUB_LINE = re.compile(rf"^(\s*{GRUB_VAR}\s*=\s*)(.*)$")


def merge_grub(text: str, params: list[str]) -> str:
    """Rewrite GRUB_CMDLINE_LINUX in /etc/default/grub, or append it when missing."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = _GRUB_LINE.match(line)
        if m:
            try:
                value = " ".join(shlex.split(m.group(2)))
            except ValueError:
                value = m.group(2).strip().strip('"')
            lines[i] = f'{m.group(1)}"{merge_cmdline(value, params)}"'
            break
    else:
        lines.append(f'{GRUB_VAR}="{" ".join(params)}"')
    return "\n".join(lines) + "\n"


def merge_fstab(text: str, new_lines: list[str]) -> str:
    """Add each mount line, replacing an existing line for the same mount point; never duplicate."""
    targets = {ln.split()[1]: ln for ln in new_lines}
    out, seen = [], set()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and not line.lstrip().startswith("#") and fields[1] in targets:
            if fields[1] not in seen:
                out.append(targets[fields[1]])
                seen.add(fields[1])
            continue
        out.append(line)
    out += [ln for mp, ln in targets.items() if mp not in seen]
    return "\n".join(out) + "\n"


SYSTEMD_UNIT_NAME = "hugeload-restore.service"


def systemd_unit(hugeload_exe: str) -> str:
    """Replaces the seed's hugepages-model-manager.service: reserve, mount and re-stage the
    models loaded with --persist, once local file systems (the model files) are up."""
    return f"""[Unit]
Description=Stage hugeload's persisted models into huge pages
After=local-fs.target
Wants=local-fs.target
Before=multi-user.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={hugeload_exe} restore
ExecStop={hugeload_exe} clear --force

[Install]
WantedBy=multi-user.target
"""


EXPORTER_UNIT_NAME = "hugeload-exporter.service"


def exporter_unit(hugeload_exe: str, listen: str = "127.0.0.1:9464") -> str:
    """The node agent: metrics for Prometheus, and idle reserved pages given back under memory
    pressure.  After the restore unit, so its first scrape already sees the staged models."""
    return f"""[Unit]
Description=hugeload metrics and release of idle huge pages under memory pressure
After=hugeload-restore.service
Wants=hugeload-restore.service

[Service]
Type=simple
ExecStart={hugeload_exe} exporter --listen {listen} --release-under-pressure
Restart=on-failure

[Install]
WantedBy=multi-user.target
"""
