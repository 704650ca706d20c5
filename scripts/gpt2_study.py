"""The GPT-2 outlier study (docs/design.md, "Purpose"), run through lesiond and the Python client on a model:
per-layer top-1/2/3 and median |activation|, attention-sink scores of every head, pruning the 3
top- and 3 bottom-ranked heads, every single head ablated (one server-side sweep: a child experiment
per head), and the super-weight / massive-activation scan with the strongest candidate zeroed.
Prints a report and writes the plots.

    python scripts/gpt2_study.py [--model models/stories260K] [--out out/demo] [--lesiond PATH]

Starts a private lesiond (lesion.Client.local) with its database in OUT, so the experiments stay
queryable afterwards: lesiond --db OUT/lesion.db --model NAME=DIR.
"""

import argparse
import json
from pathlib import Path

import lesion

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "experiments" / "examples"


def example(name, model):
    spec = json.loads((EXAMPLES / f"{name}.json").read_text())
    spec["model"] = model
    return spec


def section(title):
    print(f"\n== {title}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(ROOT / "models" / "stories260K"))
    parser.add_argument("--out", default=str(ROOT / "out" / "demo"))
    parser.add_argument("--lesiond", default=None, help="the lesiond binary (default: $LESIOND, build/server/lesiond)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    db = out / "lesion.db"
    for stale in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        stale.unlink(missing_ok=True)
    model = Path(args.model).name
    plots = lesion.plots

    with lesion.Client.local(args.model, db=db, lesiond=args.lesiond) as client:
        info = client.models()[0]
        print(
            f"lesiond on {client.address}: {info['name']} ({info['architecture']}, {info['n_layers']} layers x "
            f"{info['n_heads']} heads, d {info['d_model']}, {info['dtype']} on {info['device']})"
        )
        n_layers, n_heads = info["n_layers"], info["n_heads"]

        section("1. per-layer top-1/2/3 |activation| and median (Sun et al.'s view of the residual stream)")
        magnitudes = client.run(example("layer_magnitudes", model), progress=False)
        table = magnitudes.activation_stats
        table = table[table["pass_name"] == "baseline"]
        print(table[["site", "top1", "top2", "top3", "median"]].to_string(index=False, float_format="%.3f"))
        print(
            f"perplexity {magnitudes.perplexity.baseline:.4f} over {magnitudes.perplexity.n_tokens} tokens "
            f"({magnitudes.perplexity.protocol})"
        )
        plots.layer_magnitudes(magnitudes, save=out / "layer_magnitudes.png")

        section("2. attention-sink score of every head (mean mass on key 0), ranked")
        sinks = client.run(example("attention_sinks", model), progress=False)
        scores = sinks.attention_sink.baseline  # [layers, heads]
        ranked = sorted(((scores[l][h], l, h) for l in range(n_layers) for h in range(n_heads)), reverse=True)
        print("highest:", ", ".join(f"L{l}.H{h} {s:.3f}" for s, l, h in ranked[:5]))
        print("lowest: ", ", ".join(f"L{l}.H{h} {s:.3f}" for s, l, h in ranked[-3:]))
        plots.attention_sink_heatmap(sinks, save=out / "attention_sinks.png")
        plots.attention_sink_ranking(sinks, top=16, save=out / "attention_sink_ranking.png")

        section("3. prune the 3 top- and the 3 bottom-ranked heads")
        base = lesion.Experiment(
            model=model,
            dataset=lesion.Dataset.named("tinystories-sample"),
            eval=lesion.Eval(seq_len=128, add_bos=True),
            tags=["gpt2-study", "head-pruning"],
            measurements=[lesion.Perplexity(), lesion.ActivationStats(["blocks.*.resid_post"], top_k=1)],
        )
        pruned = {}
        for label, heads in (("top3", ranked[:3]), ("bottom3", ranked[-3:])):
            spec = lesion.sweep(base, [(label, [lesion.HeadAblation(layer=l, heads=[h]) for _, l, h in heads])])[0]
            pruned[label] = r = client.run(spec, progress=False)
            stats = r.activation_stats
            before = stats[stats["pass_name"] == "baseline"]["top1"].tolist()
            after = stats[stats["pass_name"] == "intervened"]["top1"].tolist()
            print(
                f"{label:8s} {', '.join(f'L{l}.H{h}' for _, l, h in heads)}: perplexity "
                f"{r.perplexity.baseline:.4f} -> {r.perplexity.intervened:.4f} ({r.perplexity.delta_pct:+.2f}%); "
                f"top-1 per layer {' '.join(f'{a:.2f}->{b:.2f}' for a, b in zip(before, after, strict=True))}"
            )
        plots.compare(pruned["top3"], pruned["bottom3"], save=out / "pruning_top1.png")

        section(f"4. every single head ablated: one sweep of {n_layers * n_heads} variants sharing one baseline")
        single = lesion.Experiment(
            model=model,
            name="single-head",
            dataset=lesion.Dataset.named("tinystories-sample"),
            eval=lesion.Eval(seq_len=128, add_bos=True),
            tags=["gpt2-study", "single-head"],
            measurements=[lesion.Perplexity()],
            sweep=lesion.Sweep([lesion.HeadSweep()]),
        )
        handle = client.submit(single)
        heads = handle.result(progress=False)  # the parent: the baseline and a row per variant
        table = heads.sweep
        names = table["name"].tolist()
        print(
            f"sweep {handle.id}: {len(names)} variants ({names[0]}, {names[1]}, ..., {names[-1]}), each a child "
            f"experiment {handle.id}.<index>; {heads.run['forward_passes']} forward passes in "
            f"{heads.run['seconds']:.2f} s; baseline perplexity {heads.perplexity.baseline:.4f}"
        )
        df = client.experiments(
            where='tag = "single-head" AND parent != ""', order_by="metric.perplexity.delta_pct desc", limit=5
        )
        print("largest perplexity increases (a query over the database):")
        print(df[["name", "metric.perplexity.value", "metric.perplexity.delta_pct"]].to_string(index=False))
        lowest = table.nsmallest(3, "perplexity_delta_pct")
        print(
            "largest decreases (the sweep's table):",
            ", ".join(f"{r.name} {r.perplexity_delta_pct:+.2f}%" for r in lowest.itertuples()),
        )
        plots.perplexity_change_per_head(heads, save=out / "perplexity_change_per_head.png")

        section("5. super weights, massive activations, gamma and attention outliers")
        paper = client.run(example("super_weight_scan", model), progress=False)
        print(
            f"with the papers' thresholds: {len(paper.super_weights)} super weights, "
            f"{int(paper.massive_activation_counts['count'].sum()) if len(paper.massive_activation_counts) else 0} "
            f"massive activations, {len(paper.norm_outliers)} gamma outliers"
        )
        scan = client.run(example("super_weight_scan_small_models", model), progress=False)
        print("with thresholds for a small model:")
        sw = scan.super_weights
        if len(sw):
            print(sw[sw["pass_name"] == "baseline"].to_string(index=False, float_format="%.4g"))
        capture = client.run(
            {
                **example("layer_magnitudes", model),
                "name": "capture-blocks.0",
                "measurements": [{"capture": {"sites": ["blocks.0.resid_post"], "max_windows": 1}}],
            },
            progress=False,
        )
        plots.activation_surface(
            capture.captures["baseline"]["blocks.0.resid_post"],
            title="|blocks.0.resid_post|, window 0",
            save=out / "activation_surface_layer0.png",
        )
        zeroed = client.run(example("zero_super_weight", model), progress=False)
        print(
            f"zero the layer-0 candidate mlp.down[30, 66]: perplexity {zeroed.perplexity.baseline:.4f} -> "
            f"{zeroed.perplexity.intervened:.4f} ({zeroed.perplexity.delta_pct:+.2f}%), "
            f"KL {zeroed.kl_divergence:.5f} nats/token"
        )
        print(zeroed.token_probabilities.to_string(index=False, float_format="%.5f"))

        total = client.experiments(limit=0).attrs["total"]
        print(f"\n{total} experiments recorded in {db} ({len(table)} of them the sweep's variants); plots in {out}/")


if __name__ == "__main__":
    main()
