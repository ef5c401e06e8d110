"""Boot-time configuration text: GRUB parameters, fstab lines, sysctl line, systemd units.  Pure.

GRUB: hugeload never rewrites a line of /etc/default/grub.  Where the distribution reads
/etc/default/grub.d/*.cfg after it (Debian, Ubuntu: grub-mkconfig sources them in order), the
parameters go in a drop-in of their own, `hugeload.cfg`, that appends to GRUB_CMDLINE_LINUX;
elsewhere the same assignment is appended to /etc/default/grub between two marker lines.
Either way the original value, whatever assignments, `export`s, comments and quoting made it,
is kept whole (`"$GRUB_CMDLINE_LINUX ..."`), the edit is idempotent (the drop-in or the block is
replaced, never added twice) and removable (`--remove` deletes it).  GRUB_CMDLINE_LINUX, not
_DEFAULT: the pages must be there in recovery boots too.  /etc/default/grub is parsed only to
report what it sets (parse_shell_vars: assignments, quotes and $VAR, never run).
"""

import re
from typing import NamedTuple

from hugeload.pages import PAGE_1G, PAGE_2M
from hugeload.plan import cma as plan_cma
from hugeload.units import GiB, MiB

HUGE_PARAMS = ("hugepagesz", "hugepages", "default_hugepagesz", plan_cma.PARAM)
GRUB_VAR = "GRUB_CMDLINE_LINUX"
GRUB_VARS = (GRUB_VAR, "GRUB_CMDLINE_LINUX_DEFAULT")
GRUB_DROPIN = "hugeload.cfg"
BLOCK_BEGIN = "# BEGIN hugeload boot-config: huge pages reserved at boot (hugeload boot-config --remove takes it out)"
BLOCK_END = "# END hugeload boot-config"
FSTAB_MARK = "nofail"  # a missing page size (no pdpe1gb) must not send boot to emergency mode


def kernel_params(pages_1g: int | None, pages_2m: int | None, cma: plan_cma.CmaSpec | None = None) -> list[str]:
    """The seed's line, `hugepagesz=1G hugepages=N default_hugepagesz=1G`, plus 2M when asked,
    and `hugetlb_cma=` beside it (plan/cma.py says when to choose which)."""
    out = []
    if pages_1g:
        out += ["hugepagesz=1G", f"hugepages={pages_1g}"]
    if pages_2m:
        out += ["hugepagesz=2M", f"hugepages={pages_2m}"]
    if pages_1g:
        out.append("default_hugepagesz=1G")
    if cma is not None:
        out.append(cma.param())
    return out


# ---------------------------------------------------------------- GRUB


def grub_assignment(params: list[str]) -> str:
    """One line that appends `params` to whatever GRUB_CMDLINE_LINUX holds when it runs."""
    return f'{GRUB_VAR}="${GRUB_VAR} {" ".join(params)}"'


def grub_dropin(params: list[str]) -> str:
    """/etc/default/grub.d/hugeload.cfg."""
    return (
        "# Written by `hugeload boot-config`: huge pages reserved at boot, appended to the kernel\n"
        "# command line of every entry (recovery too). `hugeload boot-config --remove` deletes it.\n"
        f"{grub_assignment(params)}\n"
    )


def strip_grub_block(text: str) -> str:
    """/etc/default/grub without hugeload's block (and nothing else changed)."""
    lines = text.splitlines(keepends=True)
    out, inside = [], False
    for line in lines:
        if line.rstrip("\n") == BLOCK_BEGIN:
            inside = True
            continue
        if inside:
            inside = line.rstrip("\n") != BLOCK_END
            continue
        out.append(line)
    return "".join(out)


def merge_grub(text: str, params: list[str]) -> str:
    """/etc/default/grub with hugeload's block (replaced, not repeated) at the end, where its
    assignment comes after, and so extends, every other; no other line is touched."""
    kept = strip_grub_block(text)
    if kept and not kept.endswith("\n"):
        kept += "\n"
    return f"{kept}{BLOCK_BEGIN}\n{grub_assignment(params)}\n{BLOCK_END}\n"


class ShellVars(NamedTuple):
    values: dict[str, str]  # what each variable holds after the file, as sh would assign it
    notes: list[str]  # what the parser did not follow (kept out of the values)


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _expand(word: str, env: dict[str, str], quote: str) -> str:
    if quote == "'":
        return word
    return re.sub(
        r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))", lambda m: env.get(m[1] or m[2], ""), word
    )


def _statements(text: str):
    """The words of each simple command, a word being its (text, quote) pieces, quote one of
    "", "'", '"': quotes and backslashes as sh reads them, comments from a word's start to
    the end of the line, commands ended by newlines and ';'."""
    words: list[list[tuple[str, str]]] = []
    piece, pieces = "", []
    i, n = 0, len(text)
    in_word = False

    def end_word():
        nonlocal piece, pieces, in_word
        if in_word:
            if piece:
                pieces.append((piece, ""))
            words.append(pieces)
        piece, pieces, in_word = "", [], False

    while i < n:
        c = text[i]
        if c in " \t\r":
            end_word()
        elif c in "\n;":
            end_word()
            if words:
                yield words
            words = []
        elif c == "#" and not in_word:
            while i < n and text[i] != "\n":
                i += 1
            continue
        elif c == "\\":
            in_word = True
            if i + 1 < n and text[i + 1] == "\n":
                i += 2
                continue
            piece += text[i + 1 : i + 2]
            i += 2
            continue
        elif c in "'\"":
            in_word = True
            if piece:
                pieces.append((piece, ""))
                piece = ""
            j, buf = i + 1, ""
            while j < n and text[j] != c:
                if c == '"' and text[j] == "\\" and j + 1 < n and text[j + 1] in '"\\$`\n':
                    buf += "" if text[j + 1] == "\n" else text[j + 1]
                    j += 2
                    continue
                buf += text[j]
                j += 1
            pieces.append((buf, c))
            i = j + 1
            continue
        else:
            in_word = True
            piece += c
        i += 1
    end_word()
    if words:
        yield words


def parse_shell_vars(text: str, env: dict[str, str] | None = None) -> ShellVars:
    """The variables a file of sh assignments (/etc/default/grub, grub.d/*.cfg) sets, as sh
    would assign them: `NAME=value` and `export NAME=value`, quotes, backslashes, comments,
    and $NAME / ${NAME} expanded from what came before (`env`: what earlier files set).  Never
    runs anything: a command substitution or any other command is noted and left out."""
    values = dict(env or {})
    notes = []
    for words in _statements(text):
        first = "".join(t for t, _ in words[0])
        declared = first in ("export", "readonly")
        if declared:
            words = words[1:]
        for pieces in words:
            raw = "".join(t for t, _ in pieces)
            name = pieces[0][0].partition("=")[0]
            if pieces[0][1] != "" or "=" not in pieces[0][0] or not _NAME.fullmatch(name):
                if not (declared and _NAME.fullmatch(raw)):  # `export NAME` keeps the value
                    notes.append(f"not an assignment, left out: {raw[:60]}")
                    break
                continue
            value_pieces = [(pieces[0][0].partition("=")[2], "")] + pieces[1:]
            if any("`" in t or "$(" in t for t, q in value_pieces if q != "'"):
                notes.append(f"{name}: command substitution, left out")
                continue
            values[name] = "".join(_expand(t, values, q) for t, q in value_pieces)
    return ShellVars(values, notes)


def huge_params_in(cmdline: str) -> list[str]:
    return [w for w in cmdline.split() if w.partition("=")[0] in HUGE_PARAMS]


# ---------------------------------------------------------------- fstab, sysctl


def fstab_lines(pages_1g: int | None, pages_2m: int | None, dirs: dict[int, str]) -> list[str]:
    """hugetlbfs mounts at boot, `nofail`: on a machine without the page size (no pdpe1gb) the
    mount fails and boot goes on, instead of stopping in emergency mode."""
    out = []
    if pages_2m:
        out.append(f"none {dirs[PAGE_2M.kb]} hugetlbfs pagesize=2M,size={size_option(pages_2m * 2 * MiB)},nofail 0 0")
    if pages_1g:
        out.append(f"none {dirs[PAGE_1G.kb]} hugetlbfs pagesize=1G,size={pages_1g}G,nofail 0 0")
    return out


def size_option(n: int) -> str:
    return f"{n // GiB}G" if n % GiB == 0 else f"{n // MiB}M"


def sysctl_line(pages_1g: int | None, pages_2m: int | None) -> str:
    """With default_hugepagesz=1G, vm.nr_hugepages counts 1 GB pages; without it, 2 MB pages."""
    if pages_1g:
        return f"vm.nr_hugepages = {pages_1g}"
    return f"vm.nr_hugepages = {pages_2m or 0}"


def _fstab_target(line: str) -> str | None:
    fields = line.split()
    if len(fields) >= 3 and not line.lstrip().startswith("#"):
        return fields[1]
    return None


def merge_fstab(text: str, new_lines: list[str]) -> str:
    """Add each mount line, replacing an existing line for the same mount point; never duplicate."""
    targets = {ln.split()[1]: ln for ln in new_lines}
    out, seen = [], set()
    for line in text.splitlines():
        target = _fstab_target(line)
        if target in targets:
            if target not in seen:
                out.append(targets[target])
                seen.add(target)
            continue
        out.append(line)
    out += [ln for mp, ln in targets.items() if mp not in seen]
    return "\n".join(out) + "\n"


def strip_fstab(text: str, dirs: list[str]) -> str:
    """fstab without the hugetlbfs lines for hugeload's mount points."""
    kept = [ln for ln in text.splitlines() if not (_fstab_target(ln) in dirs and ln.split()[2] == "hugetlbfs")]
    return "\n".join(kept) + "\n" if kept else ""


# ---------------------------------------------------------------- systemd units

SYSTEMD_UNIT_NAME = "hugeload-restore.service"
EXPORTER_UNIT_NAME = "hugeload-exporter.service"

# What hardening the restore unit can carry.  It mounts hugetlbfs: the staged models live in
# those mounts, which engines elsewhere on the host must see.  ProtectSystem=, ProtectHome=,
# PrivateTmp=, PrivateDevices=, ProtectKernelTunables= (it writes /sys/kernel/mm/hugepages)
# and the like give the unit a mount namespace of its own, from which no mount propagates back
# (systemd: "what's disconnected is disconnected"): the models would vanish with the unit.
RESTORE_HARDENING = """\
# No ProtectSystem=/ProtectHome=/PrivateTmp=: each puts the unit in a mount namespace of its
# own, and the hugetlbfs mounts holding the staged models would never reach the host.
NoNewPrivileges=yes
CapabilityBoundingSet=CAP_SYS_ADMIN CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH CAP_FOWNER CAP_CHOWN CAP_SYS_NICE
RestrictAddressFamilies=AF_UNIX
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
ProtectHostname=yes
SystemCallArchitectures=native
UMask=0022
"""

EXPORTER_HARDENING = """\
# It reads /proc and /sys, writes /sys/kernel/mm/hugepages (releases) and hugeload's ledger.
ProtectSystem=strict
ReadWritePaths=/run/hugeload
ProtectHome=read-only
PrivateTmp=yes
PrivateDevices=yes
NoNewPrivileges=yes
CapabilityBoundingSet=CAP_SYS_ADMIN CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH CAP_SYS_PTRACE
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
ProtectHostname=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
SystemCallArchitectures=native
"""


def hugeload_command(python: str) -> str:
    """How a unit runs hugeload: the interpreter, isolated (-I: no PYTHON* variables, no user
    site, nothing from the working directory), on the package installed for it."""
    return f"{python} -I -m hugeload"


def systemd_unit(hugeload_exe: str) -> str:
    """Replaces the seed's hugepages-model-manager.service: reserve, mount and re-stage the
    models staged with --persist, once local file systems (the model files) are up.  Stopping
    it gives every page and mount back but keeps the list (the next boot restores it)."""
    return f"""[Unit]
Description=Stage hugeload's persisted models into huge pages
After=local-fs.target
Wants=local-fs.target
Before=multi-user.target
ConditionPathIsDirectory=/sys/kernel/mm/hugepages

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={hugeload_exe} restore
ExecStop={hugeload_exe} clear --force --keep-persisted
{RESTORE_HARDENING}
[Install]
WantedBy=multi-user.target
"""


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
{EXPORTER_HARDENING}
[Install]
WantedBy=multi-user.target
"""
