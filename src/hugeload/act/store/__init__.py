"""The model store: files staged into hugetlbfs so engines map them from huge pages.

  layout.py    where things are, the names allowed, walking the store without following links
  manifest.py  manifests (read leniently, trusted strictly), file states, the redirect index,
               staged / find_staged / resolve
  lock.py      the model and store locks, and their order
  copy.py      the copy loop into hugetlbfs, SHA-256
  stage.py     stage (every placement), unstage, restore, the store's mounts and pages
  gc.py        gc and clear

Models staged with persist are also listed in the config directory's models.json
(act/persist.py, default /etc/hugeload), which stage(), unstage() and clear() keep in step,
and restore() re-stages at boot.  The names below are the store's API (cli, bench, api).
"""

from hugeload.act import state
from hugeload.act.store.copy import CHUNK, SourceChanged
from hugeload.act.store.gc import clear, gc, run_report_path
from hugeload.act.store.layout import (
    NAME_RE,
    SPLIT_RE,
    check_name,
    default_name,
    manifest_path,
    mount_dir,
    source_files,
    store_dir,
)
from hugeload.act.store.lock import LOCK_TIMEOUT, model_lock
from hugeload.act.store.manifest import (
    Copy,
    Manifest,
    StagedCopy,
    StagedFile,
    file_state,
    find_staged,
    manifests,
    read_manifest,
    resolve,
    staged,
    staging_dirs,
    write_redirects,
)
from hugeload.act.store.stage import (
    Mixed,
    Restored,
    StageOptions,
    StageResult,
    choose_page_size,
    ensure_mount,
    ensure_pages,
    mapped_by,
    owner,
    plan_copies,
    restore,
    stage,
    unmount_idle,
    unstage,
)

__all__ = [
    "CHUNK",
    "LOCK_TIMEOUT",
    "NAME_RE",
    "SPLIT_RE",
    "Copy",
    "Manifest",
    "Mixed",
    "Restored",
    "SourceChanged",
    "StageOptions",
    "StageResult",
    "StagedCopy",
    "StagedFile",
    "check_name",
    "choose_page_size",
    "clear",
    "default_name",
    "ensure_mount",
    "ensure_pages",
    "file_state",
    "find_staged",
    "gc",
    "manifest_path",
    "manifests",
    "mapped_by",
    "model_lock",
    "mount_dir",
    "owner",
    "plan_copies",
    "read_manifest",
    "resolve",
    "restore",
    "run_report_path",
    "source_files",
    "stage",
    "staged",
    "staging_dirs",
    "state",
    "store_dir",
    "unmount_idle",
    "unstage",
    "write_redirects",
]
