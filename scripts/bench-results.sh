#!/usr/bin/env bash
# The runs behind docs/results.md, as root, each under the test lock (no test reserves
# pages meanwhile).  Models are generated into $MODELS (default /tmp/hugeload-results);
# outputs go to $OUT (default $MODELS/out).  About 30 minutes on a loaded 2-core VM.
#   MOE_SIZE=8G DENSE_SIZE=1G scripts/bench-results.sh
set -euo pipefail
cd "$(dirname "$0")/.."
HL=.venv/bin/hugeload
BIN=${LLAMA_BIN:-.cache/llama/bin}
MODELS=${MODELS:-/tmp/hugeload-results}
OUT=${OUT:-$MODELS/out}
MOE_SIZE=${MOE_SIZE:-8G}
DENSE_SIZE=${DENSE_SIZE:-1G}
mkdir -p "$MODELS" "$OUT"
lock() { flock /tmp/hugeload-tests.lock "$@"; }
model() { [ -f "$MODELS/$1" ] || $HL make-model "$MODELS/$1" "${@:2}"; }

model moe.gguf --size "$MOE_SIZE" --type Q8_0 --experts 8 --experts-used 2
model dense-q4k.gguf --size "$DENSE_SIZE" --type Q4_K
model dense-q8.gguf --size "$DENSE_SIZE" --type Q8_0
{ date -u; uname -r; grep -m1 'model name' /proc/cpuinfo; uptime; grep MemAvailable /proc/meminfo; git rev-parse --short HEAD; } > "$OUT/env.txt"

# 1 thread: on a shared 2-core machine a 2-thread engine loses whole time slices at its barriers.
# MoE, read from the mapping: the page cache as the kernel maps it, a 4 KB page cache, staged 2M and 1G.
lock $HL bench engine --model "$MODELS/moe.gguf" --rounds 10 --no-startup \
  --backings default,default,pagecache-4k,2m,1g -- "$BIN/llama-bench" -p 4 -n 8 -r 1 -t 1 | tee "$OUT/moe.txt"
# Dense K-quant, repacked into the heap on AVX2: the heap alternatives and hugeload's allocations, start-up timed.
lock $HL bench engine --model "$MODELS/dense-q4k.gguf" --rounds 10 \
  --backings default,default,private,thp,glibc-hugetlb1,glibc-hugetlb2,alloc,1g+alloc \
  -- "$BIN/llama-bench" -p 4 -n 8 -r 1 -t 1 | tee "$OUT/dense-q4k.txt"
# Several engines on one model: start-up, first token, memory.
lock $HL bench fleet --model "$MODELS/dense-q8.gguf" --engines 2 --rounds 3 | tee "$OUT/fleet.txt"
lock $HL bench tlb --size 2G --rounds 10 | tee "$OUT/tlb.txt"
