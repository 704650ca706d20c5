"""Every architecture on CUDA (bench/gpu_job.sh stage "families"), on the GPU host's build.

For each kind of tests/python/hf_reference.py (the tiny random checkpoints the parity tests use):
  * every hook site and the logits of `lesion dump --device cuda` (float32) against transformers
    on the CPU;
  * a prompt set with a head ablation, a KL measure and a sweep of every head of layer 0, run on
    CUDA and on the CPU: each prompt's NLL and KL and each variant's perplexity.
One line per kind; usage: python3 bench/gpu_families.py LESION_CLI OUT_DIR."""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "python"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

from hf_reference import ALL_SITES, KINDS, VOCAB, capture, make_model  # noqa: E402

cli, out = sys.argv[1], Path(sys.argv[2])
gen = torch.Generator().manual_seed(5)
ids = torch.randint(0, VOCAB, (1, 16), generator=gen)
prompts = [torch.randint(0, VOCAB, (n,), generator=gen).tolist() for n in (9, 16, 5, 9, 12)]


def run(model_dir, spec, device):
    path = out / "spec.json"
    path.write_text(json.dumps(spec))
    r = subprocess.run(
        [
            cli,
            "run",
            "--local",
            "--model",
            str(model_dir),
            "--spec",
            str(path),
            "--json",
            "--device",
            device,
            "--dtype",
            "float32",
        ],
        capture_output=True,
        text=True,
    )
    if r.returncode:
        raise RuntimeError(f"{device}: {r.stderr.strip()}")
    return json.loads(r.stdout)


with tempfile.TemporaryDirectory() as tmp:
    for kind in KINDS:
        try:
            model = make_model(kind, 500)
        except Exception as e:  # a transformers without this family
            print(f"{kind:16s} SKIPPED: {type(e).__name__}: {e}")
            continue
        model_dir = Path(tmp) / kind
        model.save_pretrained(model_dir)
        ref = capture(model, ids)
        (out / "ids.json").write_text(json.dumps(ids[0].tolist()))
        dump = subprocess.run(
            [
                cli,
                "dump",
                "--model",
                str(model_dir),
                "--ids-json",
                str(out / "ids.json"),
                "--sites",
                ALL_SITES,
                "--out",
                str(out / "cuda.safetensors"),
                "--device",
                "cuda",
                "--dtype",
                "float32",
            ],
            capture_output=True,
            text=True,
        )
        if dump.returncode:
            print(f"{kind:16s} dump FAILED: {dump.stderr.strip()}")
            continue
        got = load_file(str(out / "cuda.safetensors"))
        worst = max((float(np.abs(got[k] - ref[k]).max() / max(1.0, np.abs(ref[k]).max())), k) for k in ref)
        missing = sorted(set(ref) - set(got))
        spec = {
            "dataset": {"prompts": {"prompts": [{"token_ids": {"ids": p}} for p in prompts]}},
            "eval": {"batch_size": 2},
            "measurements": [{"perplexity": {}}, {"kl_divergence": {}}],
            "sweep": {"axes": [{"heads": {"layers": [0]}}]},
        }
        try:
            runs = {device: run(model_dir, spec, device) for device in ("cpu", "cuda")}
        except RuntimeError as e:
            print(f"{kind:16s} sites {worst[0]:.1e} ({worst[1]}); prompt-set sweep FAILED: {e}")
            continue
        diffs = []
        for a, b in zip(runs["cpu"]["variants"], runs["cuda"]["variants"], strict=True):
            for ra, rb in zip(a["intervened"]["prompts"], b["intervened"]["prompts"], strict=True):
                diffs.append(abs(ra["mean_nll"] - rb["mean_nll"]))
                diffs.append(abs(ra["kl_divergence"] - rb["kl_divergence"]))
        ppl = [v["perplexity"] for v in runs["cuda"]["parent"]["sweep"]["variants"]]
        print(
            f"{kind:16s} sites: max |cuda - transformers| / max(1, |transformers|) {worst[0]:.1e} at {worst[1]}"
            f"{' MISSING ' + ','.join(missing) if missing else ''}; prompt-set sweep of {len(ppl)} heads: "
            f"max |cuda - cpu| per-prompt NLL and KL {max(diffs):.1e}"
        )
(out / "cuda.safetensors").unlink(missing_ok=True)
