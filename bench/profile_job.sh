#!/usr/bin/env bash
# Device-machine job: time candidate forward-path changes and sweep batching with
# bench/forward_profile.py (no C++ build needed). Logs under ${OUT:-out/profile}.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-out/profile}"; mkdir -p "$out"
P="python3 bench/forward_profile.py"
{
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c 'import torch; print("torch", torch.__version__)'
for nll in cast lsm_dtype lse; do $P ppl --shape gpt2 --dtype bfloat16 --batch 8,32 --nll $nll; done
$P ppl --shape gpt2 --dtype float32 --batch 32 --nll lsm_dtype
$P profile --shape gpt2 --dtype bfloat16 --batch 32 --nll lsm_dtype --out "$out" | tail -30
$P sweep --shape gpt2 --dtype bfloat16 --nll lsm_dtype --windows-per-pass 8,32 --variants-per-pass 12,36
$P sweep --shape gpt2 --dtype float32 --nll lsm_dtype --windows-per-pass 8 --variants-per-pass 12
$P ppl --shape llama7b --dtype bfloat16 --batch 1 --nll cast
$P ppl --shape llama7b --dtype bfloat16 --batch 1 --nll lsm_dtype --norm fused --rope flip
$P ppl --shape llama7b --dtype bfloat16 --batch 1 --nll lsm_dtype --norm manual --rope flip
$P profile --shape llama7b --dtype bfloat16 --batch 1 --nll lsm_dtype --out "$out" | tail -30
} 2>&1 | tee "$out/profile.log"
