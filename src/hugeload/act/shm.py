"""The directories `bench engine` keeps its tmpfs copy in, under /dev/shm: their name, and their
removal by `hugeload gc` after the bench was killed.

/dev/shm is writable by every user.  The bench makes `hugeload-bench-<pid>` itself, 0700; when
another user already holds that name (a planted link or their own directory) it uses mkdtemp's
`hugeload-bench-<pid>-XXXXXXXX` beside it (bench/scratch.py).  gc removes both forms, and only
real directories this user owns: whatever else is under the name is someone else's.
"""

import contextlib
import os
import shutil
import stat
from pathlib import Path

SHM_DIR = "/dev/shm"


def bench_name(pid: int) -> str:
    """The directory's name for bench run `pid` (the mkdtemp fallback adds `-XXXXXXXX`)."""
    return f"hugeload-bench-{pid}"


def remove_bench_dirs(pid: int, parent: str | os.PathLike = SHM_DIR) -> list[str]:
    """Remove `parent/bench_name(pid)` and `parent/bench_name(pid)-*` where they are directories
    this user owns; return what was removed."""
    name = bench_name(pid)
    removed = []
    with contextlib.suppress(OSError):
        for entry in sorted(os.listdir(parent)):
            if entry != name and not entry.startswith(name + "-"):
                continue
            path = Path(parent) / entry
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid():
                shutil.rmtree(path, ignore_errors=True)  # fd-based: does not follow links inside
                removed.append(str(path))
    return removed
