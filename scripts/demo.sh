#!/usr/bin/env bash
# The quick-start demo on the bundled stories260K model (a minute on a CPU): a look at the model
# with the local CLI, then the main job, the GPT-2 outlier study run through lesiond and the Python
# client (scripts/gpt2_study.py): a readable report on stdout and the plots in out/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
lesion="${LESION_CLI:-build/client/cpp/lesion}"
py="${PY:-.venv/bin/python}"
export LESIOND="${LESIOND:-build/server/lesiond}"
model=models/stories260K
out="${LESION_DEMO_OUT:-out/demo}"

section() { printf '\n== %s\n' "$1"; }

section "lesion inspect: what is in $model"
"$lesion" inspect --model "$model"

section "lesion generate: greedy text from BOS"
"$lesion" generate --model "$model" --max-tokens 48

section "the GPT-2 outlier study through lesiond and the Python client"
"$py" scripts/gpt2_study.py --model "$model" --out "$out"
