#!/usr/bin/env bash
# Creates .venv and installs hugeload into it (building the native library).
# Idempotent: a second run only reinstalls the package.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}

# What a fresh Debian machine may lack for the builds (the native library, llama.cpp): installed
# with apt-get when we are root and it is there; otherwise one line says what is missing.
missing=()
command -v cc >/dev/null || missing+=(gcc)
command -v c++ >/dev/null || missing+=(g++)
command -v cmake >/dev/null || missing+=(cmake)
command -v ninja >/dev/null || missing+=(ninja-build)
"$PY" -c "import venv, ensurepip" 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing ${missing[*]} with apt-get" >&2
    aptlog=$(mktemp)  # a fixed name in /tmp could be a link planted to a file root would overwrite
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } >"$aptlog" 2>&1 \
      || { tail -5 "$aptlog" >&2; rm -f "$aptlog"; echo "setup: apt-get install ${missing[*]} failed" >&2; exit 1; }
    rm -f "$aptlog"
  else
    echo "setup: missing ${missing[*]}: install them (as root: apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  "$PY" -m venv .venv
fi
echo "setup: installing hugeload, its test dependencies and the code checkers (builds libhugeload.so)" >&2
if ! .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,dev]' >.venv/pip.log 2>&1; then
  cat .venv/pip.log >&2
  echo "setup: pip install failed (log above)" >&2
  exit 1
fi
.venv/bin/python -c "import hugeload.native as n; n.load()" || { echo "setup: the native library did not build" >&2; exit 1; }

# PyTorch is optional (hugeload[torch]); the CPU build pinned here is the one this
# project's machines carry. Without it the framework="pt" tests are skipped.
if [ "${HUGELOAD_SKIP_TORCH:-0}" != 1 ] && ! .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "setup: installing torch (CPU) for the PyTorch tests" >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0" >.venv/pip-torch.log 2>&1 \
    || echo "setup: torch not installed (see .venv/pip-torch.log); PyTorch tests will be skipped" >&2
fi
