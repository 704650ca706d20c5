"""Every plot renders to a valid, non-trivial PNG."""

import matplotlib
import numpy as np
import pandas as pd
import pytest

import lesion
from lesion import plots

PNG = b"\x89PNG\r\n\x1a\n"


def check_png(path, fig):
    from matplotlib.figure import Figure

    assert isinstance(fig, Figure)
    assert path.is_file() and path.stat().st_size > 5000
    assert path.read_bytes()[:8] == PNG


def test_layer_magnitudes(result, tmp_path):
    p = tmp_path / "layers.png"
    check_png(p, plots.layer_magnitudes(result, save=p))
    fig = plots.layer_magnitudes(result, pass_="intervened")
    assert fig.axes[0].get_yscale() == "log" and len(fig.axes[0].lines) == 4


def test_layer_labels_stay_readable_at_30_layers():
    from lesion._proto import result_pb2

    r = result_pb2.ExperimentResult()
    for l in range(30):
        s = r.baseline.activation_stats.add()
        s.site, s.median, s.n_windows = f"blocks.{l}.resid_post", 1.0, 1
        s.mean_top.extend([10.0 + l, 5.0, 2.0])
    fig = plots.layer_magnitudes(lesion.Result(r))
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == [str(l) for l in range(0, 30, 2)]  # every other layer: at most ~16 labels


def test_compare(result, tmp_path):
    p = tmp_path / "compare.png"
    check_png(p, plots.compare(result, save=p))
    p2 = tmp_path / "compare2.png"
    check_png(p2, plots.compare(result, result, labels=["before", "after"], stat="median", save=p2))
    with pytest.raises(ValueError, match="stat"):
        plots.compare(result, stat="top9")


def test_activation_surface(result, tmp_path):
    cap = result.captures["baseline"]["blocks.0.resid_post"]
    p = tmp_path / "surface.png"
    check_png(p, plots.activation_surface(cap, title="layer 0", save=p))
    big = np.random.default_rng(0).normal(size=(2, 8, 2000)).astype(np.float32)
    big[1, 0, 1234] = 500.0
    p2 = tmp_path / "surface2.png"
    check_png(p2, plots.activation_surface(big, window=1, max_dims=100, save=p2))
    check_png(tmp_path / "s3.png", plots.activation_surface(cap[0], dims=[29, 30, 31], save=tmp_path / "s3.png"))
    with pytest.raises(ValueError, match="expected"):
        plots.activation_surface(np.zeros(5))


def test_attention_sink_plots(result, tmp_path):
    p = tmp_path / "heat.png"
    check_png(p, plots.attention_sink_heatmap(result, save=p))
    p2 = tmp_path / "rank.png"
    fig = plots.attention_sink_ranking(result, pass_="intervened", save=p2)
    check_png(p2, fig)
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels[0] == "L4.H7" and len(labels) == 40
    assert len(plots.attention_sink_ranking(result, top=5).axes[0].patches) == 5


def test_perplexity_change_per_head(result, tmp_path):
    df = pd.DataFrame(
        {
            "intervention.head_ablation.layer": [0, 0, 1],
            "intervention.head_ablation.heads": [(0,), (1,), (0,)],
            "metric.perplexity.delta_pct": [1.5, -0.5, 30.0],
        }
    )
    p = tmp_path / "ppl.png"
    fig = plots.perplexity_change_per_head(df, sort=True, save=p)
    check_png(p, fig)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["L1.H0", "L0.H0", "L0.H1"]
    p2 = tmp_path / "ppl2.png"
    check_png(p2, plots.perplexity_change_per_head({"L0.H1": result, "L1.H2": result}, save=p2))
    check_png(tmp_path / "p3.png", plots.perplexity_change_per_head([("a", result)], save=tmp_path / "p3.png"))
    with pytest.raises(ValueError, match="lacks"):
        plots.perplexity_change_per_head(pd.DataFrame({"x": [1]}))


def test_missing_measurements_are_clear_errors():
    from lesion._proto import result_pb2

    empty = lesion.Result(result_pb2.ExperimentResult())
    with pytest.raises(ValueError, match="ActivationStats"):
        plots.layer_magnitudes(empty)
    with pytest.raises(ValueError, match="AttentionSink"):
        plots.attention_sink_heatmap(empty)
    with pytest.raises(ValueError, match="valid: baseline, intervened"):
        plots.attention_sink_heatmap(empty, pass_="after")


def test_no_pyplot_needed():
    import sys

    assert matplotlib.get_backend()  # whatever it is; plots never select or need a GUI backend
    assert "lesion.plots" in sys.modules


def wide_result(n_layers=30, n_heads=9, scale=1.0):
    """A Result of a 30-layer, 9-head model (SmolLM2-135M's shape): activation stats and sink scores."""
    from lesion._proto import result_pb2

    r = result_pb2.ExperimentResult()
    for p in (r.baseline, r.intervened):
        for l in range(n_layers):
            s = p.activation_stats.add()
            s.site, s.median, s.n_windows = f"blocks.{l}.resid_post", 1.0, 1
            s.mean_top.extend([(10.0 + l) * scale, 5.0, 2.0])
        p.attention_sink.layers.extend(range(n_layers))
        p.attention_sink.n_heads = n_heads
        p.attention_sink.scores.extend(
            [(l * n_heads + h) / (n_layers * n_heads) for l in range(n_layers) for h in range(n_heads)]
        )
    return lesion.Result(r)


def head_sweep(n_layers=30, n_heads=9):
    from lesion._proto import result_pb2

    r = result_pb2.ExperimentResult()
    r.baseline.perplexity.ppl = 10.0
    for l in range(n_layers):
        for h in range(n_heads):
            d = (l - h) / 10.0
            r.sweep.variants.add(name=f"L{l}.H{h}", perplexity=10.0 * (1 + d / 100), perplexity_delta_pct=d)
    return lesion.Result(r)


def shown(labels):
    return [t.get_text() for t in labels if t.get_text()]


def test_activation_surface_draws_a_pooled_peak_at_its_real_dim():
    """576 dims pooled into 512 bins: the peak at dim 507 is drawn, annotated and labelled at 507
    (it used to sit at bin 450 of an axis labelled "dim")."""
    cap = np.random.default_rng(1).normal(size=(1, 8, 576)).astype(np.float32)
    cap[0, 3, 507] = -900.0
    fig = plots.activation_surface(cap)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "dim (max over bins of 1-2)"
    (peak,) = ax.texts
    assert peak.get_text() == "dim 507, token 3"
    x, y, z = peak.get_position_3d()
    assert (x, y, z) == (507, 3, 900.0)
    assert ax.get_xlim()[1] >= 575 - 1  # the axis spans the real dims 0..575, not 512 bins
    pooled, dims, widths = plots._peak_bins(np.abs(cap[0]), 512)
    j = int(np.argmax(pooled.max(axis=0)))
    assert dims[j] == 507 and pooled.shape == (8, 512) and set(widths) == {1, 2}
    # below max_dims nothing is pooled and the label is plain
    fig = plots.activation_surface(cap, max_dims=1024)
    assert fig.axes[0].get_xlabel() == "dim" and fig.axes[0].texts[0].get_position_3d()[0] == 507
    # chosen dims are labelled by their real index
    fig = plots.activation_surface(cap, dims=[5, 507, 570])
    assert shown(fig.axes[0].get_xticklabels()) == ["5", "507", "570"]
    assert fig.axes[0].texts[0].get_text() == "dim 507, token 3"


def test_head_sweep_of_30_layers_is_a_bounded_heat_map(tmp_path):
    r = head_sweep(30, 9)
    fig = plots.perplexity_change_per_head(r, save=tmp_path / "heads.png")
    w, h = fig.get_size_inches()
    assert w <= plots.MAX_WIDTH and h <= plots.MAX_HEIGHT and w * 150 < 2500  # it was 7,515 px wide
    ax = fig.axes[0]
    assert ax.get_ylabel() == "layer" and ax.get_xlabel() == "head" and ax.images[0].get_array().shape == (30, 9)
    assert shown(ax.get_xticklabels()) == [str(h) for h in range(9)]
    ys = shown(ax.get_yticklabels())
    assert 8 <= len(ys) <= 30 and ys[0] == "0"
    assert ax.images[0].get_array()[2, 7] == pytest.approx((2 - 7) / 10.0)
    check_png(tmp_path / "heads.png", fig)
    # the same from the function itself, and as capped bars on request
    assert plots.head_sweep_heatmap(r.sweep).axes[0].images[0].get_array().shape == (30, 9)
    bars = plots.perplexity_change_per_head(r, kind="bar")
    assert bars.get_size_inches()[0] <= plots.MAX_WIDTH
    assert len(bars.axes[0].patches) == 270 and len(shown(bars.axes[0].get_xticklabels())) < 270
    # a small sweep stays a bar chart with every head labelled
    small = plots.perplexity_change_per_head(head_sweep(5, 8))
    assert len(shown(small.axes[0].get_xticklabels())) == 40
    with pytest.raises(ValueError, match="names no single head"):
        plots.head_sweep_heatmap({"L0.H1,2": lesion.Result(make_result_with_ppl())})


def make_result_with_ppl():
    from conftest import make_result

    return make_result()


def test_layer_labels_stay_readable_at_30_layers_in_every_plot():
    r = wide_result(30, 9)
    for fig in (plots.layer_magnitudes(r), plots.compare(r), plots.compare([r, r, r])):
        assert 8 <= len(shown(fig.axes[0].get_xticklabels())) <= 16
    heat = plots.attention_sink_heatmap(r)
    w, h = heat.get_size_inches()
    assert w <= plots.MAX_WIDTH and h <= plots.MAX_HEIGHT
    assert len(shown(heat.axes[0].get_yticklabels())) <= 0.8 * h / 0.22 + 1
    deep = plots.attention_sink_heatmap(wide_result(80, 9))
    ys = shown(deep.axes[0].get_yticklabels())
    assert deep.get_size_inches()[1] <= plots.MAX_HEIGHT and len(ys) < 80 and ys[:2] == ["0", "2"]


def test_compare_takes_n_labelled_results(result, tmp_path):
    a, b, c = wide_result(6, 2, 1.0), wide_result(6, 2, 2.0), wide_result(6, 2, 3.0)
    fig = plots.compare([a, b, c], labels=["none", "top-3", "bottom-3"], save=tmp_path / "c.png")
    check_png(tmp_path / "c.png", fig)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["none", "top-3", "bottom-3"]
    assert len(ax.containers) == 3 and all(len(bars) == 6 for bars in ax.containers)
    assert ax.containers[2][4].get_height() == 3.0 * 14
    fig = plots.compare({"x": a, "y": b, "z": c, "w": a}, stat="median")
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["x", "y", "z", "w"]
    old = plots.compare(a, b)  # the two-result call of before
    assert [t.get_text() for t in old.axes[0].get_legend().get_texts()] == ["a", "b"]
    one = plots.compare(a)
    assert [t.get_text() for t in one.axes[0].get_legend().get_texts()] == ["baseline", "intervened"]
    # results measured at different layers line up by site
    mixed = plots.compare([wide_result(6, 2), wide_result(3, 2)])
    assert [len(bars) for bars in mixed.axes[0].containers] == [6, 3]
    assert mixed.axes[0].containers[1][2].get_x() < mixed.axes[0].containers[0][3].get_x()
    with pytest.raises(ValueError, match="2 labels for 3 results"):
        plots.compare([a, b, c], labels=["x", "y"])
    with pytest.raises(ValueError, match="not a Result"):
        plots.compare([a, "b"])


def test_plots_of_an_observational_result(tmp_path):
    """One pass: compare draws it alone, and pass_="intervened" reads the baseline it equals."""
    from conftest import make_observational_result

    r = lesion.Result(make_observational_result())
    p = tmp_path / "obs.png"
    fig = plots.compare(r, save=p)
    check_png(p, fig)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["baseline (no interventions)"]
    assert len(ax.patches) == 5  # one bar per layer
    assert len(plots.compare([r, r], labels=["a", "b"]).axes[0].patches) == 10
    assert len(plots.compare({"obs": r, "ablated": lesion.Result(make_result_with_ppl())}).axes[0].patches) == 10
    with pytest.raises(ValueError, match="2 labels for the one pass"):
        plots.compare(r, labels=["a", "b"])
    for pass_ in ("baseline", "intervened"):
        plots.layer_magnitudes(r, pass_=pass_)
        plots.attention_sink_heatmap(r, pass_=pass_)
        plots.attention_sink_ranking(r, pass_=pass_)
    with pytest.raises(ValueError, match="valid: baseline, intervened"):
        plots.layer_magnitudes(r, pass_="after")
