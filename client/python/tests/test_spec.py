"""Builders -> the exact proto3 JSON of docs/spec.md, validation, sweeps."""

import json

import numpy as np
import pytest
from google.protobuf import json_format

import lesion
from lesion import (
    ActivationEdit,
    ActivationStats,
    AttentionBias,
    AttentionOutliers,
    AttentionSink,
    Capture,
    Dataset,
    Eval,
    Experiment,
    HeadAblation,
    KLDivergence,
    MassiveActivations,
    NormChannelReset,
    NormOutliers,
    Perplexity,
    SuperWeights,
    TokenProbabilities,
    WeightEdit,
)
from lesion._proto import experiment_pb2

KEY = [0.5] * 32
VAL = [-0.25] * 32


def spec_md_experiment():
    """The example of docs/spec.md, built with the builders."""
    return Experiment(
        name="prune-bottom3-sink-heads",
        tags=["gpt2-study"],
        dataset=Dataset.named("tinystories-sample"),
        eval=Eval(seq_len=128, add_bos=True, batch_size=8, stride=0, max_windows=0),
        interventions=[
            HeadAblation(layer=1, heads=[3], mode="zero"),
            WeightEdit.scale(layer=0, module="mlp.down", row=3, col=7, factor=0.0),
            NormChannelReset(layer=2, norm="mlp", channels=[30], mode="gamma_mean"),
            AttentionBias(layer=0, key=np.array(KEY, dtype=np.float32).reshape(4, 8), value=VAL),
            ActivationEdit(site="blocks.1.resid_post", positions=[0], dims=[30], op="mean"),
        ],
        measurements=[
            Perplexity(),
            KLDivergence(),
            TokenProbabilities(tokens=["the"], token_ids=[426, 432]),
            ActivationStats(sites=["embed", "blocks.*.resid_post"], top_k=3),
            AttentionSink(layers=[]),
            Capture(sites=["blocks.0.resid_post"], positions=[0, 1], max_windows=1),
            MassiveActivations(sites=["blocks.*.resid_post"], min_magnitude=100, min_ratio=1000),
            SuperWeights(min_ratio=100),
            NormOutliers(min_z=8),
            AttentionOutliers(min_mass=0.3),
        ],
    )


SPEC_MD = {
    "name": "prune-bottom3-sink-heads",
    "tags": ["gpt2-study"],
    "dataset": {"named": "tinystories-sample"},
    "eval": {"seq_len": 128, "stride": 0, "max_windows": 0, "batch_size": 8, "add_bos": True},
    "interventions": [
        {"head_ablation": {"layer": 1, "heads": [3], "mode": "ZERO"}},
        {"weight_edit": {"layer": 0, "module": "mlp.down", "row": 3, "col": 7, "op": "SCALE", "value": 0.0}},
        {"norm_channel_reset": {"layer": 2, "norm": "mlp", "channels": [30], "mode": "GAMMA_MEAN"}},
        {"attention_bias": {"layer": 0, "key": KEY, "value": VAL}},
        {"activation_edit": {"site": "blocks.1.resid_post", "positions": [0], "dims": [30], "op": "MEAN"}},
    ],
    "measurements": [
        {"perplexity": {}},
        {"kl_divergence": {}},
        {"token_probabilities": {"token_ids": [426, 432], "tokens": ["the"]}},
        {"activation_stats": {"sites": ["embed", "blocks.*.resid_post"], "top_k": 3}},
        {"attention_sink": {}},
        {"capture": {"sites": ["blocks.0.resid_post"], "positions": [0, 1], "max_windows": 1}},
        {"massive_activations": {"sites": ["blocks.*.resid_post"], "min_magnitude": 100.0, "min_ratio": 1000.0}},
        {"super_weights": {"min_ratio": 100.0}},
        {"norm_outliers": {"min_z": 8.0}},
        {"attention_outliers": {"min_mass": 0.3}},
    ],
}


def test_spec_md_example_exact_json():
    e = spec_md_experiment()
    assert e.to_dict() == SPEC_MD
    assert json.loads(e.to_json()) == SPEC_MD


def test_to_proto_round_trips_through_proto3_json():
    e = spec_md_experiment()
    p = e.to_proto()
    assert isinstance(p, experiment_pb2.ExperimentSpec)
    assert p.interventions[0].head_ablation.heads == [3]
    assert p.interventions[1].weight_edit.op == experiment_pb2.WeightEdit.SCALE
    assert p.interventions[2].norm_channel_reset.mode == experiment_pb2.NormChannelReset.GAMMA_MEAN
    assert p.interventions[4].activation_edit.op == experiment_pb2.ActivationEdit.MEAN
    assert list(p.interventions[3].attention_bias.key) == KEY
    assert p.measurements[6].massive_activations.min_ratio == 1000
    # the proto parsed back gives the same spec
    back = Experiment.from_proto(p)
    assert back.to_proto() == p
    assert Experiment.from_json(e.to_json()).to_dict() == SPEC_MD


@pytest.mark.parametrize(
    "builder, expected",
    [
        (HeadAblation(layer=5, heads=[1]), {"head_ablation": {"layer": 5, "heads": [1], "mode": "ZERO"}}),
        (
            HeadAblation(layer=5, heads=[1, 2], mode="MEAN"),
            {"head_ablation": {"layer": 5, "heads": [1, 2], "mode": "MEAN"}},
        ),
        (
            HeadAblation(layer=0, heads=3, mode="scale", factor=0.5),
            {"head_ablation": {"layer": 0, "heads": [3], "mode": "SCALE", "factor": 0.5}},
        ),
        (
            WeightEdit.zero(layer=2, module="mlp.down", row=3968, col=7003),
            {"weight_edit": {"layer": 2, "module": "mlp.down", "row": 3968, "col": 7003, "op": "ZERO"}},
        ),
        (
            WeightEdit.scale(1, "attn.q", 0, 1, factor=2.0),
            {"weight_edit": {"layer": 1, "module": "attn.q", "row": 0, "col": 1, "op": "SCALE", "value": 2.0}},
        ),
        (
            WeightEdit.set(1, "mlp.gate", 4, 5, value=-1.5),
            {"weight_edit": {"layer": 1, "module": "mlp.gate", "row": 4, "col": 5, "op": "SET", "value": -1.5}},
        ),
        (
            NormChannelReset(layer=0, norm="attn", channels=[1, 2]),
            {"norm_channel_reset": {"layer": 0, "norm": "attn", "channels": [1, 2], "mode": "ONE"}},
        ),
        (
            NormChannelReset(layer=None, norm="final", channels=[7], mode="value", value=0.5),
            {"norm_channel_reset": {"layer": 0, "norm": "final", "channels": [7], "mode": "VALUE", "value": 0.5}},
        ),
        (
            AttentionBias(layer=3, key=np.zeros((2, 2)), value=[1, 2, 3, 4]),
            {"attention_bias": {"layer": 3, "key": [0.0] * 4, "value": [1.0, 2.0, 3.0, 4.0]}},
        ),
        (ActivationEdit(site="blocks.*.mlp_act"), {"activation_edit": {"site": "blocks.*.mlp_act", "op": "ZERO"}}),
        (
            ActivationEdit(site="blocks.2.resid_post", positions=[0], op="set", value=3.0),
            {"activation_edit": {"site": "blocks.2.resid_post", "positions": [0], "op": "SET", "value": 3.0}},
        ),
        (
            ActivationEdit(site="embed", dims=np.array([1, 5]), op="scale", value=0.0),
            {"activation_edit": {"site": "embed", "dims": [1, 5], "op": "SCALE", "value": 0.0}},
        ),
        (Perplexity(), {"perplexity": {}}),
        (KLDivergence(), {"kl_divergence": {}}),
        (TokenProbabilities(tokens=["the", "."]), {"token_probabilities": {"tokens": ["the", "."]}}),
        (TokenProbabilities(token_ids=[1]), {"token_probabilities": {"token_ids": [1]}}),
        (
            ActivationStats(sites="blocks.*.resid_post"),
            {"activation_stats": {"sites": ["blocks.*.resid_post"], "top_k": 3}},
        ),
        (
            ActivationStats(sites=["blocks.0.attn_z"], top_k=5),
            {"activation_stats": {"sites": ["blocks.0.attn_z"], "top_k": 5}},
        ),
        (AttentionSink(), {"attention_sink": {}}),
        (AttentionSink(layers=[0, 2]), {"attention_sink": {"layers": [0, 2]}}),
        (Capture(sites=["blocks.0.attn_pattern"]), {"capture": {"sites": ["blocks.0.attn_pattern"], "max_windows": 1}}),
        (
            Capture(sites="logits", positions=[0, 1], max_windows=2),
            {"capture": {"sites": ["logits"], "positions": [0, 1], "max_windows": 2}},
        ),
        (MassiveActivations(), {"massive_activations": {}}),
        (MassiveActivations(max_reports=5), {"massive_activations": {"max_reports": 5}}),
        (SuperWeights(), {"super_weights": {}}),
        (SuperWeights(min_ratio=50, min_magnitude=1.5), {"super_weights": {"min_ratio": 50.0, "min_magnitude": 1.5}}),
        (NormOutliers(), {"norm_outliers": {}}),
        (NormOutliers(min_z=6, max_reports=3), {"norm_outliers": {"min_z": 6.0, "max_reports": 3}}),
        (AttentionOutliers(), {"attention_outliers": {}}),
        (
            AttentionOutliers(layers=[1], min_mass=0.5, max_reports=10),
            {"attention_outliers": {"layers": [1], "min_mass": 0.5, "max_reports": 10}},
        ),
    ],
)
def test_builder_json(builder, expected):
    assert builder.to_dict() == expected
    # and the proto accepts it
    kind = "interventions" if type(builder) in lesion.spec.INTERVENTIONS else "measurements"
    json_format.ParseDict({kind: [expected]}, experiment_pb2.ExperimentSpec())


def test_datasets():
    assert Dataset.text("Once upon a time").to_dict() == {"text": "Once upon a time"}
    assert Dataset.token_ids(np.array([1, 2, 3])).to_dict() == {"token_ids": {"ids": [1, 2, 3]}}
    assert Dataset.named("wikitext-2-raw-test").to_dict() == {"named": "wikitext-2-raw-test"}
    p = Experiment(model="m", dataset=Dataset.token_ids([5, 6])).to_proto()
    assert list(p.dataset.token_ids.ids) == [5, 6]
    assert Experiment(model="gpt2", dataset=Dataset.text("x")).to_dict() == {
        "model": "gpt2",
        "dataset": {"text": "x"},
        "interventions": [],
        "measurements": [],
    }


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: HeadAblation(layer=1, heads=[0], mode="prune"), "valid: zero, mean, scale"),
        (lambda: HeadAblation(layer=1, heads=[0], mode="scale"), "needs factor"),
        (lambda: HeadAblation(layer=1, heads=[]), "must not be empty"),
        (lambda: HeadAblation(layer=-1, heads=[0]), ">= 0"),
        (lambda: HeadAblation(layer=1.5, heads=[0]), "integer"),
        (lambda: HeadAblation(layer=1, heads=[0], factor=2.0), "only used with mode 'scale'"),
        (
            lambda: WeightEdit.zero(0, "mlp.c_proj", 0, 0),
            "valid: attn.q, attn.k, attn.v, attn.o, mlp.gate, mlp.up, mlp.down",
        ),
        (lambda: WeightEdit(0, "mlp.down", 0, 0, op="add"), "valid: zero, scale, set"),
        (lambda: WeightEdit.scale(0, "mlp.down", 0, 0, factor=float("nan")), "finite"),
        (lambda: NormChannelReset(0, "ln_1", [0]), "valid: attn, mlp, attn_post, mlp_post, q, k, final"),
        (lambda: NormChannelReset(0, "mlp", [0], mode="zero"), "valid: one, gamma_mean, value"),
        (lambda: NormChannelReset(0, "mlp", [0], mode="value"), "needs value"),
        (lambda: AttentionBias(0, key=[1, 2], value=[1]), "key has 2 numbers but value has 1"),
        (lambda: AttentionBias(0, key=[], value=[]), "must not be empty"),
        (lambda: ActivationEdit(site="blocks.1.resid"), "unknown hook site"),
        (lambda: ActivationEdit(site="embed", op="clip"), "valid: zero, set, scale, mean"),
        (lambda: ActivationEdit(site="embed", op="set"), "needs value"),
        (lambda: TokenProbabilities(), "give tokens"),
        (lambda: ActivationStats(sites=["resid_post"]), "unknown hook site"),
        (lambda: ActivationStats(sites=[]), "must not be empty"),
        (lambda: Capture(sites=[]), "must not be empty"),
        (lambda: Eval(seq_len=-1), ">= 0"),
        (lambda: Experiment(model="m", interventions=[Perplexity()]), "expected one of activation_edit"),
        (lambda: Experiment(model="m", measurements=[{"perplexit": {}}]), "expected one of"),
        (lambda: Experiment(model="m", dataset="tinystories-sample"), "Dataset.text"),
    ],
)
def test_validation(make, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        make()


def test_spec_to_proto_accepts_every_form():
    from lesion.spec import spec_to_proto

    e = spec_md_experiment()
    p = e.to_proto()
    assert spec_to_proto(e) == p
    assert spec_to_proto(p) is p
    assert spec_to_proto(SPEC_MD) == p
    assert spec_to_proto(json.dumps(SPEC_MD)) == p
    with pytest.raises(ValueError, match="ExperimentSpec"):
        spec_to_proto({"bogus": 1})


def test_sweep_helpers():
    base = Experiment(
        model="stories260K",
        name="heads",
        dataset=Dataset.named("tinystories-sample"),
        interventions=[NormChannelReset(0, "mlp", [1])],
        measurements=[Perplexity()],
    )
    exps = lesion.sweep_heads(base, n_layers=2, n_heads=3)
    assert [e.name for e in exps] == [
        "heads/L0.H0",
        "heads/L0.H1",
        "heads/L0.H2",
        "heads/L1.H0",
        "heads/L1.H1",
        "heads/L1.H2",
    ]
    assert exps[4].to_dict()["interventions"] == [
        {"norm_channel_reset": {"layer": 0, "norm": "mlp", "channels": [1], "mode": "ONE"}},
        {"head_ablation": {"layer": 1, "heads": [1], "mode": "ZERO"}},
    ]
    assert len(lesion.sweep_heads(base, 2, 3, mode="scale", factor=0.5, layers=[1])) == 3
    variants = lesion.sweep(
        base,
        [
            HeadAblation(0, [1]),
            [WeightEdit.zero(0, "mlp.down", 1, 2), {"head_ablation": {"layer": 1, "heads": [0], "mode": "ZERO"}}],
            {"eval": Eval(seq_len=64)},
            ("mean", HeadAblation(0, [1], mode="mean")),
            lambda b: b.replace(model="other"),
        ],
    )
    assert len(variants[0].interventions) == 2 and len(variants[1].interventions) == 3
    assert variants[2].to_dict()["eval"]["seq_len"] == 64 and variants[3].name == "heads/mean"
    assert variants[4].model == "other"
    assert base.interventions == (NormChannelReset(0, "mlp", [1]),)  # the base is untouched
    with pytest.raises(ValueError):
        lesion.sweep(base, [42])


# ---------------------------------------------------------------------------------------------- sweeps

from lesion import HeadSweep, NormChannelSweep, Sweep, Variant, Variants, WeightValueSweep  # noqa: E402


@pytest.mark.parametrize(
    "axis, expected",
    [
        (HeadSweep(), {"heads": {"mode": "ZERO"}}),
        (
            HeadSweep(layers=[1, 2], heads=np.array([0, 7]), mode="MEAN"),
            {"heads": {"layers": [1, 2], "heads": [0, 7], "mode": "MEAN"}},
        ),
        (HeadSweep(layers=3, mode="scale", factor=0.5), {"heads": {"layers": [3], "mode": "SCALE", "factor": 0.5}}),
        (NormChannelSweep("mlp"), {"norm_channels": {"norm": "mlp", "mode": "ONE"}}),
        (
            NormChannelSweep("attn", layers=[0], channels=[45, 46], mode="gamma_mean"),
            {"norm_channels": {"norm": "attn", "layers": [0], "channels": [45, 46], "mode": "GAMMA_MEAN"}},
        ),
        (
            NormChannelSweep("final", channels=[3], mode="value", value=2),
            {"norm_channels": {"norm": "final", "channels": [3], "mode": "VALUE", "value": 2.0}},
        ),
        (
            WeightValueSweep(2, "mlp.down", 3968, 7003, values=[0, 0.5, 2]),
            {
                "weight_values": {
                    "layer": 2,
                    "module": "mlp.down",
                    "row": 3968,
                    "col": 7003,
                    "op": "SCALE",
                    "values": [0.0, 0.5, 2.0],
                }
            },
        ),
        (
            WeightValueSweep(0, "attn.q", 1, 2, op="set", values=np.array([-1.5])),
            {"weight_values": {"layer": 0, "module": "attn.q", "row": 1, "col": 2, "op": "SET", "values": [-1.5]}},
        ),
        (
            WeightValueSweep(0, "attn.q", 1, 2, op="zero"),
            {"weight_values": {"layer": 0, "module": "attn.q", "row": 1, "col": 2, "op": "ZERO"}},
        ),
        (
            Variants(
                [
                    ("a", HeadAblation(0, [1])),
                    Variant("b", [WeightEdit.zero(0, "mlp.up", 1, 2), {"head_ablation": {"layer": 1, "heads": [0]}}]),
                    Variant(interventions=NormChannelReset(1, "mlp", [3])),
                    {"name": "ctl"},
                ]
            ),
            {
                "variants": {
                    "variants": [
                        {"name": "a", "interventions": [{"head_ablation": {"layer": 0, "heads": [1], "mode": "ZERO"}}]},
                        {
                            "name": "b",
                            "interventions": [
                                {"weight_edit": {"layer": 0, "module": "mlp.up", "row": 1, "col": 2, "op": "ZERO"}},
                                {"head_ablation": {"layer": 1, "heads": [0]}},
                            ],
                        },
                        {
                            "interventions": [
                                {"norm_channel_reset": {"layer": 1, "norm": "mlp", "channels": [3], "mode": "ONE"}}
                            ]
                        },
                        {"name": "ctl", "interventions": []},
                    ]
                }
            },
        ),
    ],
)
def test_sweep_axis_json(axis, expected):
    assert axis.to_dict() == expected
    json_format.ParseDict({"sweep": {"axes": [expected]}}, experiment_pb2.ExperimentSpec())  # the proto takes it
    assert Sweep([expected]).axes[0].to_dict() == expected  # and the dict form parses back to the builder


def test_sweep_in_an_experiment_round_trips():
    grid = Sweep(
        [
            HeadSweep(layers=[0], heads=[0, 1]),
            WeightValueSweep(1, "mlp.down", 3, 4, values=[0.5, 2]),
            NormChannelSweep("final", channels=[3]),
            Variants([("a", HeadAblation(0, [1]))]),
        ],
        variants_per_pass=4,
    )
    e = Experiment(
        model="stories260K",
        name="grid",
        dataset=Dataset.named("tinystories-sample"),
        interventions=[NormChannelReset(0, "mlp", [1])],
        measurements=[Perplexity()],
        sweep=grid,
    )
    d = e.to_dict()
    assert list(d) == ["name", "model", "dataset", "interventions", "measurements", "sweep"]
    assert d["sweep"]["variants_per_pass"] == 4 and [next(iter(a)) for a in d["sweep"]["axes"]] == [
        "heads",
        "weight_values",
        "norm_channels",
        "variants",
    ]
    p = e.to_proto()
    assert p.sweep.variants_per_pass == 4 and list(p.sweep.axes[0].heads.heads) == [0, 1]
    assert p.sweep.axes[1].weight_values.op == experiment_pb2.WeightEdit.SCALE
    assert p.sweep.axes[3].variants.variants[0].interventions[0].head_ablation.heads == [1]
    back = Experiment.from_proto(p)
    assert isinstance(back.sweep, Sweep) and back.sweep.axes[:3] == grid.axes[:3]
    assert back.to_proto() == p
    assert Experiment.from_dict(d).to_dict() == d
    assert Experiment.from_json(e.to_json()).sweep.to_dict() == grid.to_dict()  # interventions stay dicts
    # lowerCamelCase (proto3 JSON) is read too
    camel = Experiment.from_dict(
        {"model": "m", "sweep": {"axes": [{"normChannels": {"norm": "mlp"}}], "variantsPerPass": 2}}
    )
    assert camel.sweep == Sweep([NormChannelSweep("mlp")], variants_per_pass=2)
    # shorthand: one axis, a list of axes, a dict; without a sweep the JSON has no "sweep"
    assert Experiment(model="m", sweep=HeadSweep()).sweep == Sweep([HeadSweep()])
    two = Experiment(model="m", sweep=[HeadSweep(), NormChannelSweep("mlp")])
    assert two.sweep.axes == (HeadSweep(), NormChannelSweep("mlp"))
    assert Experiment(model="m", sweep={"axes": [{"heads": {}}]}).sweep == Sweep([HeadSweep()])
    assert "sweep" not in Experiment(model="m").to_dict() and not Experiment(model="m").to_proto().HasField("sweep")
    assert e.replace(sweep=None).sweep is None
    assert Sweep(HeadSweep(), variants_per_pass=0).to_dict() == {"axes": [{"heads": {"mode": "ZERO"}}]}


def test_sweep_examples_parse():
    """experiments/examples/head_sweep.json: read by the builders as the server reads it."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "experiments" / "examples" / "head_sweep.json"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    d = json.loads(path.read_text())
    e = Experiment.from_dict(d)
    assert e.sweep == Sweep([HeadSweep()])
    assert e.to_proto() == json_format.ParseDict(d, experiment_pb2.ExperimentSpec())


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: HeadSweep(mode="prune"), "valid: zero, mean, scale"),
        (lambda: HeadSweep(mode="scale"), "needs factor"),
        (lambda: HeadSweep(factor=0.5), "only used with mode 'scale'"),
        (lambda: HeadSweep(layers=[-1]), ">= 0"),
        (lambda: HeadSweep(heads=[0.5]), "integer"),
        (lambda: NormChannelSweep("ln_1"), "valid: attn, mlp, attn_post, mlp_post, q, k, final"),
        (lambda: NormChannelSweep("mlp", mode="zero"), "valid: one, gamma_mean, value"),
        (lambda: NormChannelSweep("mlp", mode="value"), "needs value"),
        (lambda: NormChannelSweep("mlp", value=1.0), "only used with mode 'value'"),
        (lambda: NormChannelSweep("final", layers=[1]), "takes no layers"),
        (lambda: WeightValueSweep(0, "mlp.c_proj", 0, 0, values=[1]), "valid: attn.q, attn.k"),
        (lambda: WeightValueSweep(0, "mlp.down", 0, 0, op="add", values=[1]), "valid: zero, scale, set"),
        (lambda: WeightValueSweep(0, "mlp.down", 0, 0), "needs values"),
        (lambda: WeightValueSweep(0, "mlp.down", 0, 0, op="zero", values=[1]), "takes no values"),
        (lambda: WeightValueSweep(0, "mlp.down", 0, 0, values=[float("inf")]), "finite"),
        (lambda: WeightValueSweep(0, "mlp.down", -1, 0, values=[1]), ">= 0"),
        (lambda: Variants([]), "must not be empty"),
        (lambda: Variants([("a", HeadAblation(0, [1])), ("a", HeadAblation(0, [2]))]), "'a' is used twice"),
        (lambda: Variants([HeadAblation(0, [1])]), "expected a Variant or a \\(name, interventions\\) pair"),
        (lambda: Variant("a", [Perplexity()]), "expected one of activation_edit"),
        (lambda: Variant(3, []), "Variant.name"),
        (lambda: Sweep([]), "at least one axis"),
        (lambda: Sweep([Perplexity()]), "expected one of Variants, HeadSweep"),
        (lambda: Sweep([{"head": {}}]), "expected one of heads, norm_channels, variants, weight_values"),
        (lambda: Sweep([HeadSweep()], variants_per_pass=-1), ">= 0"),
        (lambda: Experiment(model="m", sweep="heads"), "Experiment.sweep"),
        (lambda: Experiment.from_dict({"model": "m", "sweep": {"axes": [{"heads": {"mode": "PRUNE"}}]}}), "Sweep"),
    ],
)
def test_sweep_validation(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_client_side_sweep_helpers_still_make_separate_experiments():
    base = Experiment(model="m", name="h", measurements=[Perplexity()])
    exps = lesion.sweep_heads(base, 2, 2)
    assert len(exps) == 4 and all(e.sweep is None for e in exps)
    assert "server-side" in lesion.sweep_heads.__doc__ and "Sweep" in lesion.sweep.__doc__
    # a dict variant may set the sweep itself
    assert lesion.sweep(base, [{"sweep": HeadSweep(layers=[1])}])[0].sweep == Sweep([HeadSweep(layers=[1])])
