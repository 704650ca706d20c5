"""The outlier study on one model, run through lesiond and the Python client, every number found by
lesion's detectors on the model at hand (nothing hard-coded for a checkpoint):

  1. per-layer top-1/2/3 and median |activation| of the residual stream (the seed study's table);
  2. the 3D |activation| surface of the first layer where a massive activation appears;
  3. the attention-sink score of every head, ranked;
  4. pruning the 3 top- and the 3 bottom-ranked sink heads;
  5. every single head ablated, as one server-side sweep (one baseline, a child experiment per head);
  6. the super-weight scan, then the strongest super weight zeroed: perplexity, the massive
     activation collapsing, the stop-word probability shift, the sinks before and after;
  7. the massive activation set to zero and set to its mean (Sun et al.: zero ruins the model, the
     mean is harmless).

    python scripts/outlier_study.py --model PATH [--name NAME] [--out out/demo] [--windows 2]
                                    [--sweep-windows 1] [--seq-len 128]

PATH is a model directory or a .gguf file. Starts a private lesiond (lesion.Client.local) with its
database in OUT, so every experiment stays queryable afterwards; writes the plots to OUT.
"""

import argparse
import time
from pathlib import Path

import numpy as np

import lesion

ROOT = Path(__file__).resolve().parents[1]
# Stop words whose probability the super-weight paper watches (Yu et al., Fig. 4).
STOP_WORDS = [" the", ".", ",", " and", " of"]


def section(title):
    print(f"\n== {title}", flush=True)


def fmt_heads(heads):
    return ", ".join(f"L{l}.H{h}" for l, h in heads)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a model directory or a .gguf file")
    parser.add_argument("--name", default=None, help="the model's name on the server (default: from the path)")
    parser.add_argument("--out", default=str(ROOT / "out" / "demo"))
    parser.add_argument("--dataset", default="wikitext-2-raw-test", help="a named dataset of the server")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--windows", type=int, default=2, help="windows of the dataset to evaluate on")
    parser.add_argument(
        "--sweep-windows",
        type=int,
        default=1,
        help="windows for the every-head sweep (each head costs the layers from its own on)",
    )
    parser.add_argument("--add-bos", action="store_true", help="prepend BOS to every window")
    parser.add_argument("--lesiond", default=None, help="the lesiond binary (default: $LESIOND, build/server/lesiond)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    db = out / "lesion.db"
    for stale in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        stale.unlink(missing_ok=True)
    model = args.name or Path(args.model).stem
    plots = lesion.plots
    started = time.monotonic()

    dataset = lesion.Dataset.named(args.dataset)
    evaluation = lesion.Eval(seq_len=args.seq_len, max_windows=args.windows, add_bos=args.add_bos)

    def experiment(name, windows=None, **kw):
        ev = (
            evaluation
            if windows is None
            else lesion.Eval(seq_len=args.seq_len, max_windows=windows, add_bos=args.add_bos)
        )
        return lesion.Experiment(
            model=model, name=name, dataset=dataset, eval=ev, tags=["outlier-study"] + kw.pop("tags", []), **kw
        )

    with lesion.Client.local(args.model, name=model, db=db, lesiond=args.lesiond) as client:
        info = client.models()[0]
        n_layers, n_heads = info["n_layers"], info["n_heads"]
        weights = f", {info['dequantized_from']}" if info.get("dequantized_from") else ""
        print(
            f"lesiond on {client.address}: {info['name']} ({info['architecture']}, {n_layers} layers x {n_heads} "
            f"heads, d_model {info['d_model']}, {info['dtype']} on {info['device']}{weights})"
        )
        print(
            f"evaluation: {args.windows} windows of {args.seq_len} tokens of {args.dataset}"
            f"{' with BOS' if args.add_bos else ''}"
        )

        section("1. per-layer top-1/2/3 |activation| and median of the residual stream (Sun et al.)")
        magnitudes = client.run(
            experiment(
                "layer-magnitudes",
                measurements=[
                    lesion.Perplexity(),
                    lesion.ActivationStats(["embed", "blocks.*.resid_post", "final_norm"], top_k=3),
                    lesion.MassiveActivations(sites=["blocks.*.resid_post"]),
                ],
            ),
            progress=False,
        )
        table = magnitudes.layer_stats("*")
        # embed first, then the blocks, then final_norm
        table = table.assign(
            ratio=table["top1"] / table["median"],
            _order=[
                -1 if s == "embed" else n_layers if s == "final_norm" else int(l)
                for s, l in zip(table["site"], table["layer"].fillna(-1), strict=True)
            ],
        )
        table = table.sort_values("_order")
        print(
            table[["site", "top1", "top2", "top3", "median", "ratio"]].to_string(
                index=False, float_format=lambda v: f"{v:.4g}"
            )
        )
        print(
            f"perplexity {magnitudes.perplexity.baseline:.3f} over {magnitudes.perplexity.n_tokens} tokens "
            f"({magnitudes.perplexity.protocol})"
        )
        plots.layer_magnitudes(magnitudes, save=out / "layer_magnitudes.png")
        massive = magnitudes.massive_activations
        massive = massive[massive["pass_name"] == "baseline"]
        if len(massive):
            first_layer = int(massive["layer"].min())
            top = massive.sort_values("value", key=abs, ascending=False).iloc[0]
            dims = sorted(set(massive[massive["layer"] == first_layer]["dim"].tolist()))
            print(
                f"massive activations (|x| >= 100 and >= 1000 x the median): "
                f"{int(massive.groupby('site')['count'].first().sum())} "
                f"entries from layer {first_layer} on, at dims {dims}; the largest {top['value']:.1f} at layer "
                f"{int(top['layer'])}, token {int(top['token'])}, dim {int(top['dim'])} "
                f"({top['ratio']:.0f} x the median)"
            )
        else:
            first_layer, top = None, None
            print("no massive activations with the papers' thresholds (|x| >= 100 and >= 1000 x the median)")

        section("2. the |activation| surface where the massive activation appears")
        surface_layer = first_layer if first_layer is not None else 0
        site = f"blocks.{surface_layer}.resid_post"
        capture = client.run(
            experiment(f"capture-{site}", measurements=[lesion.Capture([site], max_windows=1)]), progress=False
        )
        acts = capture.captures["baseline"][site]  # [windows, tokens, d_model]
        plots.activation_surface(
            acts, max_dims=acts.shape[-1], title=f"|{site}|, window 0", save=out / "activation_surface.png"
        )
        peak = np.unravel_index(np.abs(acts[0]).argmax(), acts[0].shape)
        print(
            f"{site}: window 0 is {acts.shape[1]} tokens x {acts.shape[2]} dims; the peak |x| "
            f"{abs(acts[0][peak]):.1f} sits at token {peak[0]}, dim {peak[1]}; plot in activation_surface.png"
        )

        section(f"3. attention-sink score of all {n_layers * n_heads} heads (mean attention on key 0), ranked")
        sinks = client.run(experiment("attention-sinks", measurements=[lesion.AttentionSink()]), progress=False)
        scores = sinks.attention_sink.baseline  # [layers, heads]
        ranked = sorted(((scores[l][h], l, h) for l in range(n_layers) for h in range(n_heads)), reverse=True)
        print("highest:", ", ".join(f"L{l}.H{h} {s:.3f}" for s, l, h in ranked[:8]))
        print("lowest: ", ", ".join(f"L{l}.H{h} {s:.3f}" for s, l, h in ranked[-5:]))
        print(
            f"{sum(s > 0.9 for s, _, _ in ranked)} heads put more than 90% of their attention on the first token; "
            f"mean score per layer: {' '.join(f'{v:.2f}' for v in scores.mean(axis=1))}"
        )
        plots.attention_sink_heatmap(sinks, save=out / "attention_sinks.png")
        plots.attention_sink_ranking(sinks, top=24, save=out / "attention_sink_ranking.png")

        section("4. prune the 3 top- and the 3 bottom-ranked sink heads")
        pruned = {}
        for label, picked in (("top3", ranked[:3]), ("bottom3", ranked[-3:])):
            heads = [(l, h) for _, l, h in picked]
            r = client.run(
                experiment(
                    f"prune-{label}",
                    tags=["head-pruning"],
                    interventions=[lesion.HeadAblation(layer=l, heads=[h]) for l, h in heads],
                    measurements=[
                        lesion.Perplexity(),
                        lesion.KLDivergence(),
                        lesion.ActivationStats(["blocks.*.resid_post"], top_k=1),
                    ],
                ),
                progress=False,
            )
            pruned[label] = r
            print(
                f"{label:8s} {fmt_heads(heads)}: perplexity {r.perplexity.baseline:.3f} -> "
                f"{r.perplexity.intervened:.3f} ({r.perplexity.delta_pct:+.2f}%), KL {r.kl_divergence:.4f} nats/token"
            )
        plots.compare(pruned["top3"], pruned["bottom3"], save=out / "pruning_top1.png")

        section(
            f"5. every single head ablated: one sweep of {n_layers * n_heads} variants sharing one baseline "
            f"({args.sweep_windows} window{'s' if args.sweep_windows != 1 else ''})"
        )
        t0 = time.monotonic()
        handle = client.submit(
            experiment(
                "single-head",
                windows=args.sweep_windows,
                tags=["single-head"],
                measurements=[lesion.Perplexity()],
                sweep=lesion.Sweep([lesion.HeadSweep()]),
            )
        )
        heads = handle.result(progress=False)  # the parent: the baseline and a row per variant
        table = heads.sweep
        print(
            f"sweep {handle.id}: {len(table)} variants in {time.monotonic() - t0:.1f} s "
            f"({heads.run['forward_passes']} forward passes); baseline perplexity {heads.perplexity.baseline:.3f}"
        )
        df = client.experiments(
            where='tag = "single-head" AND parent != ""', order_by="metric.perplexity.delta_pct desc", limit=5
        )
        print("largest perplexity increases (a query over the database):")
        print(
            df[["name", "metric.perplexity.value", "metric.perplexity.delta_pct"]].to_string(
                index=False, float_format=lambda v: f"{v:.3f}"
            )
        )
        lowest = table.nsmallest(3, "perplexity_delta_pct")
        print("largest decreases:", ", ".join(f"{r.name} {r.perplexity_delta_pct:+.2f}%" for r in lowest.itertuples()))
        plots.perplexity_change_per_head(heads, save=out / "perplexity_change_per_head.png")

        section("6. super weights (Yu et al.): the scan, then the strongest one zeroed")
        scan = client.run(
            experiment(
                "super-weight-scan",
                tags=["super-weights"],
                measurements=[
                    lesion.SuperWeights(),
                    lesion.NormOutliers(),
                    lesion.AttentionOutliers(),
                    lesion.ActivationStats(["blocks.*.mlp_act", "blocks.*.mlp_out"], top_k=1),
                ],
            ),
            progress=False,
        )
        sw = scan.super_weights
        sw = sw[sw["pass_name"] == "baseline"]
        if not len(sw):
            scan = client.run(
                experiment(
                    "super-weight-scan-low", tags=["super-weights"], measurements=[lesion.SuperWeights(min_ratio=8)]
                ),
                progress=False,
            )
            sw = scan.super_weights
            sw = sw[sw["pass_name"] == "baseline"]
            print("no super weight with the paper's ratio 100; with ratio 8:")
        print(
            sw.drop(columns="pass_name").to_string(index=False, float_format=lambda v: f"{v:.4g}")
            if len(sw)
            else "none"
        )
        norms = scan.norm_outliers
        if len(norms):
            print(
                f"norm gamma outliers: {len(norms[norms['pass_name'] == 'baseline'])}, e.g. "
                + ", ".join(
                    f"{r.norm}@L{r.layer} ch {r.channel} (gamma {r.gamma:.3g}, z {r.z:.0f})"
                    for r in norms[norms["pass_name"] == "baseline"].head(3).itertuples()
                )
            )
        if len(sw):
            strongest = sw.assign(score=sw["output_spike"].abs()).sort_values("score", ascending=False).iloc[0]
            layer, row, col = int(strongest["layer"]), int(strongest["row"]), int(strongest["col"])
            zeroed = client.run(
                experiment(
                    "zero-super-weight",
                    tags=["super-weights"],
                    interventions=[lesion.WeightEdit.zero(layer=layer, module="mlp.down", row=row, col=col)],
                    measurements=[
                        lesion.Perplexity(),
                        lesion.KLDivergence(),
                        lesion.TokenProbabilities(tokens=STOP_WORDS),
                        lesion.ActivationStats(["blocks.*.resid_post"], top_k=1),
                        lesion.MassiveActivations(sites=["blocks.*.resid_post"]),
                        lesion.AttentionSink(),
                    ],
                ),
                progress=False,
            )
            print(
                f"zero mlp.down[{row}, {col}] of layer {layer} (weight {strongest['weight']:.4g}): perplexity "
                f"{zeroed.perplexity.baseline:.3f} -> {zeroed.perplexity.intervened:.3f} "
                f"(x{zeroed.perplexity.intervened / zeroed.perplexity.baseline:.2f}), "
                f"KL {zeroed.kl_divergence:.4f} nats/token"
            )
            counts = zeroed.massive_activation_counts.groupby("pass_name")["count"].sum()
            stats = zeroed.activation_stats
            print(
                f"massive activations (entries over the thresholds, all layers): {int(counts.get('baseline', 0))} -> "
                f"{int(counts.get('intervened', 0))}"
            )
            for l in sorted({layer, n_layers - 1}):
                at = stats[stats["site"] == f"blocks.{l}.resid_post"].set_index("pass_name")
                print(
                    f"  top-1 |blocks.{l}.resid_post| (mean over windows) {at.loc['baseline', 'top1']:.1f} -> "
                    f"{at.loc['intervened', 'top1']:.1f}, median {at.loc['baseline', 'median']:.3f} -> "
                    f"{at.loc['intervened', 'median']:.3f}"
                )
            probs = zeroed.token_probabilities.pivot(index="token", columns="pass_name", values="mean_probability")
            print("stop-word probabilities (mean over predicted positions):")
            for token, p in probs.iterrows():
                print(
                    f"  {token!r:8} {p['baseline']:.4f} -> {p['intervened']:.4f} "
                    f"(x{p['intervened'] / p['baseline']:.2f})"
                )
            s = zeroed.attention_sink
            print(
                f"attention-sink score, mean over heads: {s.baseline.mean():.3f} -> {s.intervened.mean():.3f}; "
                f"heads above 0.9: {int((s.baseline > 0.9).sum())} -> {int((s.intervened > 0.9).sum())}"
            )
            plots.compare(zeroed, save=out / "super_weight_zeroed.png")

        section("7. the massive activation set to zero and to its mean (Sun et al.)")
        if top is None:
            print("skipped: no massive activation")
        else:
            layer, dim, token = first_layer, int(top["dim"]), int(top["token"])
            site = f"blocks.{layer}.resid_post"
            for op in ("zero", "mean"):
                r = client.run(
                    experiment(
                        f"massive-activation-{op}",
                        tags=["massive-activations"],
                        interventions=[lesion.ActivationEdit(site, positions=[token], dims=[dim], op=op)],
                        measurements=[lesion.Perplexity(), lesion.KLDivergence()],
                    ),
                    progress=False,
                )
                print(
                    f"{site}[token {token}, dim {dim}] set to its {'value 0' if op == 'zero' else 'dataset mean'}: "
                    f"perplexity {r.perplexity.baseline:.3f} -> {r.perplexity.intervened:.3f} "
                    f"({r.perplexity.delta_pct:+.2f}%), KL {r.kl_divergence:.4f} nats/token"
                )

        total = client.experiments(limit=0).attrs["total"]
        print(f"\n{total} experiments recorded in {db}; plots in {out}/; {time.monotonic() - started:.0f} s in all")


if __name__ == "__main__":
    main()
