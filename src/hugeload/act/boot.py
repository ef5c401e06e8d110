"""Applies boot configuration: the GRUB drop-in (or block), fstab lines, systemd units.  Never
runs update-grub.

Files that decide whether a server boots are written the way a careful admin would: every
directory on the way is opened without following a symlink and must belong to root (or the
caller) and be writable by no one else; the new file is written beside the old one under a
fresh name (O_CREAT|O_EXCL|O_NOFOLLOW), synced and renamed over it, so a reader sees the old
file or the new, never half; the first backup (`.hugeload.bak`, the user's original) is made
the same way and never overwritten.  A planted symlink or a directory another user can write
ends the command with one line, before anything is written.
"""

import contextlib
import os
import secrets
import stat
import sys
from pathlib import Path
from typing import NamedTuple

from hugeload.errors import HugeloadError, PermissionNeeded, UsageError
from hugeload.plan import boot as plan_boot

GRUB_FILE = "etc/default/grub"
GRUB_DROPIN_DIR = "etc/default/grub.d"
GRUB_MKCONFIG = ("usr/sbin/grub-mkconfig", "usr/sbin/grub2-mkconfig", "sbin/grub-mkconfig")
FSTAB_FILE = "etc/fstab"
SYSTEMD_DIR = "etc/systemd/system"
BACKUP_SUFFIX = ".hugeload.bak"


class Applied(NamedTuple):
    path: str
    changed: bool
    backup: str | None


class UnsafePath(HugeloadError):
    """A path on the way to a boot file is a symlink or writable by another user."""

    exit_code = 2


# ---------------------------------------------------------------- safe directories and writes


def _check_dir(fd: int, shown: str) -> None:
    st = os.fstat(fd)
    if st.st_uid not in (0, os.geteuid()):
        raise UnsafePath(f"{shown} belongs to uid {st.st_uid}: hugeload writes boot files only in root's directories")
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise UnsafePath(f"{shown} is writable by others (mode {stat.S_IMODE(st.st_mode):o}): refusing to write there")


def open_dir(root, rel: str, create: bool = False) -> int:
    """A descriptor of root/rel, reached one component at a time without following symlinks
    (systemd's chase(), in short), every component checked by _check_dir; with `create`,
    missing directories are made 0755.  The caller closes it."""
    top = os.fspath(root)
    try:
        fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise UsageError(f"cannot open {top}: {e.strerror}") from None
    shown = top
    try:
        _check_dir(fd, shown)
        for part in [p for p in rel.split("/") if p]:
            if part == "..":
                raise UsageError(f"{rel}: '..' is not followed")
            shown = os.path.join(shown, part)
            try:
                nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(part, 0o755, dir_fd=fd)
                nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError as e:
                if stat.S_ISLNK(os.lstat(part, dir_fd=fd).st_mode):
                    raise UnsafePath(f"{shown} is a symlink: hugeload follows none on the way to a boot file") from None
                raise UsageError(f"cannot open {shown}: {e.strerror}") from None
            os.close(fd)
            fd = nfd
            _check_dir(fd, shown)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _read_at(dfd: int, name: str, shown: str) -> str | None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
    except FileNotFoundError:
        return None
    except OSError as e:
        if stat.S_ISLNK(os.lstat(name, dir_fd=dfd).st_mode):
            raise UnsafePath(f"{shown} is a symlink: edit its target yourself, hugeload will not follow it") from None
        raise PermissionNeeded(f"cannot read {shown}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePath(f"{shown} is not a regular file")
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks).decode("utf-8", errors="surrogateescape")
    finally:
        os.close(fd)


def _create_at(dfd: int, name: str, data: bytes, mode: int) -> None:
    """A new file `name` (O_EXCL|O_NOFOLLOW: never an existing file, never through a link)."""
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dfd)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def write_at(dfd: int, name: str, text: str, mode: int) -> None:
    """Replace `name` atomically: a fresh file beside it, synced, renamed over it."""
    tmp = f".{name}.hugeload-{secrets.token_hex(6)}"
    try:
        _create_at(dfd, tmp, text.encode("utf-8", errors="surrogateescape"), mode)
        os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        os.fsync(dfd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dfd)
        raise


def _mode_of(dfd: int, name: str, default: int) -> int:
    try:
        return stat.S_IMODE(os.lstat(name, dir_fd=dfd).st_mode)
    except FileNotFoundError:
        return default


def _apply_file(
    root, rel: str, transform, create_dirs: bool = False, default_mode: int = 0o644, backup: bool = False
) -> Applied:
    """Write transform(old text) to root/rel when it differs; with `backup` (a file shared with
    the admin, not hugeload's own), keep the first original as .hugeload.bak.  transform
    returning None removes the file."""
    directory, name = os.path.split(rel)
    shown = os.path.join(os.fspath(root), rel)
    try:
        dfd = open_dir(root, directory, create=create_dirs)
    except FileNotFoundError:
        raise UsageError(f"no directory {os.path.join(os.fspath(root), directory)}") from None
    except PermissionError:
        raise PermissionNeeded(f"cannot open {os.path.join(os.fspath(root), directory)}: run as root") from None
    try:
        old = _read_at(dfd, name, shown)
        new = transform(old or "")
        if new == old:
            return Applied(shown, False, None)
        has_backup = backup and _read_at(dfd, name + BACKUP_SUFFIX, shown + BACKUP_SUFFIX) is not None
        if backup and old is not None and not has_backup:
            # The first backup is the user's original; later applies must not overwrite it.
            data = old.encode("utf-8", errors="surrogateescape")
            _create_at(dfd, name + BACKUP_SUFFIX, data, _mode_of(dfd, name, 0o600))
            has_backup = True
        if new is None:
            os.unlink(name, dir_fd=dfd)
        else:
            write_at(dfd, name, new, _mode_of(dfd, name, default_mode))
        return Applied(shown, True, shown + BACKUP_SUFFIX if has_backup else None)
    except PermissionError:
        raise PermissionNeeded(f"cannot write {shown}: run as root") from None
    except FileExistsError:
        raise UnsafePath(f"{shown}{BACKUP_SUFFIX} appeared while it was written: look at it, then retry") from None
    except OSError as e:
        raise HugeloadError(f"cannot write {shown}: {e.strerror}") from None
    finally:
        os.close(dfd)


# ---------------------------------------------------------------- GRUB


def has_grub_dropins(root) -> bool:
    """Whether grub-mkconfig reads /etc/default/grub.d/*.cfg here (Debian's and Ubuntu's do):
    the directory is there, or the script says so."""
    if os.path.isdir(os.path.join(os.fspath(root), GRUB_DROPIN_DIR)):
        return True
    for rel in GRUB_MKCONFIG:
        try:
            if b"default/grub.d" in Path(root, rel).read_bytes():
                return True
        except OSError:
            continue
    return False


class GrubReport(NamedTuple):
    files: list[str]  # what grub-mkconfig reads, in its order
    values: dict[str, str]  # GRUB_CMDLINE_LINUX and _DEFAULT after all of them
    notes: list[str]


def grub_report(root) -> GrubReport:
    """What the kernel command line variables hold after /etc/default/grub and its drop-ins,
    parsed (never sourced), and what would surprise: huge page parameters set outside
    hugeload's own file, lines the parser did not follow."""
    files: list[str] = []
    env: dict[str, str] = {}
    notes: list[str] = []
    paths = [os.path.join(os.fspath(root), GRUB_FILE)]
    dropins = os.path.join(os.fspath(root), GRUB_DROPIN_DIR)
    if os.path.isdir(dropins):
        paths += sorted(os.path.join(dropins, f) for f in os.listdir(dropins) if f.endswith(".cfg"))
    ours = os.path.join(dropins, plan_boot.GRUB_DROPIN)
    for p in paths:
        try:
            text = Path(p).read_text(errors="replace")
        except OSError:
            continue
        files.append(p)
        before = {v: env.get(v, "").split() for v in plan_boot.GRUB_VARS}
        if p != ours:  # huge page parameters set outside hugeload's drop-in or block
            theirs = plan_boot.parse_shell_vars(plan_boot.strip_grub_block(text), env).values
            for var in plan_boot.GRUB_VARS:
                found = [w for w in plan_boot.huge_params_in(theirs.get(var, "")) if w not in before[var]]
                if found:
                    notes.append(f"{p} sets {' '.join(found)} in {var}: the kernel would see them beside hugeload's")
        parsed = plan_boot.parse_shell_vars(text, env)
        env = parsed.values
        notes += [f"{p}: {n}" for n in parsed.notes]
    return GrubReport(files, {v: env.get(v, "") for v in plan_boot.GRUB_VARS}, notes)


def apply_grub(root, params: list[str]) -> Applied:
    if has_grub_dropins(root):
        text = plan_boot.grub_dropin(params)
        return _apply_file(root, f"{GRUB_DROPIN_DIR}/{plan_boot.GRUB_DROPIN}", lambda old: text, create_dirs=True)
    return _apply_file(root, GRUB_FILE, lambda t: plan_boot.merge_grub(t, params), backup=True)


def remove_grub(root) -> list[Applied]:
    out = []
    if os.path.lexists(os.path.join(os.fspath(root), GRUB_DROPIN_DIR, plan_boot.GRUB_DROPIN)):
        out.append(_apply_file(root, f"{GRUB_DROPIN_DIR}/{plan_boot.GRUB_DROPIN}", lambda old: None))
    if os.path.lexists(os.path.join(os.fspath(root), GRUB_FILE)):
        out.append(_apply_file(root, GRUB_FILE, plan_boot.strip_grub_block, backup=True))
    return out


# ---------------------------------------------------------------- fstab, units


def install_unit(root, unit_text: str, name: str = plan_boot.SYSTEMD_UNIT_NAME) -> Applied:
    return _apply_file(root, f"{SYSTEMD_DIR}/{name}", lambda old: unit_text, create_dirs=True)


def remove_unit(root, name: str) -> Applied:
    return _apply_file(root, f"{SYSTEMD_DIR}/{name}", lambda old: None)


def apply(root, params: list[str], fstab: list[str]) -> list[Applied]:
    out = []
    if params:
        out.append(apply_grub(root, params))
    if fstab:
        out.append(_apply_file(root, FSTAB_FILE, lambda t: plan_boot.merge_fstab(t, fstab), backup=True))
    return out


def remove(root, dirs: list[str]) -> list[Applied]:
    out = remove_grub(root)
    if os.path.lexists(os.path.join(os.fspath(root), FSTAB_FILE)):
        out.append(_apply_file(root, FSTAB_FILE, lambda t: plan_boot.strip_fstab(t, dirs), backup=True))
    return out


# ---------------------------------------------------------------- what a unit may run as root


def _chain(path: str) -> list[str]:
    parts = [path]
    while parts[-1] != "/":
        parts.append(os.path.dirname(parts[-1]))
    return parts


def _untrusted(path: str) -> str | None:
    """Why `path`, as named and as resolved, or a directory above either could be changed by
    someone other than root, or None: every component owned by root and writable by no one
    else (sticky directories, as /tmp, aside)."""
    named = os.path.abspath(path)
    for p in dict.fromkeys(_chain(named)[1:] + _chain(os.path.realpath(named))):
        try:
            st = os.lstat(p)
        except OSError as e:
            return f"{p}: {e.strerror}"
        if st.st_uid != 0:
            return f"{p} belongs to uid {st.st_uid}"
        if stat.S_ISLNK(st.st_mode):
            continue  # a link's own mode means nothing; its directory and its target are checked
        if st.st_mode & 0o022 and not (stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX):
            return f"{p} is writable by others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def unit_command_problem(python: str | None = None) -> str | None:
    """Why a unit should not run `python -I -m hugeload` as root at every boot, or None: the
    interpreter, its prefix (a venv's pyvenv.cfg) and every file of the hugeload package and
    of what it imports must be root's alone, or whoever can change them owns the machine."""
    import hugeload

    python = python or sys.executable
    package = os.path.dirname(os.path.abspath(hugeload.__file__))
    checks = [python, os.path.join(sys.prefix, "pyvenv.cfg") if sys.prefix != sys.base_prefix else sys.prefix]
    for dirpath, _dirs, files in os.walk(package):
        checks += [dirpath] + [os.path.join(dirpath, f) for f in files if f.endswith((".py", ".so"))]
    import rich

    checks.append(os.path.dirname(os.path.abspath(rich.__file__)))
    for path in checks:
        why = _untrusted(path)
        if why:
            return why
    return None
