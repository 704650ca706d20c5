"""GGUF files of qwen3, phi3, olmo2, gemma2, gemma3 and gptneox against transformers.

Each file is written here with the `gguf` package the way llama.cpp's converter (convert_hf_to_gguf.py)
lays that architecture out: its metadata keys and nothing more, its tensor names (gguf's own name
map), and its value changes (Gemma's norms stored as 1 + w, GPT-NeoX's per-head query_key_value rows
regrouped into [q; k; v], no q/k row permutation: these families use llama.cpp's NeoX rotary).

The model is hf_reference.make_model's tiny checkpoint of the family, with what a GGUF file cannot
carry set to what llama.cpp assumes in its place (`gguf_variant`): Qwen3 without sliding windows,
Gemma's query_pre_attn_scalar as llama.cpp derives it (the head width), Gemma-2's and GPT-NeoX's
rotary base 10000 (their converters write none), and Gemma-3's local/global layers in llama.cpp's
5-to-1 pattern. Quantized files take a wider variant (every row a multiple of 256 values) whose
matrices, once stored, are dequantized with gguf.quants back into the transformers model, so that
both sides run the same weights; every hook site must then agree as in test_gguf.py. Also: the
perplexity, Gemma's norms, the Gemma-2 27B query scale, attention.sliding_window_pattern, OLMo-3
(an olmo2 file with windows), and errors that name the missing key or tensor."""

import json

import numpy as np
import pytest
import torch

from conftest import load_error, requires_cli
from hf_reference import GEMMA3_LAYER_TYPES, VOCAB, capture, compare, hf_perplexity, make_model, randomize

gguf = pytest.importorskip("gguf")
from test_gguf import TOL, dump, stored  # noqa: E402 (after importorskip)

pytestmark = requires_cli
Q = gguf.GGMLQuantizationType

# make_model kind -> general.architecture
ARCH = {
    "qwen3": "qwen3",
    "phi3": "phi3",
    "olmo2": "olmo2",
    "gemma2": "gemma2",
    "gemma3": "gemma3",
    "neox": "gptneox",
    "neox_sequential": "gptneox",
}
KINDS = list(ARCH)
GEMMA = ("gemma2", "gemma3")
NEOX = ("neox", "neox_sequential")
# The quantized variants: 4 heads of 64 (q width 256), MLP 512, so that K-quants' 256-value blocks fit
# every row. neox_sequential's rotary fraction becomes 0.25 (0.3 of 64 would rotate an odd 19 dims).
WIDE = dict(hidden_size=256, intermediate_size=512, num_attention_heads=4)


def rebuilt(model, seed, **overrides):
    """`model`'s architecture with its config changed by `overrides`, randomized as make_model does.
    layer_types is recomputed from the other fields unless given."""
    d = model.config.to_dict()
    d.update(overrides)
    if "layer_types" not in overrides:
        d.pop("layer_types", None)
    torch.manual_seed(seed)
    config = type(model.config).from_dict(d, attn_implementation="eager")
    return randomize(type(model)(config), seed)


def gguf_variant(kind, seed, wide=False, **extra):
    """make_model(kind, seed) with the settings a llama.cpp GGUF file cannot carry set as llama.cpp
    assumes them (see the module docstring); `wide` for quantized files."""
    model = make_model(kind, seed)
    over = dict(extra)
    if wide:
        over.update(WIDE)
        if kind in NEOX:
            factor = 0.5 if kind == "neox" else 0.25
            over["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": factor}
        else:
            over["num_key_value_heads"] = 2
        if kind in ("qwen3", *GEMMA):
            over["head_dim"] = 64
    head_dim = over.get("head_dim", model.config.to_dict().get("head_dim"))
    if kind == "qwen3":
        over["use_sliding_window"] = False  # llama.cpp never windows Qwen3
    if kind in GEMMA and "query_pre_attn_scalar" not in extra:
        over["query_pre_attn_scalar"] = head_dim  # llama.cpp: the head width (but for the 27B models)
    if kind == "gemma2":
        over["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0}  # the converter writes none
    if kind == "gemma3":
        over.setdefault("num_hidden_layers", 6)  # five sliding layers, then a full one
    if kind in NEOX and not wide:
        factor = model.config.rope_parameters["partial_rotary_factor"]
        over["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": factor}
    return rebuilt(model, seed, **over)


def converter_metadata(w, kind, cfg):
    """The keys llama.cpp's converter writes for `kind` (its set_gguf_parameters)."""
    d = cfg.to_dict()
    heads = cfg.num_attention_heads
    if kind in NEOX:
        head_dim = cfg.hidden_size // heads
        w.add_context_length(cfg.max_position_embeddings)
        w.add_embedding_length(cfg.hidden_size)
        w.add_block_count(cfg.num_hidden_layers)
        w.add_feed_forward_length(cfg.intermediate_size)
        w.add_rope_dimension_count(int(cfg.rope_parameters["partial_rotary_factor"] * head_dim))
        w.add_head_count(heads)
        w.add_parallel_residual(cfg.use_parallel_residual)
        w.add_layer_norm_eps(cfg.layer_norm_eps)
        return
    if kind == "phi3":
        rope = cfg.rope_parameters
        w.add_context_length(cfg.max_position_embeddings)
        w.add_rope_scaling_orig_ctx_len(rope.get("original_max_position_embeddings", cfg.max_position_embeddings))
        w.add_embedding_length(cfg.hidden_size)
        w.add_feed_forward_length(cfg.intermediate_size)
        w.add_block_count(cfg.num_hidden_layers)
        w.add_head_count(heads)
        w.add_head_count_kv(cfg.num_key_value_heads)
        w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
        w.add_rope_dimension_count(int(rope.get("partial_rotary_factor", 1.0) * cfg.hidden_size) // heads)
        w.add_rope_freq_base(rope["rope_theta"])
        w.add_sliding_window(cfg.sliding_window or 0)
        return
    if kind == "gemma2":
        w.add_context_length(cfg.max_position_embeddings)
        w.add_embedding_length(cfg.hidden_size)
        w.add_block_count(cfg.num_hidden_layers)
        w.add_feed_forward_length(cfg.intermediate_size)
        w.add_head_count(heads)
        w.add_head_count_kv(cfg.num_key_value_heads)
        w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
        w.add_attn_logit_softcapping(cfg.attn_logit_softcapping)
        w.add_final_logit_softcapping(cfg.final_logit_softcapping)
        w.add_sliding_window(cfg.sliding_window)
        return
    # The generic TextModel keys (qwen3, olmo2, and gemma3 before its own).
    rope = cfg.rope_parameters.get("full_attention", cfg.rope_parameters)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    if rope.get("rope_type") == "linear" and rope.get("factor") is not None:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rope["factor"])
    w.add_rope_freq_base(rope["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    if d.get("head_dim") is not None:
        w.add_key_length(d["head_dim"])
        w.add_value_length(d["head_dim"])
    if kind == "gemma3":
        if cfg.final_logit_softcapping:
            w.add_final_logit_softcapping(cfg.final_logit_softcapping)
        w.add_sliding_window(cfg.sliding_window)
    if kind == "olmo3":  # the converter's Olmo2Model, for an Olmo3ForCausalLM
        w.add_sliding_window(cfg.sliding_window)
        w.add_sliding_window_pattern([t == "sliding_attention" for t in cfg.layer_types])


def to_llama_cpp(kind, cfg, hf_name, data):
    """A tensor's value as the converter stores it (modify_tensors)."""
    if kind in GEMMA and hf_name.endswith("norm.weight"):
        return data + np.float32(1.0)  # Gemma's RMSNorm scales by 1 + w: llama.cpp stores 1 + w
    if kind in NEOX and "query_key_value" in hf_name:  # [heads, (q, k, v), dim] -> [q; k; v]
        heads = cfg.num_attention_heads
        return data.reshape(heads, 3, -1, *data.shape[1:]).swapaxes(0, 1).reshape(data.shape)
    return data


def from_llama_cpp(kind, cfg, hf_name, data):
    """The inverse of to_llama_cpp for a matrix (norms are never quantized)."""
    if kind in NEOX and "query_key_value" in hf_name:
        heads = cfg.num_attention_heads
        return data.reshape(3, heads, -1, *data.shape[1:]).swapaxes(0, 1).reshape(data.shape)
    return data


def write_family_gguf(path, model, kind, qtype, seed=0, drop=(), extra_tensors=None, skip_keys=(), extra_kv=None):
    """`model` as llama.cpp's converter would write it for `kind`, its matrices stored as `qtype`. The
    matrices of `model` become what the file dequantizes to, so that it is the file's reference.
    `drop` leaves GGUF tensors out; `skip_keys` leaves metadata keys (arch-relative) out; `extra_kv`
    (a function of the writer) adds some."""
    cfg = model.config
    arch = ARCH.get(kind, "olmo2")
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), arch)
    if skip_keys:  # write the keys into a scratch writer and copy all but the skipped ones
        scratch = gguf.GGUFWriter(None, arch)
        converter_metadata(scratch, kind, cfg)
        for key, value in scratch.kv_data[0].items():
            if key.removeprefix(arch + ".") not in skip_keys:
                w.kv_data[0][key] = value
    else:
        converter_metadata(w, kind, cfg)
    if extra_kv is not None:
        extra_kv(w)
    model_arch = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    names = gguf.get_tensor_name_map(model_arch, cfg.num_hidden_layers)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for hf_name, p in model.state_dict().items():
            if hf_name == "lm_head.weight" and cfg.tie_word_embeddings:
                continue  # the converter writes no output for a tied head
            name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            assert name is not None, hf_name
            if name in drop:
                continue
            data = to_llama_cpp(kind, cfg, hf_name, p.detach().float().numpy())
            if data.ndim == 2:
                tensor, raw = stored(data, qtype, rng)
                deq = data if raw is None else gguf.quants.dequantize(tensor, raw).reshape(data.shape)
                params[hf_name].copy_(torch.from_numpy(from_llama_cpp(kind, cfg, hf_name, deq.astype(np.float32))))
            else:  # norms and biases stay float32, as llama.cpp keeps them
                tensor, raw = data.astype(np.float32), None
            if raw is None:
                w.add_tensor(name, tensor)
            else:
                w.add_tensor(name, tensor, raw_dtype=raw)
    for name, tensor in (extra_tensors or {}).items():
        w.add_tensor(name, tensor)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model


def ids_for(seed, shape=(2, 13)):
    return torch.randint(0, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


def max_logit_diff(got, want):
    return float(np.abs(got["logits"].astype(np.float64) - want["logits"]).max())


@pytest.mark.parametrize("qtype", [Q.F32, Q.Q8_0, Q.Q4_K], ids=lambda t: t.name)
@pytest.mark.parametrize("kind", KINDS)
def test_family_gguf_matches_transformers_at_every_site(cli, tmp_path, kind, qtype):
    seed = 5 + KINDS.index(kind)
    model = gguf_variant(kind, seed, wide=qtype != Q.F32)
    write_family_gguf(tmp_path / "tiny.gguf", model, kind, qtype, seed=seed)
    ids = ids_for(seed)
    want = capture(model, ids)
    got = dump(cli, tmp_path, tmp_path / "tiny.gguf", ids)
    compare(got, want, TOL, f"{kind} {qtype.name}")
    print(f"{kind} {qtype.name}: max |logit diff| {max_logit_diff(got, want):.3e}")
    info = json.loads(cli("inspect", "--model", tmp_path / "tiny.gguf", "--json").stdout)
    assert info["format"] == "gguf" and info["architecture"] == type(model).__name__
    types = {t["name"]: t["type"] for t in info["tensors"]}
    down = "gpt_neox.layers.0.mlp.dense_4h_to_h.weight" if kind in NEOX else "model.layers.0.mlp.down_proj.weight"
    assert types[down] == qtype.name


@pytest.mark.parametrize("kind", KINDS)
def test_family_gguf_perplexity_matches_transformers(cli, tmp_path, kind):
    seed = 40 + KINDS.index(kind)
    model = gguf_variant(kind, seed, wide=True)
    write_family_gguf(tmp_path / "tiny.gguf", model, kind, Q.Q8_0, seed=seed)
    ids = ids_for(seed, (48,)).tolist()
    spec = {
        "dataset": {"token_ids": {"ids": ids}},
        "eval": {"seq_len": 16},
        "measurements": [{"perplexity": {}}],
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    result = json.loads(
        cli("run", "--local", "--model", tmp_path / "tiny.gguf", "--spec", tmp_path / "spec.json", "--json").stdout
    )
    want_nll, _ = hf_perplexity(model, ids, 16)
    got_nll = result["baseline"]["perplexity"]["mean_nll"]
    print(f"{kind} Q8_0: mean NLL {got_nll:.6f}, transformers {want_nll:.6f}")
    assert abs(got_nll - want_nll) < TOL
    assert "Q8_0" in result["run"]["dequantized_from"]


def test_gemma2_27b_scales_queries_by_width_over_heads(cli, tmp_path):
    """llama.cpp's one exception to scaling queries by the head width: Gemma-2 27B (46 layers) uses
    (embedding_length / head_count)^-0.5, its query_pre_attn_scalar. 48 / 4 = 12, not 16."""
    model = gguf_variant("gemma2", 3, num_hidden_layers=46, query_pre_attn_scalar=12)
    write_family_gguf(tmp_path / "tiny.gguf", model, "gemma2", Q.F32, seed=3)
    ids = ids_for(3, (1, 9))
    got = dump(cli, tmp_path, tmp_path / "tiny.gguf", ids, "logits")
    with torch.no_grad():
        want = model(ids).logits.float().numpy()
    assert np.abs(got["logits"] - want).max() < TOL


def test_gemma_norms_load_as_the_effective_gamma(cli, tmp_path):
    """A Gemma file's norms hold 1 + w; lesion's norm gammas are that, bit for bit (not 1 + (1 + w))."""
    model = gguf_variant("gemma3", 2)
    write_family_gguf(tmp_path / "tiny.gguf", model, "gemma3", Q.F32, seed=2)
    ids = ids_for(2, (1, 7))
    got = dump(cli, tmp_path, tmp_path / "tiny.gguf", ids, "final_norm,blocks.*.resid_post")
    want = capture(model, ids)
    compare(got, {k: want[k] for k in got}, TOL, "gemma3 norms")


def test_sliding_window_pattern_key_sets_the_sliding_layers(cli, tmp_path):
    """attention.sliding_window_pattern, one flag per layer, overrides Gemma-3's five-to-one default:
    make_model's own sliding / full / sliding layout, global layer rotary scaled, local not."""
    model = gguf_variant("gemma3", 4, num_hidden_layers=3, layer_types=list(GEMMA3_LAYER_TYPES))
    pattern = [t == "sliding_attention" for t in GEMMA3_LAYER_TYPES]
    write_family_gguf(
        tmp_path / "tiny.gguf",
        model,
        "gemma3",
        Q.F32,
        seed=4,
        extra_kv=lambda w: w.add_sliding_window_pattern(pattern),
    )
    ids = ids_for(4)
    compare(dump(cli, tmp_path, tmp_path / "tiny.gguf", ids), capture(model, ids), TOL, "gemma3 pattern")


def test_olmo3_file_is_olmo2_with_sliding_layers(cli, tmp_path):
    """llama.cpp's converter writes Olmo3ForCausalLM as an olmo2 file with a window and its per-layer
    pattern (three sliding layers to one full); lesion runs it as transformers runs OLMo-3."""
    from transformers import Olmo3Config, Olmo3ForCausalLM

    d = make_model("olmo2", 6).config.to_dict()
    for k in ("architectures", "model_type", "transformers_version", "rope_parameters", "layer_types"):
        d.pop(k, None)
    rope = {"rope_type": "default", "rope_theta": 700.0}  # one base: the converter writes the full layers' only
    d.update(num_hidden_layers=4, sliding_window=4)
    config = Olmo3Config(**d, rope_parameters={"sliding_attention": dict(rope), "full_attention": dict(rope)})
    config._attn_implementation = "eager"
    torch.manual_seed(6)
    model = randomize(Olmo3ForCausalLM(config), 6)
    assert model.config.layer_types == ["sliding_attention"] * 3 + ["full_attention"]
    write_family_gguf(tmp_path / "tiny.gguf", model, "olmo3", Q.F32, seed=6)
    ids = ids_for(6)
    got = dump(cli, tmp_path, tmp_path / "tiny.gguf", ids, "logits")
    with torch.no_grad():
        want = model(ids).logits.float().numpy()
    assert np.abs(got["logits"] - want).max() < TOL
    # the windows matter: the same file read without them would differ
    model.config.layer_types = ["full_attention"] * 4
    for layer in model.model.layers:
        layer.self_attn.sliding_window = None
        layer.attention_type = "full_attention"
    with torch.no_grad():
        unwindowed = model(ids).logits.float().numpy()
    assert np.abs(unwindowed - want).max() > 1e-3


@pytest.mark.parametrize(
    "kind, missing",
    [
        ("gemma2", "blk.1.post_ffw_norm.weight"),
        ("gemma3", "blk.0.attn_k_norm.weight"),
        ("olmo2", "blk.1.post_attention_norm.weight"),
        ("phi3", "blk.0.attn_qkv.weight"),
        ("qwen3", "blk.1.attn_q_norm.weight"),
        ("neox", "blk.0.attn_qkv.bias"),
    ],
)
def test_missing_tensor_is_named_as_llama_cpp_names_it(cli, tmp_path, kind, missing):
    path = tmp_path / f"{kind}.gguf"
    write_family_gguf(path, gguf_variant(kind, 1), kind, Q.F32, seed=1, drop=(missing,))
    stderr = load_error(cli, tmp_path, path)
    assert path.name in stderr and missing in stderr, stderr


@pytest.mark.parametrize(
    "kind, key",
    [
        ("gemma2", "attention.layer_norm_rms_epsilon"),
        ("neox", "use_parallel_residual"),
        ("neox", "attention.layer_norm_epsilon"),
        ("qwen3", "block_count"),
    ],
)
def test_missing_metadata_key_is_named(cli, tmp_path, kind, key):
    path = tmp_path / f"{kind}.gguf"
    write_family_gguf(path, gguf_variant(kind, 1), kind, Q.F32, seed=1, skip_keys=(key,))
    stderr = load_error(cli, tmp_path, path)
    assert path.name in stderr and f"{ARCH[kind]}.{key}" in stderr, stderr


def test_phi3_longrope_factors_are_refused_by_name(cli, tmp_path):
    path = tmp_path / "phi3.gguf"
    factors = np.ones(2, dtype=np.float32)  # rotary dims / 2 of the tiny model
    write_family_gguf(
        path,
        gguf_variant("phi3", 1),
        "phi3",
        Q.F32,
        seed=1,
        extra_tensors={"rope_factors_long.weight": factors, "rope_factors_short.weight": factors},
    )
    stderr = load_error(cli, tmp_path, path)
    assert path.name in stderr and "rope_factors_long.weight" in stderr and "longrope" in stderr, stderr


def test_unsupported_architecture_lists_the_supported_ones(cli, tmp_path):
    path = tmp_path / "mamba.gguf"
    w = gguf.GGUFWriter(str(path), "mamba")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    stderr = load_error(cli, tmp_path, path)
    assert '"mamba" is not supported' in stderr, stderr
    for arch in sorted(set(ARCH.values())):
        assert arch in stderr, stderr
