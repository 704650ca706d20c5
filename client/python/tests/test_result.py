"""Result parsing from a hand-built ExperimentResult: numbers in, numbers out."""

import json

import numpy as np
import pytest

import lesion
from lesion._proto import result_pb2
from lesion.result import decode_tensor


def test_metrics_and_perplexity(result):
    m = result.metrics
    assert list(m.columns) == ["name", "baseline", "value", "delta", "delta_pct"]
    row = m.set_index("name").loc["perplexity"]
    assert (row.baseline, row.value, row.delta, row.delta_pct) == (4.0, 6.0, 2.0, 50.0)
    assert result.metric("kl_divergence")["delta_pct"] is None  # undefined against a baseline of 0
    assert np.isnan(m.set_index("name").loc["kl_divergence", "delta_pct"])
    with pytest.raises(KeyError, match="have: perplexity"):
        result.metric("nope")
    p = result.perplexity
    b, i = p
    assert (b, i) == (4.0, 6.0) and p.delta_pct == 50.0 and p.n_tokens == 561 and p.n_windows == 5
    assert "BOS" in p.protocol
    assert result.kl_divergence == pytest.approx(0.0063)
    assert result.run["architecture"] == "LlamaForCausalLM" and result.run["forward_passes"] == 10
    assert "ppl 4 -> 6" in repr(result) and "KL 0.0063" in repr(result)


def test_activation_stats(result):
    df = result.activation_stats
    assert len(df) == 12  # 2 passes x (5 layers + embed)
    base = result.layer_stats("blocks.*.resid_post", "baseline")
    assert list(base["layer"]) == [0, 1, 2, 3, 4]
    assert list(base["top1"]) == [100.0, 200.0, 300.0, 400.0, 500.0]
    assert list(base["top3"]) == [10.0, 20.0, 30.0, 40.0, 50.0]
    assert base["max1"].iloc[2] == 360.0 and base["max1_dim"].iloc[0] == 30 and base["max1_token"].iloc[0] == 0
    assert (base["median"] == 0.5).all() and (base["n_windows"] == 5).all()
    inter = result.layer_stats("blocks.*.resid_post", "intervened")
    assert list(inter["top1"]) == [150.0, 300.0, 450.0, 600.0, 750.0]
    emb = df[(df["site"] == "embed") & (df["pass_name"] == "baseline")].iloc[0]
    assert emb["median"] == 0.4 and emb["layer"] is not None and str(emb["layer"]) == "<NA>"
    all_sites = result.layer_stats("*", "baseline")
    assert all_sites["site"].iloc[0] == "embed"


def test_attention_sink(result):
    s = result.attention_sink
    assert s.layers == [0, 1, 2, 3, 4]
    assert s.baseline.shape == (5, 8) and s.intervened.shape == (5, 8)
    assert s.baseline[2, 3] == pytest.approx((2 * 8 + 3) / 40.0)
    assert s.intervened[2, 3] == pytest.approx((2 * 8 + 3) / 40.0 - 0.1)
    f = result.attention_sink_frame()
    assert len(f) == 40 and f["delta"].iloc[10] == pytest.approx(-0.1)


def test_captures_decode(result):
    caps = result.captures
    assert set(caps) == {"baseline", "intervened"}
    a = caps["baseline"]["blocks.0.resid_post"]
    assert a.dtype == np.float32 and a.shape == (1, 4, 64)
    expected = np.arange(256, dtype=np.float32).reshape(1, 4, 64) - 100.0
    expected[0, 0, 30] = 2000.0
    np.testing.assert_array_equal(a, expected)
    np.testing.assert_array_equal(caps["intervened"]["blocks.0.resid_post"][0, 1], expected[0, 1] * 1.5)
    assert result.capture_positions("blocks.0.resid_post") == [0, 1, 2, 3]
    a[0, 0, 0] = 1.0  # writable copy


def test_decode_other_dtypes_and_errors():
    t = result_pb2.Tensor(name="x", dtype="bfloat16", shape=[2])
    vals = np.array([1.5, -2.0], dtype=np.float32)
    t.data = (vals.view(np.uint32) >> 16).astype("<u2").tobytes()
    np.testing.assert_array_equal(decode_tensor(t), vals)
    t = result_pb2.Tensor(name="x", dtype="float16", shape=[3], data=np.array([1, 2, 3], "<f2").tobytes())
    np.testing.assert_array_equal(decode_tensor(t), [1, 2, 3])
    with pytest.raises(ValueError, match="3 values for shape \\[2, 2\\]"):
        decode_tensor(result_pb2.Tensor(name="x", dtype="float16", shape=[2, 2], data=t.data))
    with pytest.raises(ValueError, match="unsupported dtype"):
        decode_tensor(result_pb2.Tensor(name="x", dtype="complex64", shape=[1], data=b"\0" * 8))


def test_torch_captures(result):
    torch = pytest.importorskip("torch")
    t = result.torch_captures()["baseline"]["blocks.0.resid_post"]
    assert isinstance(t, torch.Tensor) and tuple(t.shape) == (1, 4, 64) and float(t[0, 0, 30]) == 2000.0


def test_detector_tables(result):
    ma = result.massive_activations
    assert list(ma.columns) == ["pass_name", "site", "layer", "sequence", "token", "dim", "value", "ratio", "count"]
    assert ma.iloc[0].tolist() == ["baseline", "blocks.1.resid_post", 1, 0, 0, 30, -1500.0, 3000.0, 2]
    assert result.massive_activation_counts["count"].tolist() == [2, 2]
    sw = result.super_weights
    assert sw.iloc[0][["layer", "row", "col"]].tolist() == [1, 30, 7]
    assert sw.set_index("pass_name").loc["intervened", "weight"] == pytest.approx(-0.375)
    no = result.norm_outliers
    assert no.iloc[0][["norm", "layer", "channel", "z"]].tolist() == ["mlp", 2, 30, 12.0]
    ao = result.attention_outliers
    assert ao.iloc[1].tolist() == ["intervened", 3, 2, 0, 0.9]
    tp = result.token_probabilities
    assert tp["mean_probability"].tolist() == pytest.approx([0.05, 0.075])


def test_json_round_trip(result, result_proto):
    d = json.loads(result.to_json())
    assert d["baseline"]["perplexity"]["n_tokens"] == "561"  # proto3 JSON: int64 as strings
    assert d["metrics"][0]["name"] == "perplexity"
    back = lesion.Result.from_json(result.to_json())
    assert back.raw == result_proto


def test_empty_result():
    r = lesion.Result(result_pb2.ExperimentResult())
    assert r.perplexity is None and r.metrics.empty and r.activation_stats.empty
    assert r.attention_sink.baseline is None and r.captures == {"baseline": {}, "intervened": {}}
    assert r.super_weights.empty and r.attention_sink_frame().empty


def test_sweep_parent_from_local_json():
    """The parent of `lesion run --local --spec sweep.json --json` ({"parent": ..., "variants": [...]}):
    no experiment ids, no intervened pass, no metrics."""
    parent = {
        "baseline": {
            "perplexity": {
                "ppl": 3.98,
                "mean_nll": 1.38,
                "n_tokens": "1020",
                "n_windows": "4",
                "protocol": "non-overlapping windows of 256, BOS per window",
            }
        },
        "intervened": {},
        "kl_divergence": 0.0,
        "metrics": [],
        "run": {"model": "models/stories260K", "forward_passes": "12"},
        "sweep": {
            "variants": [
                {
                    "name": "L0.H0",
                    "experiment_id": "",
                    "perplexity": 4.02,
                    "perplexity_delta_pct": 0.89,
                    "kl_divergence": 0.0129,
                },
                {
                    "name": "L0.H1",
                    "experiment_id": "",
                    "perplexity": 4.01,
                    "perplexity_delta_pct": 0.66,
                    "kl_divergence": 0.0151,
                },
            ],
            "variants_per_pass": 32,
        },
    }
    r = lesion.Result.from_json(json.dumps(parent))
    assert r.is_sweep and repr(r).startswith("<lesion.Result sweep of 2 variants, baseline ppl 3.98")
    df = r.sweep
    assert df["name"].tolist() == ["L0.H0", "L0.H1"] and df["experiment_id"].tolist() == ["", ""]
    assert df["perplexity_delta_pct"].tolist() == [0.89, 0.66] and df.attrs["variants_per_pass"] == 32
    assert r.perplexity.baseline == 3.98 and np.isnan(r.perplexity.intervened) and r.metrics.empty
    assert r.run["forward_passes"] == 12
    assert not lesion.Result(result_pb2.ExperimentResult()).is_sweep


def test_unmeasured_numbers_are_none_or_nan_never_zero(result_proto):
    """A KL divergence, perplexity or sweep number that was not measured reads as None (scalars) or
    NaN (frames), not as the 0 the proto holds."""
    no_kl = result_pb2.ExperimentResult()
    no_kl.CopyFrom(result_proto)
    no_kl.kl_divergence = 0.0
    del no_kl.metrics[3]  # the kl_divergence metric: the server adds it only with the measure
    r = lesion.Result(no_kl)
    assert r.kl_divergence is None and "KL" not in repr(r) and "KL" not in r._repr_html_()
    assert lesion.Result(result_proto).kl_divergence == pytest.approx(0.0063)
    # the spec, where known, decides: KL asked for and exactly 0 is a 0
    zero = result_pb2.ExperimentResult()
    zero.CopyFrom(result_proto)
    zero.kl_divergence = 0.0
    spec = lesion.Experiment(measurements=[lesion.Perplexity(), lesion.KLDivergence()])
    assert lesion.Result(zero, spec=spec).kl_divergence == 0.0
    assert lesion.Result(no_kl, spec=spec.to_proto()).measured("kl_divergence") is True
    assert lesion.Result(no_kl, spec={"measurements": [{"perplexity": {}}]}).kl_divergence is None
    # no intervened perplexity: NaN, not 0 (and no "-100%")
    half = result_pb2.ExperimentResult()
    half.CopyFrom(result_proto)
    half.intervened.ClearField("perplexity")
    p = lesion.Result(half).perplexity
    assert p.baseline == 4.0 and np.isnan(p.intervened) and np.isnan(p.delta_pct)
    # a run without interventions: its intervened numbers are its baseline's
    if "observational" in result_pb2.ExperimentResult.DESCRIPTOR.fields_by_name:
        obs = result_pb2.ExperimentResult()
        obs.CopyFrom(result_proto)
        obs.ClearField("intervened")
        obs.observational = True
        r = lesion.Result(obs)
        assert r.perplexity.intervened == 4.0 and r.perplexity.delta_pct == 0.0 and "no interventions" in repr(r)


def sweep_result(perplexities, kls, baseline_ppl=True):
    r = result_pb2.ExperimentResult()
    if baseline_ppl:
        r.baseline.perplexity.ppl = 4.0
    for i, (p, k) in enumerate(zip(perplexities, kls, strict=True)):
        r.sweep.variants.add(
            name=f"L0.H{i}", perplexity=p, perplexity_delta_pct=100 * (p - 4) / 4 if p else 0.0, kl_divergence=k
        )
    return r


def test_sweep_table_unmeasured_columns_are_nan():
    both = lesion.Result(sweep_result([4.2, 4.0], [0.01, 0.0])).sweep
    assert both["kl_divergence"].tolist() == [0.01, 0.0] and both["perplexity"].tolist() == [4.2, 4.0]
    no_kl = lesion.Result(sweep_result([4.2, 4.4], [0.0, 0.0])).sweep
    assert no_kl["kl_divergence"].isna().all() and no_kl["perplexity_delta_pct"].tolist() == pytest.approx([5, 10])
    no_ppl = lesion.Result(sweep_result([0.0, 0.0], [0.01, 0.02], baseline_ppl=False)).sweep
    assert no_ppl["perplexity"].isna().all() and no_ppl["perplexity_delta_pct"].isna().all()
    assert no_ppl["kl_divergence"].tolist() == [0.01, 0.02]
    # with the spec: what it asked for, zeros included
    spec = lesion.Experiment(measurements=[lesion.KLDivergence()])
    known = lesion.Result(sweep_result([0.0, 0.0], [0.0, 0.0], baseline_ppl=False), spec=spec).sweep
    assert known["kl_divergence"].tolist() == [0.0, 0.0] and known["perplexity"].isna().all()
    assert lesion.Result(sweep_result([4.2], [0.0])).kl_divergence is None


def test_repr_html(result, result_proto):
    page = result._repr_html_()
    assert page.startswith("<table>") and "perplexity, intervened" in page and "+50.000%" in page
    assert "0.0063 nats/token" in page
    odd = result_pb2.ExperimentResult()
    odd.CopyFrom(result_proto)
    odd.run.model = "<script>alert(1)</script>"
    odd.warnings.append("metric x: intervened value is nan & <inf>")
    page = lesion.Result(odd)._repr_html_()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "nan &amp; &lt;inf&gt;" in page
    sweep = lesion.Result(sweep_result([4.2], [0.1]))._repr_html_()
    assert "1 variants" in sweep and "intervened" not in sweep


def test_no_frame_has_a_python_keyword_for_a_column(result):
    """Columns read as attributes (df.pass_name): none is a keyword such as `pass`."""
    import keyword

    frames = {
        "metrics": result.metrics,
        "activation_stats": result.activation_stats,
        "layer_stats": result.layer_stats(),
        "attention_sink_frame": result.attention_sink_frame(),
        "token_probabilities": result.token_probabilities,
        "massive_activations": result.massive_activations,
        "massive_activation_counts": result.massive_activation_counts,
        "super_weights": result.super_weights,
        "norm_outliers": result.norm_outliers,
        "attention_outliers": result.attention_outliers,
        "sweep": lesion.Result(sweep_result([4.2], [0.1])).sweep,
        "empty activation_stats": lesion.Result(result_pb2.ExperimentResult()).activation_stats,
    }
    for name, df in frames.items():
        bad = [c for c in df.columns if keyword.iskeyword(c) or keyword.issoftkeyword(c)]
        assert not bad, f"{name}: {bad}"
    assert set(result.super_weights["pass_name"]) == {"baseline", "intervened"}
    assert result.activation_stats.pass_name.iloc[0] == "baseline"


# ------------------------------------------------------------------------------------ token outputs


def test_token_outputs_frame(result):
    df = result.token_outputs()
    assert list(df.columns) == [
        "window",
        "position",
        "target",
        "nll",
        "logprob",
        "prob",
        "rank",
        "top_ids",
        "top_probs",
    ]
    assert df.index.name == "predicted" and list(df.index) == [0, 1, 2, 3]
    assert df["position"].tolist() == [1, 2, 3, 4] and df["target"].tolist() == [100, 101, 102, 103]
    assert df["nll"].tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert df["logprob"].tolist() == pytest.approx([-0.1, -0.2, -0.3, -0.4])
    assert df["prob"].tolist() == pytest.approx(np.exp([-0.1, -0.2, -0.3, -0.4]).tolist())
    assert df["rank"].tolist() == [0, 1, 2, 3] and df["rank"].dtype == np.int64
    assert df["top_ids"].tolist() == [[0, 1, 2], [10, 11, 12], [20, 21, 22], [30, 31, 32]]
    assert df.loc[2, "top_probs"] == pytest.approx([0.5, 0.25, 0.5 / 3])
    assert df.attrs == {"n_predicted": 10, "offset": 0, "top_k": 3}
    inter = result.token_outputs("intervened")
    assert inter["nll"].tolist() == pytest.approx([0.15, 0.3, 0.45, 0.6])
    with pytest.raises(ValueError, match="valid: baseline, intervened"):
        result.token_outputs("after")


def test_token_outputs_page_and_tokenizer(result_proto):
    from conftest import fill_token_outputs

    page = result_pb2.ExperimentResult()
    fill_token_outputs(page.baseline.token_outputs, 1.0, offset=6, rows=2, top_k=2, n_predicted=8)
    r = lesion.Result(page)
    df = r.token_outputs()
    assert list(df.index) == [6, 7] and df["position"].tolist() == [7, 8] and df.attrs["offset"] == 6
    assert df["top_ids"].tolist() == [[0, 1], [10, 11]]

    class Decoder:  # a Hugging Face tokenizer or a sentencepiece processor: decode(list of ids)
        calls = 0

        def decode(self, ids):
            Decoder.calls += 1
            return f"<{ids[0]}>"

    named = r.token_outputs(tokenizer=Decoder())
    assert list(named.columns[:4]) == ["window", "position", "target", "target_text"]
    assert named["target_text"].tolist() == ["<100>", "<101>"]
    assert named["top_tokens"].tolist() == [["<0>", "<1>"], ["<10>", "<11>"]]
    assert Decoder.calls == 6  # each id decoded once
    assert r.token_outputs(tokenizer=lambda i: f"t{i}")["target_text"].tolist() == ["t100", "t101"]
    with pytest.raises(TypeError, match="tokenizer"):
        r.token_outputs(tokenizer=42)


def test_token_outputs_of_a_pass_without_them():
    empty = lesion.Result(result_pb2.ExperimentResult()).token_outputs()
    assert empty.empty and "top_ids" in empty.columns and empty.attrs["n_predicted"] == 0


# ------------------------------------------------------------------------------ observational results


def test_observational_result_accessors():
    from conftest import make_observational_result

    r = lesion.Result(make_observational_result())
    assert r.is_observational and r.observational
    assert not lesion.Result(make_observational_result()).is_sweep
    assert lesion.Result(result_pb2.ExperimentResult()).is_observational is False
    # metrics: one value per metric, no "intervened" column, no KL of a pass against itself
    m = r.metrics
    assert list(m.columns) == ["name", "value"]
    assert m.set_index("name")["value"].to_dict() == pytest.approx(
        {"perplexity": 4.0, "mean_nll": np.log(4.0), "top1:blocks.0.resid_post": 100.0}
    )
    assert r.metric("perplexity") == {
        "name": "perplexity",
        "baseline": 4.0,
        "value": 4.0,
        "delta": 0.0,
        "delta_pct": 0.0,
    }
    p = r.perplexity
    assert (p.baseline, p.intervened, p.delta) == (4.0, 4.0, 0.0)
    # one pass: no intervened rows in any per-pass frame
    for frame in (
        r.activation_stats,
        r.token_probabilities,
        r.massive_activations,
        r.massive_activation_counts,
        r.super_weights,
        r.norm_outliers,
        r.attention_outliers,
    ):
        assert len(frame) and set(frame["pass_name"]) == {"baseline"}
    assert r.layer_stats(pass_="intervened").empty and len(r.layer_stats()) == 5
    assert r.token_outputs("intervened").empty and len(r.token_outputs()) == 4
    sink = r.attention_sink
    assert sink.intervened is None and sink.baseline.shape == (5, 8)
    f = r.attention_sink_frame()
    assert list(f.columns) == ["layer", "head", "baseline"] and len(f) == 40
    assert r.captures["intervened"] == {} and r.captures["baseline"]["blocks.0.resid_post"].shape == (1, 4, 64)
    # shown once, never "x -> x"
    text = repr(r)
    assert text == "<lesion.Result ppl 4 (no interventions), 4 metrics, model 'stories260K'>"
    page = r._repr_html_()
    assert "perplexity, intervened" not in page and "perplexity, baseline" not in page and "KL" not in page
    assert ">perplexity<" in page and "none: one pass" in page
    assert r.kl_divergence == 0.0  # measured, and exactly 0


def test_observational_result_without_perplexity():
    from conftest import make_observational_result

    raw = make_observational_result()
    raw.baseline.ClearField("perplexity")
    del raw.metrics[:2]
    r = lesion.Result(raw)
    assert r.perplexity is None and "no interventions" in repr(r) and "->" not in repr(r)
    assert lesion.Result(raw).metrics.columns.tolist() == ["name", "value"]
    empty = lesion.Result(result_pb2.ExperimentResult(observational=True))
    assert empty.metrics.empty and list(empty.metrics.columns) == ["name", "value"]
    assert list(empty.attention_sink_frame().columns) == ["layer", "head", "baseline"]
