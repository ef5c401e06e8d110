"""Constants and pool reads the API tests share, in a module of its own name: `from conftest import`
would find whichever conftest.py pytest imported last, another directory's when several are run."""

from hugeload.pages import PAGE_1G, PAGE_2M
from hugeload.probe import pools as probe_pools

KB_1G = PAGE_1G.kb
KB_2M = PAGE_2M.kb


def available(kb: int) -> int:
    """Free pages no mapping has claimed yet."""
    if kb not in probe_pools.page_sizes("/"):
        return 0
    return probe_pools.system_pool("/", kb).available
