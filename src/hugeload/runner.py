"""`hugeload run`: an unmodified engine with the preload library, and the pages it needs.

The preload library reads its settings from HUGELOAD_* environment variables
that this module sets; see csrc/hugeload.c for their meaning.
"""

import fnmatch
import os
import signal
import subprocess
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

from hugeload import native, pages
from hugeload.act import store
from hugeload.pages import PageSize
from hugeload.probe import pools as probe_pools
from hugeload.units import GiB, KiB, MiB, ceil_div

DEFAULT_MIN_FILE = GiB
DEFAULT_ALLOC_THRESHOLD = 64 * MiB


class LogLevel(IntEnum):
    """HUGELOAD_LOG: what the preload library writes to stderr."""

    QUIET = 0  # warnings only
    NORMAL = 1  # one line per managed region
    VERBOSE = 2  # every managed call


@dataclass(frozen=True)
class PreloadOptions:
    """What the preload library is told for one run (black's Mode: one bundle, passed down).
    Add new knobs (a NUMA node, ...) as fields whose default keeps today's behaviour."""

    page_size: PageSize | None = None  # None: auto (the size rule of hugeload.pages, per mapping)
    copy: bool = False  # copy unstaged model files into private huge pages
    alloc_threshold: int = DEFAULT_ALLOC_THRESHOLD  # bytes; 0 turns the large-allocation path off
    files: tuple[str, ...] = ()  # globs of files to manage (default: files of at least 1 GiB)
    report: str | None = None  # the per-region report goes here instead of stderr
    log: LogLevel = LogLevel.NORMAL
    policy: pages.Policy = pages.DEFAULT_POLICY


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


def first_page(candidates: list[Candidate], requested: PageSize | None, policy: pages.Policy = pages.DEFAULT_POLICY) -> PageSize:
    """The page size the library will try first for this run's largest model file (it decides
    each mapping on its own, by the same rule); 2M when there is none."""
    return pages.first_page(max((c.size for c in candidates), default=0), requested, policy)


def environment(options: PreloadOptions = PreloadOptions(), state_dir=None, base: dict | None = None) -> dict:
    """`base` (default os.environ) with LD_PRELOAD and the HUGELOAD_* variables for `options`.
    HUGELOAD_POLICY is always set, so the library applies the rule Python decided with."""
    env = dict(os.environ if base is None else base)
    lib = str(native.library_path())
    preload = env.get("LD_PRELOAD", "")
    env["LD_PRELOAD"] = lib if not preload else f"{lib}:{preload}" if lib not in preload else preload
    env["HUGELOAD_PAGE_SIZE"] = pages.env_name(options.page_size)
    env["HUGELOAD_POLICY"] = pages.policy_env(options.policy)
    env["HUGELOAD_COPY"] = "1" if options.copy else "0"
    env["HUGELOAD_ALLOC_THRESHOLD"] = str(options.alloc_threshold)
    env["HUGELOAD_LOG"] = str(int(options.log))
    env["HUGELOAD_STATE_DIR"] = str(store.state.state_dir(state_dir))
    if options.files:
        env["HUGELOAD_FILES"] = ":".join(options.files)
    if options.report:
        env["HUGELOAD_REPORT"] = options.report
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
    name = pages.name(need.page_size_kb)
    return (f"this run may take {need.pages} x {name} pages and {need.available} are free: "
            f"hugeload reserve --count {need.missing} --page-size {name.lower()}")
