"""What Hugging Face transformers computes, for the CLI tests: fresh random tiny checkpoints of every
supported architecture, every lesion hook site captured with module hooks, and HF's perplexity
recipe. Nothing here runs lesion."""

import json

import numpy as np
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
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

KINDS = ["gpt2", "llama", "llama_gqa", "llama3", "mistral", "qwen2", "qwen2_sliding"]
WINDOW = 4  # sliding window of the mistral / qwen2_sliding models; the tests use 13 > 4 tokens


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
    else:
        raise ValueError(kind)
    return randomize(model, seed)


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and ("norm" in name or "ln_" in name) and name.endswith("weight"):
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))  # gammas
            elif p.dim() == 1:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))  # biases, LayerNorm betas
            else:
                p.copy_(0.08 * torch.randn(p.shape, generator=g))
    return model.eval()


def layers_of(model):
    gpt2 = isinstance(model, GPT2LMHeadModel)
    return gpt2, (model.transformer if gpt2 else model.model), (model.transformer.h if gpt2 else model.model.layers)


def dims(model):
    cfg = model.config
    if isinstance(model, GPT2LMHeadModel):
        return cfg.n_head, cfg.n_head, cfg.n_embd // cfg.n_head
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return cfg.num_attention_heads, cfg.num_key_value_heads, head_dim


def capture_tensors(model, ids):
    """{site: float32 torch tensor} for every lesion hook site (docs/conventions.md names and shapes)
    and logits: the one HF reference of the hook sites, for the parity tests and the fixtures.

    Captured with forward hooks / pre-hooks on the modules, and checked against transformers'
    own hidden_states and the residual identities before being returned."""
    sites, hooks = {}, []
    gpt2, base, layers = layers_of(model)
    n_heads, _, head_dim = dims(model)

    def out_hook(name):
        def fn(module, args, output):
            sites[name] = (output[0] if isinstance(output, tuple) else output).detach().clone()

        return fn

    def in_hook(name, heads=False):
        def fn(module, args):
            x = args[0].detach().clone()
            sites[name] = x.view(*x.shape[:-1], n_heads, head_dim) if heads else x

        return fn

    for l, layer in enumerate(layers):
        p = f"blocks.{l}."
        if gpt2:
            attn_norm, o_proj, mlp_norm, down = layer.ln_1, layer.attn.c_proj, layer.ln_2, layer.mlp.c_proj
        else:
            attn_norm, o_proj = layer.input_layernorm, layer.self_attn.o_proj
            mlp_norm, down = layer.post_attention_layernorm, layer.mlp.down_proj
        hooks += [
            attn_norm.register_forward_hook(out_hook(p + "attn_in")),
            o_proj.register_forward_pre_hook(in_hook(p + "attn_z", heads=True)),
            o_proj.register_forward_hook(out_hook(p + "attn_out")),
            mlp_norm.register_forward_pre_hook(in_hook(p + "resid_mid")),
            mlp_norm.register_forward_hook(out_hook(p + "mlp_in")),
            down.register_forward_pre_hook(in_hook(p + "mlp_act")),
            layer.mlp.register_forward_hook(out_hook(p + "mlp_out")),
            layer.register_forward_hook(out_hook(p + "resid_post")),
        ]
    final = base.ln_f if gpt2 else base.norm
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
        assert torch.equal(sites[p + "resid_mid"], prev + sites[p + "attn_out"]), l
        assert torch.equal(sites[p + "resid_post"], sites[p + "resid_mid"] + sites[p + "mlp_out"]), l
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
    torch_dtype instead of dtype, no layer_types."""
    path = model_dir / "config.json"
    cfg = json.loads(path.read_text())
    rope = cfg.pop("rope_parameters", None)
    if rope is not None:
        rope = dict(rope)
        cfg["rope_theta"] = rope.pop("rope_theta")
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
                entries.append((float(a[t, d]), s, int(t), int(d), float(x[t, d]), float(a[t, d]) / med))
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
                output_ratio=abs(float(o[t, row])) / lower_median(np.abs(o)),
                input_ratio=abs(float(act[t, col])) / lower_median(np.abs(act)),
            )
            if best is None or abs(spike["output_spike"]) > abs(best["output_spike"]):
                best = spike
        best["max_out_by_window"] = [float(np.abs(ref[f"blocks.{l}.mlp_out"][0]).max()) for ref in refs]
        if best["output_ratio"] >= super_w["min_ratio"] and best["input_ratio"] >= super_w["min_ratio"]:
            best["weight"] = float(model.model.layers[l].mlp.down_proj.weight.detach()[best["row"], best["col"]])
            found.append(best)
    out["super_weights"] = found

    gammas = []
    for l, layer in enumerate(model.model.layers):
        gammas += [("attn", l, layer.input_layernorm.weight), ("mlp", l, layer.post_attention_layernorm.weight)]
    gammas.append(("final", -1, model.model.norm.weight))
    outliers = []
    for name, l, g in gammas:
        g = g.detach().double()
        med = float(g.median())
        scale = 1.4826 * float((g - med).abs().median())
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
