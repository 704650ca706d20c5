"""Against a real lesiond on the bundled stories260K (fixture `server`; skipped until lesiond is
built): observational runs, token outputs, the vector ops of ActivationEdit (Steer, ProjectOut,
Patch) and lesion.patching.causal_trace.

The prompt: "Once upon a time, there was a girl named Lily. One day, Lily"; the corrupted one names
Tim (one token, at position 12) instead of Lily. The answer is the last token, " Lily"."""

import math

import numpy as np
import pytest

import lesion
from lesion.patching import answer_probability, causal_trace

CLEAN = [403, 407, 261, 378, 432, 383, 286, 261, 298, 315, 421, 395, 317, 426, 385, 328, 432, 317]
CORRUPT = CLEAN[:12] + [326] + CLEAN[13:]
N_LAYERS, D_MODEL = 5, 64
EXACT = 1e-6


def on(server, interventions=(), measurements=(), ids=CLEAN, **kw):
    return lesion.Experiment(
        model=server.model,
        dataset=lesion.Dataset.token_ids(ids),
        eval=lesion.Eval(seq_len=len(ids)),
        interventions=interventions,
        measurements=measurements,
        **kw,
    )


# The TokenOutputs row of the answer: the last of the 17 predicted tokens.
ANSWER_ROW = lesion.TokenOutputs(top_k=3, max_tokens=1, offset=len(CLEAN) - 2)


@pytest.fixture(scope="module")
def clean_capture(server):
    """An observational run of the clean prompt, capturing every layer's residual stream."""
    return server.run(
        on(server, measurements=[lesion.Perplexity(), lesion.Capture(sites=["blocks.*.resid_post"])]), progress=False
    )


@pytest.fixture(scope="module")
def trace(server):
    return causal_trace(server, CLEAN, CORRUPT, name="trace-test", tags=["pytest"])


# ----------------------------------------------------------------------------------- observational


def test_an_observational_run_is_one_pass_reported_once(server, clean_capture):
    r = clean_capture
    assert r.is_observational and r.run["forward_passes"] == 1
    assert not r.raw.HasField("intervened") or r.raw.intervened.ByteSize() == 0
    assert list(r.metrics.columns) == ["name", "value"] and set(r.metrics["name"]) == {"perplexity", "mean_nll"}
    assert r.perplexity.intervened == r.perplexity.baseline and "no interventions" in repr(r)
    assert r.captures["intervened"] == {} and r.captures["baseline"]["blocks.4.resid_post"].shape == (1, 18, 64)
    assert "perplexity, intervened" not in r._repr_html_()
    fig = lesion.plots.activation_surface(r.captures["baseline"]["blocks.0.resid_post"])
    assert fig is not None
    # with an intervention, two passes again
    ablated = server.run(on(server, [lesion.HeadAblation(1, [3])], [lesion.Perplexity()]), progress=False)
    assert not ablated.is_observational and list(ablated.metrics.columns)[:3] == ["name", "baseline", "value"]


def test_observational_layer_plots(server):
    r = server.run(
        on(server, measurements=[lesion.ActivationStats(), lesion.AttentionSink(), lesion.KLDivergence()]),
        progress=False,
    )
    assert r.is_observational and r.kl_divergence == 0.0 and "KL" not in repr(r)
    assert "kl_divergence" not in set(r.metrics["name"])
    assert len(lesion.plots.compare(r).axes[0].patches) == N_LAYERS
    lesion.plots.layer_magnitudes(r, pass_="intervened")
    lesion.plots.attention_sink_heatmap(r, pass_="intervened")
    assert list(r.attention_sink_frame().columns) == ["layer", "head", "baseline"]


# ----------------------------------------------------------------------------------- token outputs


def test_token_outputs_on_the_server(server):
    r = server.run(on(server, measurements=[lesion.Perplexity(), lesion.TokenOutputs(top_k=4)]), progress=False)
    df = r.token_outputs()
    n = len(CLEAN) - 1
    assert len(df) == n and df.attrs == {"n_predicted": n, "offset": 0, "top_k": 4}
    assert df["position"].tolist() == list(range(1, len(CLEAN))) and df["target"].tolist() == CLEAN[1:]
    assert (df["window"] == 0).all()
    assert df["nll"].mean() == pytest.approx(r.perplexity.baseline_nll, abs=1e-6)
    for _, row in df.iterrows():
        assert len(row.top_ids) == 4 and row.top_probs == sorted(row.top_probs, reverse=True)
        if row["rank"] == 0:
            assert row.top_ids[0] == row.target and row.top_probs[0] == pytest.approx(row.prob, rel=1e-5)
        else:
            assert row.top_probs[0] >= row.prob
    assert r.token_outputs("intervened").empty
    # a page: the same rows
    page = server.run(on(server, measurements=[lesion.TokenOutputs(top_k=4, offset=10, max_tokens=3)]), progress=False)
    p = page.token_outputs()
    assert list(p.index) == [10, 11, 12] and p.attrs["n_predicted"] == n
    assert p["nll"].tolist() == pytest.approx(df.loc[10:12, "nll"].tolist(), abs=1e-7)
    # both passes with an intervention
    ablated = server.run(on(server, [lesion.HeadAblation(4, [0, 1, 2, 3])], [lesion.TokenOutputs()]), progress=False)
    b, i = ablated.token_outputs(), ablated.token_outputs("intervened")
    assert b["nll"].tolist() == pytest.approx(df["nll"].tolist(), abs=1e-6)
    assert len(i) == n and not np.allclose(i["nll"], b["nll"])
    with pytest.raises(lesion.InvalidArgument, match="offset 17 is past the last predicted token"):
        server.submit(on(server, measurements=[lesion.TokenOutputs(offset=17)]))


# ----------------------------------------------------------------------------------- vector edits


def answer_p(result, pass_="intervened"):
    return answer_probability(result, pass_)


def test_steering_equals_patching_x_plus_alpha_v(server, clean_capture):
    """Steer(site, v, alpha) at positions P = Patch(site, P, x[P] + alpha v), x captured observationally."""
    rng = np.random.default_rng(0)
    v, alpha, positions = rng.normal(size=D_MODEL), 2.5, [3, 16]
    x = clean_capture.captures["baseline"]["blocks.2.resid_post"][0]
    steer, patch, zero = server.run_many(
        [
            on(server, [lesion.Steer("blocks.2.resid_post", v, alpha, positions=positions)], [ANSWER_ROW]),
            on(server, [lesion.Patch("blocks.2.resid_post", positions, x[positions] + alpha * v)], [ANSWER_ROW]),
            on(server, [lesion.Steer("blocks.2.resid_post", v, 0.0)], [ANSWER_ROW]),
        ],
        progress=False,
    )
    assert abs(answer_p(steer) - answer_p(steer, "baseline")) > 1e-3  # it steers
    assert answer_p(steer) == pytest.approx(answer_p(patch), abs=1e-5)
    assert answer_p(zero) == answer_p(zero, "baseline")  # alpha 0: nothing


def test_project_out_leaves_no_component_along_the_direction(server):
    u = np.zeros(D_MODEL)
    u[30] = 1.0  # the residual stream's outlier dim (docs/tutorial.md)
    u[7] = -2.0
    r = server.run(
        on(
            server,
            [lesion.ProjectOut("blocks.1.resid_post", u)],
            [lesion.Capture(sites=["blocks.1.resid_post"]), ANSWER_ROW],
        ),
        progress=False,
    )
    before, after = (r.captures[p]["blocks.1.resid_post"][0] for p in ("baseline", "intervened"))
    unit = u / np.linalg.norm(u)
    assert np.abs(before @ unit).max() > 0.1 and np.abs(after @ unit).max() < 1e-5
    assert np.allclose(after, before - np.outer(before @ unit, unit), atol=1e-5)
    assert answer_p(r) != answer_p(r, "baseline")


def test_the_server_checks_what_needs_the_model(server):
    with pytest.raises(lesion.InvalidArgument, match=f"needs {D_MODEL}"):
        server.submit(on(server, [lesion.Steer("blocks.0.resid_post", np.ones(D_MODEL + 1), 1.0)], [ANSWER_ROW]))
    with pytest.raises(lesion.InvalidArgument, match="lies beyond the windows"):
        server.submit(on(server, [lesion.Patch("blocks.0.resid_post", [len(CLEAN)], np.ones(D_MODEL))], [ANSWER_ROW]))
    with pytest.raises(lesion.InvalidArgument, match="SET_VECTORS needs 64 values"):
        server.submit(on(server, [lesion.Patch("blocks.0.resid_post", [1, 2], np.ones(3 * D_MODEL))], [ANSWER_ROW]))


# ----------------------------------------------------------------------------------- causal tracing


def test_causal_trace_shape_and_baselines(server, trace):
    assert trace.shape == (N_LAYERS, len(CLEAN) - 1)
    assert trace.index.name == "layer" and list(trace.index) == list(range(N_LAYERS))
    assert trace.columns.name == "position" and list(trace.columns) == list(range(len(CLEAN) - 1))
    a = trace.attrs
    assert a["answer"] == 317 and a["clean_ids"] == CLEAN and a["corrupt_ids"] == CORRUPT
    assert a["sites"] == [f"blocks.{l}.resid_post" for l in range(N_LAYERS)]
    assert a["clean"] - a["corrupt"] > 0.1, "the corruption should lower p(Lily)"
    assert trace.notna().all().all() and ((trace > 0) & (trace < 1)).all().all()
    assert len(a["sweep_ids"]) == 1  # one sweep
    kids = server.variants(a["sweep_ids"][0])
    assert len(kids) == trace.size and kids["variant"].iloc[0] == "L0.P0" and kids["variant"].iloc[-1] == "L4.P16"
    assert server.get(a["clean_id"]).result.is_observational


def test_patching_the_last_layer_at_the_last_position_restores_the_clean_probability(trace):
    """The final norm and the head read only blocks.{last}.resid_post at the last prompt position."""
    last = len(CLEAN) - 2
    assert abs(trace.loc[N_LAYERS - 1, last] - trace.attrs["clean"]) < EXACT
    # before the corrupted token the two prompts agree, so a patch there changes nothing
    assert (trace.loc[:, :11] - trace.attrs["corrupt"]).abs().max().max() < EXACT
    # the subject's own token, patched early, restores most of it
    assert trace.loc[0, 12] > trace.attrs["corrupt"] + 0.5 * (trace.attrs["clean"] - trace.attrs["corrupt"])


def test_patching_the_whole_corrupted_span_restores_the_clean_run(server, clean_capture, trace):
    """Every position from the corrupted token on, patched at layer 0 in one edit (a row per
    position), or the corrupted token itself at the embedding: the rest of the run is the clean one."""
    x = clean_capture.captures["baseline"]["blocks.0.resid_post"][0]
    span = list(range(12, len(CLEAN)))
    r = server.run(
        on(server, [lesion.Patch("blocks.0.resid_post", span, x[span])], [ANSWER_ROW], ids=CORRUPT), progress=False
    )
    assert abs(answer_p(r) - trace.attrs["clean"]) < EXACT
    assert abs(answer_p(r, "baseline") - trace.attrs["corrupt"]) < EXACT
    embed = causal_trace(server, CLEAN, CORRUPT, site="embed", positions=[11, 12])
    assert embed.index.name == "site" and list(embed.index) == ["embed"]
    assert abs(embed.loc["embed", 12] - trace.attrs["clean"]) < EXACT
    assert abs(embed.loc["embed", 11] - trace.attrs["corrupt"]) < EXACT
    assert server.variants(embed.attrs["sweep_ids"][0])["variant"].tolist() == ["embed.P11", "embed.P12"]


def test_every_cell_equals_a_single_patch_submitted_alone(server, trace, clean_capture):
    cells = [(l, p) for l in trace.index for p in trace.columns]
    x = clean_capture.captures["baseline"]
    specs = [
        on(
            server,
            [lesion.Patch(f"blocks.{l}.resid_post", [p], x[f"blocks.{l}.resid_post"][0, p])],
            [ANSWER_ROW],
            ids=CORRUPT,
        )
        for l, p in cells
    ]
    alone = []
    for i in range(0, len(specs), 32):  # lesiond queues at most 64 experiments per device
        alone += server.run_many(specs[i : i + 32], progress=False)
    worst = max(abs(trace.loc[l, p] - answer_p(r)) for (l, p), r in zip(cells, alone, strict=True))
    assert worst < EXACT
    assert all(answer_p(r, "baseline") == pytest.approx(trace.attrs["corrupt"], abs=EXACT) for r in alone)


def test_causal_trace_options(server, trace):
    # a subset of positions, one site, the answer given apart: the same numbers
    sub = causal_trace(server, CLEAN[:-1], CORRUPT[:-1], answer=317, positions=[16, 12], site="blocks.*.resid_post")
    assert list(sub.columns) == [16, 12]
    assert (sub - trace.loc[:, [16, 12]]).abs().max().max() < EXACT
    mlp = causal_trace(server, CLEAN, CORRUPT, site="blocks.3.mlp_out", positions=[12])
    assert mlp.shape == (1, 1) and list(mlp.index) == [3] and mlp.attrs["sites"] == ["blocks.3.mlp_out"]
    assert mlp.attrs["clean"] == pytest.approx(trace.attrs["clean"], abs=EXACT)
    # BOS before the ids: one more predicted token, positions still index the ids
    bos = causal_trace(server, CLEAN, CORRUPT, positions=[12, 16], site="blocks.4.resid_post", add_bos=True)
    assert list(bos.columns) == [12, 16] and abs(bos.loc[4, 16] - bos.attrs["clean"]) < EXACT
    assert bos.attrs["add_bos"] and not math.isclose(bos.attrs["clean"], trace.attrs["clean"])
    heads = causal_trace(server, CLEAN, CORRUPT, site="blocks.*.attn_z", positions=[12])
    assert heads.shape == (N_LAYERS, 1) and heads.notna().all().all()


def test_a_grid_too_large_for_one_sweep_goes_as_several(server, trace, monkeypatch):
    """lesiond bounds variants x spec bytes of a sweep: a smaller bound splits the grid, same numbers."""
    import lesion.patching

    monkeypatch.setattr(lesion.patching, "MAX_SWEEP_SPEC_BYTES", 400_000)
    split = causal_trace(server, CLEAN, CORRUPT, positions=[0, 12, 13, 16])
    assert len(split.attrs["sweep_ids"]) > 1
    assert sum(len(server.variants(i)) for i in split.attrs["sweep_ids"]) == split.size == 20
    assert (split - trace.loc[:, [0, 12, 13, 16]]).abs().max().max() < EXACT
    assert split.attrs["corrupt"] == pytest.approx(trace.attrs["corrupt"], abs=EXACT)


def test_chunks_of_a_sweep():
    from lesion.patching import _chunks

    base = lesion.Experiment(model="m", dataset=lesion.Dataset.token_ids(CLEAN), measurements=[ANSWER_ROW])
    rng = np.random.default_rng(0)
    variants = [lesion.Variant(f"v{i}", lesion.Patch("embed", [1], rng.normal(size=576))) for i in range(300)]
    assert [len(c) for c in _chunks(base, variants)] == [100, 100, 100]  # SmolLM2's 30 x 10 grid
    assert _chunks(base, variants[:85]) == [variants[:85]]
    small = _chunks(base, variants, limit=2_000_000)
    assert sum(small, []) == variants and len(small) > 3
    for c in small:
        size = len(base.replace(sweep=lesion.Sweep(lesion.Variants(c))).to_json())
        assert len(c) * size <= 2_000_000


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"corrupt_ids": CORRUPT[:-2]}, "same length"),
        ({"corrupt_ids": CORRUPT[:-1] + [326]}, "clean ends with 317 and corrupt with 326"),
        ({"positions": [17]}, "[17] not in the prompt (positions 0..16"),
        ({"positions": [3, 3]}, "names a position twice"),
        ({"positions": []}, "must not be empty"),
        ({"site": "blocks.*.attn_pattern"}, "attn_pattern cannot be patched"),
        ({"site": "blocks.*.resid"}, "unknown hook site"),
        ({"clean_ids": [5], "corrupt_ids": [5]}, "at least 2 tokens"),
        ({"clean_ids": [5, -1]}, ">= 0"),
    ],
)
def test_causal_trace_refusals(server, kwargs, message):
    args = {"clean_ids": CLEAN, "corrupt_ids": CORRUPT, **kwargs}
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(".", r"\.")):
        causal_trace(server, **args)


def test_causal_trace_plot(trace, tmp_path):
    p = tmp_path / "trace.png"
    fig = lesion.plots.causal_trace(trace, save=p)
    assert p.stat().st_size > 5000
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert "317*" in labels and "403" in labels and "clean" in ax.get_title()
    assert ax.get_ylabel() == "layer"
    words = [f"w{i}" for i in range(len(CLEAN))]
    fig = lesion.plots.causal_trace(trace, tokens=words, normalize=True)
    assert "w12*" in [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert "restored" in fig.axes[1].get_ylabel()
    with pytest.raises(ValueError, match="expected the DataFrame"):
        lesion.plots.causal_trace(trace.iloc[:0])
