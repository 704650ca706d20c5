"""Figures of the outlier papers, with matplotlib's object API only (no pyplot state, no GUI backend:
safe under Agg, in notebooks and on servers). Every function returns the Figure; ``save=PATH`` also
writes it as PNG (``dpi=`` sets the resolution). Figures stay a readable size whatever the model:
tick labels are thinned at 30+ layers and widths are capped (``MAX_WIDTH`` x ``MAX_HEIGHT`` inches)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .result import PASSES, Result

MAX_WIDTH, MAX_HEIGHT = 16.0, 12.0  # inches: the largest default figure
_LABEL_SPACING = 0.22  # inches between the tick labels a heat map keeps (about 1.5 lines of 10 pt text)


def _finish(fig, save, dpi=150):
    fig.tight_layout() if not getattr(fig, "_lesion_3d", False) else None
    if save is not None:
        fig.savefig(save, format="png", dpi=dpi)
    return fig


def _check_pass(pass_):
    if pass_ not in PASSES:
        raise ValueError(f"pass_: unknown {pass_!r}; valid: {', '.join(PASSES)}")


def _measured_pass(result, pass_):
    """The pass that holds ``pass_``'s numbers: an observational result (no interventions) has only
    the baseline, which its intervened numbers equal."""
    _check_pass(pass_)
    return "baseline" if pass_ == "intervened" and result.observational else pass_


def _layer_frame(result, site, pass_):
    pass_ = _measured_pass(result, pass_)
    df = result.layer_stats(site, pass_)
    if not len(df):
        raise ValueError(f"no activation_stats for {site!r} in the {pass_} pass (measure ActivationStats)")
    return df


def _layer_labels(df):
    return [str(l) if not pd.isna(l) else s for l, s in zip(df["layer"], df["site"], strict=True)]


def _set_layer_ticks(ax, df, max_labels=16):
    """x ticks labelled by layer, thinned to at most about ``max_labels`` so that they stay readable
    at 30+ layers: every ``step``-th layer keeps its label, at its first site (sites without a layer,
    such as embed, always keep theirs)."""
    labels = _layer_labels(df)
    layers = [int(l) for l in df["layer"] if not pd.isna(l)]
    n_layers = len(set(layers))
    step = max(1, -(-n_layers // max_labels))
    keep, seen = [], set()
    for i, l in enumerate(df["layer"]):
        if pd.isna(l):
            keep.append(i)
        elif int(l) % step == 0 and int(l) not in seen:
            seen.add(int(l))
            keep.append(i)
    ax.set_xticks(keep, [labels[i] for i in keep])


def _thin(n, length_in, spacing_in=_LABEL_SPACING):
    """Indices of the ``n`` ticks along an axis ``length_in`` inches long to label, every k-th so
    that labels lie at least ``spacing_in`` apart."""
    fit = max(1, int(length_in / spacing_in))
    step = max(1, -(-n // fit))
    return list(range(0, n, step))


def _annotate_cells(ax, grid, fmt, annotate=None, dark_above=None):
    """Writes each finite cell of a heat map's `grid` in it with `fmt`; `annotate` None means only
    when the grid has at most 200 cells. Cells above `dark_above` get white text."""
    if (grid.size > 200) if annotate is None else not annotate:
        return
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            if np.isfinite(grid[i, j]):
                dark = dark_above is not None and grid[i, j] > dark_above
                ax.text(
                    j,
                    i,
                    fmt.format(grid[i, j]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if dark else "black",
                )


def _heatmap_ticks(fig, ax, cols, rows):
    """Label a heat map's columns and rows (lists of labels), thinned to what the figure's size fits."""
    w, h = fig.get_size_inches()
    xs = _thin(len(cols), 0.75 * w)
    ys = _thin(len(rows), 0.8 * h)
    ax.set_xticks(xs, [str(cols[i]) for i in xs])
    ax.set_yticks(ys, [str(rows[i]) for i in ys])


def _heatmap_size(n_rows, n_cols, cell_w=0.5, cell_h=0.4):
    return (
        min(MAX_WIDTH, max(4.0, cell_w * n_cols + 2.5)),
        min(MAX_HEIGHT, max(3.0, cell_h * n_rows + 1.5)),
    )


# ------------------------------------------------------------------------------ per-layer magnitudes


def layer_magnitudes(
    result: Result, site="blocks.*.resid_post", pass_="baseline", title=None, save=None, dpi=150, figsize=(6.4, 4.0)
):
    """Per-layer top-1/2/3 and median |activation| of ``site`` (an fnmatch pattern over the measured
    sites) on a log scale, as Sun et al. 2024's Fig. 1; needs an ActivationStats measure."""
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


def _compared(results, result_b, labels):
    """(label, Result) pairs of compare()'s arguments."""
    if result_b is not None:
        items = [(None, results), (None, result_b)]
    elif isinstance(results, dict):
        items = list(results.items())
    elif isinstance(results, (list, tuple)):
        items = [(None, r) for r in results]
    else:
        raise ValueError(f"compare: expected Results (a list, or a dict label -> Result), got {type(results).__name__}")
    out = []
    for i, (label, r) in enumerate(items):
        if hasattr(r, "result") and isinstance(r.result, Result):  # an ExperimentRecord
            label = label if label is not None else (r.name or r.id)
            r = r.result
        if not isinstance(r, Result):
            raise ValueError(f"compare: item {i} is a {type(r).__name__}, not a Result or an ExperimentRecord")
        out.append((label if label is not None else _letter(i), r))
    if labels is not None:
        if len(labels) != len(out):
            raise ValueError(f"compare: {len(labels)} labels for {len(out)} results")
        out = [(str(label), r) for label, (_, r) in zip(labels, out, strict=True)]
    if not out:
        raise ValueError("compare: no results")
    return out


def _letter(i):
    """a, b, ..., z, aa, ab, ...: the default labels of compared Results."""
    s = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        s = chr(ord("a") + r) + s
    return s


def compare(
    results,
    result_b: Result | None = None,
    site="blocks.*.resid_post",
    stat="top1",
    labels=None,
    pass_="intervened",
    title=None,
    save=None,
    dpi=150,
    figsize=None,
):
    """Per layer, ``stat`` (top1, top2, top3, median, mean_abs) of ``site`` as grouped bars on a log
    scale, one bar per run:

    - ``compare(r)``: one Result, its baseline vs its intervened pass;
    - ``compare([r1, r2, r3])``, ``compare({"top-3 pruned": r1, "bottom-3 pruned": r2})`` or the
      older ``compare(r1, r2)``: the ``pass_`` of each, labelled by ``labels``, the dict's keys, an
      ExperimentRecord's name (records may stand for their results), or else "a", "b", "c", ...

    Layers line up by site, so results measured at different layers share one axis. An
    observational result (no interventions) has one pass: alone it is drawn as one series, and
    among several its baseline stands for ``pass_``."""
    if result_b is None and isinstance(results, Result):
        _check_pass(pass_)
        if results.observational:
            frames = [_layer_frame(results, site, "baseline")]
            labels = [str(x) for x in labels] if labels is not None else ["baseline (no interventions)"]
            if len(labels) != 1:
                raise ValueError(f"compare: {len(labels)} labels for the one pass of an observational result")
        else:
            frames = [_layer_frame(results, site, "baseline"), _layer_frame(results, site, "intervened")]
            labels = [str(x) for x in labels] if labels is not None else list(PASSES)
    else:
        items = _compared(results, result_b, labels)
        frames = [_layer_frame(r, site, pass_) for _, r in items]
        labels = [label for label, _ in items]
    if stat not in frames[0].columns:
        raise ValueError(f"stat: unknown {stat!r}; valid: top1, top2, top3, median, mean_abs")
    # every site any frame has, sites without a layer first, then by layer
    sites = pd.concat([f[["site", "layer"]] for f in frames]).drop_duplicates("site")
    sites = sites.assign(_o=sites["layer"].fillna(-1).astype(int)).sort_values(["_o", "site"], kind="stable")
    sites = sites.drop(columns="_o").reset_index(drop=True)
    where = {s: i for i, s in enumerate(sites["site"])}
    n = len(frames)
    width = 0.8 / n
    fig = Figure(figsize=figsize or (min(MAX_WIDTH, max(6.4, 0.12 * len(sites) * n + 2.0)), 4.0))
    ax = fig.add_subplot()
    for i, (f, label) in enumerate(zip(frames, labels, strict=True)):
        x = np.array([where[s] for s in f["site"]]) + (i - (n - 1) / 2) * width
        ax.bar(x, f[stat].to_numpy(float), width=width, label=label)
    ax.set_yscale("log")
    _set_layer_ticks(ax, sites)
    ax.set_xlabel("layer")
    ax.set_ylabel(f"{stat} |activation|")
    ax.set_title(title or f"{stat} of {site}")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend()
    return _finish(fig, save, dpi)


# ------------------------------------------------------------------------------------- 3D surface


def _peak_bins(a, n):
    """Max-pool the last axis into ``n`` bins of nearly equal width, so a few huge dims survive
    downsampling. Returns (pooled, dims, widths): ``dims[j]`` is the real dim where bin j's maximum
    lies, so that a peak is drawn at its own dim; ``widths`` the bins' widths (all 1: not pooled)."""
    d = a.shape[-1]
    if d <= n:
        return a, np.arange(d), np.ones(d, dtype=int)
    edges = np.linspace(0, d, n + 1).astype(int)
    pooled, dims = [], []
    for s, e in zip(edges[:-1], edges[1:], strict=True):
        block = a[..., s:e]
        pooled.append(block.max(axis=-1))
        dims.append(s + int(np.argmax(block.reshape(-1, e - s).max(axis=0))))
    return np.stack(pooled, axis=-1), np.asarray(dims), np.diff(edges)


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
    annotate_peak=True,
):
    """3D surface of |activation| over tokens x feature dims for one site (Sun et al.'s 3D plots), from a
    capture array [windows, positions, d] (or [positions, d]). ``dims`` / ``tokens`` select indices.

    The dim axis is in real dims: beyond ``max_dims`` dims are max-pooled into bins and each bin is
    drawn at the dim where its maximum lies (the axis then reads "dim (max over bins of N)"), so a
    massive activation appears at its own dim. ``annotate_peak`` labels the largest |activation|
    with its dim and token."""
    a = np.abs(np.asarray(capture, dtype=np.float32))
    if a.ndim == 3:
        a = a[window]
    if a.ndim != 2:
        raise ValueError(
            f"activation_surface: expected [windows, positions, d] or [positions, d], got shape {np.shape(capture)}"
        )
    token_idx = np.arange(a.shape[0]) if tokens is None else np.asarray(tokens)
    a = a[token_idx]
    if a.shape[0] > max_tokens:
        a, token_idx = a[:max_tokens], token_idx[:max_tokens]
    xlabel = "dim"
    if dims is not None:  # chosen dims: side by side, labelled by their real index
        dim_idx = np.asarray(dims)
        a = a[:, dim_idx]
        x = np.arange(len(dim_idx))
    else:
        a, dim_idx, widths = _peak_bins(a, max_dims)
        x = dim_idx
        if widths.max() > 1:
            lo, hi = int(widths.min()), int(widths.max())
            xlabel = f"dim (max over bins of {hi if lo == hi else f'{lo}-{hi}'})"
    fig = Figure(figsize=figsize)
    fig._lesion_3d = True
    ax = fig.add_subplot(projection="3d")
    X, Y = np.meshgrid(x, np.arange(a.shape[0]))
    ax.plot_surface(X, Y, a, cmap=cmap, linewidth=0, antialiased=False, rstride=1, cstride=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("token")
    ax.set_zlabel("|activation|")
    if dims is not None:
        keep = _thin(len(dim_idx), 4.0, 0.33)
        ax.set_xticks(x[keep], [str(int(dim_idx[i])) for i in keep])
    if token_labels is not None and len(token_idx) <= 16:
        ax.set_yticks(np.arange(len(token_idx)), [str(token_labels[i]) for i in token_idx])
    if annotate_peak and a.size and float(a.max()) > 0:
        t, j = np.unravel_index(int(np.argmax(a)), a.shape)
        ax.text(x[j], t, float(a[t, j]), f"dim {int(dim_idx[j])}, token {int(token_idx[t])}", fontsize=8)
    if title:
        ax.set_title(title)
    return _finish(fig, save, dpi)


# ------------------------------------------------------------------------------------ attention sink


def _sink(result, pass_):
    pass_ = _measured_pass(result, pass_)
    s = result.attention_sink
    arr = getattr(s, pass_)
    if arr is None:
        raise ValueError(f"no attention_sink scores in the {pass_} pass (measure AttentionSink)")
    return arr, s.layers


def attention_sink_heatmap(
    result: Result, pass_="baseline", annotate=None, title=None, cmap="viridis", save=None, dpi=150, figsize=None
):
    """Layers x heads heat map of the attention-sink score (mean probability on key 0); needs an
    AttentionSink measure. ``annotate`` (default: up to 200 cells) writes each score in its cell."""
    arr, layers = _sink(result, pass_)
    n_layers, n_heads = arr.shape
    fig = Figure(figsize=figsize or _heatmap_size(n_layers, n_heads))
    ax = fig.add_subplot()
    im = ax.imshow(
        arr, vmin=0.0, vmax=max(1e-9, float(arr.max()), 1.0 if arr.max() > 0.5 else 0.0), cmap=cmap, aspect="auto"
    )
    fig.colorbar(im, ax=ax, label="attention on token 0")
    _heatmap_ticks(fig, ax, list(range(n_heads)), list(layers))
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
    """Every head sorted by its attention-sink score, largest first (``top``: only the first n); the
    width is capped, with every k-th head labelled when they do not all fit."""
    arr, layers = _sink(result, pass_)
    items = sorted(((arr[i, h], f"L{l}.H{h}") for i, l in enumerate(layers) for h in range(arr.shape[1])), reverse=True)
    if top:
        items = items[:top]
    scores = [s for s, _ in items]
    names = [n for _, n in items]
    fig = Figure(figsize=figsize or (min(MAX_WIDTH, max(6.0, 0.18 * len(items) + 1.5)), 4.0))
    ax = fig.add_subplot()
    ax.bar(np.arange(len(items)), scores, color="tab:blue")
    _bar_labels(fig, ax, names)
    ax.set_ylabel("attention on token 0")
    ax.set_xlim(-0.6, len(items) - 0.4)
    ax.set_title(title or f"heads ranked by attention-sink score ({pass_})")
    ax.grid(True, axis="y", alpha=0.3)
    return _finish(fig, save, dpi)


def _bar_labels(fig, ax, names):
    """Vertical bar labels, every k-th one when they do not all fit the figure's width."""
    keep = _thin(len(names), 0.85 * fig.get_size_inches()[0], 0.12)
    ax.set_xticks(keep, [names[i] for i in keep], rotation=90, fontsize=7 if len(names) > 40 else 9)


# ------------------------------------------------------------------------ perplexity per ablated head


def _head_label(layer, heads):
    if isinstance(heads, (list, tuple)):
        heads = ",".join(str(h) for h in heads)
    return f"L{int(layer)}.H{heads}"


_ONE_HEAD = re.compile(r"^L(\d+)\.H(\d+)$")


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


def _head_changes(data, metric, who="perplexity_change_per_head"):
    """(labels, deltas in %) of every form of data that perplexity_change_per_head takes."""
    labels, deltas = [], []
    rows = _sweep_rows(data, metric)
    if rows is not None:
        labels, deltas = rows
    elif isinstance(data, pd.DataFrame):
        col = f"metric.{metric}.delta_pct"
        lcol, hcol = "intervention.head_ablation.layer", "intervention.head_ablation.heads"
        missing = [c for c in (col, lcol, hcol) if c not in data.columns]
        if missing:
            raise ValueError(f"{who}: the frame lacks {missing} (Client.experiments(..., wide=True) has them)")
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
            pct = res.metric(metric)["delta_pct"]
            deltas.append(float("nan") if pct is None else float(pct))
    if not labels:
        raise ValueError(f"{who}: no experiments")
    return labels, deltas


def _head_grid(labels, deltas):
    """(layers, n_heads, grid [layers, heads] with NaN where no variant) of single-head labels
    "L<l>.H<h>", or None when some label names no single head."""
    cells = [_ONE_HEAD.match(label) for label in labels]
    if not cells or not all(cells):
        return None
    lh = [(int(m.group(1)), int(m.group(2))) for m in cells]
    layers = sorted({l for l, _ in lh})
    n_heads = max(h for _, h in lh) + 1
    grid = np.full((len(layers), n_heads), np.nan)
    row = {l: i for i, l in enumerate(layers)}
    for (l, h), d in zip(lh, deltas, strict=True):
        grid[row[l], h] = d
    return layers, n_heads, grid


def head_sweep_heatmap(
    data, metric="perplexity", title=None, cmap="RdBu_r", annotate=None, save=None, dpi=150, figsize=None
):
    """Layers x heads heat map of the change (delta %) of ``metric`` when each head alone is ablated:
    a per-head sweep over many layers at a glance (red: the metric rose, blue: it fell; white cells
    are heads the data lacks). ``data`` as for ``perplexity_change_per_head``, whose labels must
    name single heads ("L<l>.H<h>", as ``HeadSweep`` names its variants). ``annotate`` (default: up
    to 200 cells) writes each change in its cell."""
    labels, deltas = _head_changes(data, metric, who="head_sweep_heatmap")
    parsed = _head_grid(labels, deltas)
    if parsed is None:
        bad = next(label for label in labels if not _ONE_HEAD.match(label))
        raise ValueError(f"head_sweep_heatmap: {bad!r} names no single head (L<layer>.H<head>)")
    layers, n_heads, grid = parsed
    fig = Figure(figsize=figsize or _heatmap_size(len(layers), n_heads, cell_w=0.45, cell_h=0.3))
    ax = fig.add_subplot()
    finite = np.abs(grid[np.isfinite(grid)])
    vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=-vmax, vmax=vmax, aspect="auto")
    fig.colorbar(im, ax=ax, label=f"{metric} change (%)")
    _heatmap_ticks(fig, ax, list(range(n_heads)), layers)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    _annotate_cells(ax, grid, "{:+.1f}", annotate)
    ax.set_title(title or f"{metric} change per ablated head")
    return _finish(fig, save, dpi)


HEATMAP_ABOVE = 64  # perplexity_change_per_head(kind="auto") draws a heat map beyond this many heads


def perplexity_change_per_head(
    data, metric="perplexity", title=None, sort=False, save=None, dpi=150, figsize=None, kind="auto"
):
    """The change (delta %) of ``metric`` per ablated head: a bar chart, or for a per-head sweep of
    more than ``HEATMAP_ABOVE`` single heads over several layers the ``head_sweep_heatmap``
    (``kind="auto"``; ``kind="bar"`` / ``"heatmap"`` choose). The bar chart's width is capped, with
    every k-th head labelled when they do not all fit.

    ``data``: a sweep's parent Result (``client.run(spec_with_a_HeadSweep)``), its ``.sweep`` table, or
    the frame of ``Client.variants(parent_id)``, labelled by the variant names ("L<l>.H<h>" for a
    ``HeadSweep``); a DataFrame from ``Client.experiments(..., wide=True)`` (columns
    ``intervention.head_ablation.layer``, ``intervention.head_ablation.heads`` and
    ``metric.perplexity.delta_pct``); a list of ExperimentRecords; a dict ``{label: Result}``; or a
    list of ``(label, Result)`` pairs.
    """
    if kind not in ("auto", "bar", "heatmap"):
        raise ValueError(f"kind: unknown {kind!r}; valid: auto, bar, heatmap")
    labels, deltas = _head_changes(data, metric)
    if kind == "auto" and len(labels) > HEATMAP_ABOVE:
        grid = _head_grid(labels, deltas)
        if grid is not None and len(grid[0]) > 1:
            kind = "heatmap"
    if kind == "heatmap":
        return head_sweep_heatmap(data, metric=metric, title=title, save=save, dpi=dpi, figsize=figsize)
    if sort:
        order = np.argsort(deltas)[::-1]
        labels, deltas = [labels[i] for i in order], [deltas[i] for i in order]
    fig = Figure(figsize=figsize or (min(MAX_WIDTH, max(6.0, 0.18 * len(labels) + 1.5)), 4.0))
    ax = fig.add_subplot()
    colors = ["tab:red" if d > 0 else "tab:green" for d in deltas]
    ax.bar(np.arange(len(labels)), deltas, color=colors)
    ax.axhline(0.0, color="black", linewidth=0.8)
    _bar_labels(fig, ax, labels)
    ax.set_xlim(-0.6, len(labels) - 0.4)
    ax.set_ylabel(f"{metric} change (%)")
    ax.set_title(title or f"{metric} change per ablated head")
    ax.grid(True, axis="y", alpha=0.3)
    return _finish(fig, save, dpi)


# ---------------------------------------------------------------------------------- causal tracing


def causal_trace(
    frame,
    tokens=None,
    normalize=False,
    title=None,
    cmap="Purples",
    annotate=None,
    save=None,
    dpi=150,
    figsize=None,
):
    """Heat map of ``lesion.patching.causal_trace``'s frame: p(answer) with the clean vector patched in
    at each (layer, position) of the corrupted prompt, layers down, positions across (Meng et al.'s
    Fig. 1). ``tokens``: labels of the clean prompt's tokens, whose vectors were patched in (a list
    indexed by position, e.g. their text; default the ids); positions where the clean and corrupted
    prompts differ are starred.
    ``normalize`` draws (p - corrupt) / (clean - corrupt) instead, the share of the clean
    probability restored. ``annotate`` (default: up to 200 cells) writes each value in its cell;
    the title gives the unpatched clean and corrupted p(answer)."""
    if not isinstance(frame, pd.DataFrame) or not frame.size:
        raise ValueError("causal_trace: expected the DataFrame of lesion.patching.causal_trace (layers x positions)")
    clean, corrupt = frame.attrs.get("clean", np.nan), frame.attrs.get("corrupt", np.nan)
    grid = frame.to_numpy(dtype=float)
    label = "p(answer)"
    if normalize:
        if not np.isfinite(clean - corrupt) or clean == corrupt:
            raise ValueError("causal_trace: normalize needs different clean and corrupt p(answer) in frame.attrs")
        grid = (grid - corrupt) / (clean - corrupt)
        label = "restored: (p - corrupt) / (clean - corrupt)"
    positions = [int(p) for p in frame.columns]
    clean_ids, corrupt_ids = frame.attrs.get("clean_ids"), frame.attrs.get("corrupt_ids")
    if tokens is None:
        names = [str(clean_ids[p]) if clean_ids is not None else str(p) for p in positions]
    else:
        names = [str(tokens[p]) for p in positions]
    if clean_ids is not None and corrupt_ids is not None:
        names = [f"{n}*" if clean_ids[p] != corrupt_ids[p] else n for n, p in zip(names, positions, strict=True)]
    rows = [str(r) for r in frame.index]
    fig = Figure(figsize=figsize or _heatmap_size(len(rows), len(positions), cell_w=0.5, cell_h=0.28))
    ax = fig.add_subplot()
    finite = grid[np.isfinite(grid)]
    vmin = min(0.0, float(finite.min())) if finite.size else 0.0
    vmax = max(1e-9, float(finite.max())) if finite.size else 1.0
    if normalize:
        vmax = max(vmax, 1.0)
    im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    fig.colorbar(im, ax=ax, label=label)
    _heatmap_ticks(fig, ax, names, rows)
    ax.tick_params(axis="x", labelrotation=90)
    ax.set_xlabel("position (* corrupted)" if clean_ids is not None and corrupt_ids is not None else "position")
    ax.set_ylabel(frame.index.name or "layer")
    _annotate_cells(ax, grid, "{:.2f}", annotate, dark_above=vmin + 0.6 * (vmax - vmin))
    site = frame.attrs.get("site", "")
    ax.set_title(title or f"causal trace {site}: clean {clean:.3g}, corrupt {corrupt:.3g}".replace("  ", " "))
    return _finish(fig, save, dpi)
