"""`hugeload make-model`: random-weight GGUF models for demos and tests (models cannot be downloaded everywhere)."""


def register(sub) -> None:
    p = sub.add_parser("make-model", help="write a random-weight llama GGUF of a given size (F16, Q8_0, Q4_0)")
    # Defined in modelgen, which needs numpy and gguf: imported only when the command runs.
    import argparse

    p.add_argument("out", help="output .gguf path")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="--size 2G --type Q4_0 ... (see python -m hugeload.modelgen -h)")
    p.set_defaults(func=run)


def run(args) -> int:
    try:
        from hugeload import modelgen
    except ImportError as e:
        from hugeload.errors import NotSupported

        raise NotSupported(f"make-model needs numpy and gguf: pip install 'hugeload[gguf]' ({e.name} missing)") from None
    return modelgen.main([args.out, *args.rest])
