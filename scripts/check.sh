#!/usr/bin/env bash
# The code's shape, checked by tools (DEVELOPERS.md, "Tools"): formatting, lint, the import
# layers and types.  Runs all four and exits non-zero when any fails, after reporting each.
#   scripts/check.sh            # the whole tree
#   scripts/check.sh FILE...    # ruff on these files only (the import contracts and mypy are whole-tree)
# Needs the dev tools: .venv/bin/pip install -e '.[dev]' (or ruff, lint-imports and mypy on PATH).
set -uo pipefail
cd "$(dirname "$0")/.."

tool() {
  if [[ -x .venv/bin/$1 ]]; then echo ".venv/bin/$1"; elif command -v "$1" >/dev/null; then command -v "$1"; else
    echo "check: $1 is not installed: .venv/bin/pip install -e '.[dev]'" >&2
    return 1
  fi
}
RUFF=$(tool ruff) && LINT_IMPORTS=$(tool lint-imports) && MYPY=$(tool mypy) || exit 2

paths=("$@")
[[ ${#paths[@]} -gt 0 ]] || paths=(src tests scripts)
failed=()
run() {
  local name=$1
  shift
  echo "check: $name" >&2
  "$@" || failed+=("$name")
}
run "ruff format" "$RUFF" format --check --quiet "${paths[@]}"
run "ruff check" "$RUFF" check --quiet "${paths[@]}"
run "import layers" "$LINT_IMPORTS" --no-cache
run "mypy" "$MYPY"
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "check: failed: ${failed[*]}" >&2
  exit 1
fi
echo "check: all passed" >&2
