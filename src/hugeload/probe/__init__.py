"""Read-only facts from /proc and /sys.

Every reader takes `root`, the directory that stands for `/`, so unit tests can
point it at a fixture tree (tests/fixtures/machines/*).  Readers return named
tuples or dataclasses and never write.
"""
