#!/usr/bin/env bash
# get-llama-cpp-python.sh - build llama-cpp-python (CPU only, native ISA) from its
# PyPI sdist into a cached wheel, and install it into the repository's .venv,
# for the e2e test that runs llama_cpp.Llama on a staged model
# (tests/e2e/test_engines.py::test_llama_cpp_python, marker llamacpp_python).
#
# Usage: scripts/get-llama-cpp-python.sh     # after scripts/setup.sh
#
# Environment:
#   HUGELOAD_LLAMA_CPP_PYTHON_DIR      wheel cache (default: <repo>/.cache/llama-cpp-python)
#   HUGELOAD_LLAMA_CPP_PYTHON_VERSION  version (default pinned below; sha256 checked for it)
#   HUGELOAD_LLAMA_JOBS                parallel compile jobs (default 2)
#   VENV                               where to install (default: <repo>/.venv)
#
# Why: PyPI has no linux x86_64 wheel of llama-cpp-python, only a 76 MB sdist
# that builds libllama/libggml (shared) with scikit-build-core + cmake.  We
# build it once into a wheel under the cache (re-runs only reinstall it, a few
# seconds) with the server, tools, tests, examples and llava/mtmd turned off.
# GGML_NATIVE=ON keeps AVX-512 and the Q4_0 CPU_REPACK path, like get-llama.sh.
# Measured on the 2 vCPU development VM (-j2, gcc 12): see the commit that
# added this script, and the note in tests/e2e/test_engines.py.
set -euo pipefail

PINNED_VERSION=0.3.36
PINNED_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
dir=${HUGELOAD_LLAMA_CPP_PYTHON_DIR:-$repo/.cache/llama-cpp-python}
version=${HUGELOAD_LLAMA_CPP_PYTHON_VERSION:-$PINNED_VERSION}
jobs=${HUGELOAD_LLAMA_JOBS:-2}
venv=${VENV:-$repo/.venv}
py=$venv/bin/python

log() { printf 'get-llama-cpp-python: %s\n' "$*" >&2; }
die() { printf 'get-llama-cpp-python: error: %s\n' "$*" >&2; exit 1; }

[[ -x $py ]] || die "no $py: run scripts/setup.sh first"

# Same ISA as get-llama.sh: native, AMX off unless HUGELOAD_LLAMA_AMX=1 (why: get-llama.sh).
# The flags go in through CFLAGS/CXXFLAGS, which cmake takes as its initial flags, because
# CMAKE_ARGS is split on spaces.
source "$here/llama-flags.sh"
cmake_args="-DGGML_NATIVE=ON -DGGML_CUDA=OFF -DGGML_HIP=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF -DGGML_OPENCL=OFF"
cmake_args+=" -DGGML_BLAS=OFF -DGGML_RPC=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
cmake_args+=" -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF"
wheels=$dir/wheels
stamp=$dir/stamp
stamp_text="llama-cpp-python==$version $cmake_args cflags=$llama_isa_cflags cpu=$llama_cpu_id"
# The venv remembers which build it holds, so a venv carried to another CPU reinstalls.
venv_stamp=$venv/.llama-cpp-python.stamp
if [[ -f $venv_stamp && "$(cat "$venv_stamp")" == "$stamp_text" ]] \
    && "$py" -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$version')" 2>/dev/null; then
    log "llama-cpp-python $version already installed"
    exit 0
fi
mkdir -p "$wheels"
wheel=$(ls "$wheels"/llama_cpp_python-"$version"-*.whl 2>/dev/null | head -n 1 || true)
if [[ -z $wheel || ! -f $stamp || "$(cat "$stamp")" != "$stamp_text" ]]; then
    rm -f "$wheels"/llama_cpp_python-*.whl
    sdist_dir=$dir/sdist
    sdist=$sdist_dir/llama_cpp_python-$version.tar.gz
    if [[ ! -f $sdist ]]; then
        log "downloading llama-cpp-python==$version sdist from PyPI"
        mkdir -p "$sdist_dir"
        "$py" -m pip download --quiet --disable-pip-version-check --no-deps --no-binary llama-cpp-python \
            "llama-cpp-python==$version" -d "$sdist_dir" >&2 || die "pip download failed"
        [[ -f $sdist ]] || die "pip download did not produce $sdist"
    fi
    if [[ $version == "$PINNED_VERSION" ]]; then
        got=$(sha256sum "$sdist" | cut -d' ' -f1)
        [[ $got == "$PINNED_SHA256" ]] || { rm -f "$sdist"; die "sha256 mismatch for $sdist: got $got"; }
    fi
    log "building a wheel (libllama with cmake, -j$jobs; several minutes on 2 cores; log: $dir/build.log)"
    start=$SECONDS
    CFLAGS="${CFLAGS:-} $llama_isa_cflags" CXXFLAGS="${CXXFLAGS:-} $llama_isa_cflags" \
    CMAKE_ARGS="$cmake_args" CMAKE_BUILD_PARALLEL_LEVEL=$jobs \
        "$py" -m pip wheel --disable-pip-version-check --no-cache-dir --no-deps "$sdist" -w "$wheels" >"$dir/build.log" 2>&1 \
        || { tail -n 30 "$dir/build.log" >&2; die "build failed (see $dir/build.log)"; }
    wheel=$(ls "$wheels"/llama_cpp_python-"$version"-*.whl | head -n 1)
    printf '%s' "$stamp_text" >"$stamp"
    log "built $(basename "$wheel") in $((SECONDS - start)) s"
fi
"$py" -m pip uninstall --quiet --disable-pip-version-check -y llama_cpp_python >/dev/null 2>&1 || true
"$py" -m pip install --quiet --disable-pip-version-check "$wheel" >&2 || die "pip install of $wheel failed"
"$py" -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__)" >&2 || die "llama_cpp does not import"
printf '%s' "$stamp_text" >"$venv_stamp"
