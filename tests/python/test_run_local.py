"""`lesion run --local`: an experiment spec run in-process against transformers + PyTorch hooks."""

import json

import pytest
import torch

from conftest import ROOT, metric, run_spec
from hf_reference import hf_perplexity
from hf_reference import make_model as make


def test_head_ablation_perplexity_matches_transformers_with_a_hook(cli, tmp_path):
    model = make("llama_gqa", seed=11)
    model.save_pretrained(tmp_path / "m")
    ids = torch.randint(0, 97, (70,), generator=torch.Generator().manual_seed(8))
    spec = {
        "dataset": {"token_ids": {"ids": ids.tolist()}},
        "eval": {"seq_len": 16, "batch_size": 3},
        "interventions": [
            {"head_ablation": {"layer": 1, "heads": [0, 4], "mode": "ZERO"}},
            {"weight_edit": {"layer": 0, "module": "mlp.down", "row": 2, "col": 5, "op": "SCALE", "value": 40.0}},
        ],
        "measurements": [{"perplexity": {}}],
    }
    result = run_spec(cli, tmp_path, tmp_path / "m", spec)
    base_nll, count = hf_perplexity(model, ids, 16)
    hd = 48 // 6

    def zero_heads(module, args):
        z = args[0].clone()
        for h in (0, 4):
            z[..., h * hd : (h + 1) * hd] = 0
        return (z,)

    model.model.layers[1].self_attn.o_proj.register_forward_pre_hook(zero_heads)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[2, 5] *= 40.0
    ablated_nll, _ = hf_perplexity(model, ids, 16)
    base, inter = result["baseline"]["perplexity"], result["intervened"]["perplexity"]
    assert int(base["n_tokens"]) == int(inter["n_tokens"]) == count  # int64: a JSON string
    assert int(base["n_windows"]) == int(inter["n_windows"]) == 5
    assert abs(base["mean_nll"] - base_nll) < 1e-5
    assert abs(inter["mean_nll"] - ablated_nll) < 1e-5
    assert abs(ablated_nll - base_nll) > 1e-3
    nll = metric(result, "mean_nll")
    assert nll["baseline"] == base["mean_nll"] and nll["value"] == inter["mean_nll"]
    assert abs(nll["delta"] - (ablated_nll - base_nll)) < 1e-5


def test_gpt2_study_examples_run_on_the_bundled_model(cli, tmp_path):
    model = ROOT / "models" / "stories260K"
    examples = ROOT / "experiments" / "examples"
    stats = json.loads(
        cli("run", "--local", "--model", model, "--spec", examples / "layer_magnitudes.json", "--json").stdout
    )
    sites = ["embed"] + [f"blocks.{l}.resid_post" for l in range(5)] + ["final_norm"]
    # No interventions: an observational run, one pass reported once.
    assert stats["observational"] is True
    assert [s["site"] for s in stats["baseline"]["activation_stats"]] == sites
    assert "intervened" not in stats
    # 5 windows: the 4 full ones in one batch, the shorter last one in another, each run once.
    assert int(stats["baseline"]["perplexity"]["n_windows"]) == 5
    assert int(stats["run"]["forward_passes"]) == 2
    ppl = metric(stats, "perplexity")
    assert ppl["value"] == ppl["baseline"] == stats["baseline"]["perplexity"]["ppl"] and ppl["delta"] == 0
    for s in stats["baseline"]["activation_stats"]:
        top = s["mean_top"]
        assert len(top) == 3 and top == sorted(top, reverse=True) and s["median"] < top[-1]
    sinks = json.loads(
        cli("run", "--local", "--model", model, "--spec", examples / "attention_sinks.json", "--json").stdout
    )["baseline"]["attention_sink"]
    assert sinks["layers"] == [0, 1, 2, 3, 4] and sinks["n_heads"] == 8
    assert len(sinks["scores"]) == 5 * 8  # [layers, heads] row-major
    assert all(0 <= v <= 1 for v in sinks["scores"])
    pruned = json.loads(
        cli("run", "--local", "--model", model, "--spec", examples / "prune_bottom3_sink_heads.json", "--json").stdout
    )
    assert metric(pruned, "perplexity")["delta"] != 0


@pytest.mark.parametrize(
    "intervention, needle",
    [
        ({"head_ablation": {"layer": 9, "heads": [0]}}, "layer 9 out of range"),
        ({"weight_edit": {"layer": 0, "module": "mlp.down", "row": 64, "col": 0}}, "[64, 0] out of range"),
        ({"weight_edit": {"layer": 0, "module": "mlp.fc", "row": 0, "col": 0}}, "unknown module"),
        ({"attention_bias": {"layer": 0, "key": [1.0], "value": [1.0]}}, "need 32 numbers"),
        ({"activation_edit": {"site": "blocks.0.resid_post", "dims": [99]}}, "dim 99 out of range"),
        ({"norm_channel_reset": {"layer": 0, "norm": "ffn", "channels": [1]}}, "unknown norm"),
    ],
)
def test_bad_specs_fail_before_any_compute(cli, tmp_path, intervention, needle):
    spec = {
        "dataset": {"named": "tinystories-sample"},
        "interventions": [intervention],
        "measurements": [{"perplexity": {}}],
    }
    proc = run_spec(cli, tmp_path, ROOT / "models" / "stories260K", spec, check=False)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr
