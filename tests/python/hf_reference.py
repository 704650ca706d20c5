"""What Hugging Face transformers computes, for the CLI tests: fresh random tiny checkpoints of every
supported architecture, every lesion hook site captured with module hooks, the interventions of the
spec done in transformers (hooks and weight edits, addressed as lesion addresses them), and HF's
perplexity recipe. Nothing here runs lesion."""

import json
import math
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import torch
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Olmo2Config,
    Olmo2ForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PhiConfig,
    PhiForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

VOCAB = 97
COMMON = dict(
    hidden_size=48,
    intermediate_size=80,
    num_hidden_layers=2,
    num_attention_heads=6,
    vocab_size=VOCAB,
    max_position_embeddings=64,
    rms_norm_eps=1e-6,
    attn_implementation="eager",
)
# LLaMA 3.1's own rope settings (theta 5e5, factor 8, low/high 1/4, original 8192). With head_dim 8
# the four rotary frequencies have wavelengths 6.3, 167, 4443 and 118k positions, so they fall in all
# three branches of the llama3 rule: kept (< 8192/4), smoothed (between), divided by 8 (> 8192).
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}

# The architectures added after the first seven, each configured to exercise what sets it apart.
NEW_KINDS = ["neox", "neox_sequential", "opt", "phi2", "phi3", "olmo2", "gemma2", "gemma3", "qwen3"]
KINDS = ["gpt2", "llama", "llama_gqa", "llama3", "mistral", "qwen2", "qwen2_sliding"] + NEW_KINDS
WINDOW = 4  # sliding window of every windowed kind; the tests use 13 or 16 > 4 tokens
# Rotary dims of the partial-rotary kinds: int(head_dim * factor), as transformers truncates it.
# neox_sequential's 8 * 0.3 = 2.4 truncates to 2 (rounding would give the same; 0.3 checks the floor).
PARTIAL_ROTARY = {"neox": (12, 0.5, 6), "neox_sequential": (8, 0.3, 2), "phi2": (8, 0.75, 6), "phi3": (8, 0.5, 4)}
# Gemma-3's rope: local (sliding) layers theta 1e4, global layers theta 1e6 with linear scaling x8.
GEMMA3_ROPE = {
    "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
    "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
}
GEMMA3_LAYER_TYPES = ["sliding_attention", "full_attention", "sliding_attention"]
SOFTCAP = {"gemma2": (1.0, 2.0), "gemma3": (None, 1.5)}  # (attn_logit_softcapping, final_logit_softcapping)


def rope(theta, factor=None):
    params = {"rope_type": "default", "rope_theta": theta}
    return params if factor is None else {**params, "partial_rotary_factor": factor}


def make_model(kind, seed):
    """A random tiny model of `kind` with wide weights, gammas around 1 and biases around 0."""
    torch.manual_seed(seed)
    if kind == "gpt2":  # Conv1D weights, LayerNorm with bias, learned positions, tied head
        model = GPT2LMHeadModel(
            GPT2Config(
                n_embd=48,
                n_layer=2,
                n_head=6,
                n_inner=80,
                vocab_size=VOCAB,
                n_positions=64,
                bos_token_id=0,
                eos_token_id=0,
                attn_implementation="eager",
            )
        )
    elif kind == "llama":  # multi-head (no GQA), untied head, unusual theta
        model = LlamaForCausalLM(LlamaConfig(**COMMON, num_key_value_heads=6, rope_theta=777.0))
    elif kind == "llama_gqa":  # GQA 6/3, untied
        model = LlamaForCausalLM(LlamaConfig(**COMMON, num_key_value_heads=3, rope_theta=50000.0))
    elif kind == "llama3":  # GQA 6/2, llama3 rope scaling, tied
        model = LlamaForCausalLM(
            LlamaConfig(
                **{**COMMON, "max_position_embeddings": 131072},
                num_key_value_heads=2,
                tie_word_embeddings=True,
                rope_theta=500000.0,
                rope_scaling=dict(LLAMA3_ROPE),
            )
        )
    elif kind == "mistral":  # sliding window on every layer
        model = MistralForCausalLM(MistralConfig(**COMMON, num_key_value_heads=2, sliding_window=WINDOW))
    elif kind == "qwen2":  # q/k/v biases, GQA 6/2, tied
        model = Qwen2ForCausalLM(Qwen2Config(**COMMON, num_key_value_heads=2, tie_word_embeddings=True))
    elif kind == "qwen2_sliding":  # window only from max_window_layers on: layer 0 full, layer 1 windowed
        model = Qwen2ForCausalLM(
            Qwen2Config(
                **COMMON, num_key_value_heads=3, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1
            )
        )
    elif kind in ("neox", "neox_sequential"):
        # Fused query_key_value interleaved per head, with biases; partial rotary; LayerNorms; untied.
        # "neox": parallel residual (attention and MLP both read the block input), 4 heads of 12;
        # "neox_sequential": the MLP reads the attention's residual, 6 heads of 8.
        head_dim, factor, _ = PARTIAL_ROTARY[kind]
        model = GPTNeoXForCausalLM(
            GPTNeoXConfig(
                hidden_size=48,
                intermediate_size=80,
                num_hidden_layers=2,
                num_attention_heads=48 // head_dim,
                vocab_size=VOCAB,
                max_position_embeddings=64,
                use_parallel_residual=kind == "neox",
                attention_bias=True,
                rope_parameters=rope(1000.0 if kind == "neox" else 3000.0, factor),
                attn_implementation="eager",
            )
        )
    elif kind == "opt":  # pre-LN, biases everywhere, ReLU, learned positions at offset 2, tied head
        model = OPTForCausalLM(
            OPTConfig(
                hidden_size=48,
                ffn_dim=80,
                num_hidden_layers=2,
                num_attention_heads=6,
                vocab_size=VOCAB,
                max_position_embeddings=64,
                do_layer_norm_before=True,
                enable_bias=True,
                activation_function="relu",
                dropout=0.0,
                pad_token_id=1,
                bos_token_id=2,
                eos_token_id=2,
                attn_implementation="eager",
            )
        )
    elif kind == "phi2":  # parallel block with one shared LayerNorm, partial rotary, biases, lm_head bias
        model = PhiForCausalLM(
            PhiConfig(
                **{k: v for k, v in COMMON.items() if k != "rms_norm_eps"},
                hidden_act="gelu_new",
                rope_parameters=rope(5000.0, PARTIAL_ROTARY["phi2"][1]),
            )
        )
    elif kind == "phi3":  # fused qkv_proj and gate_up_proj, GQA 6/2, window on every layer, partial rotary
        model = Phi3ForCausalLM(
            Phi3Config(
                **COMMON,
                num_key_value_heads=2,
                sliding_window=WINDOW,
                rope_parameters=rope(20000.0, PARTIAL_ROTARY["phi3"][1]),
                original_max_position_embeddings=64,
                pad_token_id=0,
                bos_token_id=1,
                eos_token_id=2,
            )
        )
    elif kind == "olmo2":  # no pre-norms; post-norms on both branches; q/k RMSNorm over the whole projection
        model = Olmo2ForCausalLM(
            Olmo2Config(**COMMON, num_key_value_heads=3, rope_parameters=rope(700.0), eos_token_id=2, pad_token_id=1)
        )
    elif kind == "gemma2":
        # (1 + w) RMSNorms, embedding x sqrt(48), 4 heads of 16 (q width 64 != 48), scaling 1/sqrt(6),
        # soft-capped attention scores and logits, window on layer 0 only, tied head
        attn_cap, final_cap = SOFTCAP[kind]
        model = Gemma2ForCausalLM(
            Gemma2Config(
                **{**COMMON, "num_attention_heads": 4},
                num_key_value_heads=2,
                head_dim=16,
                query_pre_attn_scalar=6,
                attn_logit_softcapping=attn_cap,
                final_logit_softcapping=final_cap,
                sliding_window=WINDOW,
                rope_parameters=rope(5000.0),
            )
        )
    elif kind == "gemma3":
        # Gemma-2's features plus per-head (1 + w) q/k norms; 3 layers sliding / full / sliding with
        # their own rope (GEMMA3_ROPE); logits soft-capped, attention scores not (as Gemma 3 ships)
        attn_cap, final_cap = SOFTCAP[kind]
        model = Gemma3ForCausalLM(
            Gemma3TextConfig(
                **{**COMMON, "num_attention_heads": 4, "num_hidden_layers": 3},
                num_key_value_heads=2,
                head_dim=16,
                query_pre_attn_scalar=20,
                attn_logit_softcapping=attn_cap,
                final_logit_softcapping=final_cap,
                sliding_window=WINDOW,
                layer_types=list(GEMMA3_LAYER_TYPES),
                rope_parameters={k: dict(v) for k, v in GEMMA3_ROPE.items()},
            )
        )
    elif kind == "qwen3":  # per-head q/k RMSNorm, GQA 6/2, head_dim 12 (q width 72 != 48), window from layer 1
        model = Qwen3ForCausalLM(
            Qwen3Config(
                **COMMON,
                num_key_value_heads=2,
                head_dim=12,
                use_sliding_window=True,
                sliding_window=WINDOW,
                max_window_layers=1,
                tie_word_embeddings=True,
                rope_parameters=rope(1000000.0),
            )
        )
    else:
        raise ValueError(kind)
    return randomize(model, seed)


def make_model_with_bos(kind, seed, bos_id=1):
    """make_model(kind, seed) with a BOS id in its config, for add_bos runs."""
    model = make_model(kind, seed)
    model.config.bos_token_id = bos_id
    return model


def randomize(model, seed):
    """Weights N(0, 0.08), biases and LayerNorm betas N(0, 0.3), norm gammas N(1, 0.3). Gemma's
    RMSNorms scale by (1 + w): their w is drawn N(0, 0.3), so the effective gamma is N(1, 0.3) too."""
    offset = {f"{n}.weight" for n, m in model.named_modules() if type(m).__name__ in ("Gemma2RMSNorm", "Gemma3RMSNorm")}
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and ("norm" in name or "ln_" in name) and name.endswith("weight"):
                p.copy_((0.0 if name in offset else 1.0) + 0.3 * torch.randn(p.shape, generator=g))  # gammas
            elif p.dim() == 1:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))  # biases, LayerNorm betas
            else:
                p.copy_(0.08 * torch.randn(p.shape, generator=g))
    return model.eval()


# --- where lesion's sites, modules and norms are in each transformers architecture --------------

# How lesion's logical [out, in] matrix of a module sits in the HF tensor (weight_element):
# "linear": nn.Linear [out, in]; "conv1d": GPT-2's Conv1D [in, out]; "qkv" (part 0/1/2): rows [q; k; v]
# of one nn.Linear (Phi-3's qkv_proj); "conv1d_qkv": GPT-2's c_attn, columns [q; k; v]; "neox_qkv":
# GPT-NeoX's query_key_value, rows interleaved per head, [heads, 3, head_dim, in]; "gate_up" (part
# 0/1): rows [gate; up] (Phi-3's gate_up_proj).
LLAMA_LINEARS = {
    "attn.q": ("self_attn.q_proj", "linear", 0),
    "attn.k": ("self_attn.k_proj", "linear", 0),
    "attn.v": ("self_attn.v_proj", "linear", 0),
    "attn.o": ("self_attn.o_proj", "linear", 0),
    "mlp.gate": ("mlp.gate_proj", "linear", 0),
    "mlp.up": ("mlp.up_proj", "linear", 0),
    "mlp.down": ("mlp.down_proj", "linear", 0),
}
LLAMA_NORMS = {"attn": "input_layernorm", "mlp": "post_attention_layernorm"}
QK_NORMS = {"q": "self_attn.q_norm", "k": "self_attn.k_norm"}


@dataclass(frozen=True)
class Family:
    """One architecture's modules, as paths from a decoder layer (`base` and `final` from the
    CausalLM and the base model). The hook sites (docs/conventions.md) are:

    attn_in = input of `attn`; attn_z = input of `o_proj`; attn_out = output of `attn_post` if the
    family has that norm, else of `o_proj`; resid_mid = block input + attn_out; mlp_in = input of
    `mlp_in`; mlp_act = input of `down`; mlp_out = output of `mlp_post` if any, else of `mlp_out`;
    resid_post = the layer's output; final_norm = output of `final`."""

    base: str
    final: str
    attn: str
    o_proj: str
    mlp_in: str
    mlp_out: str
    down: str
    linears: dict  # lesion module -> (HF path, layout, part)
    norms: dict  # lesion norm -> HF path ("final" is added: `final` of the base model)
    layers: str = "layers"
    attn_post: str | None = None
    mlp_post: str | None = None
    offset_norms: bool = False  # Gemma: the norm scales by (1 + w); lesion's gamma is 1 + w


LLAMA = Family(
    base="model",
    final="norm",
    attn="self_attn",
    o_proj="self_attn.o_proj",
    mlp_in="mlp",
    mlp_out="mlp",
    down="mlp.down_proj",
    linears=LLAMA_LINEARS,
    norms=LLAMA_NORMS,
)
# LLaMA's modules with norms on the branches' outputs (OLMo-2, Gemma): attn_out and mlp_out after them
POST_NORMS = replace(LLAMA, attn_post="post_attention_layernorm", mlp_post="post_feedforward_layernorm")
FAMILIES = {
    "GPT2LMHeadModel": Family(
        base="transformer",
        layers="h",
        final="ln_f",
        attn="attn",
        o_proj="attn.c_proj",
        mlp_in="mlp",
        mlp_out="mlp",
        down="mlp.c_proj",
        linears={
            "attn.q": ("attn.c_attn", "conv1d_qkv", 0),
            "attn.k": ("attn.c_attn", "conv1d_qkv", 1),
            "attn.v": ("attn.c_attn", "conv1d_qkv", 2),
            "attn.o": ("attn.c_proj", "conv1d", 0),
            "mlp.up": ("mlp.c_fc", "conv1d", 0),
            "mlp.down": ("mlp.c_proj", "conv1d", 0),
        },
        norms={"attn": "ln_1", "mlp": "ln_2"},
    ),
    "LlamaForCausalLM": LLAMA,
    "MistralForCausalLM": LLAMA,
    "Qwen2ForCausalLM": LLAMA,
    "Qwen3ForCausalLM": replace(LLAMA, norms={**LLAMA_NORMS, **QK_NORMS}),
    "GPTNeoXForCausalLM": Family(
        base="gpt_neox",
        final="final_layer_norm",
        attn="attention",
        o_proj="attention.dense",
        mlp_in="mlp",
        mlp_out="mlp",
        down="mlp.dense_4h_to_h",
        linears={
            "attn.q": ("attention.query_key_value", "neox_qkv", 0),
            "attn.k": ("attention.query_key_value", "neox_qkv", 1),
            "attn.v": ("attention.query_key_value", "neox_qkv", 2),
            "attn.o": ("attention.dense", "linear", 0),
            "mlp.up": ("mlp.dense_h_to_4h", "linear", 0),
            "mlp.down": ("mlp.dense_4h_to_h", "linear", 0),
        },
        norms={"attn": "input_layernorm", "mlp": "post_attention_layernorm"},
    ),
    "OPTForCausalLM": Family(  # no MLP module: fc1 / fc2 sit on the layer and run on [b * s, d]
        base="model.decoder",
        final="final_layer_norm",
        attn="self_attn",
        o_proj="self_attn.out_proj",
        mlp_in="fc1",
        mlp_out="fc2",
        down="fc2",
        linears={
            "attn.q": ("self_attn.q_proj", "linear", 0),
            "attn.k": ("self_attn.k_proj", "linear", 0),
            "attn.v": ("self_attn.v_proj", "linear", 0),
            "attn.o": ("self_attn.out_proj", "linear", 0),
            "mlp.up": ("fc1", "linear", 0),
            "mlp.down": ("fc2", "linear", 0),
        },
        norms={"attn": "self_attn_layer_norm", "mlp": "final_layer_norm"},
    ),
    "PhiForCausalLM": Family(  # one input_layernorm feeds both branches: mlp_in = attn_in
        base="model",
        final="final_layernorm",
        attn="self_attn",
        o_proj="self_attn.dense",
        mlp_in="mlp",
        mlp_out="mlp",
        down="mlp.fc2",
        linears={
            "attn.q": ("self_attn.q_proj", "linear", 0),
            "attn.k": ("self_attn.k_proj", "linear", 0),
            "attn.v": ("self_attn.v_proj", "linear", 0),
            "attn.o": ("self_attn.dense", "linear", 0),
            "mlp.up": ("mlp.fc1", "linear", 0),
            "mlp.down": ("mlp.fc2", "linear", 0),
        },
        norms={"attn": "input_layernorm"},
    ),
    "Phi3ForCausalLM": replace(
        LLAMA,
        linears={
            "attn.q": ("self_attn.qkv_proj", "qkv", 0),
            "attn.k": ("self_attn.qkv_proj", "qkv", 1),
            "attn.v": ("self_attn.qkv_proj", "qkv", 2),
            "attn.o": ("self_attn.o_proj", "linear", 0),
            "mlp.gate": ("mlp.gate_up_proj", "gate_up", 0),
            "mlp.up": ("mlp.gate_up_proj", "gate_up", 1),
            "mlp.down": ("mlp.down_proj", "linear", 0),
        },
    ),
    # no pre-norms: attn_in is the block input, mlp_in is resid_mid
    "Olmo2ForCausalLM": replace(
        POST_NORMS,
        norms={"attn_post": "post_attention_layernorm", "mlp_post": "post_feedforward_layernorm", **QK_NORMS},
    ),
    "Gemma2ForCausalLM": replace(
        POST_NORMS,
        offset_norms=True,
        norms={
            "attn": "input_layernorm",
            "attn_post": "post_attention_layernorm",
            "mlp": "pre_feedforward_layernorm",
            "mlp_post": "post_feedforward_layernorm",
        },
    ),
}
FAMILIES["Gemma3ForCausalLM"] = replace(
    FAMILIES["Gemma2ForCausalLM"], norms={**FAMILIES["Gemma2ForCausalLM"].norms, **QK_NORMS}
)


def family(model):
    try:
        return FAMILIES[type(model).__name__]
    except KeyError:
        raise ValueError(f"no lesion family table for {type(model).__name__}") from None


def submodule(module, path):
    for name in path.split("."):
        module = getattr(module, name)
    return module


def layers_of(model):
    """(base model, its decoder layers)."""
    fam = family(model)
    base = submodule(model, fam.base)
    return base, submodule(base, fam.layers)


def dims(model):
    """(heads, KV heads, head_dim)."""
    cfg = model.config
    n_heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    return n_heads, getattr(cfg, "num_key_value_heads", None) or n_heads, head_dim


def d_ffn(model):
    """The MLP's hidden width (GPT-2 n_inner, OPT ffn_dim, else intermediate_size)."""
    cfg = model.config
    return next(getattr(cfg, k) for k in ("intermediate_size", "ffn_dim", "n_inner") if getattr(cfg, k, None))


def parallel_block(model):
    """Whether attention and MLP both read the block input (resid_mid is then not an HF tensor)."""
    return isinstance(model, PhiForCausalLM) or bool(getattr(model.config, "use_parallel_residual", False))


def o_proj(model, layer):
    return submodule(layers_of(model)[1][layer], family(model).o_proj)


def weight_element(model, layer, module, row, col):
    """(HF parameter, index) of lesion's `module` [row, col] at `layer`: lesion addresses every
    matrix as nn.Linear [out_features, in_features], fused ones as their logical q/k/v, gate/up parts.
    KeyError for a module the family does not have."""
    path, layout, part = family(model).linears[module]
    w = submodule(layers_of(model)[1][layer], path).weight
    n_heads, n_kv, hd = dims(model)
    if layout == "linear":
        return w, (row, col)
    if layout == "conv1d":
        return w, (col, row)
    if layout == "conv1d_qkv":
        return w, (col, part * model.config.hidden_size + row)
    if layout == "qkv":
        return w, ((0, n_heads * hd, (n_heads + n_kv) * hd)[part] + row, col)
    if layout == "gate_up":
        return w, (part * d_ffn(model) + row, col)
    if layout == "neox_qkv":
        return w, ((row // hd) * 3 * hd + part * hd + row % hd, col)
    raise AssertionError(layout)


def scale_weight(model, layer, module, row, col, factor):
    w, index = weight_element(model, layer, module, row, col)
    with torch.no_grad():
        w[index] *= factor


def norm_module(model, layer, norm):
    """The HF norm module lesion calls `norm` ("final" ignores `layer`); KeyError if the family has none."""
    base, layers = layers_of(model)
    fam = family(model)
    return submodule(base, fam.final) if norm == "final" else submodule(layers[layer], fam.norms[norm])


def norm_names(model):
    return list(family(model).norms) + ["final"]


def effective_gamma(model, layer, norm):
    """lesion's gamma of a norm: the weight, or 1 + w for Gemma's (1 + w) RMSNorms (float32 copy)."""
    w = norm_module(model, layer, norm).weight.detach().float()
    return w + 1.0 if family(model).offset_norms else w.clone()


def set_gamma(model, layer, norm, channels, value):
    """Sets lesion's gamma of `channels` to `value` (a float or a tensor), i.e. w = value - 1 for Gemma."""
    w = norm_module(model, layer, norm).weight
    with torch.no_grad():
        w[channels] = torch.as_tensor(value, dtype=w.dtype) - (1.0 if family(model).offset_norms else 0.0)


def hook_heads(model, layer, heads, replace):
    """A forward pre-hook on `layer`'s output projection: replace(z_slice, head) -> new slice for
    each head's slice of its input (lesion's blocks.L.attn_z). Returns the handle."""
    _, _, head_dim = dims(model)

    def fn(module, args):
        z = args[0].clone()
        for h in heads:
            z[..., h * head_dim : (h + 1) * head_dim] = replace(z[..., h * head_dim : (h + 1) * head_dim], h)
        return (z,)

    return o_proj(model, layer).register_forward_pre_hook(fn)


def zero_heads(model, layer, heads):
    return hook_heads(model, layer, heads, lambda z, h: torch.zeros_like(z))


def site_module(model, site):
    """(module, "in" | "out") whose input or output is lesion's hook site `site` (blocks.L.X or
    embed), for the sites a hook can replace in transformers: embed, attn_in, attn_z, attn_out,
    mlp_in, mlp_act, mlp_out, resid_post (not resid_mid, which no HF module computes in parallel
    blocks). Phi-2's attn_in and mlp_in are one tensor in HF, taken here at the attention's and at
    the MLP's input: an edit of one reaches only its own branch."""
    base, layers = layers_of(model)
    fam = family(model)
    if site == "embed":
        return layers[0], "in"
    _, l, name = site.split(".")
    layer = layers[int(l)]
    where = {
        "attn_in": (fam.attn, "in"),
        "attn_z": (fam.o_proj, "in"),
        "attn_out": (fam.attn_post or fam.o_proj, "out"),
        "mlp_in": (fam.mlp_in, "in"),
        "mlp_act": (fam.down, "in"),
        "mlp_out": (fam.mlp_post or fam.mlp_out, "out"),
    }
    if name == "resid_post":
        return layer, "out"
    path, side = where[name]
    return submodule(layer, path), side


class Hooks:
    """Several hook handles removed together."""

    def __init__(self, *handles):
        self.handles = handles

    def remove(self):
        for h in self.handles:
            h.remove()


def edit_site(model, site, edit):
    """Replaces the value of lesion's `site` with edit(x), x of shape [batch, seq, width] (OPT's MLP
    runs on [batch * seq, d], viewed as [batch, seq, d] here). Returns the hooks (.remove())."""
    module, side = site_module(model, site)
    batch = []

    def record(module, args, kwargs):
        batch[:] = [(args[0] if args else kwargs["hidden_states"]).shape[0]]

    def apply(x):
        return edit(x.reshape(batch[0], -1, x.shape[-1]).clone()).reshape(x.shape)

    def out_fn(module, args, output):
        return (apply(output[0]), *output[1:]) if isinstance(output, tuple) else apply(output)

    def in_fn(module, args, kwargs):
        if args:
            return (apply(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": apply(kwargs["hidden_states"])}

    first = layers_of(model)[1][0].register_forward_pre_hook(record, with_kwargs=True)
    if side == "out":
        return Hooks(first, module.register_forward_hook(out_fn))
    return Hooks(first, module.register_forward_pre_hook(in_fn, with_kwargs=True))


BIAS_ATTENTION = "lesion_bias_slots"


def use_bias_slots(model, slots):
    """Switches `model` to eager attention with lesion's attention-bias slots, slots = {layer: (key,
    value)} of [n_kv_heads, head_dim] each: one more key k' (taken as already past rotary and QK norm)
    and value v' per KV head. Its score q.k' gets the scaling and the soft-capping of every other
    score and no mask (every query sees it, whatever its window); output_attentions then has the
    slot as the last key column. Layers without a slot compute HF's eager attention."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    def attention(module, query, key, value, attention_mask, scaling, dropout=0.0, softcap=None, **kwargs):
        rep = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(rep, 1), value.repeat_interleave(rep, 1)
        n_keys = key.shape[2]
        scores = torch.matmul(query, key.transpose(2, 3)) * scaling
        slot = slots.get(module.layer_idx)
        if slot is not None:
            k_slot, v_slot = (torch.as_tensor(t, dtype=query.dtype).repeat_interleave(rep, 0) for t in slot)
            scores = torch.cat([scores, torch.matmul(query, k_slot[None, :, :, None]) * scaling], -1)
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        if attention_mask is not None:
            mask = attention_mask[:, :, :, :n_keys]
            if slot is not None:
                mask = torch.cat([mask, torch.zeros_like(mask[..., :1])], -1)
            scores = scores + mask
        p = torch.softmax(scores, -1, dtype=torch.float32).to(query.dtype)
        out = torch.matmul(p[..., :n_keys], value)
        if slot is not None:
            out = out + p[..., n_keys:] * v_slot[None, :, None, :]
        return out.transpose(1, 2).contiguous(), p

    AttentionInterface.register(BIAS_ATTENTION, attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(BIAS_ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["eager"])
    model.set_attn_implementation(BIAS_ATTENTION)
    return model


def capture_tensors(model, ids):
    """{site: float32 torch tensor} for every lesion hook site (docs/conventions.md names and shapes)
    and logits: the one HF reference of the hook sites, for the parity tests and the fixtures.

    Captured with forward hooks / pre-hooks on the modules of the family table (Family), and checked
    against transformers' own hidden_states and the residual identities before being returned."""
    sites, hf_mid, hooks = {}, {}, []
    fam = family(model)
    base, layers = layers_of(model)
    n_heads, _, head_dim = dims(model)
    shape = tuple(ids.shape)
    parallel = parallel_block(model)

    def tokens(x):  # [b, s, ...] (OPT's MLP runs on [b * s, d])
        return x.detach().clone().reshape(*shape, x.shape[-1])

    def out_hook(name, into=sites):
        def fn(module, args, output):
            into[name] = tokens(output[0] if isinstance(output, tuple) else output)

        return fn

    def in_hook(name, heads=False, into=sites):
        def fn(module, args, kwargs):
            x = tokens(args[0] if args else kwargs["hidden_states"])  # transformers 5 passes keywords
            into[name] = x.view(*shape, n_heads, head_dim) if heads else x

        return fn

    for l, layer in enumerate(layers):
        p = f"blocks.{l}."
        at = partial(submodule, layer)
        hooks += [
            at(fam.attn).register_forward_pre_hook(in_hook(p + "attn_in"), with_kwargs=True),
            at(fam.o_proj).register_forward_pre_hook(in_hook(p + "attn_z", heads=True), with_kwargs=True),
            at(fam.attn_post or fam.o_proj).register_forward_hook(out_hook(p + "attn_out")),
            at(fam.mlp_in).register_forward_pre_hook(in_hook(p + "mlp_in"), with_kwargs=True),
            at(fam.down).register_forward_pre_hook(in_hook(p + "mlp_act"), with_kwargs=True),
            at(fam.mlp_post or fam.mlp_out).register_forward_hook(out_hook(p + "mlp_out")),
            layer.register_forward_hook(out_hook(p + "resid_post")),
        ]
        if not parallel:  # HF's own residual after attention: the input of the MLP's norm, or of the MLP
            where = at(fam.norms["mlp"]) if "mlp" in fam.norms else at(fam.mlp_in)
            hooks.append(where.register_forward_pre_hook(in_hook(l, into=hf_mid), with_kwargs=True))
    final = submodule(base, fam.final)
    hooks.append(final.register_forward_hook(out_hook("final_norm")))
    try:
        with torch.no_grad():
            out = model(ids, output_hidden_states=True, output_attentions=True)
    finally:
        for h in hooks:
            h.remove()
    sites["embed"] = out.hidden_states[0]
    for l, a in enumerate(out.attentions):
        sites[f"blocks.{l}.attn_pattern"] = a
    sites["logits"] = out.logits
    # The reference checks itself: hooks agree with hidden_states and the residual stream adds up.
    L = len(layers)
    assert torch.equal(sites["final_norm"], out.hidden_states[-1])
    with torch.no_grad():
        assert torch.allclose(final(sites[f"blocks.{L - 1}.resid_post"]), sites["final_norm"], atol=1e-6)
    prev = sites["embed"]
    for l in range(L):
        p = f"blocks.{l}."
        sites[p + "resid_mid"] = prev + sites[p + "attn_out"]
        post = sites[p + "resid_mid"] + sites[p + "mlp_out"]
        if parallel:  # HF adds (mlp + attn) + x (NeoX) or (attn + mlp) + x (Phi): the same up to rounding
            assert torch.allclose(sites[p + "resid_post"], post, rtol=1e-6, atol=1e-6), l
            if isinstance(model, PhiForCausalLM):  # one LayerNorm feeds both branches
                assert torch.equal(sites[p + "mlp_in"], sites[p + "attn_in"]), l
        else:
            assert torch.equal(sites[p + "resid_mid"], hf_mid[l]), l
            assert torch.equal(sites[p + "resid_post"], post), l
        if l < L - 1:
            assert torch.equal(sites[p + "resid_post"], out.hidden_states[l + 1]), l
        prev = sites[p + "resid_post"]
    return {k: v.float().contiguous() for k, v in sites.items()}


def capture(model, ids):
    """capture_tensors as float32 numpy arrays."""
    return {k: v.numpy() for k, v in capture_tensors(model, ids).items()}


ALL_SITES = (
    "embed,blocks.*.attn_in,blocks.*.attn_z,blocks.*.attn_pattern,blocks.*.attn_out,"
    "blocks.*.resid_mid,blocks.*.mlp_in,blocks.*.mlp_act,blocks.*.mlp_out,blocks.*.resid_post,"
    "final_norm,logits"
)


def compare(got, want, tol, what=""):
    """Asserts every reference tensor is present with its shape and within `tol`; the failure
    message lists the max abs difference at every site."""
    rows, bad = [], []
    for name in want:
        if name not in got:
            rows.append(f"  {name:28s} MISSING")
            bad.append(name)
            continue
        if tuple(got[name].shape) != tuple(want[name].shape):
            rows.append(f"  {name:28s} shape {tuple(got[name].shape)} != HF {tuple(want[name].shape)}")
            bad.append(name)
            continue
        diff = float(np.abs(got[name].astype(np.float64) - want[name].astype(np.float64)).max())
        scale = float(np.abs(want[name]).max())
        ok = diff <= tol
        rows.append(f"  {name:28s} max|diff| {diff:.3e}  (max|HF| {scale:.3g}){'' if ok else '  <-- FAIL'}")
        if not ok:
            bad.append(name)
    extra = sorted(set(got) - set(want))
    if extra:
        rows.append(f"  unexpected tensors: {extra}")
    assert not bad and not extra, f"{what}: {len(bad)} site(s) differ from transformers (tol {tol}):\n" + "\n".join(
        rows
    )
    return rows


def hf_windows(n, seq_len, stride=None, bos=False):
    """The windows of the transformers guide's loop, as (begin, end, trg_len), keeping only those
    that predict at least one token. Every window holds seq_len tokens (seq_len - 1 text tokens
    behind a BOS with `bos`); stride defaults to that (non-overlapping windows)."""
    span = seq_len - (1 if bos else 0)
    stride = stride or span
    windows, prev_end = [], 0
    for begin in range(0, n, stride):
        end = min(begin + span, n)
        trg_len = end - prev_end  # "may be different from stride on last loop"
        # HF shifts labels by one inside the model: without BOS the window's first token is never
        # predicted, so a window predicts min(trg_len, end - begin - 1) tokens.
        if (trg_len if bos else min(trg_len, end - begin - 1)) > 0:
            windows.append((begin, end, trg_len))
        prev_end = end
        if end == n:
            break
    return windows


def hf_perplexity(model, ids, seq_len, stride=None, bos_id=None):
    """Perplexity by the transformers guide's loop ("Perplexity of fixed-length models"):

        for begin in range(0, N, stride):
            end = min(begin + seq_len, N); trg_len = end - prev_end
            target = ids[begin:end].clone(); target[:-trg_len] = -100
            loss = model(ids[begin:end], labels=target).loss      # HF's mean over its shifted labels
            ...; prev_end = end; stop when end == N

    stride defaults to seq_len (non-overlapping windows). Token accounting: the number of labels
    HF's loss actually averages over, i.e. the non -100 labels after its internal one-token shift
    (target[1:]), so nll_sum = loss * that count is the exact sum of per-token NLLs. (The guide
    itself counts num_valid - 1 per window, which equals this for non-overlapping windows and for
    the first sliding window, but undercounts every later sliding window by one.) Windows that
    predict nothing (a 1-token tail) are skipped. With bos_id, each window holds seq_len - 1 text
    tokens behind a BOS whose label is -100, so its first text token is predicted from BOS.

    Returns (mean_nll, n_tokens); hf_windows gives the windows."""
    ids = torch.as_tensor(ids, dtype=torch.long)
    nll_sum, n_tokens = 0.0, 0
    for begin, end, trg_len in hf_windows(len(ids), seq_len, stride, bos_id is not None):
        input_ids = ids[begin:end][None]
        target = input_ids.clone()
        target[:, :-trg_len] = -100
        if bos_id is not None:
            input_ids = torch.cat([torch.tensor([[bos_id]]), input_ids], 1)
            target = torch.cat([torch.tensor([[-100]]), target], 1)
        scored = int((target[:, 1:] != -100).sum())
        with torch.no_grad():
            loss = model(input_ids, labels=target).loss
        nll_sum += float(loss.double()) * scored
        n_tokens += scored
    return nll_sum / n_tokens, n_tokens


def to_legacy_config(model_dir):
    """Rewrites a transformers-5 config.json the way transformers 4.x wrote it (and most Hub
    checkpoints still are): top-level rope_theta / rope_scaling instead of rope_parameters,
    torch_dtype instead of dtype, no layer_types. Per family, transformers 4's own spellings:
    GPT-NeoX rotary_emb_base and rotary_pct; a top-level partial_rotary_factor (Phi, Phi-3);
    Gemma-3 rope_theta and rope_scaling of the global layers, rope_local_base_freq of the sliding
    ones and sliding_window_pattern (every pattern-th layer global) instead of layer_types."""
    path = model_dir / "config.json"
    cfg = json.loads(path.read_text())
    rope = cfg.pop("rope_parameters", None)
    if cfg["model_type"] == "gemma3_text":
        local, full = dict(rope["sliding_attention"]), dict(rope["full_attention"])
        cfg["rope_local_base_freq"] = local.pop("rope_theta")
        assert local == {"rope_type": "default"}, local  # transformers 4 had no scaling of the local layers
        cfg["rope_theta"] = full.pop("rope_theta")
        cfg["rope_scaling"] = None if full["rope_type"] == "default" else full
        types = cfg.pop("layer_types")
        pattern = types.index("full_attention") + 1
        assert types == [("full" if (i + 1) % pattern == 0 else "sliding") + "_attention" for i in range(len(types))]
        cfg["sliding_window_pattern"] = pattern
        cfg.pop("_sliding_window_pattern", None)  # transformers 5 writes its stale default 6 beside layer_types
    elif rope is not None:
        rope = dict(rope)
        theta, factor = rope.pop("rope_theta"), rope.pop("partial_rotary_factor", None)
        if cfg["model_type"] == "gpt_neox":
            cfg["rotary_emb_base"], cfg["rotary_pct"] = theta, 1.0 if factor is None else factor
        else:
            cfg["rope_theta"] = theta
            if factor is not None:
                cfg["partial_rotary_factor"] = factor
        cfg["rope_scaling"] = None if rope.get("rope_type") == "default" else rope
    if "dtype" in cfg:
        cfg["torch_dtype"] = cfg.pop("dtype")
    cfg.pop("layer_types", None)
    cfg["transformers_version"] = "4.46.0"
    path.write_text(json.dumps(cfg, indent=2))
    return cfg


GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def gpt2_encoding(tokenizer_dir):
    """tiktoken's GPT-2 encoding built from the vocab.json + merges.txt in `tokenizer_dir` (no
    network: tiktoken.get_encoding("gpt2") would download)."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(tokenizer_dir / "merges.txt"), encoder_json_file=str(tokenizer_dir / "vocab.json")
    )
    return tiktoken.Encoding(
        "gpt2_files", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256}
    )


def lower_median(a):
    return float(torch.as_tensor(a).flatten().median())


def ratio(value, median):
    """value / median, infinite over a median of 0 (as lesion reports it)."""
    return value / median if median else math.inf


def hf_detectors(model, windows, massive, super_w, norms, attention):
    """The four detectors of docs/spec.md, from transformers' activations window by window."""
    refs = [capture(model, w) for w in windows]
    n_layers = model.config.num_hidden_layers
    out = {}
    reports = []
    for l in range(n_layers):
        site = f"blocks.{l}.resid_post"
        entries = []  # (|value|, sequence, token, dim, value, ratio)
        count = 0
        for s, ref in enumerate(refs):
            x = ref[site][0]
            a = np.abs(x)
            med = lower_median(a)
            passed = a >= max(med * massive["min_ratio"], massive["min_magnitude"])
            count += int(passed.sum())
            for t, d in zip(*np.nonzero(passed), strict=True):
                entries.append((float(a[t, d]), s, int(t), int(d), float(x[t, d]), ratio(float(a[t, d]), med)))
        entries.sort(key=lambda e: -e[0])
        reports.append({"site": site, "count": count, "entries": entries})
    out["massive_activations"] = reports

    found = []
    for l in range(n_layers):
        best = None
        for s, ref in enumerate(refs):
            o, act = ref[f"blocks.{l}.mlp_out"][0], ref[f"blocks.{l}.mlp_act"][0]
            t, row = np.unravel_index(np.abs(o).argmax(), o.shape)
            col = int(np.abs(act[t]).argmax())
            spike = dict(
                layer=l,
                row=int(row),
                col=col,
                sequence=s,
                token=int(t),
                output_spike=float(o[t, row]),
                input_spike=float(act[t, col]),
                output_ratio=ratio(abs(float(o[t, row])), lower_median(np.abs(o))),
                input_ratio=ratio(abs(float(act[t, col])), lower_median(np.abs(act))),  # ReLU's median is 0
            )
            if best is None or abs(spike["output_spike"]) > abs(best["output_spike"]):
                best = spike
        best["max_out_by_window"] = [float(np.abs(ref[f"blocks.{l}.mlp_out"][0]).max()) for ref in refs]
        if best["output_ratio"] >= super_w["min_ratio"] and best["input_ratio"] >= super_w["min_ratio"]:
            w, index = weight_element(model, l, "mlp.down", best["row"], best["col"])
            best["weight"] = float(w.detach()[index])
            found.append(best)
    out["super_weights"] = found

    # Every norm of the family in lesion's order (layer by layer: attn, mlp, attn_post, mlp_post,
    # q, k; then final), lesion's gamma of each (Gemma's 1 + w).
    order = ["attn", "mlp", "attn_post", "mlp_post", "q", "k"]
    names = sorted((n for n in norm_names(model) if n != "final"), key=order.index)
    gammas = [(name, l, effective_gamma(model, l, name)) for l in range(n_layers) for name in names]
    gammas.append(("final", -1, effective_gamma(model, 0, "final")))
    outliers = []
    for name, l, g in gammas:
        g = g.double()
        med = float(g.median())
        scale = 1.4826 * float((g - med).abs().median())
        if scale == 0:  # most gammas equal: the mean absolute deviation, as a normal's sigma
            scale = 1.2533 * float((g - med).abs().mean())
        if scale == 0:
            continue
        z = (g - med) / scale
        here = [
            dict(norm=name, layer=l, channel=c, gamma=float(g[c]), z=float(z[c]), median=med)
            for c in range(len(g))
            if abs(float(z[c])) >= norms["min_z"]
        ]
        here.sort(key=lambda o: -abs(o["z"]))
        outliers += here[: norms.get("max_reports", 10)]
    out["norm_outliers"] = outliers

    keys = []
    for l in range(n_layers):
        seq = refs[0][f"blocks.{l}.attn_pattern"].shape[-1]
        mass_sum, n = np.zeros((model.config.num_attention_heads, seq)), np.zeros(seq)
        for ref in refs:
            p = ref[f"blocks.{l}.attn_pattern"][0].astype(np.float64)  # [heads, q, k]
            s = p.shape[1]
            mass_sum[:, :s] += p[:, 1:, :].sum(1) / (s - 1)
            n[:s] += 1
        mass = mass_sum / n
        keys += [
            dict(layer=l, head=h, key_position=k, mass=float(mass[h, k]))
            for h in range(mass.shape[0])
            for k in range(seq)
            if mass[h, k] >= attention["min_mass"]
        ]
    keys.sort(key=lambda k: -k["mass"])
    out["attention_outliers"] = keys[: attention.get("max_reports", 50)]
    return out
