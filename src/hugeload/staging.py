"""Python entry points to the model store, so Python code needs no shell:

    llm = llama_cpp.Llama(model_path=hugeload.stage("model.gguf").path)

Run such a program under `hugeload run -- python app.py` when it closes models and
keeps running: llama.cpp unmaps a model with the file's length, which hugetlbfs
refuses (EINVAL) unless it is a multiple of the huge page size, so without the
preload library the mapping and its pages stay until the process exits, and
unstage() refuses while they do.
"""

from typing import NamedTuple

from hugeload.units import parse_page_size


class StagedModel(NamedTuple):
    name: str
    path: str  # staged file to give the engine
    page_size: int  # kB
    size: int  # true size in bytes
    pages: int
    source: str


def stage(path: str, page_size: str = "auto", reserve: bool = False, name: str | None = None,
          verify: bool = False, state_dir=None) -> StagedModel:
    """Stage `path` into huge pages (see `hugeload load`); instant when already staged."""
    from hugeload.act import store

    kb = parse_page_size(page_size, allow_auto=True)
    m, _, _ = store.load(str(path), kb, name, reserve, verify, state_dir=state_dir)
    return StagedModel(m.name, m.path, m.page_size_kb, m.size, m.pages, m.source)


def unstage(model: "str | StagedModel", force: bool = False, state_dir=None) -> None:
    """Remove a staged model (by name, source path, staged path or StagedModel) and give back its pages."""
    from hugeload.act import store

    key = model.name if isinstance(model, StagedModel) else str(model)
    store.unload(key, force, state_dir)
