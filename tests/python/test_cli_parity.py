"""The lesion CLI against live HF transformers on random checkpoints made at test time (not the
committed fixtures): every hook site, perplexity protocols, tokenizers and error handling."""
import json
import math
import shutil

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, MistralConfig,
                          MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM)

from conftest import ROOT

COMMON = dict(hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=6,
              vocab_size=97, max_position_embeddings=64, attn_implementation="eager")


def make(kind, seed):
    torch.manual_seed(seed)
    if kind == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(n_embd=48, n_layer=2, n_head=6, vocab_size=97, n_positions=64,
                                           bos_token_id=0, eos_token_id=0, attn_implementation="eager"))
    elif kind == "llama_gqa":
        model = LlamaForCausalLM(LlamaConfig(**COMMON, num_key_value_heads=3, rope_theta=777.0))
    elif kind == "llama3":
        model = LlamaForCausalLM(LlamaConfig(**COMMON, num_key_value_heads=2, tie_word_embeddings=True,
                                             rope_scaling={"rope_type": "llama3", "factor": 4.0,
                                                           "low_freq_factor": 1.0, "high_freq_factor": 2.0,
                                                           "original_max_position_embeddings": 6}))
    elif kind == "mistral":
        model = MistralForCausalLM(MistralConfig(**COMMON, num_key_value_heads=2, sliding_window=4))
    elif kind == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**COMMON, num_key_value_heads=1))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.3 if p.dim() == 1 else 0.08) + (1.0 if "norm" in name or "ln_" in name else 0.0))
    return model.eval()


def hf_sites(model, ids):
    with torch.no_grad():
        out = model(ids, output_hidden_states=True, output_attentions=True)
    sites = {"logits": out.logits, "embed": out.hidden_states[0], "final_norm": out.hidden_states[-1]}
    for l, a in enumerate(out.attentions):
        sites[f"blocks.{l}.attn_pattern"] = a
    for l in range(len(out.hidden_states) - 2):
        sites[f"blocks.{l}.resid_post"] = out.hidden_states[l + 1]
    return {k: v.float().numpy() for k, v in sites.items()}


@pytest.mark.parametrize("kind", ["gpt2", "llama_gqa", "llama3", "mistral", "qwen2"])
def test_dump_matches_transformers(cli, tmp_path, write_ids, kind):
    model = make(kind, seed=len(kind))
    model.save_pretrained(tmp_path / "m")
    ids = torch.randint(0, 97, (2, 13), generator=torch.Generator().manual_seed(5))
    out = tmp_path / "acts.safetensors"
    cli("dump", "--model", tmp_path / "m", "--ids-json", write_ids(ids.tolist()),
        "--sites", "embed,blocks.*.resid_post,blocks.*.attn_pattern,final_norm,logits", "--out", out)
    got, want = load_file(str(out)), hf_sites(model, ids)
    for name, ref in want.items():
        assert got[name].shape == ref.shape, name
        diff = float(np.abs(got[name] - ref).max())
        assert diff <= 1e-4, f"{kind} {name}: max abs difference {diff}"


def test_bf16_checkpoint_as_float32(cli, tmp_path, write_ids):
    model = make("llama_gqa", seed=3).to(torch.bfloat16)
    model.save_pretrained(tmp_path / "m")
    upcast = model.float()
    ids = torch.randint(0, 97, (1, 11), generator=torch.Generator().manual_seed(2))
    out = tmp_path / "acts.safetensors"
    cli("dump", "--model", tmp_path / "m", "--ids-json", write_ids(ids[0].tolist()), "--sites", "logits",
        "--out", out, "--dtype", "float32")
    with torch.no_grad():
        ref = upcast(ids).logits.numpy()
    assert float(np.abs(load_file(str(out))["logits"] - ref).max()) <= 1e-4


def hf_perplexity(model, ids, seq_len, stride=None):
    """Sum of exact per-token NLLs, HF windowing (non-overlapping, or the sliding recipe)."""
    n, total, count, prev_end = len(ids), 0.0, 0, 0
    stride = stride or seq_len
    for begin in range(0, n, stride):
        end = min(begin + seq_len, n)
        window = ids[begin:end]
        if len(window) >= 2:
            with torch.no_grad():
                logp = torch.log_softmax(model(window[None]).logits[0].double(), -1)
            for p in range(max(prev_end, begin + 1), end):
                total -= logp[p - begin - 1, ids[p]].item()
                count += 1
        prev_end = end
        if end == n:
            break
    return total / count, count


@pytest.mark.parametrize("stride", [None, 7])
def test_perplexity_matches_transformers(cli, tmp_path, write_ids, stride):
    model = make("llama_gqa", seed=9)
    model.save_pretrained(tmp_path / "m")
    ids = torch.randint(0, 97, (101,), generator=torch.Generator().manual_seed(4))
    args = ["perplexity", "--model", tmp_path / "m", "--ids-json", write_ids(ids.tolist()), "--seq-len", 16, "--json"]
    if stride:
        args += ["--stride", stride]
    got = json.loads(cli(*args).stdout)
    nll, count = hf_perplexity(model, ids, 16, stride)
    assert got["n_tokens"] == count
    assert abs(got["mean_nll"] - nll) < 1e-5
    assert abs(got["ppl"] - math.exp(nll)) < 1e-4 * math.exp(nll)
    # The single-window case is exactly HF's labels=ids loss.
    one = json.loads(cli("perplexity", "--model", tmp_path / "m", "--ids-json", write_ids(ids[:16].tolist(), "w.json"),
                         "--seq-len", 16, "--json").stdout)
    with torch.no_grad():
        loss = model(ids[None, :16], labels=ids[None, :16]).loss.item()
    assert abs(one["mean_nll"] - loss) < 1e-5


def test_gpt2_tokenizer_matches_tiktoken_on_wikitext(cli, tmp_path):
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    src = ROOT / "models" / "gpt2-tokenizer"
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(src / f, tmp_path / f)
    ranks = data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=str(src / "merges.txt"),
                                            encoder_json_file=str(src / "vocab.json"))
    enc = tiktoken.Encoding("gpt2", mergeable_ranks=ranks, special_tokens={},
                            pat_str=r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
    text_path = ROOT / "data" / "wikitext-2" / "wiki.test.raw"
    ours = json.loads(cli("tokenize", "--model", tmp_path, "--text-file", text_path).stdout)
    ref = enc.encode_ordinary(text_path.read_text(encoding="utf-8"))
    assert len(ours) == len(ref) == 286221
    assert ours == ref
    # stdin works too
    assert json.loads(cli("tokenize", "--model", tmp_path, stdin="Hello world").stdout) == [15496, 995]


def test_inspect_reports_the_architecture(cli, tmp_path):
    make("llama_gqa", seed=1).save_pretrained(tmp_path / "m")
    info = json.loads(cli("inspect", "--model", tmp_path / "m", "--json").stdout)
    assert info["architecture"] == "LlamaForCausalLM"
    assert (info["n_layers"], info["n_heads"], info["n_kv_heads"], info["d_model"], info["head_dim"],
            info["d_ffn"], info["vocab_size"]) == (2, 6, 3, 48, 8, 80, 97)
    model = make("llama_gqa", seed=1)
    assert info["n_params"] == sum(p.numel() for p in model.parameters())
    assert info["dtype"] == "float32"


def test_bundled_model_generates_the_known_story(cli):
    text = cli("generate", "--model", ROOT / "models" / "stories260K", "--max-tokens", 40).stdout
    assert text.startswith("Once upon a time, there was a little girl named Lily. "
                           "She loved to play outside in the park.")


def test_bad_inputs_fail_with_a_clear_message(cli, tmp_path, write_ids):
    ids = write_ids([1, 2, 3])
    missing = cli("dump", "--model", tmp_path / "nope", "--ids-json", ids, "--sites", "logits",
                  "--out", tmp_path / "o.safetensors", check=False)
    assert missing.returncode != 0 and "nope" in missing.stderr

    make("gpt2", seed=2).save_pretrained(tmp_path / "m")
    for sites, needle in [("blocks.0.attn_q", "attn_q"), ("blocks.7.resid_post", "layer 7 out of range")]:
        r = cli("dump", "--model", tmp_path / "m", "--ids-json", ids, "--sites", sites,
                "--out", tmp_path / "o.safetensors", check=False)
        assert r.returncode != 0 and needle in r.stderr, r.stderr
    bad_id = cli("dump", "--model", tmp_path / "m", "--ids-json", write_ids([1, 500], "bad.json"),
                 "--sites", "logits", "--out", tmp_path / "o.safetensors", check=False)
    assert bad_id.returncode != 0 and "500" in bad_id.stderr

    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    truncated = cli("inspect", "--model", tmp_path / "m", check=False)
    assert truncated.returncode != 0 and "model.safetensors" in truncated.stderr

    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["architectures"] = ["FalconForCausalLM"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    unknown = cli("inspect", "--model", tmp_path / "m", check=False)
    assert unknown.returncode != 0 and "FalconForCausalLM" in unknown.stderr

    typo = cli("inspect", "--model", tmp_path / "m", "--jsn", check=False)
    assert typo.returncode != 0 and "--jsn" in typo.stderr
