"""`hugeload run`: an unmodified engine with the preload library, and the pages it needs.

The preload library reads its settings from HUGELOAD_* environment variables
that this module sets; see csrc/preload/config.c for their meaning.
"""

import fnmatch
import os
import signal
import subprocess
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

from hugeload import engines, native, pages
from hugeload.act import store
from hugeload.pages import PageSize
from hugeload.plan import buffers
from hugeload.probe import cpu as probe_cpu
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


def repack_enabled(argv: list[str]) -> bool:
    """False when the command turns llama.cpp's extra buffer types off (-nr/--no-repack;
    llama-bench: --repack 0)."""
    for i, a in enumerate(argv):
        if a in ("-nr", "--no-repack") or a == "--repack=0":
            return False
        if a == "--repack" and i + 1 < len(argv) and argv[i + 1].split(",") == ["0"]:
            return False
    return True


def predict_buffers(
    model: str, engine: str | None = None, flags=None, repack: bool = True, root="/"
) -> buffers.Prediction | None:
    """Which buffers `engine` (a llama.cpp executable or the python of a llama-cpp-python
    venv; None: the one engines.find_llama() finds) will read `model`'s weights from, or
    None when the model is not a GGUF file or the gguf package is missing.  `flags`: the
    CPU's (default: this machine's /proc/cpuinfo under `root`).  Used by `hugeload run`,
    `load --reserve`, and meant for `bench engine`."""
    tensors = engines.model_tensors(model)
    if tensors is None:
        return None
    if engine is None:
        engine = engines.find_llama()
    if flags is None:
        flags = probe_cpu.read_cpu(root).flags
    e = buffers.engine_for(flags, buffers.amx_built_from_stamp(engines.build_stamp(engine)), repack)
    return buffers.predict(tensors, e)


def heap_pages(
    predictions: dict[str, buffers.Prediction | None],
    requested: PageSize | None,
    alloc_threshold: int,
    policy: pages.Policy = pages.DEFAULT_POLICY,
) -> dict[int, int]:
    """Pages per page size (kB) that the predicted heap copies take under the preload library."""
    out: dict[int, int] = {}
    for p in predictions.values():
        for b in p.heap if p else []:
            kb = buffers.alloc_page_kb(b.bytes, requested, alloc_threshold, policy)
            if kb != 4:
                out[kb] = out.get(kb, 0) + ceil_div(b.bytes, kb * KiB)
    return out


def estimate_needs(
    candidates: list[Candidate],
    requested: PageSize | None,
    copy: bool,
    alloc_threshold: int,
    predictions: dict[str, buffers.Prediction | None],
    root="/",
    policy: pages.Policy = pages.DEFAULT_POLICY,
) -> list[Need]:
    """Pages the run may take, per page size: private copies of unstaged files (--copy) and
    the heap copies the engine will make (predicted; a model that cannot be predicted, not
    GGUF or no gguf package, is counted as a copy of its whole size, as before)."""
    counts: dict[int, int] = {}

    def add(nbytes: int, kb: int) -> None:
        if kb != 4:
            counts[kb] = counts.get(kb, 0) + ceil_div(nbytes, kb * KiB)

    for c in candidates:
        if copy and not c.staged:
            add(c.size, pages.first_page(c.size, requested, policy).kb)
        if alloc_threshold > 0 and predictions.get(c.path) is None:
            add(c.size, buffers.alloc_page_kb(c.size, requested, alloc_threshold, policy))
    for kb, n in heap_pages(predictions, requested, alloc_threshold, policy).items():
        counts[kb] = counts.get(kb, 0) + n
    sizes = probe_pools.page_sizes(root)
    out = []
    for kb in sorted(counts, reverse=True):
        if kb not in sizes:
            continue
        pool = probe_pools.system_pool(root, kb)
        out.append(Need(kb, counts[kb], max(0, pool.available), candidates))
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


def first_page(
    candidates: list[Candidate], requested: PageSize | None, policy: pages.Policy = pages.DEFAULT_POLICY
) -> PageSize:
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


def run(argv: list[str], env: dict, bind: tuple[int, tuple[int, ...]] | None = None) -> int:
    """Run the engine, forwarding SIGINT/SIGTERM/SIGHUP to it, and return its exit status
    the way a shell would (128 + signal for a signalled engine).  `bind` = (node, its CPUs):
    the child binds its CPUs and memory there before exec (act/numa.bind_process)."""
    preexec = None
    if bind:
        from hugeload.act import numa

        def preexec():
            numa.bind_process(*bind)

    try:
        proc = subprocess.Popen(argv, env=env, preexec_fn=preexec)
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


# ---------------------------------------------------------------- the report, after the run


def parse_report(text: str) -> list[dict[str, str]]:
    """The preload library's `hugeload: region ...` lines as dicts (format: csrc header)."""
    out = []
    for line in text.splitlines():
        if not line.startswith("hugeload: region "):
            continue
        fields = dict(f.split("=", 1) for f in line.split()[2:] if "=" in f)
        out.append(fields)
    return out


def _unescape(what: str) -> str:
    import urllib.parse

    return urllib.parse.unquote(what)


def _mib(n: int) -> str:
    return f"{n / MiB:.2f} MiB"


def read_summary(
    candidates: list[Candidate],
    predictions: dict[str, buffers.Prediction | None],
    regions: list[dict[str, str]],
    alloc_threshold: int,
) -> list[str]:
    """One line per model: whether inference read the mapping or a heap copy, and the page
    size of each, from the report's regions (the mapping: the region named after the
    file; a heap copy: the allocation of the predicted size)."""
    lines = []
    used: set[int] = set()
    for c in candidates:
        name = os.path.basename(c.path)
        maps = [r for r in regions if _unescape(r.get("what", "")) == name]
        if maps:
            r = maps[-1]
            mapping = f"the mapping (fill={r.get('fill')}, page={r.get('page')})"
        else:
            mapping = "the mapping (page=4K: not managed)"
        p = predictions.get(c.path)
        if p is None:
            lines.append(f"{name}: inference reads {mapping}; heap copies unknown (not GGUF, or no gguf package)")
            continue
        copies = []
        for b in p.heap:
            found = None
            for i, r in enumerate(regions):
                if (
                    i not in used
                    and r.get("fill") == "alloc"
                    and r.get("bytes", "").isdigit()
                    and abs(int(r["bytes"]) - b.bytes) <= max(BYTES_SLACK, b.bytes // 1000)
                ):
                    found = i
                    break
            if found is not None:
                used.add(found)
                r = regions[found]
                where = f"what={r.get('what')}, page={r.get('page')}"
            elif b.bytes < alloc_threshold or alloc_threshold <= 0:
                where = "page=4K: under the allocation threshold"
            else:
                where = "not in the report: the engine did not make it (or did not get that far)"
            copies.append(f"a {b.buffer} heap copy ({_mib(b.bytes)}, {b.tensors} tensors, {where})")
        m = p.buffer(buffers.Buffer.MAPPING)
        if not copies:
            lines.append(f"{name}: inference reads {mapping}")
        else:
            rest = f"; the other {m.tensors} tensors from {mapping}" if m else f"; {mapping} is only loaded from"
            lines.append(f"{name}: inference reads {' and '.join(copies)}{rest}")
    return lines


# A heap copy's allocation is the predicted buffer size; allow for a llama.cpp that pads it.
BYTES_SLACK = 4096


def describe_need(need: Need) -> str:
    name = pages.name(need.page_size_kb)
    return (
        f"this run may take {need.pages} x {name} pages and {need.available} are free: "
        f"hugeload reserve --count {need.missing} --page-size {name.lower()}"
    )
