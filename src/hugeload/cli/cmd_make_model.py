"""`hugeload make-model`: random-weight GGUF models for demos and tests (models cannot be
downloaded everywhere).  The generator is hugeload.modelgen; this parses and prints."""

import argparse
import json

from hugeload import units
from hugeload.errors import HugeloadError, NotSupported, UsageError
from hugeload.modelgen import QTYPES, ModelSpec  # imports numpy and gguf only when a model is written


def _qtype(text: str) -> str:
    t = text.upper()
    if t not in QTYPES:
        raise argparse.ArgumentTypeError(f"unsupported type {text!r} (choose from {', '.join(QTYPES)})")
    return t


def register(sub) -> None:
    p = sub.add_parser(
        "make-model",
        help="write a random-weight GGUF (llama, or qwen3moe with --experts) of a "
        "given size: F16, Q8_0, Q4_0, K-quants, Q4_K_M",
        description="Write a random-weight GGUF model that llama.cpp runs, of about --size bytes.",
    )
    p.add_argument("out", help="output .gguf path")
    p.add_argument(
        "--size", "-s", type=units.arg_type(minimum=1), help="target file size, e.g. 2G, 512M, 300MiB (binary units)"
    )
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
        "--experts", type=int, default=0, metavar="N", help="a mixture-of-experts model (qwen3moe) with N experts"
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
    p.add_argument(
        "--align", type=units.arg_type(), help="GGUF tensor data alignment, e.g. 4K or 2M (default 32 bytes)"
    )
    p.add_argument("--json", action="store_true", help="print the model info as JSON")
    p.set_defaults(func=run)


# option (its dest) -> ModelSpec field
SPEC_FIELDS = {
    "size": "size_bytes",
    "qtype": "qtype",
    "experts": "n_expert",
    "seed": "seed",
    "vocab": "n_vocab",
    "layers": "n_layer",
    "embd": "n_embd",
    "ff": "n_ff",
    "ctx": "n_ctx_train",
    "align": "alignment",
}


def spec_from(args) -> ModelSpec:
    used = args.experts_used if args.experts_used is not None else (min(2, args.experts) if args.experts else 0)
    return ModelSpec(n_expert_used=used, **{field: getattr(args, dest) for dest, field in SPEC_FIELDS.items()})


def run(args) -> int:
    try:
        import gguf  # noqa: F401
        import numpy  # noqa: F401
    except ImportError as e:
        raise NotSupported(
            f"make-model needs numpy and gguf: pip install 'hugeload[gguf]' ({e.name} missing)"
        ) from None
    from hugeload.modelgen import make_model

    try:
        info = make_model(args.out, spec_from(args))
    except ValueError as e:
        raise UsageError(str(e)) from None
    except OSError as e:
        raise HugeloadError(f"cannot write {args.out}: {e.strerror or e}") from None
    if args.json:
        print(json.dumps(info.as_dict()))
        return 0
    moe = f" experts={info.n_expert}/{info.n_expert_used}" if info.n_expert else ""
    types = ",".join(f"{k}:{v}" for k, v in info.tensor_types.items())
    print(
        f"{info.path}: {info.file_size / 2**20:.1f} MiB {info.arch} {info.qtype} n_layer={info.n_layer} "
        f"n_embd={info.n_embd} n_ff={info.n_ff} n_head={info.n_head}/{info.n_head_kv}{moe} "
        f"n_vocab={info.n_vocab} params={info.n_params / 1e6:.1f}M tensors={types} in {info.seconds:.1f} s"
    )
    return 0
