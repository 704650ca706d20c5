#!/usr/bin/env bash
# Formats every C++ file (clang-format-14, .clang-format) and every Python file (ruff, ruff.toml)
# in place, and regenerates the Python client's names from common/model_names.def
# (scripts/model_names.py); with --check, changes nothing and fails listing what is unformatted,
# what ruff's lint finds, or a stale generated file. `make format` and `make lint` call it; CI runs
# `make lint` before the build.
set -euo pipefail
cd "$(dirname "$0")/.."

check=0
[ "${1:-}" = "--check" ] && check=1
clang_format="${CLANG_FORMAT:-$(command -v clang-format-14 || true)}"
ruff="${RUFF:-.venv/bin/ruff}"
python="${PY:-.venv/bin/python}"
if [ -z "$clang_format" ]; then
  echo "format: clang-format-14 not found (scripts/install_deps.sh installs it)" >&2
  exit 1
fi
if [ ! -x "$ruff" ]; then
  echo "format: $ruff not found (make venv installs it from requirements-dev.txt)" >&2
  exit 1
fi

# Tracked and new (not ignored) files alike, so a file not yet added is checked too.
mapfile -t cxx < <(git ls-files --cached --others --exclude-standard -- '*.h' '*.cc' '*.cu' | sort -u)
status=0
if [ $check -eq 1 ]; then
  if ! "$clang_format" --dry-run --Werror "${cxx[@]}" 2>/tmp/lesion-format.$$; then
    echo "format: C++ files not formatted (run make format):" >&2
    grep -Eo '^[^ :]+\.(h|cc|cu):[0-9]+:[0-9]+: ' /tmp/lesion-format.$$ | cut -d: -f1 | sort -u | sed 's/^/  /' >&2
    status=1
  fi
  rm -f /tmp/lesion-format.$$
  "$python" scripts/model_names.py --check || status=1
  "$ruff" format --check --quiet . || { echo "format: Python files not formatted (run make format)" >&2; status=1; }
  "$ruff" check --quiet . || status=1
else
  "$clang_format" -i "${cxx[@]}"
  "$python" scripts/model_names.py
  "$ruff" check --quiet --fix . || status=1  # fixes first (ruff's order), then the layout
  "$ruff" format --quiet .
fi
exit $status
