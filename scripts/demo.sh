#!/usr/bin/env bash
# The quick-start demo on the bundled stories260K model (runs in seconds on a CPU):
# inspect the checkpoint, generate greedily, measure perplexity, and look at per-layer activation
# magnitudes at the residual stream (the massive-activation view of Sun et al. 2024).
set -euo pipefail
cd "$(dirname "$0")/.."
lesion="${LESION_CLI:-build/client/cpp/lesion}"
py="${PY:-.venv/bin/python}"
model=models/stories260K
out="${LESION_DEMO_OUT:-out/demo}"
mkdir -p "$out"

section() { printf '\n== %s\n' "$1"; }

section "lesion inspect: what is in $model"
"$lesion" inspect --model "$model"

section "lesion generate: greedy text from BOS"
"$lesion" generate --model "$model" --max-tokens 64

section "lesion perplexity: the model on text like its training data, and on WikiText-2"
"$lesion" perplexity --model "$model" --text-file data/tinystories_sample.txt --seq-len 256
"$lesion" perplexity --model "$model" --text-file data/wikitext-2/wiki.test.raw --seq-len 256 --max-windows 64

section "lesion dump: residual stream at every block, then per-layer top-3 |x| and median"
"$lesion" dump --model "$model" --text-file data/tinystories_sample.txt \
  --sites 'embed,blocks.*.resid_post' --out "$out/resid.safetensors" --add-bos
"$py" scripts/layer_magnitudes.py "$out/resid.safetensors"

section "lesion run --local: prune the 3 heads with the least attention-sink mass"
"$lesion" run --local --model "$model" --spec experiments/examples/prune_bottom3_sink_heads.json

section "lesion run --local: scan for super weights, massive activations, gamma and attention outliers"
"$lesion" run --local --model "$model" --spec experiments/examples/super_weight_scan_small_models.json

section "lesion run --local: zero the strongest super-weight candidate (layer 0 mlp.down[30, 66])"
"$lesion" run --local --model "$model" --spec experiments/examples/zero_super_weight.json
