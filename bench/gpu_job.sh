#!/usr/bin/env bash
# One device-machine job: build on the GPU host, run the CUDA tests and parity checks, then
# lesion's benchmarks beside HF's anchor (bench/hf_anchor.py) on the same shapes, in the same job.
# Logs and JSON lines go to ${OUT:-out/gpu}. LESION_GPU_STAGES picks the stages (default: all):
#   tests   ctest on the host's build, the CUDA tests (fused kernel, sweeps on CUDA), parity
#   cuda-tests  the CUDA tests only
#   families    every architecture on CUDA: hook sites against transformers, a prompt-set sweep
#               against the CPU (bench/gpu_families.py)
#   oom     lesiond on CUDA: a request too large for the GPU is RESOURCE_EXHAUSTED, the next runs
#   gpt2    GPT-2-small shape: perplexity pass and the 144-head sweep, bf16 and fp32, HF and lesion
#   gpt2-lesion  the same, lesion's runs only (with sweep pass sizes), when HF's are at hand
#   llama   LLaMA-2-7B shape: perplexity pass and a 16-head sweep, bf16
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
out="${OUT:-$repo/out/gpu}"
stages="${LESION_GPU_STAGES:-tests,gpt2,llama}"
mkdir -p "$out"
cd "$repo"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'; } 2>&1 | tee "$out/env.txt"

start=$(date +%s)
if [[ -z "${LESION_GPU_NO_BUILD:-}" ]]; then
deploy/build_gpu_host.sh "$repo/build-gpu" >"$out/build.log" 2>&1 || { tail -50 "$out/build.log"; exit 1; }
fi
echo "built in $(( $(date +%s) - start )) s; $(grep 'CUDA kernels' "$out/build.log")"
export LD_LIBRARY_PATH="/opt/lesion-deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
bench="$repo/build-gpu/bench/lesion_bench_forward"
sweep="$repo/build-gpu/bench/lesion_bench_sweep"
cli="$repo/build-gpu/client/cpp/lesion"
has() { [[ ",$stages," == *",$1,"* ]]; }

if has tests; then
echo "== ctest on the GPU host (CPU tests)"
# Torch's intra-op threads times parallel tests must not oversubscribe the cores.
OMP_NUM_THREADS=2 ctest --test-dir build-gpu -j 8 2>&1 | tail -5 | tee "$out/ctest.txt"

echo "== CUDA tests: the fused kernel, every sweep test on the GPU"
{ LESION_TEST_DEVICE=cuda build-gpu/model/model_test --gtest_filter='NextTokenOps*' 2>&1
  LESION_TEST_DEVICE=cuda build-gpu/experiments/experiments_test --gtest_filter='Sweep*' 2>&1; } \
  | grep -E '^\[  (PASSED|FAILED|SKIPPED) |Failure|Expected|Which is|largest' | head -40 | tee "$out/cuda_tests.txt"

echo "== CUDA parity: every hook site of the HF fixtures, computed on CUDA in float32"
python3 - "$cli" "$out" <<'PY' | tee "$out/cuda_parity.txt"
import json, subprocess, sys
from pathlib import Path
import numpy as np
from safetensors.numpy import load_file
cli, out = sys.argv[1], Path(sys.argv[2])
refs = {p.stem: p for p in Path("tests/fixtures/reference").glob("*.safetensors")}
for name, ref_path in sorted(refs.items()):
    model = Path("models/stories260K") if name == "stories260K" else Path("tests/fixtures/models") / name
    if not model.is_dir():
        continue  # reference/interventions.safetensors holds logits of several models, not sites of one
    ref = load_file(str(ref_path))
    (out / "ids.json").write_text(json.dumps(ref["input_ids"].tolist()))
    sites = ",".join(k for k in ref if k not in ("input_ids", "loss", "greedy_ids"))
    args = [cli, "dump", "--model", str(model), "--ids-json", str(out / "ids.json"), "--sites", sites,
            "--out", str(out / "cuda.safetensors"), "--device", "cuda", "--dtype", "float32"]
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode:
        print(name, "FAILED", r.stderr.strip()); continue
    got = load_file(str(out / "cuda.safetensors"))
    worst = max((float(np.abs(got[k] - ref[k]).max()), k) for k in got)
    print(f"{name:14s} max |cuda - transformers| {worst[0]:.2e} at {worst[1]} over {len(got)} sites")
(out / "cuda.safetensors").unlink(missing_ok=True)
PY

echo "== experiments on CUDA: every example spec on stories260K, CUDA float32 against the CPU"
python3 - "$cli" "$out" <<'PY' | tee "$out/cuda_experiments.txt"
import json, subprocess, sys
from pathlib import Path
cli, out = sys.argv[1], Path(sys.argv[2])
for spec in sorted(Path("experiments/examples").glob("*.json")):
    runs = {}
    for device in ("cpu", "cuda"):
        r = subprocess.run([cli, "run", "--local", "--model", "models/stories260K", "--spec", str(spec), "--json",
                            "--device", device, "--dtype", "float32"], capture_output=True, text=True)
        if r.returncode:
            print(f"{spec.stem} on {device} FAILED: {r.stderr.strip()}")
            break
        doc = json.loads(r.stdout)
        results = doc["variants"] if "variants" in doc else [doc]
        runs[device] = {f"{i}:{m['name']}": (m["baseline"], m["value"]) for i, res in enumerate(results)
                        for m in res["metrics"]}
    else:
        worst = max((max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(runs["cpu"][k], runs["cuda"][k])), k)
                    for k in runs["cpu"])
        same = sorted(runs["cpu"]) == sorted(runs["cuda"])
        print(f"{spec.stem:32s} {len(runs['cpu'])} metrics, same names {same}, "
              f"max relative |cuda - cpu| {worst[0]:.2e} ({worst[1]})")
PY
fi

if has cuda-tests; then
  echo "== CUDA tests: the fused kernel, every sweep test on the GPU"
  { LESION_TEST_DEVICE=cuda build-gpu/model/model_test --gtest_filter='NextTokenOps*:TorchCall*' 2>&1
    LESION_TEST_DEVICE=cuda build-gpu/experiments/experiments_test --gtest_filter='Sweep*' 2>&1; } \
    | grep -E '^\[  (PASSED|FAILED|SKIPPED) |Failure|Expected|Which is|largest' | head -40 | tee "$out/cuda_tests.txt"
fi

if has families; then
  echo "== every architecture on CUDA (bench/gpu_families.py)"
  python3 bench/gpu_families.py "$cli" "$out" 2>&1 | grep -v Warning | tee "$out/families.txt"
fi

if has oom; then
  echo "== out of GPU memory: lesiond on cuda, a 200k-token window with its attention pattern, then a normal run"
  port=50977
  build-gpu/server/lesiond --listen 127.0.0.1:$port --db "$out/oom.db" --model stories=models/stories260K \
    --device cuda >"$out/lesiond.log" 2>&1 &
  lesiond_pid=$!
  for i in $(seq 50); do grep -q "listening" "$out/lesiond.log" 2>/dev/null && break; sleep 0.2; done
  printf '%s' '{"name": "too-big", "dataset": {"named": "wikitext-2-raw-test"}, "eval": {"seq_len": 200000, "max_windows": 1, "batch_size": 1}, "measurements": [{"perplexity": {}}, {"attention_sink": {"layers": [0]}}]}' >"$out/too_big.json"
  "$cli" run "$out/too_big.json" --model stories --server 127.0.0.1:$port 2>&1 | tail -2 | tee "$out/oom.txt"
  "$cli" run experiments/examples/prune_top3_sink_heads.json --model stories --server 127.0.0.1:$port 2>&1 \
    | head -3 | tee -a "$out/oom.txt"
  kill $lesiond_pid
fi

anchor() {  # $1 shape (gpt2|llama) $2 dtype $3 hf attn: every line the anchor prints
  echo "== HF anchor: $1 $2 $3"
  timeout 600 python3 bench/hf_anchor.py "$1" "$2" "$3" 2>&1 | grep '^{' | tee -a "$out/bench.jsonl"
}
if has gpt2; then
  anchor gpt2 bfloat16 sdpa
  echo "== lesion: gpt2 bfloat16"
  "$bench" --shape gpt2 --device cuda --dtype bfloat16 --batch 1,8,32 2>&1 | tee -a "$out/bench.jsonl"
  for b in 8 32; do "$sweep" --shape gpt2 --device cuda --dtype bfloat16 --batch $b 2>&1 | tee -a "$out/bench.jsonl"; done
  anchor gpt2 float32 eager
  anchor gpt2 float32 sdpa
  echo "== lesion: gpt2 float32, then with TF32 matrix products"
  "$bench" --shape gpt2 --device cuda --dtype float32 --batch 8,32 2>&1 | tee -a "$out/bench.jsonl"
  "$sweep" --shape gpt2 --device cuda --dtype float32 --batch 8 2>&1 | tee -a "$out/bench.jsonl"
  "$bench" --shape gpt2 --device cuda --dtype float32 --batch 32 --tf32 2>&1 | tee -a "$out/bench.jsonl"
  "$sweep" --shape gpt2 --device cuda --dtype float32 --batch 8 --tf32 2>&1 | tee -a "$out/bench.jsonl"
fi
if has gpt2-lesion; then
  echo "== lesion: gpt2 bfloat16 sweeps by pass size, float32, float32 with TF32"
  for v in 12 24; do "$sweep" --shape gpt2 --device cuda --dtype bfloat16 --batch 8 --variants-per-pass $v 2>&1 | tee -a "$out/bench.jsonl"; done
  "$bench" --shape gpt2 --device cuda --dtype float32 --batch 8,32 2>&1 | tee -a "$out/bench.jsonl"
  "$sweep" --shape gpt2 --device cuda --dtype float32 --batch 8 --variants-per-pass 12 2>&1 | tee -a "$out/bench.jsonl"
  "$bench" --shape gpt2 --device cuda --dtype float32 --batch 32 --tf32 2>&1 | tee -a "$out/bench.jsonl"
  "$sweep" --shape gpt2 --device cuda --dtype float32 --batch 8 --variants-per-pass 12 --tf32 2>&1 | tee -a "$out/bench.jsonl"
fi
if has llama; then
  anchor llama bfloat16 sdpa
  echo "== lesion: llama7b bfloat16"
  "$bench" --shape llama7b --device cuda --dtype bfloat16 --batch 1,4 2>&1 | tee -a "$out/bench.jsonl"
  "$sweep" --shape llama7b --device cuda --dtype bfloat16 --seq 4096 --tokens 16384 --batch 4 --max-heads 16 2>&1 \
    | tee -a "$out/bench.jsonl"
fi
echo "== done in $(( $(date +%s) - start )) s"
exit 0
