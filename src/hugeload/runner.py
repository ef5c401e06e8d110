"""`hugeload run`: an unmodified engine with the preload library, and the pages it needs.

The decisions are here, for the CLI and for Python code alike: `plan_run()` finds the model
files an engine command names, predicts the heap copies llama.cpp will make of them, counts the
pages the run may take and checks the NUMA node; `execute()` reserves what is missing (when
asked), starts the engine through hugeload.launch with signals forwarded, gives the pages back
and reads the library's report.  `hugeload run` only parses its options and prints.

The preload library reads its settings from HUGELOAD_* environment variables that
`environment()` sets; see csrc/preload/config.c for their meaning.
"""

import contextlib
import dataclasses
import fnmatch
import glob
import os
from collections.abc import Callable, Collection
from dataclasses import dataclass
from enum import Enum, IntEnum
from pathlib import Path
from typing import NamedTuple

from hugeload import engines, launch, native, pages, report
from hugeload.act import store
from hugeload.errors import FormatError, PoolError
from hugeload.pages import PAGE_1G, PAGE_2M, PageSize
from hugeload.plan import buffers
from hugeload.plan import pin as plan_pin
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
    library: str | None = None  # another build of libhugeload.so to preload (bench hotpath); None: ours


class Candidate(NamedTuple):
    path: str
    size: int
    staged: bool
    # The library maps this file itself (staged, matched by --files, or of at least its minimum
    # file size); False: a model it leaves to the page cache, whose heap copies it still takes.
    managed: bool = True


class Need(NamedTuple):
    page_size_kb: int
    pages: int  # pages the run may take from the pool
    available: int  # unpromised free pages now
    candidates: list[Candidate]

    @property
    def missing(self) -> int:
        return max(0, self.pages - self.available)


# At most this many files matched by --files globs (not named on the command line) are planned
# for: each costs a read of its GGUF header, and a directory of hundreds is not one run's models.
MAX_GLOB_FILES = 64


def is_gguf(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def selected(path: str, globs: list[str]) -> bool:
    """Whether a --files glob selects `path`, as the library matches (csrc/preload/filemap.c
    selected()): a glob without '/' the base name, one with '/' the whole resolved path, a
    relative one also its tail."""
    real = os.path.realpath(path)
    for g in globs:
        if "/" not in g:
            if fnmatch.fnmatchcase(os.path.basename(real), g):
                return True
        elif fnmatch.fnmatchcase(real, g) or (not g.startswith("/") and fnmatch.fnmatchcase(real, "*/" + g)):
            return True
    return False


def _candidate(path: str, globs: list[str], min_size: int, state_dir) -> Candidate | None:
    """`path` as a file the run plans pages for, or None when the library leaves it alone and
    the engine makes no heap copy of it (not a model)."""
    size = os.path.getsize(path)
    staged = store.find_staged(path, state_dir) is not None
    managed = staged or (selected(path, globs) if globs else size >= min_size)
    if managed or is_gguf(path):
        return Candidate(os.path.abspath(path), size, staged, managed)
    return None


def model_args(argv: list[str], globs: list[str], min_size: int = DEFAULT_MIN_FILE, state_dir=None) -> list[Candidate]:
    """Files named on the command line that the run needs pages for: every GGUF model, whatever
    its size (the library takes its heap copies, any allocation from the threshold up), and
    every file the library maps itself (`managed`): those matching --files globs, else regular
    files of at least `min_size`, plus (as the library does) any staged file whatever its size."""
    out = []
    for arg in argv:
        for piece in (arg, arg.partition("=")[2]):
            if piece and os.path.isfile(piece):
                c = _candidate(piece, globs, min_size, state_dir)
                if c is not None:
                    out.append(c)
    return out


def glob_files(argv: list[str], globs: list[str], cwd: str | None = None) -> tuple[list[str], int]:
    """Regular files that --files globs match and that the engine may open without naming them
    on the command line (llama-server --models-dir, a script that loads its own model), as the
    library matches them: an absolute glob as is, a relative one with '/' under the working
    directory, one without '/' (a base name) in the working directory and in every directory
    named on the command line.  Returns (at most MAX_GLOB_FILES paths, how many matched)."""
    cwd = cwd or os.getcwd()
    dirs = [cwd] + [p for a in argv for p in (a, a.partition("=")[2]) if p and os.path.isdir(p)]
    found: dict[str, None] = {}
    for g in globs:
        if os.path.isabs(g):
            patterns = [g]
        elif "/" in g:
            patterns = [os.path.join(cwd, g)]
        else:
            patterns = [os.path.join(d, g) for d in dirs]
        for pattern in patterns:
            for f in sorted(glob.glob(pattern)):
                if os.path.isfile(f):
                    found.setdefault(os.path.abspath(f))
    paths = list(found)
    return paths[:MAX_GLOB_FILES], len(paths)


def run_files(
    argv: list[str], globs: list[str], min_size: int = DEFAULT_MIN_FILE, state_dir=None, cwd: str | None = None
) -> tuple[list[Candidate], list[str]]:
    """model_args() plus the files --files globs match beyond the command line (glob_files),
    and the notes that say which were added."""
    out = model_args(argv, globs, min_size, state_dir)
    if not globs:
        return out, []
    named = {os.path.realpath(c.path) for c in out}
    paths, matched = glob_files(argv, globs, cwd)
    extra = []
    for f in paths:
        if os.path.realpath(f) not in named:
            named.add(os.path.realpath(f))
            c = _candidate(f, globs, min_size, state_dir)
            if c is not None:
                extra.append(c)
    notes = []
    if extra:
        names = ", ".join(os.path.basename(c.path) for c in extra)
        notes.append(f"planning pages for {len(extra)} file(s) matched by --files, not on the command line: {names}")
    if matched > len(paths):
        notes.append(f"--files matches {matched} files; pages are planned for the first {len(paths)} only")
    return out + extra, notes


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
    return buffers.predict(tensors, _engine(engine, flags, repack, root))


def _engine(engine: str | None, flags, repack: bool, root) -> buffers.Engine:
    if engine is None:
        engine = engines.find_llama()
    if flags is None:
        flags = probe_cpu.read_cpu(root).flags
    return buffers.engine_for(flags, buffers.amx_built_from_stamp(engines.build_stamp(engine)), repack)


def weights_split(files: list[str], engine: str | None = None, flags=None, root="/") -> buffers.Split | None:
    """Where `engine` (as predict_buffers) reads the weights of a model's `files` from: the
    mapping or heap copies, in bytes (plan/buffers.split); None when a file is not GGUF, is a
    malformed one, or the gguf package is missing.  `hugeload plan` and `stage` recommend from it
    (buffers.advise): advice, so a file it cannot read costs the advice, never the command (stage
    copies bytes whatever they are; `stage --reserve` and container-args read the header and refuse
    a bad one)."""
    total = buffers.Split(0, 0, 0)
    e = None
    for f in files:
        try:
            tensors = engines.model_tensors(f)
        except FormatError:
            return None
        if tensors is None:
            return None
        e = e or _engine(engine, flags, True, root)
        total = buffers.Split(*(a + b for a, b in zip(total, buffers.split(tensors, e), strict=True)))
    return total


def weights_advice(files: list[str], engine: str | None = None, root="/") -> dict | None:
    """weights_split() with buffers.advise()'s recommendation, as `plan` and `stage` print it
    (`--json`: the bytes, `advice` and `why`); None when it cannot be predicted."""
    return advice_of(weights_split(files, engine, root=root))


def advice_of(s: buffers.Split | None) -> dict | None:
    """weights_advice() of a split already read (None: not predicted)."""
    if s is None:
        return None
    advice, why = buffers.advise(s)
    return {**s._asdict(), "advice": advice.value, "why": why}


class StagePins(NamedTuple):
    plan: plan_pin.PinPlan
    heap_pages: tuple[tuple[int, int], ...]  # ((kB, count), ...) kept free for the heap copies; () when not pinned


def stage_pins(
    files: list[str], pin: plan_pin.Pin, engine: str | None = None, root="/", split: buffers.Split | None = None
) -> StagePins:
    """What `stage --reserve` pins for a model's `files` (plan/pin.py), on this CPU and the
    engine hugeload finds, with the pages of the heap copies at the page sizes `hugeload run`'s
    defaults give them.  A malformed GGUF header costs the advice (weights_split), and refuses
    the heap copies' pages when they are asked for (as predict_buffers does).  `split`: the
    weights_split() of `files` when the caller has read it already."""
    split = split if split is not None else weights_split(files, engine, root=root)
    plan = plan_pin.pin_plan(pin, split, files[0] if files else "the model")
    if not (plan.file and plan.heap):
        return StagePins(plan, ())
    predictions = {f: predict_buffers(f, engine, root=root) for f in files}
    return StagePins(plan, tuple(sorted(heap_pages(predictions, None, DEFAULT_ALLOC_THRESHOLD).items())))


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
    GGUF or no gguf package, is counted as a copy of its whole size, as before).  Not counted:
    the engine's other allocations from the threshold up, which the library also puts in huge
    pages (a KV cache: 2 x cells x layers x KV width x 2 bytes, 69 MiB for a 1.2 GB model at
    llama-bench's 256 cells); they depend on the engine's context options, and fall back."""
    counts: dict[int, int] = {}

    def add(nbytes: int, kb: int) -> None:
        if kb != 4:
            counts[kb] = counts.get(kb, 0) + ceil_div(nbytes, kb * KiB)

    for c in candidates:
        if copy and c.managed and not c.staged:
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


def environment(options: PreloadOptions = PreloadOptions(), state_dir=None, base: dict | None = None) -> dict:
    """`base` (default os.environ) with LD_PRELOAD and the HUGELOAD_* variables for `options`.
    HUGELOAD_POLICY is always set, so the library applies the rule Python decided with."""
    env = dict(os.environ if base is None else base)
    lib = options.library or str(native.library_path())
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


def run(argv: list[str], env: dict, bind: launch.NodeBinding | tuple[int, tuple[int, ...]] | None = None) -> int:
    """Run the engine, forwarding SIGINT/SIGTERM/SIGHUP to it, and return its exit status
    the way a shell would (128 + signal for a signalled engine).  `bind` = (node, its CPUs):
    the child binds its CPUs and memory there before exec."""
    binding = launch.NodeBinding(*bind) if bind else None
    return launch.run(launch.Command(argv, env, binding), forward_signals=True).shell_status


# ---------------------------------------------------------------- a run, decided and executed


class Shortfall(Enum):
    """What a run does when the pools cannot hold what it may take."""

    NOTE = "note"  # say so, and run: what does not fit falls back to smaller pages
    REFUSE = "refuse"  # `--strict`: PoolError before the engine starts
    RESERVE = "reserve"  # `--reserve`: reserve what is missing for the run, give it back after


@dataclass(frozen=True)
class RunOptions:
    preload: PreloadOptions = PreloadOptions()  # its `report`: keep the report there (else temporary)
    node: int | None = None  # bind the engine's CPUs and memory to this NUMA node
    shortfall: Shortfall = Shortfall.NOTE


class RunPlan(NamedTuple):
    argv: list[str]
    options: RunOptions
    candidates: list[Candidate]
    predictions: dict[str, buffers.Prediction | None]
    needs: list[Need]
    bind: launch.NodeBinding | None
    notes: list[str]  # what the user should know before the engine starts


class RunOutcome(NamedTuple):
    status: int  # the engine's, as a shell reports it
    report_text: str  # this run's lines of the report
    regions: list[report.Region]
    summary: list[str]  # read_summary(): per model, where inference read its weights from


def plan_run(argv: list[str], options: RunOptions = RunOptions(), root="/", state_dir=None) -> RunPlan:
    """Everything `hugeload run` decides before it starts the engine; UsageError (one line) for a
    NUMA node that cannot be used.  Changes nothing."""
    from hugeload.act import numa

    candidates, notes = run_files(argv, list(options.preload.files), state_dir=state_dir)
    staged = [c.path for c in candidates if c.staged]
    bind = None
    if options.node is not None:
        node = numa.check_run_node(options.node, root)
        numa.check_copies_for_node(options.node, staged, state_dir)
        bind = launch.NodeBinding(options.node, tuple(node.cpus))
    else:
        note = numa.spanning_note(staged, state_dir, root)
        if note:
            notes.append(note)
    repack = repack_enabled(argv)
    predictions = {c.path: predict_buffers(c.path, argv[0], repack=repack, root=root) for c in candidates}
    p = options.preload
    needs = estimate_needs(candidates, p.page_size, p.copy, p.alloc_threshold, predictions, root, p.policy)
    if options.shortfall is Shortfall.NOTE:
        notes += [f"{describe_need(n)}; running anyway on the fallback" for n in needs if n.missing]
    elif options.shortfall is Shortfall.REFUSE:
        short = [n for n in needs if n.missing]
        if short:
            raise PoolError(describe_need(short[0]))
    return RunPlan(list(argv), options, candidates, predictions, needs, bind, notes)


@contextlib.contextmanager
def reserved_for(plan: RunPlan, note: Callable[[str], None] = lambda m: None, root="/", state_dir=None):
    """With Shortfall.RESERVE, the missing pages reserved for the run (owner `run:<pid>@<start>`, so
    `hugeload gc` frees them after a kill -9) and given back when the block ends, however it
    ends.  A short reservation is a note, not a failure: the rest falls back."""
    from hugeload.act import ledger
    from hugeload.act import pools as act_pools

    owner = str(ledger.Owner.process("run"))
    reserved = False
    try:
        # {kB: [pages wanted, pages available]}; 1G first: what it cannot get, the library takes
        # in 2M pages (an allocation the 1G pool is short of is mapped in 1G + 2M parts)
        wanted = {n.page_size_kb: [n.pages, n.available] for n in plan.needs}
        if plan.options.shortfall is not Shortfall.RESERVE:
            wanted = {}
        elif PAGE_1G.kb in wanted and PAGE_2M.kb not in wanted and PAGE_2M.kb in probe_pools.page_sizes(root):
            wanted[PAGE_2M.kb] = [0, max(0, probe_pools.system_pool(root, PAGE_2M.kb).available)]
        for kb in sorted(wanted, reverse=True):
            missing = max(0, wanted[kb][0] - wanted[kb][1])
            if not missing:
                continue
            try:
                reserved = True
                got = act_pools.reserve(root, kb, missing, partial=True, owner=owner, state_dir=state_dir)
                if got.obtained < missing:
                    short = missing - got.obtained
                    if kb == PAGE_1G.kb and PAGE_2M.kb in wanted:
                        wanted[PAGE_2M.kb][0] += short * (PAGE_1G.kb // PAGE_2M.kb)
                        rest = "the rest goes to 2M pages, reserved next"
                    else:
                        rest = "what does not fit falls back to smaller pages"
                    note(
                        f"note: the kernel gave {got.obtained} of the {missing} missing {pages.name(kb)} pages; {rest}"
                    )
            except PoolError as e:
                note(f"warning: {e}")
        yield
    finally:
        if reserved:
            act_pools.release(root, None, owner=owner, state_dir=state_dir)


def _report_file(path: str | None, state_dir=None) -> tuple[Path, int]:
    """Where the library writes this run's report, and the offset this run's lines start at."""
    if path is not None:
        p = Path(path)
        try:
            return p, p.stat().st_size  # the library appends: read only this run's lines
        except OSError:
            return p, 0
    # In the state dir, named by our pid, so `hugeload gc` removes it after a kill -9.
    from hugeload.act import state

    p = store.run_report_path(os.getpid(), state_dir)
    state.ensure_dir(p.parent)
    with contextlib.suppress(FileNotFoundError):
        p.unlink()  # a previous process of the same pid, killed
    os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
    return p, 0


def execute(plan: RunPlan, note: Callable[[str], None] = lambda m: None, root="/", state_dir=None) -> RunOutcome:
    """Run the planned engine with the preload library: reserve what the plan says, start it with
    signals forwarded, give the pages back, and read its report (a temporary one is removed)."""
    for line in plan.notes:
        note(f"note: {line}")
    p = plan.options.preload
    path, start = _report_file(p.report, state_dir)
    try:
        env = environment(dataclasses.replace(p, report=str(path)), state_dir)
        if plan.bind:
            env["HUGELOAD_NODE"] = str(plan.bind.node)
        with reserved_for(plan, note, root, state_dir):
            status = launch.run(launch.Command(plan.argv, env, plan.bind), forward_signals=True).shell_status
        text = report.read(path, start)
    finally:
        if p.report is None:
            with contextlib.suppress(OSError):
                os.unlink(path)
    regions = report.parse(text)
    return RunOutcome(
        status, text, regions, read_summary(plan.candidates, plan.predictions, regions, p.alloc_threshold)
    )


# ---------------------------------------------------------------- the report, after the run


def _mib(n: int) -> str:
    return f"{n / MiB:.2f} MiB"


def read_summary(
    candidates: list[Candidate],
    predictions: dict[str, buffers.Prediction | None],
    regions: list[report.Region],
    alloc_threshold: int,
) -> list[str]:
    """One line per model: whether inference read the mapping or a heap copy, and the page
    size of each, from the report's regions (the mapping: the region of that very file, by
    its name as the library encodes it; a heap copy: the allocation of the predicted size)."""
    lines = []
    used: set[int] = set()
    regions = report.blocks(regions)  # an allocation in 1G and 2M parts is one heap copy
    for c in candidates:
        name = os.path.basename(c.path)
        maps = [r for r in regions if r.is_file(c.path)]
        if maps:
            r = maps[-1]
            mapping = f"the mapping (fill={r.fill}, page={r.page})"
        else:
            mapping = "the mapping (page=4K: not managed)"
        p = predictions.get(c.path)
        if p is None:
            lines.append(f"{name}: inference reads {mapping}; heap copies unknown (not GGUF, or no gguf package)")
            continue
        copies = []
        for b in p.heap:
            found = find_heap_copy(b, regions, used)
            if found is not None:
                used.add(found)
                r = regions[found]
                where = f"what={r.name}, page={r.page}"
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


def find_heap_copy(b: buffers.BufferUse, regions: list[report.Region], used: Collection[int] = ()) -> int | None:
    """The index of the report's allocation that is heap copy `b` (by its predicted size, the
    first not in `used`), or None.  `regions`: report.blocks() of the report's regions."""
    for i, r in enumerate(regions):
        if i not in used and r.allocation and abs(r.bytes - b.bytes) <= max(BYTES_SLACK, b.bytes // 1000):
            return i
    return None


def describe_need(need: Need) -> str:
    name = pages.name(need.page_size_kb)
    return (
        f"this run may take {need.pages} x {name} pages and {need.available} are free: "
        f"hugeload reserve --count {need.missing} --page-size {name.lower()}"
    )
