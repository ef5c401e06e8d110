#!/usr/bin/env bash
# More of the store's crash and concurrency tests than the default suite runs: N seeds each
# (the default suite runs one random seed of each, ~50 + 50 kills and 15 s of concurrency).
#   scripts/crash-test.sh --seeds 20            # 20 seeds of each test
#   scripts/crash-test.sh --seeds 5 --kills 200 # more kills per seed
#   HUGELOAD_CRASH_SEED=123 scripts/crash-test.sh --seeds 1   # replay one seed
# Needs root (pages are reserved and released for real) and the .venv (scripts/setup.sh).
# Every run prints its seed; the first failure stops the loop with the seed that failed.
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=5 kills=50 seconds=15
while [[ $# -gt 0 ]]; do
  case $1 in
    --seeds) seeds=$2; shift 2 ;;
    --kills) kills=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    *) echo "usage: $0 [--seeds N] [--kills K] [--seconds S]" >&2; exit 2 ;;
  esac
done
for ((i = 1; i <= seeds; i++)); do
  echo "crash-test: run $i of $seeds" >&2
  HUGELOAD_CRASH_KILLS=$kills HUGELOAD_CRASH_SECONDS=$((kills * 3)) HUGELOAD_CONCURRENCY_SECONDS=$seconds \
    .venv/bin/python -m pytest -p no:cacheprovider -q -s tests/act/test_crash.py tests/act/test_concurrency.py
done
