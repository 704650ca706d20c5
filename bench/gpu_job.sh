#!/usr/bin/env bash
# One device-machine job: build on the GPU host, check CUDA parity against the CPU path, then run
# lesion's forward benchmark beside HF's anchor (bench/hf_anchor.py) on the same shapes, same job.
# Logs and JSON lines go to ${OUT:-out/gpu}.
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
out="${OUT:-$repo/out/gpu}"
mkdir -p "$out"
cd "$repo"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'; } 2>&1 | tee "$out/env.txt"

deploy/build_gpu_host.sh "$repo/build-gpu" >"$out/build.log" 2>&1 || { tail -50 "$out/build.log"; exit 1; }
export LD_LIBRARY_PATH="/opt/lesion-deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
bench="$repo/build-gpu/bench/lesion_bench_forward"
cli="$repo/build-gpu/client/cpp/lesion"

echo "== ctest on the GPU host (CPU tests)"
ctest --test-dir build-gpu -j 8 2>&1 | tail -5 | tee "$out/ctest.txt"

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
        runs[device] = {m["name"]: (m["baseline"], m["value"]) for m in json.loads(r.stdout)["metrics"]}
    else:
        worst = max((max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(runs["cpu"][k], runs["cuda"][k])), k)
                    for k in runs["cpu"])
        same = sorted(runs["cpu"]) == sorted(runs["cuda"])
        print(f"{spec.stem:32s} {len(runs['cpu'])} metrics, same names {same}, "
              f"max relative |cuda - cpu| {worst[0]:.2e} ({worst[1]})")
PY
[ "${LESION_GPU_BENCH:-1}" = 1 ] || exit 0

run_pair() {  # $1 shape (gpt2|llama) $2 dtype $3 hf attn
  local lesion_shape="$1"; [ "$1" = llama ] && lesion_shape=llama7b
  local batches="1,8,32"; [ "$1" = llama ] && batches="1,4"
  echo "== $1 $2: HF ($3) then lesion"
  timeout 900 python3 bench/hf_anchor.py "$1" "$2" "$3" 2>&1 | grep '"ppl_eval"' | tee -a "$out/bench.jsonl"
  "$bench" --shape "$lesion_shape" --device cuda --dtype "$2" --batch "$batches" 2>&1 | tee -a "$out/bench.jsonl"
}
run_pair gpt2 bfloat16 sdpa
run_pair gpt2 float32 eager
run_pair gpt2 float32 sdpa
[ "${LESION_BENCH_LLAMA:-1}" = 1 ] && run_pair llama bfloat16 sdpa
exit 0
