#!/usr/bin/env bash
# Fuzzes hugeload's GGUF and safetensors header readers for longer than the default suite does
# (tests/fuzz/test_fuzz_models.py runs a few thousand inputs per format).
#   scripts/fuzz-models.sh                          # 100000 inputs per format
#   scripts/fuzz-models.sh --examples 20000 --format gguf --seed 7
# Runs in batches of --batch inputs, each one hypothesis run with its own seed (seed, seed+1,
# ...), each input under the harness's time and memory limits (tests/fuzz/fuzz_models.py).
# A failing input is shrunk and saved under tests/fuzz/corpus/<format>/; the run stops there.
# Ends with one line per format: inputs run and the first seed.  Run it niced on a shared box:
#   nice -n 19 scripts/fuzz-models.sh > fuzz.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
examples=100000 batch=10000 seed=$(( RANDOM * 32768 + RANDOM )) formats="gguf safetensors"
while [[ $# -gt 0 ]]; do
  case $1 in
    --examples) examples=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --format) formats=$2; shift 2 ;;
    *) echo "fuzz-models: unknown option $1 (--examples N --batch N --seed S --format gguf|safetensors)" >&2; exit 2 ;;
  esac
done
py=.venv/bin/python
[[ -x $py ]] || { echo "fuzz-models: no .venv: run scripts/setup.sh first" >&2; exit 2; }
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for fmt in $formats; do
  asked=0 ran=0 s=$seed
  while (( asked < examples )); do
    n=$(( examples - asked < batch ? examples - asked : batch ))
    # Its lines go to stderr as they come (tee's stdout is ours, not a reopened /dev/stderr,
    # which would truncate a log file), the last one is read back.
    "$py" tests/fuzz/fuzz_models.py --format "$fmt" --examples "$n" --seed "$s" | tee "$out" >&2
    line=$(tail -n 1 "$out")
    # "fuzz gguf: 10000 inputs (612 accepted), seed 5, ok": count what really ran
    got=${line#*: }; got=${got%% inputs*}
    [[ $got =~ ^[0-9]+$ ]] || { echo "fuzz-models: $fmt: seed $s did not finish" >&2; exit 1; }
    asked=$(( asked + n )) ran=$(( ran + got )) s=$(( s + 1 ))
  done
  echo "fuzz-models: $fmt: $ran inputs, seeds $seed..$(( s - 1 )), no failure"
done
