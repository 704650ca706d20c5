"""Every intervention kind on every architecture added after the first seven (GPT-NeoX with parallel
and with sequential residual, OPT, Phi-2, Phi-3, OLMo-2, Gemma-2, Gemma-3, Qwen3): `lesion run
--local` against transformers with the same intervention done by hooks, weight edits or attention
functions (hf_reference), on the tiny random checkpoints of hf_reference.make_model.

- head ablation: the heads' slices of the output projection's input zeroed;
- weight edits of every module in lesion's logical nn.Linear [out, in] coordinates, landing in HF's
  fused tensors (Phi-3 qkv_proj [q; k; v] and gate_up_proj [gate; up], GPT-NeoX query_key_value
  interleaved per head): one variant per module in a sweep, and all of them in one plain run;
- norm-channel resets of every norm (Gemma: lesion's gamma is HF's 1 + w), VALUE, ONE and
  GAMMA_MEAN, the same two ways, and a norm_channels sweep axis over the new norm names;
- activation edits at the sites where the families differ (embed after Gemma's scaling and OPT's
  positions, attn_out / mlp_out after OLMo-2's and Gemma's post-norms, mlp_act);
- attention-bias slots: scaled and soft-capped as every key, seen by every query through sliding
  windows, their column of attn_pattern captured;
- a sweep of every single-head ablation;
- the refusals of what a family does not have (mlp.gate, norms, QK-norm channels past their width);
- the four detectors (massive activations, super weights, norm-gamma outliers over every norm the
  family has, attention outlier keys) against the same definitions on transformers' activations.

Every perplexity is compared at 1e-5 on the mean NLL, captures at 1e-4, and every intervention is
checked to change transformers' result, so that none passes by doing nothing."""

import base64

import numpy as np
import pytest
import torch

from conftest import requires_cli, run_spec, saved_checkpoints
from hf_reference import (
    NEW_KINDS,
    VOCAB,
    capture,
    d_ffn,
    dims,
    edit_site,
    effective_gamma,
    family,
    hf_detectors,
    hf_perplexity,
    make_model,
    norm_module,
    norm_names,
    scale_weight,
    set_gamma,
    use_bias_slots,
    weight_element,
    zero_heads,
)
from test_measurements import check_detectors

pytestmark = [requires_cli, pytest.mark.usefixtures("single_torch_thread")]
KINDS = NEW_KINDS
TOL = 1e-5
CAPTURE_TOL = 1e-4
SEQ = 16  # > the sliding window (4) of phi3, gemma2, gemma3 and qwen3
IDS = torch.randint(0, VOCAB, (40,), generator=torch.Generator().manual_seed(77))  # windows of 16, 16 and 8


def seed(kind):
    return 300 + KINDS.index(kind)


def fresh(kind):
    """The transformers model whose checkpoint checkpoint(kind) holds, unedited."""
    return make_model(kind, seed(kind))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return saved_checkpoints(tmp_path_factory.mktemp("families"), fresh)


def run(cli, tmp_path, model_dir, interventions=(), measurements=None, sweep=None, check=True):
    spec = {
        "dataset": {"token_ids": {"ids": IDS.tolist()}},
        "eval": {"seq_len": SEQ, "batch_size": 2},
        "interventions": list(interventions),
        "measurements": measurements or [{"perplexity": {}}],
    }
    if sweep is not None:
        spec["sweep"] = sweep
    return run_spec(cli, tmp_path, model_dir, spec, check=check)


def hf_nll(model):
    return hf_perplexity(model, IDS, SEQ)[0]


def check_nll(result, base, want, what):
    """The result's baseline and intervened mean NLL are transformers' (base, want), and the
    intervention changes transformers' NLL."""
    got_base, got = (result[part]["perplexity"]["mean_nll"] for part in ("baseline", "intervened"))
    assert abs(got_base - base) < TOL, f"{what}: baseline mean NLL {got_base} != transformers {base}"
    assert abs(got - want) < TOL, f"{what}: intervened mean NLL {got} != transformers {want} (baseline {base})"
    assert abs(want - base) > 2e-4, f"{what}: changes nothing in transformers ({base} -> {want})"


def sweep_variants(result, names):
    """{variant name: its ExperimentResult} of a `lesion run --local --json` sweep, in `names` order."""
    rows = result["parent"]["sweep"]["variants"]
    assert [r["name"] for r in rows] == names, [r["name"] for r in rows]
    return dict(zip(names, result["variants"], strict=True))


# --- head ablation -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_two_head_ablation_matches_transformers(cli, tmp_path, checkpoint, kind):
    model = fresh(kind)
    heads = [0, dims(model)[0] - 1]
    result = run(cli, tmp_path, checkpoint(kind), [{"head_ablation": {"layer": 1, "heads": heads, "mode": "ZERO"}}])
    base = hf_nll(model)
    zero_heads(model, 1, heads)
    check_nll(result, base, hf_nll(model), f"{kind} heads {heads} of layer 1 zeroed")


@pytest.mark.parametrize("kind", KINDS)
def test_every_single_head_sweep_variant_matches_transformers(cli, tmp_path, checkpoint, kind):
    model = fresh(kind)
    n_layers, n_heads = model.config.num_hidden_layers, dims(model)[0]
    names = [f"L{l}.H{h}" for l in range(n_layers) for h in range(n_heads)]
    variants = sweep_variants(run(cli, tmp_path, checkpoint(kind), sweep={"axes": [{"heads": {}}]}), names)
    base = hf_nll(model)
    changes = []
    for l in range(n_layers):
        for h in range(n_heads):
            handle = zero_heads(model, l, [h])
            want = hf_nll(model)
            handle.remove()
            got = variants[f"L{l}.H{h}"]
            assert abs(got["baseline"]["perplexity"]["mean_nll"] - base) < TOL, (kind, l, h)
            got_nll = got["intervened"]["perplexity"]["mean_nll"]
            assert abs(got_nll - want) < TOL, f"{kind} L{l}.H{h}: mean NLL {got_nll} != transformers {want}"
            changes.append(abs(want - base))
    assert max(changes) > 1e-3, f"{kind}: no single head matters ({max(changes)})"


# --- weight edits --------------------------------------------------------------------------------


def module_shape(model, module):
    """lesion's logical [out, in] of `module`."""
    n_heads, n_kv, hd = dims(model)
    d, ffn = model.config.hidden_size, d_ffn(model)
    return {
        "attn.q": (n_heads * hd, d),
        "attn.k": (n_kv * hd, d),
        "attn.v": (n_kv * hd, d),
        "attn.o": (d, n_heads * hd),
        "mlp.gate": (ffn, d),
        "mlp.up": (ffn, d),
        "mlp.down": (d, ffn),
    }[module]


def weight_edits(model, factor=100.0):
    """One SCALE edit per module the family has, away from the first head and part of fused tensors:
    q at the last dim of the last head (past the rotary dims where rotary is partial), k at dim 1 of
    the last KV head, o in the last head's columns; q/k/v at layer 0, the others at layer 1. The
    column moves on from its start until the edit changes transformers' NLL by 2e-3 (a dead ReLU
    unit of OPT changes nothing)."""
    hd = dims(model)[2]
    base = hf_nll(model)
    edits = []
    for module in family(model).linears:
        out, inp = module_shape(model, module)
        row, col = {
            "attn.q": (out - 1, inp // 2 + 1),
            "attn.k": (out - hd + 1, inp // 3),
            "attn.v": (out - hd // 2, 7),
            "attn.o": (5, inp - hd + 3),
            "mlp.gate": (out - 3, 11),
            "mlp.up": (out - 2, 13),
            "mlp.down": (9, inp - 4),
        }[module]
        layer = 0 if module in ("attn.q", "attn.k", "attn.v") else 1
        for c in range(col, col + 12):
            edit = {"layer": layer, "module": module, "row": row, "col": c % inp, "op": "SCALE", "value": factor}
            if abs(hf_scaled(model, [edit]) - base) > 2e-3:
                break
        edits.append(edit)
    return edits


def hf_scaled(model, edits):
    """transformers' mean NLL with `edits` applied, the weights restored after."""
    saved = []
    for e in edits:
        w, index = weight_element(model, e["layer"], e["module"], e["row"], e["col"])
        saved.append((w, index, w[index].item()))
        scale_weight(model, e["layer"], e["module"], e["row"], e["col"], e["value"])
    nll = hf_nll(model)
    with torch.no_grad():
        for w, index, value in reversed(saved):
            w[index] = value
    return nll


@pytest.mark.parametrize("kind", KINDS)
def test_weight_edit_of_each_module_matches_transformers(cli, tmp_path, checkpoint, kind):
    """A sweep with one variant per module: each lands on the HF element weight_element names."""
    model = fresh(kind)
    edits = weight_edits(model)
    variants = [{"name": e["module"], "interventions": [{"weight_edit": e}]} for e in edits]
    result = run(cli, tmp_path, checkpoint(kind), sweep={"axes": [{"variants": {"variants": variants}}]})
    variants = sweep_variants(result, [e["module"] for e in edits])
    base = hf_nll(model)
    for e in edits:
        check_nll(variants[e["module"]], base, hf_scaled(model, [e]), f"{kind} {e}")


@pytest.mark.parametrize("kind", KINDS)
def test_weight_edits_of_every_module_together_match_transformers(cli, tmp_path, checkpoint, kind):
    """The same edits in one plain run: written into the (fused) weights and restored."""
    model = fresh(kind)
    edits = weight_edits(model)
    result = run(cli, tmp_path, checkpoint(kind), [{"weight_edit": e} for e in edits])
    check_nll(result, hf_nll(model), hf_scaled(model, edits), f"{kind} every module scaled")


# --- norm-channel resets -------------------------------------------------------------------------


def norm_resets(model):
    """(name, reset) pairs: every norm of the family reset to VALUE 4 at two channels (its last
    channel included: the q/k norms of OLMo-2 are as wide as the projection, Gemma-3's and Qwen3's
    as one head), every third channel of the first norm reset to ONE and of the last per-layer norm
    to GAMMA_MEAN."""
    resets = []
    for norm in norm_names(model):
        width = len(effective_gamma(model, 1, norm))
        resets.append(
            (f"{norm}.value", {"layer": 1, "norm": norm, "channels": [1, width - 1], "mode": "VALUE", "value": 4.0})
        )
    per_layer = [n for n in norm_names(model) if n != "final"]
    first, last = per_layer[0], per_layer[-1]
    every_third = list(range(0, len(effective_gamma(model, 0, first)), 3))
    resets.append((f"{first}.one", {"layer": 0, "norm": first, "channels": every_third, "mode": "ONE"}))
    every_third = list(range(1, len(effective_gamma(model, 1, last)), 3))
    resets.append((f"{last}.mean", {"layer": 1, "norm": last, "channels": every_third, "mode": "GAMMA_MEAN"}))
    return resets


def hf_reset(model, resets):
    """transformers' mean NLL with lesion's norm resets applied to the effective gammas (Gemma's
    1 + w; GAMMA_MEAN: the mean of the checkpoint's gamma, before any reset), the weights restored
    after."""
    means = {id(r): float(effective_gamma(model, r["layer"], r["norm"]).double().mean()) for r in resets}
    saved = [(w, w.detach().clone()) for w in {norm_module(model, r["layer"], r["norm"]).weight for r in resets}]
    for r in resets:
        value = {"ONE": 1.0, "VALUE": r.get("value"), "GAMMA_MEAN": means[id(r)]}[r["mode"]]
        set_gamma(model, r["layer"], r["norm"], r["channels"], value)
    nll = hf_nll(model)
    with torch.no_grad():
        for w, original in saved:
            w.copy_(original)
    return nll


@pytest.mark.parametrize("kind", KINDS)
def test_norm_reset_of_each_norm_matches_transformers(cli, tmp_path, checkpoint, kind):
    model = fresh(kind)
    resets = norm_resets(model)
    variants = [{"name": name, "interventions": [{"norm_channel_reset": r}]} for name, r in resets]
    result = run(cli, tmp_path, checkpoint(kind), sweep={"axes": [{"variants": {"variants": variants}}]})
    got = sweep_variants(result, [name for name, _ in resets])
    base = hf_nll(model)
    for name, r in resets:
        check_nll(got[name], base, hf_reset(model, [r]), f"{kind} {name} {r}")


@pytest.mark.parametrize("kind", KINDS)
def test_norm_resets_of_every_norm_together_match_transformers(cli, tmp_path, checkpoint, kind):
    model = fresh(kind)
    resets = [r for _, r in norm_resets(model)]
    result = run(cli, tmp_path, checkpoint(kind), [{"norm_channel_reset": r} for r in resets])
    check_nll(result, hf_nll(model), hf_reset(model, resets), f"{kind} every norm reset")


@pytest.mark.parametrize("kind, norm", [("olmo2", "k"), ("gemma3", "q"), ("qwen3", "k"), ("gemma2", "mlp_post")])
def test_norm_channel_sweep_axis_takes_the_new_norm_names(cli, tmp_path, checkpoint, kind, norm):
    model = fresh(kind)
    axis = {"norm_channels": {"norm": norm, "layers": [0], "channels": [1, 2], "mode": "VALUE", "value": 3.0}}
    names = [f"{norm}.L0.C1", f"{norm}.L0.C2"]
    got = sweep_variants(run(cli, tmp_path, checkpoint(kind), sweep={"axes": [axis]}), names)
    base = hf_nll(model)
    for name, channel in zip(names, (1, 2), strict=True):
        r = {"layer": 0, "norm": norm, "channels": [channel], "mode": "VALUE", "value": 3.0}
        check_nll(got[name], base, hf_reset(model, [r]), f"{kind} {name}")


# --- activation edits ----------------------------------------------------------------------------

ACTIVATION_EDITS = [
    {"site": "embed", "positions": [3], "dims": [5], "op": "SET", "value": 6.0},
    {"site": "blocks.0.attn_out", "positions": [2, 5], "dims": [3, 10], "op": "SET", "value": 7.0},
    {"site": "blocks.0.mlp_act", "positions": [4], "dims": [7, 20], "op": "SET", "value": 25.0},
    {"site": "blocks.1.mlp_out", "dims": [4], "op": "SCALE", "value": 30.0},
]


def hf_edit(edit):
    """The activation edit as a function of x [batch, seq, width]."""

    def fn(x):
        pos = edit.get("positions") or list(range(x.shape[1]))
        pos = [p for p in pos if p < x.shape[1]]
        for d in edit.get("dims") or list(range(x.shape[-1])):
            x[:, pos, d] = edit["value"] if edit["op"] == "SET" else x[:, pos, d] * edit["value"]
        return x

    return fn


@pytest.mark.parametrize("kind", KINDS)
def test_activation_edits_match_transformers(cli, tmp_path, checkpoint, kind):
    """attn_out and mlp_out are the branches' contributions to the residual stream, after OLMo-2's
    and Gemma's post-norms; embed is after Gemma's scaling and OPT's positions."""
    model = fresh(kind)
    result = run(cli, tmp_path, checkpoint(kind), [{"activation_edit": e} for e in ACTIVATION_EDITS])
    base = hf_nll(model)
    for e in ACTIVATION_EDITS:  # each edit on its own changes transformers' NLL
        hooks = edit_site(model, e["site"], hf_edit(e))
        alone = hf_nll(model)
        hooks.remove()
        assert abs(alone - base) > 1e-4, f"{kind} {e} changes nothing in transformers"
    hooks = [edit_site(model, e["site"], hf_edit(e)) for e in ACTIVATION_EDITS]
    check_nll(result, base, hf_nll(model), f"{kind} activation edits {[e['site'] for e in ACTIVATION_EDITS]}")
    for h in hooks:
        h.remove()


# --- attention-bias slots ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_attention_bias_slots_match_transformers(cli, tmp_path, checkpoint, kind):
    """A slot on every layer (Gemma-3: sliding and global ones): its score scaled (OPT: through its
    pre-scaled queries) and soft-capped (Gemma-2) as every other, visible to every query of a window,
    its probability the last column of attn_pattern."""
    model = fresh(kind)
    _, n_kv, hd = dims(model)
    n_layers = model.config.num_hidden_layers
    g = torch.Generator().manual_seed(seed(kind))
    slots = {l: (2.0 * torch.randn(n_kv, hd, generator=g), torch.randn(n_kv, hd, generator=g)) for l in range(n_layers)}
    sites = [f"blocks.{l}.attn_pattern" for l in range(n_layers)]
    result = run(
        cli,
        tmp_path,
        checkpoint(kind),
        [
            {"attention_bias": {"layer": l, "key": k.flatten().tolist(), "value": v.flatten().tolist()}}
            for l, (k, v) in slots.items()
        ],
        [{"perplexity": {}}, {"capture": {"sites": sites, "max_windows": 1}}],
    )
    base = hf_nll(model)
    use_bias_slots(model, slots)
    want = capture(model, IDS[None, :SEQ])
    check_nll(result, base, hf_nll(model), f"{kind} attention-bias slots")
    caps = {t["name"]: t for t in result["intervened"]["captures"]}
    for site in sites:
        got = decode(caps[site])
        assert got.shape == (1, dims(model)[0], SEQ, SEQ + 1), (site, got.shape)
        assert (got[..., -1] > 0).all(), f"{kind} {site}: a query does not see the slot"
        diff = float(np.abs(got - want[site]).max())
        assert diff < CAPTURE_TOL, f"{kind} {site}: max|diff| {diff} vs transformers"


def decode(tensor):
    """A result Tensor as a float32 numpy array of its shape."""
    assert tensor["dtype"] == "float32", tensor["dtype"]
    shape = [int(s) for s in tensor["shape"]]
    return np.frombuffer(base64.b64decode(tensor["data"]), dtype="<f4").reshape(shape)


# --- refusals ------------------------------------------------------------------------------------


def norm_reset(norm, channel=0, layer=0):
    return {"norm_channel_reset": {"layer": layer, "norm": norm, "channels": [channel], "mode": "ONE"}}


REFUSALS = [
    # no gated MLP
    ("neox", {"weight_edit": {"layer": 0, "module": "mlp.gate", "row": 0, "col": 0}}, ["mlp.gate"]),
    ("opt", {"weight_edit": {"layer": 0, "module": "mlp.gate", "row": 0, "col": 0}}, ["mlp.gate"]),
    ("phi2", {"weight_edit": {"layer": 0, "module": "mlp.gate", "row": 0, "col": 0}}, ["mlp.gate"]),
    # Phi-2's one input_layernorm is "attn"; OLMo-2 has no pre-norms
    ("phi2", norm_reset("mlp"), ['"mlp"']),
    ("olmo2", norm_reset("attn"), ['"attn"']),
    ("olmo2", norm_reset("mlp"), ['"mlp"']),
    # norms a family does not have
    ("qwen3", norm_reset("attn_post"), ['"attn_post"']),
    ("phi3", norm_reset("mlp_post"), ['"mlp_post"']),
    # QK norms only where the family has them
    ("neox", norm_reset("q"), ['"q"']),
    ("opt", norm_reset("k"), ['"k"']),
    ("phi2", norm_reset("q"), ['"q"']),
    ("phi3", norm_reset("k"), ['"k"']),
    ("gemma2", norm_reset("q"), ['"q"']),
    ("llama", norm_reset("k"), ['"k"']),
    # QK-norm widths: one head (Qwen3, Gemma-3), the whole projection (OLMo-2: 6 x 8 for q, 3 x 8 for k)
    ("qwen3", norm_reset("q", channel=12), ["channel 12 out of range", "12 channels"]),
    ("gemma3", norm_reset("k", channel=16), ["channel 16 out of range", "16 channels"]),
    ("olmo2", norm_reset("k", channel=24), ["channel 24 out of range", "24 channels"]),
]


def refusal_id(case):
    kind, intervention, needles = case
    (what,) = intervention.values()
    channel = f"-channel{what['channels'][0]}" if "out of range" in needles[0] else ""
    return f"{kind}-{what.get('module') or what['norm']}{channel}"


@pytest.mark.parametrize("kind, intervention, needles", REFUSALS, ids=map(refusal_id, REFUSALS))
def test_what_a_family_lacks_is_refused_before_any_compute(cli, tmp_path, kind, intervention, needles):
    """Exit status 2, before any forward pass, naming the intervention, the offending module or norm
    and (but for a channel out of range) the architecture."""
    model = make_model(kind, 1)
    model.save_pretrained(tmp_path / "m")
    proc = run(cli, tmp_path, tmp_path / "m", [intervention], check=False)
    assert proc.returncode == 2, f"exit {proc.returncode}; stderr:\n{proc.stderr}\nstdout:\n{proc.stdout[:2000]}"
    assert proc.stdout == ""
    arch = [] if "out of range" in needles[0] else [type(model).__name__]
    for needle in ["interventions[0]", *needles, *arch]:
        assert needle in proc.stderr, f"{needle!r} not in stderr:\n{proc.stderr}"


# Thresholds scaled to a random tiny model, so that every detector reports something.
DETECTORS = {
    "massive_activations": {"min_magnitude": 0.01, "min_ratio": 3.0, "max_reports": 5},
    "super_weights": {"min_ratio": 3.0},
    "norm_outliers": {"min_z": 1.5, "max_reports": 3},
    "attention_outliers": {"min_mass": 0.12, "max_reports": 20},
}


@pytest.mark.parametrize("kind", KINDS)
def test_the_detectors_agree_with_transformers(cli, tmp_path, checkpoint, kind):
    measurements = [{"massive_activations": {"sites": ["blocks.*.resid_post"], **DETECTORS["massive_activations"]}}]
    measurements += [{k: v} for k, v in DETECTORS.items() if k != "massive_activations"]
    result = run(cli, tmp_path, checkpoint(kind), measurements=measurements)
    windows = [IDS[None, i : i + SEQ] for i in range(0, len(IDS), SEQ)]
    want = hf_detectors(fresh(kind), windows, *DETECTORS.values())
    assert want["super_weights"] and want["norm_outliers"] and want["attention_outliers"], "thresholds too high"
    assert any(w["count"] for w in want["massive_activations"]), "thresholds too high"
    check_detectors(result, want, DETECTORS)
    # Every norm the family has is scanned, Gemma's as 1 + w.
    assert {o["norm"] for o in result["baseline"]["norm_outliers"]} == set(norm_names(fresh(kind)))
