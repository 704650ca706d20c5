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
