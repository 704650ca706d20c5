"""`lesion dump` against live transformers on random checkpoints made at test time: every hook site
of every architecture (GPT-2, LLaMA, Mistral, Qwen2, GPT-NeoX, OPT, Phi-2, Phi-3, OLMo-2, Gemma-2,
Gemma-3, Qwen3), GQA, llama3 and linear rope scaling, partial rotary, sliding windows, soft-capping,
QK norms, parallel blocks, biases, transformers-4 style configs, sharded and bfloat16 checkpoints,
text input."""

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from conftest import requires_cli
from hf_reference import (
    ALL_SITES,
    KINDS,
    NEW_KINDS,
    PARTIAL_ROTARY,
    SOFTCAP,
    VOCAB,
    WINDOW,
    capture,
    compare,
    dims,
    gpt2_encoding,
    layers_of,
    make_model,
    randomize,
    to_legacy_config,
)

pytestmark = requires_cli
TOL = 1e-4


def dump(cli, tmp_path, model_dir, ids_file, sites, *extra):
    out = tmp_path / "acts.safetensors"
    out.unlink(missing_ok=True)
    cli("dump", "--model", model_dir, "--ids-json", ids_file, "--sites", sites, "--out", out, *extra)
    got = load_file(str(out))
    for name, t in got.items():
        assert t.dtype == np.float32, f"{name} is {t.dtype}, want float32"
    return got


def random_ids(shape, seed, vocab=VOCAB):
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


# Layers with a sliding window of WINDOW keys (Mistral and Phi-3 window every layer, Qwen2 / Qwen3
# from max_window_layers on, Gemma by layer_types).
WINDOWED = {"mistral": [0, 1], "qwen2_sliding": [1], "phi3": [0, 1], "gemma2": [0], "gemma3": [0, 2], "qwen3": [1]}


def check_hf_exercises(kind, model, ref, ids):
    """Guards the test itself: the features under test really change what transformers computes."""
    base, layers = layers_of(model)
    if kind in WINDOWED:
        for l in range(len(layers)):
            keys_seen = (ref[f"blocks.{l}.attn_pattern"][0, 0] > 0).sum(-1)  # per query
            q = np.arange(len(keys_seen))
            want = np.minimum(q + 1, WINDOW) if l in WINDOWED[kind] else q + 1
            assert (keys_seen == want).all(), (l, keys_seen)
    if kind == "llama3":
        inv = model.model.rotary_emb.inv_freq
        plain = 1.0 / 500000.0 ** (torch.arange(0, 8, 2).float() / 8)
        ratio = (plain / inv).tolist()  # 1 kept, 8 divided, in between smoothed
        assert (
            abs(ratio[0] - 1) < 1e-6 and abs(ratio[1] - 1) < 1e-6 and 1.5 < ratio[2] < 7.5 and abs(ratio[3] - 8) < 1e-3
        ), ratio
    if kind in PARTIAL_ROTARY:  # rotary dims int(head_dim * factor): even, fewer than head_dim
        head_dim, factor, rotary = PARTIAL_ROTARY[kind]
        assert dims(model)[2] == head_dim and rotary == int(head_dim * factor) and rotary % 2 == 0 and rotary < head_dim
        assert len(base.rotary_emb.inv_freq) == rotary // 2
    if kind == "gemma3":  # local theta 1e4; global theta 1e6 with linear scaling x8
        exps = torch.arange(0, 16, 2).float() / 16
        torch.testing.assert_close(base.rotary_emb.sliding_attention_inv_freq, 1.0 / 10000.0**exps)
        torch.testing.assert_close(base.rotary_emb.full_attention_inv_freq, 1.0 / 1000000.0**exps / 8)
    if kind in SOFTCAP:  # both soft-caps saturate: without them transformers computes something else
        attn_cap, final_cap = SOFTCAP[kind]
        with torch.no_grad():
            raw = model.lm_head(torch.as_tensor(ref["final_norm"]))
        assert torch.allclose(torch.as_tensor(ref["logits"]), final_cap * torch.tanh(raw / final_cap), atol=1e-6)
        assert float((raw - torch.as_tensor(ref["logits"])).abs().max()) > 0.3
        if attn_cap is not None:
            for layer in layers:
                layer.self_attn.attn_logit_softcapping = None
            uncapped = capture(model, ids)
            for layer in layers:
                layer.self_attn.attn_logit_softcapping = attn_cap
            assert all(np.abs(uncapped[k] - ref[k]).max() > 0.05 for k in ref if k.endswith("attn_pattern")), (
                "the attention soft-cap changes nothing"
            )
    if kind in ("gemma2", "gemma3"):  # the embedding scaled by sqrt(d_model) in the weights' dtype
        emb = base.embed_tokens
        assert torch.equal(torch.as_tensor(ref["embed"]), emb.weight[ids].detach() * torch.tensor(48**0.5))
    if kind == "opt":  # learned positions at offset 2
        pos = base.embed_positions.weight[2 : 2 + ids.shape[1]]
        assert torch.equal(torch.as_tensor(ref["embed"]), (base.embed_tokens.weight[ids] + pos).detach())


@pytest.mark.parametrize("kind", KINDS)
def test_every_site_matches_transformers(cli, tmp_path, write_ids, kind):
    model = make_model(kind, seed=100 + KINDS.index(kind))
    model.save_pretrained(tmp_path / "m")
    ids = random_ids((2, 13), seed=5)
    ref = capture(model, ids)
    check_hf_exercises(kind, model, ref, ids)
    got = dump(cli, tmp_path, tmp_path / "m", write_ids(ids.tolist()), ALL_SITES)
    compare(got, ref, TOL, kind)
    # Without attn_pattern requested lesion may take a fused attention path: it must agree too
    # (sliding windows included).
    got = dump(cli, tmp_path, tmp_path / "m", write_ids(ids.tolist()), "blocks.*.attn_z,logits")
    compare(got, {k: v for k, v in ref.items() if k == "logits" or k.endswith("attn_z")}, TOL, kind + " (no pattern)")


@pytest.mark.parametrize("kind", ["llama3", "mistral", "qwen2_sliding", "gpt2", *NEW_KINDS])
def test_transformers4_style_config(cli, tmp_path, write_ids, kind):
    """Hub checkpoints mostly carry transformers-4 configs (rope_theta / rope_scaling / torch_dtype)."""
    model = make_model(kind, seed=200 + KINDS.index(kind))
    model.save_pretrained(tmp_path / "m")
    to_legacy_config(tmp_path / "m")
    ids = random_ids((2, 13), seed=6)
    ref = capture(model, ids)
    reloaded = AutoModelForCausalLM.from_pretrained(
        tmp_path / "m", dtype=torch.float32, attn_implementation="eager"
    ).eval()
    compare(
        {"logits": capture(reloaded, ids)["logits"]},
        {"logits": ref["logits"]},
        0.0,
        "transformers on the rewritten config",
    )  # the rewrite itself is faithful
    got = dump(cli, tmp_path, tmp_path / "m", write_ids(ids.tolist()), "blocks.*.attn_pattern,final_norm,logits")
    want = {k: v for k, v in ref.items() if k.endswith("attn_pattern") or k in ("final_norm", "logits")}
    compare(got, want, TOL, kind + " (transformers-4 config)")


def test_single_sequence_and_explicit_layers(cli, tmp_path, write_ids):
    model = make_model("llama_gqa", seed=7)
    model.save_pretrained(tmp_path / "m")
    ids = random_ids((1, 9), seed=8)
    ref = capture(model, ids)
    sites = ["blocks.1.attn_z", "blocks.0.mlp_act", "blocks.1.attn_pattern", "embed"]
    got = dump(
        cli,
        tmp_path,
        tmp_path / "m",
        write_ids(ids[0].tolist()),
        ",".join(sites),
        "--device",
        "cpu",
        "--dtype",
        "float32",
    )
    assert got["blocks.1.attn_z"].shape == (1, 9, 6, 8)
    compare(got, {k: ref[k] for k in sites}, TOL, "single sequence")


def test_sharded_checkpoint(cli, tmp_path, write_ids):
    model = make_model("llama_gqa", seed=9)
    model.save_pretrained(tmp_path / "m", max_shard_size="60KB")
    index = json.loads((tmp_path / "m" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 2
    ids = random_ids((2, 11), seed=10)
    got = dump(cli, tmp_path, tmp_path / "m", write_ids(ids.tolist()), ALL_SITES)
    compare(got, capture(model, ids), TOL, "sharded")


def test_bf16_checkpoint_loaded_as_float32(cli, tmp_path, write_ids):
    model = make_model("qwen2", seed=11).to(torch.bfloat16)
    model.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["dtype"] == "bfloat16"
    upcast = AutoModelForCausalLM.from_pretrained(
        tmp_path / "m", dtype=torch.float32, attn_implementation="eager"
    ).eval()
    ids = random_ids((2, 12), seed=12)
    got = dump(cli, tmp_path, tmp_path / "m", write_ids(ids.tolist()), ALL_SITES, "--dtype", "float32")
    compare(got, capture(upcast, ids), TOL, "bf16 checkpoint as float32")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_compute_is_close(cli, tmp_path, write_ids, dtype):
    """Loose: half-precision results are written as float32 and stay near the float32 reference."""
    model = make_model("llama_gqa", seed=13)
    model.save_pretrained(tmp_path / "m")
    ids = random_ids((2, 12), seed=14)
    ref = capture(model, ids)
    got = dump(cli, tmp_path, tmp_path / "m", write_ids(ids.tolist()), "logits,blocks.1.resid_post", "--dtype", dtype)
    for name in ("logits", "blocks.1.resid_post"):
        scale = float(np.abs(ref[name]).max())
        diff = float(np.abs(got[name] - ref[name]).max())
        assert diff < 0.05 * scale, f"{dtype} {name}: max|diff| {diff} vs max|ref| {scale}"


def test_text_input_uses_the_checkpoint_tokenizer(cli, tmp_path, gpt2_tokenizer_files):
    """--text is tokenized with the model dir's GPT-2 vocab.json/merges.txt; --add-bos prepends
    <|endoftext|> (config bos_token_id 50256)."""
    model = GPT2LMHeadModel(
        GPT2Config(n_embd=16, n_layer=1, n_head=2, n_inner=32, n_positions=64, attn_implementation="eager")
    )
    randomize(model, 15).save_pretrained(tmp_path / "m")
    gpt2_tokenizer_files(tmp_path / "m")
    text = "The massive activation at dim 447 isn't 364, is it?"
    ids = gpt2_encoding(tmp_path / "m").encode_ordinary(text)
    for extra, want_ids in [((), ids), (("--add-bos",), [50256] + ids)]:
        out = tmp_path / f"acts{len(extra)}.safetensors"
        cli("dump", "--model", tmp_path / "m", "--text", text, "--sites", "embed,logits", "--out", out, *extra)
        ref = capture(model, torch.tensor([want_ids]))
        compare(load_file(str(out)), {k: ref[k] for k in ("embed", "logits")}, TOL, f"--text {extra}")
