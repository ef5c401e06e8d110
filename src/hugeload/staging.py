"""Python entry points to the model store, so Python code needs no shell:

    llm = llama_cpp.Llama(model_path=hugeload.stage("model.gguf").path)

Run such a program under `hugeload run -- python app.py` when it closes models and
keeps running: llama.cpp unmaps a model with the file's length, which hugetlbfs
refuses (EINVAL) unless it is a multiple of the huge page size, so without the
preload library the mapping and its pages stay until the process exits, and
unstage() refuses while they do.
"""

from typing import NamedTuple

from hugeload import pages


class StagedModel(NamedTuple):
    name: str
    path: str  # staged file to give the engine
    page_size: int  # kB
    size: int  # true size in bytes
    pages: int
    source: str


def stage(
    path: str,
    page_size: str = "auto",
    reserve: bool = False,
    name: str | None = None,
    verify: bool = False,
    persist: bool = False,
    state_dir=None,
    config_dir=None,
    group: str | None = None,
) -> StagedModel:
    """Stage `path` into huge pages (see `hugeload stage`); instant when already staged.
    `persist` also lists it in models.json (`config_dir`, default $HUGELOAD_CONFIG_DIR or
    /etc/hugeload) so that `hugeload restore` re-stages it at boot.  `group`: the staged
    copy is readable by root and that group only (default: by every user).  The copy is one
    file in one page size (never in mixed page sizes, which only the preload library maps
    whole): the path returned can be mapped or given to an engine as it is."""
    from hugeload.act import store

    options = store.StageOptions(
        page_size=pages.parse(page_size, ("1g", "2m")),
        name=name,
        reserve=reserve,
        verify=verify,
        persist=persist,
        group=group,
        mixed=store.Mixed.NEVER,
    )
    m = store.stage(str(path), options, state_dir=state_dir, config_dir=config_dir).manifest
    return StagedModel(m.name, m.path, m.page_size_kb, m.size, m.pages, m.source)


def unstage(model: "str | StagedModel", force: bool = False, state_dir=None, config_dir=None) -> None:
    """Remove a staged model (by name, source path, staged path or StagedModel), give back its
    pages, and drop it from models.json."""
    from hugeload.act import store

    key = model.name if isinstance(model, StagedModel) else str(model)
    store.unstage(key, force, state_dir, config_dir=config_dir)
