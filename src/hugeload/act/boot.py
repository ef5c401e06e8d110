"""Applies boot configuration to /etc/default/grub and /etc/fstab (never runs update-grub)."""

import shutil
from pathlib import Path
from typing import NamedTuple

from hugeload.act.state import write_text_atomic
from hugeload.errors import HugeloadError, PermissionNeeded
from hugeload.plan import boot as plan_boot

GRUB_FILE = "etc/default/grub"
FSTAB_FILE = "etc/fstab"


class Applied(NamedTuple):
    path: str
    changed: bool
    backup: str | None


def _apply_file(root, rel: str, transform) -> Applied:
    path = Path(root) / rel
    try:
        old = path.read_text() if path.exists() else ""
    except PermissionError:
        raise PermissionNeeded(f"cannot read {path}: run as root") from None
    new = transform(old)
    if new == old:
        return Applied(str(path), False, None)
    backup = path.with_name(path.name + ".hugeload.bak")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # The first backup is the user's original; later applies must not overwrite it.
        if path.exists() and not backup.exists():
            shutil.copy2(path, backup)
        write_text_atomic(path, new, mode=(path.stat().st_mode & 0o7777) if path.exists() else 0o644)
    except PermissionError:
        raise PermissionNeeded(f"cannot write {path}: run as root") from None
    except OSError as e:
        raise HugeloadError(f"cannot write {path}: {e.strerror}") from None
    return Applied(str(path), True, str(backup) if backup.exists() else None)


SYSTEMD_DIR = "etc/systemd/system"


def install_unit(root, unit_text: str, name: str = plan_boot.SYSTEMD_UNIT_NAME) -> Applied:
    return _apply_file(root, f"{SYSTEMD_DIR}/{name}", lambda old: unit_text)


def apply(root, params: list[str], fstab: list[str]) -> list[Applied]:
    out = []
    if params:
        out.append(_apply_file(root, GRUB_FILE, lambda t: plan_boot.merge_grub(t, params)))
    if fstab:
        out.append(_apply_file(root, FSTAB_FILE, lambda t: plan_boot.merge_fstab(t, fstab)))
    return out
