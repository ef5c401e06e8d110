"""The shape of a random-weight model: its tensors and their ggml types, and the layer count,
width and feed-forward width that land the file within ~1% of a requested size (see the
package doc)."""

import math
from dataclasses import dataclass

from hugeload.plan.buffers import BLOCKS

QTYPES = ("F16", "Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K", "Q4_K_M", "Q5_K_M")

# ggml type -> (values per block, bytes per block), from plan.buffers' one table (checked against
# gguf.GGML_QUANT_SIZES in the tests)
QUANT_SIZES = {"F32": (1, 4), "F16": (1, 2), **{t: BLOCKS[t] for t in ("Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K")}}

# model type -> (base ggml type, llama_ftype name written as general.file_type)
MODEL_TYPES = {
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

POOL_VALUES = 1 << 23  # 8M values per type: 4.5 MB of Q4_0, 4.5 MB of Q4_K, 6.6 MB of Q6_K, 16 MB of F16
_FF_STEP = 64
_ALIGN = 32  # GGUF's default data alignment
MAX_EXPERTS = 1024  # llama.cpp's LLAMA_MAX_EXPERTS

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
)


@dataclass(frozen=True)
class ModelSpec:
    """What `hugeload make-model` is asked for: a size (or a full shape) and a weight type."""

    size_bytes: int | None = None  # None: give n_layer, n_embd and n_ff
    qtype: str = "Q8_0"  # one of QTYPES
    n_expert: int = 0  # > 0: a qwen3moe mixture-of-experts model
    n_expert_used: int = 0
    seed: int = 0
    n_vocab: int = 1024
    n_layer: int | None = None  # override the automatic shape
    n_embd: int | None = None
    n_ff: int | None = None  # the expert width for MoE
    n_ctx_train: int = 2048
    alignment: int | None = None  # GGUF data alignment, a power of two (None: 32)


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


def use_more_bits(i_layer: int, n_layer: int) -> bool:
    """llama.cpp's rule for the layers that get more bits in the _M mixes."""
    return i_layer < n_layer // 8 or i_layer >= 7 * n_layer // 8 or (i_layer - n_layer // 8) % 3 == 2


def tensor_type(qtype: str, name: str, n_layer: int, n_expert: int = 0) -> str:
    """The ggml type of weight ``name`` in a model of type ``qtype`` (1D norms and the router are F32).

    For the mixes this restates llama.cpp's choice for these tensor names (llama_tensor_get_type,
    no imatrix, no overrides); the counters it keeps (i_attention_wv, i_ffn_down) equal the layer
    index here, since every layer has exactly one attn_v and one ffn_down(_exps).
    """
    base = MODEL_TYPES[qtype][0]
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
    return max(_FF_STEP, QUANT_SIZES[MODEL_TYPES[qtype][0]][0])


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


def plan(spec: ModelSpec) -> Shape:
    """Choose the shape of a model of about spec.size_bytes (n_ff solved from the exact tensor bytes)."""
    size_bytes, qtype, n_vocab = spec.size_bytes, spec.qtype.upper(), spec.n_vocab
    n_layer, n_embd, n_ff = spec.n_layer, spec.n_embd, spec.n_ff
    n_expert, n_expert_used, align = spec.n_expert, spec.n_expert_used, spec.alignment or _ALIGN
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
