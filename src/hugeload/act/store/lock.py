"""The store's locks, and the one order they are taken in.

  model lock (store/locks/<name>.lock)  held by a stage or unstage of that model for all its
                                        work, the copy included (minutes for a large model)
  store lock (store/locks/.store)       held for each change of the shared files: a manifest
                                        appearing or going, the renames and removals of copy
                                        directories, the redirect index, models.json, the
                                        store's mounts; never across a copy or a pool retry
  ledger lock (ledger.lock)             one pool or mount change at a time (act/ledger.py)

Order: model, then store, then ledger; a lock earlier in the list is never waited for while a
later one is held (gc only *tests* model locks, without waiting).  Readers take the store lock
shared (root) or read files that are replaced atomically (anyone), so they see the store as it
was before a change or after it, never half.  flock: the kernel drops a killed holder's locks.
"""

import contextlib

from hugeload.act import state
from hugeload.act.store import layout
from hugeload.errors import HugeloadError

LOCK_TIMEOUT = 600.0  # StageOptions.lock_timeout's default


@contextlib.contextmanager
def model_lock(name: str, state_dir=None, timeout: float = LOCK_TIMEOUT):
    layout.make_store(state_dir)
    try:
        with state.locked(layout.lock_path(name, state_dir), timeout=timeout) as fd:
            yield fd
    except TimeoutError:
        raise HugeloadError(
            f"model {name!r} is being staged or unstaged by another hugeload; waited {timeout:.0f} s"
        ) from None


@contextlib.contextmanager
def store_lock(state_dir=None, shared: bool = False):
    layout.make_store(state_dir)
    with state.locked(layout.store_lock_path(state_dir), shared=shared) as fd:
        yield fd


def model_busy(name: str, state_dir=None) -> bool:
    """Whether a stage or unstage of `name` is running now."""
    return state.lock_held(layout.lock_path(name, state_dir))
