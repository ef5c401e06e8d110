"""Locating inference engines (llama.cpp) and reading their benchmark output.

llama.cpp is built by ``scripts/get-llama.sh`` into ``.cache/llama/bin`` of the
repository (or ``$HUGELOAD_LLAMA_DIR/bin``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

# src/hugeload/engines.py -> <repo>/.cache/llama/bin
_REPO_LLAMA_BIN = Path(__file__).resolve().parent.parent.parent / ".cache" / "llama" / "bin"


def _executable(p: Path) -> bool:
    return p.is_file() and os.access(p, os.X_OK)


def find_llama(tool: str = "llama-bench") -> Path | None:
    """Path of a llama.cpp executable (llama-bench, llama-cli, llama-server,
    llama-completion, ...), or None.

    Looks in, in order: $HUGELOAD_LLAMA_BIN (a directory, or the tool itself),
    $HUGELOAD_LLAMA_DIR/bin, the repository's .cache/llama/bin, then $PATH.
    """
    candidates: list[Path] = []
    env_bin = os.environ.get("HUGELOAD_LLAMA_BIN")
    if env_bin:
        p = Path(env_bin)
        candidates.append(p if p.name == tool and not p.is_dir() else p / tool)
    env_dir = os.environ.get("HUGELOAD_LLAMA_DIR")
    if env_dir:
        candidates.append(Path(env_dir) / "bin" / tool)
    candidates.append(_REPO_LLAMA_BIN / tool)
    for c in candidates:
        if _executable(c):
            return c
    found = shutil.which(tool)
    return Path(found) if found else None


def _test_name(n_prompt: int, n_gen: int, n_depth: int = 0) -> str:
    if n_prompt > 0 and n_gen == 0:
        name = f"pp{n_prompt}"
    elif n_gen > 0 and n_prompt == 0:
        name = f"tg{n_gen}"
    else:
        name = f"pp{n_prompt}+tg{n_gen}"
    return f"{name} @ d{n_depth}" if n_depth else name


def _from_json_record(rec: dict) -> dict:
    n_prompt = int(rec.get("n_prompt", 0))
    n_gen = int(rec.get("n_gen", 0))
    n_depth = int(rec.get("n_depth", 0) or 0)
    out = {
        "test": _test_name(n_prompt, n_gen, n_depth),
        "n_prompt": n_prompt,
        "n_gen": n_gen,
        "n_depth": n_depth,
        "tokens_per_s": float(rec["avg_ts"]),
        "stddev": float(rec.get("stddev_ts", 0.0)),
    }
    for k in (
        "model_type",
        "model_size",
        "model_n_params",
        "n_threads",
        "backends",
        "samples_ts",
        "repack",
        "load_mode",
        "build_commit",
        "build_number",
    ):
        if k in rec:
            out[k] = rec[k]
    return out


_ROW_TPS = re.compile(r"^\s*([0-9.]+(?:e[+-]?\d+)?)\s*(?:±|\+/-)\s*([0-9.]+(?:e[+-]?\d+)?)\s*$")
_TEST = re.compile(r"^(?:pp(\d+))?(?:\+)?(?:tg(\d+))?(?:\s*@\s*d(\d+))?$")


def _parse_markdown(output: str) -> list[dict]:
    results: list[dict] = []
    header: list[str] | None = None
    for line in output.splitlines():
        line = line.strip()
        if not (line.startswith("|") and line.endswith("|")):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if "test" in cells and "t/s" in cells:
            header = cells
            continue
        if header is None or len(cells) != len(header) or set("".join(cells)) <= set("-: "):
            continue
        row = dict(zip(header, cells, strict=True))
        m = _ROW_TPS.match(row["t/s"])
        if not m:
            continue
        t = _TEST.match(row["test"])
        n_prompt = int(t.group(1) or 0) if t else 0
        n_gen = int(t.group(2) or 0) if t else 0
        n_depth = int(t.group(3) or 0) if t else 0
        rec = {
            "test": row["test"],
            "n_prompt": n_prompt,
            "n_gen": n_gen,
            "n_depth": n_depth,
            "tokens_per_s": float(m.group(1)),
            "stddev": float(m.group(2)),
        }
        if "model" in row:
            rec["model_type"] = row["model"]
        if "threads" in row and row["threads"].isdigit():
            rec["n_threads"] = int(row["threads"])
        results.append(rec)
    return results


def parse_llama_bench(output: str) -> list[dict]:
    """Parse llama-bench output into one dict per test.

    Accepts ``-o json`` (a JSON array), ``-o jsonl`` (one object per line) or
    the default markdown table; log lines around the data are ignored. Each
    dict has: test ("pp512", "tg128", "pp16+tg8", "... @ d512"), n_prompt,
    n_gen, n_depth, tokens_per_s (mean), stddev, and when known model_type,
    n_threads and (json) the other llama-bench fields listed in the code.
    Returns [] when nothing is recognised.
    """
    start, end = output.find("["), output.rfind("]")
    if 0 <= start < end:
        try:
            data = json.loads(output[start : end + 1])
        except ValueError:
            data = None
        if isinstance(data, list) and all(isinstance(r, dict) and "avg_ts" in r for r in data):
            return [_from_json_record(r) for r in data]
    records = []
    for line in output.splitlines():
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and "avg_ts" in rec:
                records.append(_from_json_record(rec))
    if records:
        return records
    return _parse_markdown(output)


# ---------------------------------------------------------------- builds and models

STAMP_NAMES = ("stamp", ".llama-cpp-python.stamp")


def build_stamp(engine: str | os.PathLike | None) -> str | None:
    """The build stamp of the llama.cpp that `engine` runs, or None when it has none.

    get-llama.sh installs DIR/bin/TOOL and writes DIR/stamp; get-llama-cpp-python.sh writes
    VENV/.llama-cpp-python.stamp, VENV/bin/python being the engine.  Both record the
    compiler flags, so they say whether the AMX backend was built (-mno-amx-int8 or not).
    Chosen over asking the binary: llama.cpp names its buffer types only while loading
    a model, and a static binary carries no symbol to look for."""
    if not engine:
        return None
    found = shutil.which(str(engine)) if os.sep not in str(engine) else str(engine)
    if not found:
        return None
    prefix = Path(os.path.realpath(found)).parent.parent
    candidates = [Path(found).parent.parent, prefix]
    for d in dict.fromkeys(candidates):
        for name in STAMP_NAMES:
            try:
                return (d / name).read_text(errors="replace")
            except OSError:
                continue
    return None


def model_tensors(path: str | os.PathLike):
    """[plan.buffers.Tensor] of a GGUF file, or None when it is not one (no GGUF magic) or the
    optional gguf package is missing (then nothing about heap copies can be predicted).  A file
    that says it is GGUF but is malformed raises FormatError (hugeload.gguf's checked reader)."""
    from hugeload import gguf as hgguf
    from hugeload.plan.buffers import Tensor

    if not hgguf.is_gguf(path):
        return None
    try:
        header = hgguf.read_header(path)
    except hgguf.MissingPackage:
        return None
    return [Tensor(t.name, t.type, t.ne, t.nbytes) for t in header.tensors.values()]
