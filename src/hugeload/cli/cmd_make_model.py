"""`hugeload make-model`: random-weight GGUF models for demos and tests (models cannot be downloaded everywhere)."""

from hugeload import modelgen  # imports numpy and gguf only when a model is written


def register(sub) -> None:
    p = sub.add_parser(
        "make-model",
        help="write a random-weight GGUF (llama, or qwen3moe with --experts) of a "
        "given size: F16, Q8_0, Q4_0, K-quants, Q4_K_M",
        description="Write a random-weight GGUF model that llama.cpp runs, of about --size bytes.",
    )
    modelgen.add_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    try:
        import gguf  # noqa: F401
        import numpy  # noqa: F401
    except ImportError as e:
        from hugeload.errors import NotSupported

        raise NotSupported(
            f"make-model needs numpy and gguf: pip install 'hugeload[gguf]' ({e.name} missing)"
        ) from None
    return modelgen.run_args(args)
