"""`hugeload run`: an unmodified engine with the preload library, and the pages it needs.

The preload library reads its settings from HUGELOAD_* environment variables
that this module sets; see csrc/hugeload.c for their meaning.
"""

import fnmatch
import os
import signal
import subprocess
from typing import NamedTuple

from hugeload import native
from hugeload.act import store
from hugeload.probe import pools as probe_pools
from hugeload.units import GiB, KiB, ceil_div, page_size_name

DEFAULT_MIN_FILE = GiB


class Candidate(NamedTuple):
    path: str
    size: int
    staged: bool


class Need(NamedTuple):
    page_size_kb: int
    pages: int  # pages the run may take from the pool
    available: int  # unpromised free pages now
    candidates: list[Candidate]

    @property
    def missing(self) -> int:
        return max(0, self.pages - self.available)


def model_args(argv: list[str], globs: list[str], min_size: int = DEFAULT_MIN_FILE, state_dir=None) -> list[Candidate]:
    """Files named on the command line that the library will manage: those matching
    --files globs, else regular files of at least `min_size`, plus (as the library does)
    any staged file whatever its size."""
    out = []
    for arg in argv:
        for piece in (arg, arg.partition("=")[2]):
            if not piece or not os.path.isfile(piece):
                continue
            size = os.path.getsize(piece)
            staged = store.find_staged(piece, state_dir) is not None
            if staged or (globs and any(fnmatch.fnmatch(piece, g) for g in globs)) or (not globs and size >= min_size):
                out.append(Candidate(os.path.abspath(piece), size, staged))
    return out


def estimate_need(candidates: list[Candidate], kb: int, copy: bool, alloc: bool, root="/") -> Need:
    """Staged models need no new pages.  A private copy needs the file's size in pages; the
    large-allocation path may need about as much again for weights an engine repacks."""
    page = kb * KiB
    pages = 0
    for c in candidates:
        if copy and not c.staged:
            pages += ceil_div(c.size, page)
        if alloc:
            pages += ceil_div(c.size, page)
    pool = probe_pools.system_pool(root, kb)
    return Need(kb, pages, max(0, pool.available), candidates)


def environment(page_size: str, copy: bool, alloc_threshold: int, globs: list[str], report: str | None,
                state_dir, log: int, base: dict | None = None) -> dict:
    env = dict(os.environ if base is None else base)
    lib = str(native.library_path())
    preload = env.get("LD_PRELOAD", "")
    env["LD_PRELOAD"] = lib if not preload else f"{lib}:{preload}" if lib not in preload else preload
    env["HUGELOAD_PAGE_SIZE"] = page_size
    env["HUGELOAD_COPY"] = "1" if copy else "0"
    env["HUGELOAD_ALLOC_THRESHOLD"] = str(alloc_threshold)
    env["HUGELOAD_LOG"] = str(log)
    env["HUGELOAD_STATE_DIR"] = str(store.state.state_dir(state_dir))
    if globs:
        env["HUGELOAD_FILES"] = ":".join(globs)
    if report:
        env["HUGELOAD_REPORT"] = report
    return env


def run(argv: list[str], env: dict) -> int:
    """Run the engine, forwarding SIGINT/SIGTERM/SIGHUP to it, and return its exit status
    the way a shell would (128 + signal for a signalled engine)."""
    try:
        proc = subprocess.Popen(argv, env=env)
    except FileNotFoundError:
        from hugeload.errors import UsageError

        raise UsageError(f"command not found: {argv[0]}") from None
    except PermissionError:
        from hugeload.errors import UsageError

        raise UsageError(f"cannot execute {argv[0]}: permission denied") from None
    forwarded = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = {s: signal.signal(s, lambda sig, _f: proc.send_signal(sig)) for s in forwarded}
    try:
        rc = proc.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return 128 - rc if rc < 0 else rc


def describe_need(need: Need) -> str:
    name = page_size_name(need.page_size_kb)
    return (f"this run may take {need.pages} x {name} pages and {need.available} are free: "
            f"hugeload reserve --count {need.missing} --page-size {name.lower()}")
