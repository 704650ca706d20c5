"""`lesion inspect` against the configs transformers wrote, and the bundled stories260K model."""

import json

import pytest
import torch

from conftest import STORIES, requires_cli
from hf_reference import KINDS, VOCAB, d_ffn, dims, make_model

pytestmark = requires_cli


@pytest.mark.parametrize("kind", KINDS)
def test_inspect_reports_the_architecture(cli, tmp_path, kind):
    model = make_model(kind, seed=1)
    model.save_pretrained(tmp_path / "m")
    info = json.loads(cli("inspect", "--model", tmp_path / "m", "--json").stdout)
    cfg = model.config
    n_heads, n_kv_heads, head_dim = dims(model)
    want = {
        "architecture": type(model).__name__,
        "n_layers": cfg.num_hidden_layers,
        "n_heads": n_heads,
        "n_kv_heads": n_kv_heads,
        "d_model": cfg.hidden_size,
        "head_dim": head_dim,  # Gemma and Qwen3: their config's head_dim, not d_model / n_heads
        "d_ffn": d_ffn(model),
        "vocab_size": VOCAB,
        "n_params": model.num_parameters(),  # tied embeddings counted once
        "dtype": "float32",
    }
    assert {k: info.get(k) for k in want} == want
    text = cli("inspect", "--model", tmp_path / "m").stdout
    for needle in (type(model).__name__, "48", str(d_ffn(model)), str(VOCAB), str(model.num_parameters()), "float32"):
        assert needle in text, f"{needle!r} missing from:\n{text}"


def test_inspect_reports_bfloat16(cli, tmp_path):
    make_model("llama_gqa", seed=2).to(torch.bfloat16).save_pretrained(tmp_path / "m")
    assert json.loads(cli("inspect", "--model", tmp_path / "m", "--json").stdout)["dtype"] == "bfloat16"


@pytest.mark.skipif(not (STORIES / "model.safetensors").exists(), reason="models/stories260K not converted")
def test_bundled_stories260k_greedy_matches_transformers(cli):
    from transformers import LlamaForCausalLM

    info = json.loads(cli("inspect", "--model", STORIES, "--json").stdout)
    assert (
        info["n_layers"],
        info["n_heads"],
        info["n_kv_heads"],
        info["d_model"],
        info["d_ffn"],
        info["vocab_size"],
    ) == (5, 8, 4, 64, 172, 512)
    model = LlamaForCausalLM.from_pretrained(STORIES, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        ref = model.generate(torch.tensor([[1]]), max_new_tokens=30, do_sample=False)[0, 1:].tolist()
    out = json.loads(cli("generate", "--model", STORIES, "--max-tokens", 30, "--json").stdout)
    assert out["prompt_ids"] == [1]
    assert out["generated_ids"] == ref
    assert out["text"].startswith("Once upon a time, there was a little girl named Lily.")
