#!/bin/sh
# The preload library's differential tester on more seeds than the default suite runs
# (tests/difftest/difftest.py says what it compares and why):
#   scripts/difftest.sh --seeds N [--jobs J] [--first K] [--mode 2m|1g|empty|all] [--chunk C] [--lib LIB.so]
# It reserves what a mode needs under the machine-wide test lock (/tmp/hugeload-tests.lock),
# C seeds at a time, and puts every pool back.  A divergence prints its seed and the
# shortest sequence that shows it; the exit status is 1 when there was one.
set -eu
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
exec "$PY" tests/difftest/difftest.py "$@"
