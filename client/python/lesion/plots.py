"""Figures of the outlier papers, with matplotlib's object API only (no pyplot state, no GUI backend:
safe under Agg, in notebooks and on servers). Every function returns the Figure; ``save=PATH`` also
writes it as PNG (``dpi=`` sets the resolution)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .result import PASSES, Result


def _finish(fig, save, dpi=150):
    fig.tight_layout() if not getattr(fig, "_lesion_3d", False) else None
    if save is not None:
        fig.savefig(save, format="png", dpi=dpi)
    return fig


def _check_pass(pass_):
    if pass_ not in PASSES:
        raise ValueError(f"pass_: unknown {pass_!r}; valid: {', '.join(PASSES)}")


def _layer_frame(result, site, pass_):
    _check_pass(pass_)
    df = result.layer_stats(site, pass_)
    if not len(df):
        raise ValueError(f"no activation_stats for {site!r} in the {pass_} pass (measure ActivationStats)")
    return df


def _layer_labels(df):
    return [str(l) if not pd.isna(l) else s for l, s in zip(df["layer"], df["site"], strict=True)]


def _set_layer_ticks(ax, df, max_labels=16):
    """x ticks labelled by layer, thinned to at most about `max_labels` so that they stay readable
    at 30+ layers (sites without a layer, such as embed, always keep theirs)."""
    labels = _layer_labels(df)
    step = max(1, -(-len(labels) // max_labels))
    keep = [i for i, (l, _) in enumerate(zip(df["layer"], labels, strict=True)) if pd.isna(l) or int(l) % step == 0]
    ax.set_xticks(keep, [labels[i] for i in keep])


# ------------------------------------------------------------------------------ per-layer magnitudes


def layer_magnitudes(
    result: Result, site="blocks.*.resid_post", pass_="baseline", title=None, save=None, dpi=150, figsize=(6.4, 4.0)
):
    """Per-layer top-1/2/3 and median |activation| on a log scale (Sun et al. 2024, Fig. 1)."""
    df = _layer_frame(result, site, pass_)
    fig = Figure(figsize=figsize)
    ax = fig.add_subplot()
    x = np.arange(len(df))
    tops = [c for c in ("top1", "top2", "top3") if c in df.columns]
    markers = {"top1": "o", "top2": "s", "top3": "^"}
    for c in tops:
        ax.plot(x, df[c].to_numpy(float), marker=markers[c], label=c.replace("top", "top-"))
    ax.plot(x, df["median"].to_numpy(float), marker="x", linestyle="--", color="gray", label="median")
    ax.set_yscale("log")
    _set_layer_ticks(ax, df)
    ax.set_xlabel("layer")
    ax.set_ylabel("|activation|")
    ax.set_title(title or f"{site} ({pass_})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _finish(fig, save, dpi)


def compare(
    result_a: Result,
    result_b: Result | None = None,
    site="blocks.*.resid_post",
    stat="top1",
    labels=None,
    pass_="intervened",
    title=None,
    save=None,
    dpi=150,
    figsize=(6.4, 4.0),
):
    """Before / after, per layer, of ``stat`` (top1, top2, top3, median, mean_abs) on a log scale:
    with one result its baseline vs intervened pass; with two, ``pass_`` of each."""
    if result_b is None:
        frames = [_layer_frame(result_a, site, "baseline"), _layer_frame(result_a, site, "intervened")]
        labels = labels or ["baseline", "intervened"]
    else:
        frames = [_layer_frame(result_a, site, pass_), _layer_frame(result_b, site, pass_)]
        labels = labels or ["a", "b"]
    if stat not in frames[0].columns:
        raise ValueError(f"stat: unknown {stat!r}; valid: top1, top2, top3, median, mean_abs")
    fig = Figure(figsize=figsize)
    ax = fig.add_subplot()
    width = 0.4
    for i, (f, label) in enumerate(zip(frames, labels, strict=False)):
        ax.bar(np.arange(len(f)) + (i - 0.5) * width, f[stat].to_numpy(float), width=width, label=label)
    ax.set_yscale("log")
    longest = max(frames, key=len)
    _set_layer_ticks(ax, longest)
    ax.set_xlabel("layer")
    ax.set_ylabel(f"{stat} |activation|")
    ax.set_title(title or f"{stat} of {site}")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend()
    return _finish(fig, save, dpi)


# ------------------------------------------------------------------------------------- 3D surface


def _peak_bins(a, n):
    """Max over ~equal bins along the last axis, so a few huge dims survive downsampling."""
    if a.shape[-1] <= n:
        return a, np.arange(a.shape[-1])
    edges = np.linspace(0, a.shape[-1], n + 1).astype(int)
    return np.stack([a[..., s:e].max(axis=-1) for s, e in zip(edges[:-1], edges[1:], strict=True)], axis=-1), edges[:-1]


def activation_surface(
    capture,
    window=0,
    dims=None,
    tokens=None,
    max_dims=512,
    max_tokens=256,
    title=None,
    cmap="coolwarm",
    save=None,
    dpi=150,
    figsize=(7.0, 5.5),
    token_labels=None,
):
    """3D surface of |activation| over tokens x feature dims for one site (Sun et al.'s 3D plots), from a
    capture array [windows, positions, d] (or [positions, d]). ``dims`` / ``tokens`` select indices;
    beyond ``max_dims`` dims are max-pooled into bins so massive activations stay visible."""
    a = np.abs(np.asarray(capture, dtype=np.float32))
    if a.ndim == 3:
        a = a[window]
    if a.ndim != 2:
        raise ValueError(
            f"activation_surface: expected [windows, positions, d] or [positions, d], got shape {np.shape(capture)}"
        )
    token_idx = np.arange(a.shape[0]) if tokens is None else np.asarray(tokens)
    a = a[token_idx]
    if dims is not None:
        dim_idx = np.asarray(dims)
        a = a[:, dim_idx]
    else:
        a, dim_idx = _peak_bins(a, max_dims)
    if a.shape[0] > max_tokens:
        a, token_idx = a[:max_tokens], token_idx[:max_tokens]
    fig = Figure(figsize=figsize)
    fig._lesion_3d = True
    ax = fig.add_subplot(projection="3d")
    X, Y = np.meshgrid(np.arange(a.shape[1]), np.arange(a.shape[0]))
    ax.plot_surface(X, Y, a, cmap=cmap, linewidth=0, antialiased=False, rstride=1, cstride=1)
    ax.set_xlabel("dim")
    ax.set_ylabel("token")
    ax.set_zlabel("|activation|")
    if len(dim_idx) <= 12:
        ax.set_xticks(np.arange(len(dim_idx)), [str(d) for d in dim_idx])
    if token_labels is not None and len(token_idx) <= 16:
        ax.set_yticks(np.arange(len(token_idx)), [str(token_labels[i]) for i in token_idx])
    if title:
        ax.set_title(title)
    return _finish(fig, save, dpi)


# ------------------------------------------------------------------------------------ attention sink


def _sink(result, pass_):
    _check_pass(pass_)
    s = result.attention_sink
    arr = getattr(s, pass_)
    if arr is None:
        raise ValueError(f"no attention_sink scores in the {pass_} pass (measure AttentionSink)")
    return arr, s.layers


def attention_sink_heatmap(
    result: Result, pass_="baseline", annotate=None, title=None, cmap="viridis", save=None, dpi=150, figsize=None
):
    """Layers x heads heat map of the attention-sink score (mean probability on key 0)."""
    arr, layers = _sink(result, pass_)
    n_layers, n_heads = arr.shape
    fig = Figure(figsize=figsize or (max(4.0, 0.5 * n_heads + 2), max(3.0, 0.4 * n_layers + 1.5)))
    ax = fig.add_subplot()
    im = ax.imshow(
        arr, vmin=0.0, vmax=max(1e-9, float(arr.max()), 1.0 if arr.max() > 0.5 else 0.0), cmap=cmap, aspect="auto"
    )
    fig.colorbar(im, ax=ax, label="attention on token 0")
    ax.set_xticks(np.arange(n_heads), [str(h) for h in range(n_heads)])
    ax.set_yticks(np.arange(n_layers), [str(l) for l in layers])
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    if annotate is None:
        annotate = n_layers * n_heads <= 200
    if annotate:
        for i in range(n_layers):
            for j in range(n_heads):
                ax.text(
                    j,
                    i,
                    f"{arr[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if arr[i, j] < 0.5 * max(arr.max(), 1e-9) else "black",
                )
    ax.set_title(title or f"attention sink ({pass_})")
    return _finish(fig, save, dpi)


def attention_sink_ranking(result: Result, pass_="baseline", top=None, title=None, save=None, dpi=150, figsize=None):
    """Every head sorted by its attention-sink score, largest first (``top``: only the first n)."""
    arr, layers = _sink(result, pass_)
    items = sorted(((arr[i, h], f"L{l}.H{h}") for i, l in enumerate(layers) for h in range(arr.shape[1])), reverse=True)
    if top:
        items = items[:top]
    scores = [s for s, _ in items]
    names = [n for _, n in items]
    fig = Figure(figsize=figsize or (max(6.0, 0.18 * len(items) + 1.5), 4.0))
    ax = fig.add_subplot()
    ax.bar(np.arange(len(items)), scores, color="tab:blue")
    ax.set_xticks(np.arange(len(items)), names, rotation=90, fontsize=7 if len(items) > 40 else 9)
    ax.set_ylabel("attention on token 0")
    ax.set_xlim(-0.6, len(items) - 0.4)
    ax.set_title(title or f"heads ranked by attention-sink score ({pass_})")
    ax.grid(True, axis="y", alpha=0.3)
    return _finish(fig, save, dpi)


# ------------------------------------------------------------------------ perplexity per ablated head


def _head_label(layer, heads):
    if isinstance(heads, (list, tuple)):
        heads = ",".join(str(h) for h in heads)
    return f"L{int(layer)}.H{heads}"


def _sweep_rows(data, metric):
    """(labels, deltas) of a sweep: a parent Result (or a record holding one), its ``Result.sweep``
    table, or ``Client.variants()``'s frame; None when ``data`` is none of these."""
    if hasattr(data, "result") and isinstance(data.result, Result):  # an ExperimentRecord
        data = data.result
    if isinstance(data, Result):
        if not data.is_sweep:
            raise ValueError(
                "perplexity_change_per_head: this Result is not a sweep's parent (no sweep table); "
                "pass the experiments' DataFrame, records or {label: Result}"
            )
        data = data.sweep
    if not isinstance(data, pd.DataFrame):
        return None
    if "variant" in data.columns:  # Client.variants()
        col = f"metric.{metric}.delta_pct"
        if col not in data.columns:
            raise ValueError(
                f"perplexity_change_per_head: the variants frame lacks {col!r} (Client.variants(..., metrics=True))"
            )
        return [str(n) for n in data["variant"]], [float(d) for d in data[col]]
    if {"name", "experiment_id", "perplexity_delta_pct"} <= set(data.columns):  # Result.sweep
        if metric != "perplexity":
            raise ValueError(
                f"perplexity_change_per_head: a sweep's table has the perplexity change only, not "
                f"{metric!r}; pass Client.variants(parent_id) for other metrics"
            )
        return [str(n) for n in data["name"]], [float(d) for d in data["perplexity_delta_pct"]]
    return None


def perplexity_change_per_head(data, metric="perplexity", title=None, sort=False, save=None, dpi=150, figsize=None):
    """Bar chart of the perplexity change (delta %) per ablated head.

    ``data``: a sweep's parent Result (``client.run(spec_with_a_HeadSweep)``), its ``.sweep`` table, or
    the frame of ``Client.variants(parent_id)``, labelled by the variant names ("L<l>.H<h>" for a
    ``HeadSweep``); a DataFrame from ``Client.experiments()`` (columns
    ``intervention.head_ablation.layer``, ``intervention.head_ablation.heads`` and
    ``metric.perplexity.delta_pct``); a list of ExperimentRecords; a dict ``{label: Result}``; or a
    list of ``(label, Result)`` pairs.
    """
    labels, deltas = [], []
    rows = _sweep_rows(data, metric)
    if rows is not None:
        labels, deltas = rows
    elif isinstance(data, pd.DataFrame):
        col = f"metric.{metric}.delta_pct"
        lcol, hcol = "intervention.head_ablation.layer", "intervention.head_ablation.heads"
        missing = [c for c in (col, lcol, hcol) if c not in data.columns]
        if missing:
            raise ValueError(f"perplexity_change_per_head: the frame lacks {missing}")
        for _, row in data.iterrows():
            labels.append(_head_label(row[lcol], row[hcol]))
            deltas.append(float(row[col]))
    else:
        items = data.items() if isinstance(data, dict) else data
        for item in items:
            if isinstance(item, tuple):
                label, res = item
            else:  # an ExperimentRecord
                res = item.result
                spec = item.raw.spec
                ha = [iv.head_ablation for iv in spec.interventions if iv.WhichOneof("kind") == "head_ablation"]
                label = _head_label(ha[0].layer, list(ha[0].heads)) if ha else (item.name or item.id)
            labels.append(str(label))
            deltas.append(float(res.metric(metric)["delta_pct"]))
    if not labels:
        raise ValueError("perplexity_change_per_head: no experiments")
    if sort:
        order = np.argsort(deltas)[::-1]
        labels, deltas = [labels[i] for i in order], [deltas[i] for i in order]
    fig = Figure(figsize=figsize or (max(6.0, 0.18 * len(labels) + 1.5), 4.0))
    ax = fig.add_subplot()
    colors = ["tab:red" if d > 0 else "tab:green" for d in deltas]
    ax.bar(np.arange(len(labels)), deltas, color=colors)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(np.arange(len(labels)), labels, rotation=90, fontsize=7 if len(labels) > 40 else 9)
    ax.set_xlim(-0.6, len(labels) - 0.4)
    ax.set_ylabel(f"{metric} change (%)")
    ax.set_title(title or f"{metric} change per ablated head")
    ax.grid(True, axis="y", alpha=0.3)
    return _finish(fig, save, dpi)
