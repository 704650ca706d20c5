"""Against a real lesiond on loopback (fixture `server` in conftest.py; skipped until
build/server/lesiond exists or $LESIOND points at one). Written before the server: enable, then fix."""

import grpc
import pytest

import lesion


def base(server, **kw):
    return lesion.Experiment(
        model=server.model,
        dataset=lesion.Dataset.named("tinystories-sample"),
        eval=lesion.Eval(seq_len=64, max_windows=2),
        **kw,
    )


def test_models(server):
    models = server.models()
    assert [m["name"] for m in models] == ["stories260K"]
    assert models[0]["n_layers"] == 5 and models[0]["n_heads"] == 8


def test_run_head_ablation(server):
    r = server.run(
        base(
            server,
            name="ablate",
            interventions=[lesion.HeadAblation(layer=1, heads=[3])],
            measurements=[
                lesion.Perplexity(),
                lesion.ActivationStats(),
                lesion.AttentionSink(),
                lesion.Capture(sites=["blocks.0.resid_post"], positions=[0, 1]),
            ],
        ),
        progress=False,
    )
    assert r.perplexity.baseline > 1 and r.perplexity.intervened > 1
    assert r.metric("perplexity")["baseline"] == pytest.approx(r.perplexity.baseline)
    assert r.attention_sink.baseline.shape == (5, 8)
    assert r.captures["baseline"]["blocks.0.resid_post"].shape[:2] == (1, 2)
    assert len(r.layer_stats()) == 5


def test_submit_wait_get_list(server):
    h = server.submit(base(server, name="listed", tags=["pytest"], measurements=[lesion.Perplexity()]))
    rec = h.wait(progress=False)
    assert rec.status == "done" and rec.result is not None
    assert server.get(h.id).status == "done"
    df = server.experiments(where='name = "listed"')
    assert h.id in set(df["id"]) and "metric.perplexity.delta_pct" in df.columns


def test_cancel(server):
    exps = lesion.sweep_heads(base(server, name="cancel-me", measurements=[lesion.Perplexity()]), 5, 8)
    handles = [server.submit(e) for e in exps]
    rec = handles[-1].cancel()
    assert rec.status in ("cancelled",)
    with pytest.raises(lesion.ExperimentFailed):
        handles[-1].result()
    resub = server.resubmit(handles[-1].id)
    assert resub.wait(progress=False).status == "done"
    for h in handles[:-1]:
        h.wait(progress=False)


def test_errors(server):
    with pytest.raises(lesion.InvalidArgument, match="layer 9") as ei:
        server.submit(
            base(server, interventions=[lesion.HeadAblation(layer=9, heads=[0])], measurements=[lesion.Perplexity()])
        )
    assert ei.value.code is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(lesion.NotFound):
        server.submit(
            lesion.Experiment(model="nope", dataset=lesion.Dataset.text("hi"), measurements=[lesion.Perplexity()])
        )
    with pytest.raises(lesion.NotFound):
        server.get("no-such-id")
    with pytest.raises(lesion.InvalidArgument):
        server.experiments(where="this is not a query")


def test_tokens_auth_against_a_real_server(tmp_path):
    """A shared server with a tokens file: the client's token is the user; no or a wrong token is
    Unauthenticated; a user cannot cancel another's experiment or load models."""
    from conftest import LESIOND, STORIES

    if not LESIOND.is_file():
        pytest.skip(f"lesiond not built at {LESIOND}")
    tokens = tmp_path / "tokens"
    tokens.write_text("t-ann ann user\nt-bob bob user\nt-root root admin\n")
    local = lesion.Client.local(
        STORIES, db=tmp_path / "lesion.db", lesiond=LESIOND, extra_args=["--tokens-file", str(tokens)], token="t-ann"
    )
    try:
        address = local.address
        ann, bob = local, lesion.Client(address, token="t-bob")
        with pytest.raises(lesion.Unauthenticated):
            lesion.Client(address).models()
        with pytest.raises(lesion.Unauthenticated):
            lesion.Client(address, token="wrong").models()
        long = lesion.Experiment(
            model="stories260K",
            dataset=lesion.Dataset.named("wikitext-2-raw-test"),
            eval=lesion.Eval(seq_len=32, batch_size=1),
            interventions=[lesion.HeadAblation(layer=0, heads=[0])],
            measurements=[lesion.Perplexity()],
        )
        h = ann.submit(long)
        assert ann.get(h.id).user == "ann" and bob.get(h.id).user == "ann"
        with pytest.raises(lesion.PermissionDenied):
            bob.cancel(h.id)
        with pytest.raises(lesion.PermissionDenied):
            bob.load_model("again", str(STORIES))
        assert ann.cancel(h.id).status in ("cancelled", "running")
        assert h.wait(progress=False).status == "cancelled"
    finally:
        local.close()


def test_plots_of_a_real_result(server, tmp_path):
    r = server.run(
        base(
            server,
            name="plots",
            interventions=[lesion.HeadAblation(layer=2, heads=[6])],
            measurements=[
                lesion.ActivationStats(["blocks.*.resid_post"]),
                lesion.AttentionSink(),
                lesion.Capture(sites=["blocks.0.resid_post"]),
            ],
        ),
        progress=False,
    )
    for name, fig in [
        ("layers", lesion.plots.layer_magnitudes(r, save=tmp_path / "layers.png")),
        ("sinks", lesion.plots.attention_sink_heatmap(r, save=tmp_path / "sinks.png")),
        ("compare", lesion.plots.compare(r, save=tmp_path / "compare.png")),
        (
            "surface",
            lesion.plots.activation_surface(
                r.captures["baseline"]["blocks.0.resid_post"], save=tmp_path / "surface.png"
            ),
        ),
    ]:
        path = tmp_path / f"{name}.png"
        assert fig is not None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_head_sweep(server, capsys, tmp_path):
    """One submission, 40 children: the parent's table names them, Client.variants lists them DONE,
    and a child's perplexity is what its own spec gives run alone."""
    spec = lesion.Experiment(
        model=server.model,
        name="head-sweep",
        tags=["pytest-sweep"],
        dataset=lesion.Dataset.named("tinystories-sample"),
        eval=lesion.Eval(seq_len=64, max_windows=4),
        measurements=[lesion.Perplexity(), lesion.KLDivergence()],
        sweep=lesion.Sweep([lesion.HeadSweep()]),
    )
    h = server.submit(spec)
    assert h.record.is_sweep and h.record.variants_total == 40 and h.record.spec.sweep == spec.sweep
    record = h.wait(progress=True)
    assert record.status == "done" and record.variants_done == 40
    assert "40/40" in capsys.readouterr().err
    parent = h.result()
    assert parent.is_sweep and parent.perplexity.baseline > 1 and parent.metrics.empty
    table = parent.sweep
    assert len(table) == 40
    assert table["name"].tolist() == [f"L{l}.H{h}" for l in range(5) for h in range(8)]
    assert table["experiment_id"].tolist() == [f"{h.id}.{i}" for i in range(40)]
    assert (table["perplexity"] > 1).all() and (table["kl_divergence"] > 0).all()

    df = server.variants(h.id)
    assert len(df) == 40 and (df["status"] == "done").all() and (df["parent_id"] == h.id).all()
    assert df["id"].tolist() == table["experiment_id"].tolist() and df["variant"].tolist() == table["name"].tolist()
    assert df["metric.perplexity.value"].tolist() == pytest.approx(table["perplexity"].tolist(), rel=1e-12)
    # the query language sees the children, and the parent among the top-level experiments only
    assert server.experiments(where=f'parent = "{h.id}"', limit=0).attrs["total"] == 40
    top = server.experiments(where='parent = "" AND tag = "pytest-sweep"')
    assert top["id"].tolist() == [h.id] and top.loc[0, "variants_total"] == 40

    child = server.get(f"{h.id}.13")
    assert child.parent_id == h.id and child.name == "head-sweep/L1.H5" and child.spec.sweep is None
    alone = server.run(child.spec, progress=False)
    assert alone.perplexity.intervened == pytest.approx(child.result.perplexity.intervened, rel=1e-9)
    assert alone.perplexity.intervened == pytest.approx(table.loc[13, "perplexity"], rel=1e-9)
    assert alone.perplexity.baseline == pytest.approx(parent.perplexity.baseline, rel=1e-9)

    fig = lesion.plots.perplexity_change_per_head(parent, save=tmp_path / "heads.png")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()][13] == "L1.H5"
    assert (tmp_path / "heads.png").stat().st_size > 5000


def test_cancel_a_sweep(server):
    """A variant alone cannot be cancelled; cancelling the parent cancels the variants not yet done."""
    long = lesion.Experiment(
        model=server.model,
        name="long-sweep",
        dataset=lesion.Dataset.named("wikitext-2-raw-test"),
        eval=lesion.Eval(seq_len=32, batch_size=1),
        measurements=[lesion.Perplexity()],
        sweep=lesion.Sweep([lesion.HeadSweep()], variants_per_pass=1),
    )
    h = server.submit(long)
    with pytest.raises(lesion.LesionError, match="cancel the sweep") as ei:
        server.cancel(f"{h.id}.39")
    assert ei.value.code is grpc.StatusCode.FAILED_PRECONDITION
    h.cancel()
    assert h.wait(progress=False).status == "cancelled"
    statuses = server.variants(h.id, metrics=False)["status"]
    assert len(statuses) == 40 and set(statuses) <= {"cancelled", "done"} and "cancelled" in set(statuses)
