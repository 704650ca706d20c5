"""Steering, direction ablation and activation patching (activation_edit ADD, PROJECT_OUT and
SET_VECTORS) against transformers with the same edit done by forward hooks, on tiny random
checkpoints of four families (hf_reference.make_model); and the observational run that captures
the clean activations a patch takes.

The causal-tracing recipe is run as a researcher would: an observational run on the clean prompt
captures blocks.*.resid_post; one request then sweeps (layer, position), each variant patching the
clean vector into the corrupted prompt; every variant's mean NLL must equal transformers' with the
same patch done by a hook. Every edit is checked to change transformers' NLL, so that none passes
by doing nothing."""

import base64

import numpy as np
import pytest
import torch

from conftest import requires_cli, run_spec, saved_checkpoints
from hf_reference import VOCAB, capture, edit_site, hf_perplexity, layers_of, make_model

pytestmark = [requires_cli, pytest.mark.usefixtures("single_torch_thread")]
KINDS = ["llama", "gpt2", "neox", "gemma2"]
TOL = 1e-5
SEQ = 12
CLEAN = torch.randint(0, VOCAB, (SEQ,), generator=torch.Generator().manual_seed(5))
CORRUPT = CLEAN.clone()
CORRUPT[2:5] = torch.randint(0, VOCAB, (3,), generator=torch.Generator().manual_seed(6))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return saved_checkpoints(tmp_path_factory.mktemp("steering"), fresh)


def fresh(kind):
    return make_model(kind, 500 + KINDS.index(kind))


def run(cli, tmp_path, model_dir, ids, interventions=(), measurements=None, sweep=None):
    spec = {
        "dataset": {"token_ids": {"ids": ids.tolist()}},
        "eval": {"seq_len": SEQ},
        "interventions": list(interventions),
        "measurements": measurements or [{"perplexity": {}}],
    }
    if sweep is not None:
        spec["sweep"] = sweep
    return run_spec(cli, tmp_path, model_dir, spec)


def hf_nll(model, ids):
    return hf_perplexity(model, ids, SEQ)[0]


def decode(tensor):
    shape = [int(s) for s in tensor["shape"]]
    return np.frombuffer(base64.b64decode(tensor["data"]), dtype="<f4").reshape(shape)


def direction(model, seed):
    d = model.config.hidden_size
    return torch.randn(d, generator=torch.Generator().manual_seed(seed))


def with_hook(model, site, fn, ids):
    hooks = edit_site(model, site, fn)
    try:
        return hf_nll(model, ids)
    finally:
        hooks.remove()


def check(result, base, want, what):
    got_base, got = (result[p]["perplexity"]["mean_nll"] for p in ("baseline", "intervened"))
    assert abs(got_base - base) < TOL, f"{what}: baseline {got_base} != transformers {base}"
    assert abs(got - want) < TOL, f"{what}: {got} != transformers {want} (baseline {base})"
    assert abs(want - base) > 2e-4, f"{what}: changes nothing in transformers ({base} -> {want})"


@pytest.mark.parametrize("kind", KINDS)
def test_steering_adds_alpha_times_the_direction(cli, tmp_path, checkpoint, kind):
    model = fresh(kind)
    v, alpha, positions = direction(model, 1), 3.5, [3, 7]
    edit = {"site": "blocks.1.resid_post", "positions": positions, "op": "ADD", "value": alpha, "vector": v.tolist()}
    result = run(cli, tmp_path, checkpoint(kind), CLEAN, [{"activation_edit": edit}])

    def steer(x):
        x[:, positions] += alpha * v
        return x

    check(result, hf_nll(model, CLEAN), with_hook(model, "blocks.1.resid_post", steer, CLEAN), f"{kind} steering")


@pytest.mark.parametrize("kind", KINDS)
def test_project_out_removes_the_direction_everywhere(cli, tmp_path, checkpoint, kind):
    """A direction ablated from every position of the attention branch's output (after Gemma's
    post-norm), and a narrower one over four dims of the MLP's activation."""
    model = fresh(kind)
    v = direction(model, 2)
    dims_ = [1, 4, 6, 9]
    w = torch.tensor([1.0, -2.0, 0.5, 3.0])
    edits = [
        {"site": "blocks.0.attn_out", "op": "PROJECT_OUT", "vector": v.tolist()},
        {"site": "blocks.1.mlp_act", "dims": dims_, "op": "PROJECT_OUT", "vector": w.tolist()},
    ]
    result = run(cli, tmp_path, checkpoint(kind), CLEAN, [{"activation_edit": e} for e in edits])

    def project(u):
        u = (u / u.norm()).to(torch.float32)

        def fn(x):
            return x - (x @ u)[..., None] * u

        return fn

    def project_dims(x):
        x[..., dims_] = project(w)(x[..., dims_])
        return x

    hooks = [edit_site(model, "blocks.0.attn_out", project(v)), edit_site(model, "blocks.1.mlp_act", project_dims)]
    want = hf_nll(model, CLEAN)
    for h in hooks:
        h.remove()
    check(result, hf_nll(model, CLEAN), want, f"{kind} projections")


@pytest.mark.parametrize("kind", KINDS)
def test_causal_tracing_patches_clean_activations_into_the_corrupt_prompt(cli, tmp_path, checkpoint, kind):
    model = fresh(kind)
    n_layers = model.config.num_hidden_layers
    # 1. An observational run on the clean prompt: one pass, its captures once, exact to HF's.
    clean = run(
        cli,
        tmp_path,
        checkpoint(kind),
        CLEAN,
        measurements=[{"perplexity": {}}, {"capture": {"sites": ["blocks.*.resid_post"]}}],
    )
    assert clean["observational"] is True and int(clean["run"]["forward_passes"]) == 1
    assert "intervened" not in clean
    caps = {t["name"]: decode(t)[0] for t in clean["baseline"]["captures"]}  # [positions, d]
    want_caps = capture(model, CLEAN[None])
    for l in range(n_layers):
        site = f"blocks.{l}.resid_post"
        assert np.abs(caps[site] - want_caps[site][0]).max() < 1e-4, f"{kind} {site}"

    # 2. One request: every (layer, position) of the corrupted span patched with the clean vector.
    grid = [(l, p) for l in range(n_layers) for p in (2, 3, 4)]
    variants = [
        {
            "name": f"L{l}.P{p}",
            "interventions": [
                {
                    "activation_edit": {
                        "site": f"blocks.{l}.resid_post",
                        "positions": [p],
                        "op": "SET_VECTORS",
                        "vector": caps[f"blocks.{l}.resid_post"][p].tolist(),
                    }
                }
            ],
        }
        for l, p in grid
    ]
    result = run(cli, tmp_path, checkpoint(kind), CORRUPT, sweep={"axes": [{"variants": {"variants": variants}}]})
    rows = result["parent"]["sweep"]["variants"]
    assert [r["name"] for r in rows] == [v["name"] for v in variants]

    # transformers: the same patch by a hook, with HF's own clean activations.
    clean_hf = {}
    hooks = [
        layer.register_forward_hook(
            lambda m, a, out, l=l: clean_hf.__setitem__(l, (out[0] if isinstance(out, tuple) else out).detach())
        )
        for l, layer in enumerate(layers_of(model)[1])
    ]
    hf_nll(model, CLEAN)
    for h in hooks:
        h.remove()
    base = hf_nll(model, CORRUPT)
    assert abs(hf_nll(model, CLEAN) - base) > 1e-3, "the corruption changes nothing"
    for (l, p), got in zip(grid, result["variants"], strict=True):

        def patch(x, l=l, p=p):
            x[:, p] = clean_hf[l][:, p]
            return x

        want = with_hook(model, f"blocks.{l}.resid_post", patch, CORRUPT)
        got_nll = got["intervened"]["perplexity"]["mean_nll"]
        assert abs(got["baseline"]["perplexity"]["mean_nll"] - base) < TOL, (kind, l, p)
        assert abs(got_nll - want) < TOL, f"{kind} L{l}.P{p}: {got_nll} != transformers {want} (corrupt {base})"


def test_positions_beyond_the_windows_and_wrong_widths_are_refused(cli, tmp_path, checkpoint):
    model_dir = checkpoint("llama")
    d = fresh("llama").config.hidden_size
    cases = [
        ({"site": "blocks.0.resid_post", "positions": [SEQ], "op": "ZERO"}, f"position {SEQ} lies beyond the windows"),
        ({"site": "blocks.0.resid_post", "op": "ADD", "value": 1, "vector": [1.0] * (d + 1)}, f"needs {d}"),
        ({"site": "blocks.0.resid_post", "op": "PROJECT_OUT", "vector": [0.0] * d}, "nonzero vector"),
        ({"site": "blocks.0.resid_post", "op": "SET_VECTORS"}, "op SET_VECTORS needs a vector"),
    ]
    for edit, needle in cases:
        spec = {
            "dataset": {"token_ids": {"ids": CLEAN.tolist()}},
            "eval": {"seq_len": SEQ},
            "interventions": [{"activation_edit": edit}],
            "measurements": [{"perplexity": {}}],
        }
        proc = run_spec(cli, tmp_path, model_dir, spec, check=False)
        assert proc.returncode == 2 and needle in proc.stderr, (edit, proc.stderr)
