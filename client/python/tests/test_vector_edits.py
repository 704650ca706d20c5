"""The vector ops of ActivationEdit (ADD, PROJECT_OUT, SET_VECTORS) and their constructors Steer,
ProjectOut and Patch; the TokenOutputs measure: exact proto3 JSON, proto round trips, what they
accept as a vector, and every refusal that needs no model."""

import json
import re

import numpy as np
import pytest
from google.protobuf import json_format

import lesion
from lesion import ActivationEdit, Experiment, Patch, ProjectOut, Steer, TokenOutputs, Variant, Variants
from lesion._proto import experiment_pb2

V = [0.5, -1.0, 2.0, 0.25]


def f32(values):
    """The numbers as the proto's float field holds them."""
    return [float(x) for x in np.asarray(values, dtype=np.float32).ravel()]


def test_exports():
    for name in ("Steer", "ProjectOut", "Patch", "TokenOutputs"):
        assert getattr(lesion, name) is getattr(lesion.spec, name) and name in lesion.__all__
        assert name in lesion.spec.__all__
    assert TokenOutputs in lesion.spec.MEASUREMENTS
    assert ActivationEdit.OPS == ("zero", "set", "scale", "mean", "add", "project_out", "set_vectors")


@pytest.mark.parametrize(
    "builder, expected",
    [
        (
            Steer("blocks.2.resid_post", V, 4.0),
            {"activation_edit": {"site": "blocks.2.resid_post", "op": "ADD", "value": 4.0, "vector": V}},
        ),
        (
            Steer("blocks.*.mlp_out", np.array(V), -1, positions=[3, 7], dims=[0, 1, 2, 3]),
            {
                "activation_edit": {
                    "site": "blocks.*.mlp_out",
                    "positions": [3, 7],
                    "dims": [0, 1, 2, 3],
                    "op": "ADD",
                    "value": -1.0,
                    "vector": V,
                }
            },
        ),
        (
            ProjectOut("blocks.0.attn_out", V),
            {"activation_edit": {"site": "blocks.0.attn_out", "op": "PROJECT_OUT", "vector": V}},
        ),
        (
            ProjectOut("embed", [1, 2], positions=[0], dims=[30, 31]),
            {
                "activation_edit": {
                    "site": "embed",
                    "positions": [0],
                    "dims": [30, 31],
                    "op": "PROJECT_OUT",
                    "vector": [1.0, 2.0],
                }
            },
        ),
        (
            Patch("blocks.1.resid_post", [4], V),
            {"activation_edit": {"site": "blocks.1.resid_post", "positions": [4], "op": "SET_VECTORS", "vector": V}},
        ),
        (  # a row per position, in the order of positions, flattened row-major
            Patch("blocks.1.resid_post", [5, 2], np.array([[1, 2], [3, 4]], dtype=np.float64)),
            {
                "activation_edit": {
                    "site": "blocks.1.resid_post",
                    "positions": [5, 2],
                    "op": "SET_VECTORS",
                    "vector": [1.0, 2.0, 3.0, 4.0],
                }
            },
        ),
        (  # one row for every position
            Patch("blocks.1.resid_post", [5, 2], [[1, 2]]),
            {
                "activation_edit": {
                    "site": "blocks.1.resid_post",
                    "positions": [5, 2],
                    "op": "SET_VECTORS",
                    "vector": [1.0, 2.0],
                }
            },
        ),
        (
            ActivationEdit("blocks.0.attn_z", dims=[3], op="set_vectors", vector=[7]),
            {"activation_edit": {"site": "blocks.0.attn_z", "dims": [3], "op": "SET_VECTORS", "vector": [7.0]}},
        ),
        (TokenOutputs(), {"token_outputs": {"top_k": 5, "max_tokens": 4096}}),
        (
            TokenOutputs(top_k=100, max_tokens=65536, offset=np.int64(12)),
            {"token_outputs": {"top_k": 100, "max_tokens": 65536, "offset": 12}},
        ),
        (TokenOutputs(top_k=1, max_tokens=1), {"token_outputs": {"top_k": 1, "max_tokens": 1}}),
    ],
)
def test_builder_json_and_proto_round_trip(builder, expected):
    assert builder.to_dict() == expected
    kind = "interventions" if isinstance(builder, ActivationEdit) else "measurements"
    e = Experiment(model="m", **{kind: [builder]})
    p = e.to_proto()
    assert p == json_format.ParseDict({"model": "m", kind: [expected]}, experiment_pb2.ExperimentSpec())
    assert Experiment.from_proto(p).to_proto() == p
    assert Experiment.from_json(e.to_json()).to_proto() == p
    assert json.loads(e.to_json())[kind] == [expected]


def test_the_proto_holds_the_ops_and_the_vector():
    p = Experiment(
        model="m",
        interventions=[Steer("embed", V, 2.5), ProjectOut("embed", V), Patch("embed", [1, 2], [V, V])],
        measurements=[TokenOutputs(top_k=7, offset=3)],
    ).to_proto()
    ops = [iv.activation_edit.op for iv in p.interventions]
    A = experiment_pb2.ActivationEdit
    assert ops == [A.ADD, A.PROJECT_OUT, A.SET_VECTORS]
    assert p.interventions[0].activation_edit.value == 2.5 and list(p.interventions[0].activation_edit.vector) == V
    assert list(p.interventions[2].activation_edit.vector) == V + V
    t = p.measurements[0].token_outputs
    assert (t.top_k, t.max_tokens, t.offset) == (7, 4096, 3)


def test_constructors_are_activation_edits():
    s = Steer("blocks.1.resid_post", V, 3.0, positions=[2])
    assert isinstance(s, ActivationEdit) and s == ActivationEdit(
        "blocks.1.resid_post", positions=[2], op="add", value=3.0, vector=V
    )
    assert s == ActivationEdit.steer("blocks.1.resid_post", V, 3.0, positions=[2])
    assert ProjectOut("embed", V) == ActivationEdit.project_out("embed", V)
    assert Patch("embed", [1], V) == ActivationEdit.patch("embed", [1], V)
    assert hash(s) == hash(Steer("blocks.1.resid_post", np.array(V), 3.0, positions=[2]))
    assert s.vector == tuple(V) and s.op == "add" and s.value == 3.0


def test_vector_accepts_lists_numpy_and_torch_and_sends_float32():
    third = [1 / 3, 2 / 3]
    want = f32(third)
    assert Steer("embed", third, 1).to_dict()["activation_edit"]["vector"] == want
    assert Steer("embed", np.array(third, dtype=np.float64), 1).vector == tuple(want)
    assert Steer("embed", np.array(third, dtype=np.float16), 1).vector == tuple(f32(np.float16(third)))
    assert Steer("embed", [[1, 2]], 1).vector == (1.0, 2.0)  # a [1, D] row
    assert Steer("embed", (3, 4), 1).vector == (3.0, 4.0)
    torch = pytest.importorskip("torch")
    t = torch.tensor(third, dtype=torch.float64, requires_grad=True)
    assert Steer("embed", t, 1).vector == tuple(want)
    assert Steer("embed", torch.tensor(third, dtype=torch.bfloat16), 1).vector == tuple(
        f32(torch.tensor(third, dtype=torch.bfloat16).double().numpy())
    )
    grid = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    assert Patch("embed", [0, 4], grid).vector == (0.0, 1.0, 2.0, 3.0, 4.0, 5.0)
    assert Patch("embed", [0, 4], torch.arange(6).reshape(2, 3)).vector == (0.0, 1.0, 2.0, 3.0, 4.0, 5.0)


def test_repr_does_not_print_the_vector():
    r = repr(Steer("blocks.1.resid_post", np.ones(576), 2.0, positions=[3]))
    assert r == "ActivationEdit(site='blocks.1.resid_post', positions=[3], op='add', value=2.0, vector=<576 floats>)"
    assert repr(ActivationEdit("embed")) == "ActivationEdit(site='embed', op='zero')"


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: ActivationEdit("embed", op="add", vector=V), "op 'add' needs value= (alpha"),
        (lambda: ActivationEdit("embed", op="add", value=1.0), "op 'add' needs vector="),
        (lambda: ActivationEdit("embed", op="project_out"), "op 'project_out' needs vector="),
        (lambda: ActivationEdit("embed", op="set_vectors", positions=[0]), "op 'set_vectors' needs vector="),
        (lambda: ActivationEdit("embed", op="project_out", value=1.0, vector=V), "value is only used with op 'set'"),
        (lambda: ActivationEdit("embed", op="set_vectors", value=1.0, vector=V), "value is only used with"),
        (lambda: ActivationEdit("embed", op="zero", vector=V), "vector is only used with op 'add'"),
        (lambda: ActivationEdit("embed", op="set", value=1.0, vector=V), "vector is only used with"),
        (lambda: ActivationEdit("embed", op="mean", vector=V), "vector is only used with"),
        (lambda: ActivationEdit("embed", op="bogus"), "valid: zero, set, scale, mean, add, project_out, set_vectors"),
        (lambda: Steer("embed", [], 1.0), "must not be empty"),
        (lambda: Steer("embed", [1.0, float("nan")], 1.0), "must be finite, got nan at 1"),
        (lambda: Steer("embed", np.array([[1.0, np.inf]]), 1.0), "must be finite, got inf at [0, 1]"),
        (lambda: Steer("embed", [1.0, 2e15], 1.0), "at most 1e+15 in magnitude"),
        (lambda: Steer("embed", [1.0, 2.0], float("inf")), "ActivationEdit.value: must be finite"),
        (lambda: Steer("embed", 3.0, 1.0), "expected a 1-D or 2-D"),
        (lambda: Steer("embed", np.zeros((2, 2, 2)), 1.0), "got shape [2, 2, 2]"),
        (lambda: Steer("embed", ["a", "b"], 1.0), "expected numbers"),
        (lambda: Steer("embed", [[1, 2], [3, 4]], 1.0), "op 'add' takes one direction (a 1-D vector), got 2 rows"),
        (lambda: Steer("embed", V, 1.0, dims=[1, 2]), "vector has 4 numbers, needs 2 (one per dim of dims)"),
        (lambda: ProjectOut("embed", [0.0, 0.0]), "nonzero vector"),
        (lambda: ProjectOut("embed", [1e-46]), "nonzero vector"),  # 0 in float32
        (lambda: ProjectOut("embed", V, dims=[0]), "needs 1"),
        (lambda: Patch("embed", None, V), "give the positions"),
        (lambda: Patch("embed", [], V), "give the positions"),
        (lambda: Patch("embed", [0, 1, 2], [[1, 2], [3, 4]]), "vector has 2 rows for 3 positions"),
        (lambda: Patch("embed", [0, 1], [1, 2, 3]), "got 3, which is no multiple of 2"),
        (lambda: Patch("embed", [0, 1], [1, 2, 3], dims=[4, 5]), "needs 2 numbers (one per dim of dims) or 4"),
        (
            lambda: ActivationEdit("embed", op="set_vectors", vector=[[1, 2], [3, 4]]),
            "2 rows for no positions (every position)",
        ),
        (lambda: Patch("embed", [-1], V), ">= 0"),
        (lambda: Patch("blocks.0.attn_pattern", [0], V), "attn_pattern cannot be edited"),
        (lambda: TokenOutputs(top_k=0), "top_k: must be in 1..100, got 0"),
        (lambda: TokenOutputs(top_k=101), "top_k: must be in 1..100, got 101"),
        (lambda: TokenOutputs(max_tokens=0), "max_tokens: must be in 1..65536, got 0"),
        (lambda: TokenOutputs(max_tokens=65537), "page through more with offset"),
        (lambda: TokenOutputs(offset=-1), ">= 0"),
        (lambda: TokenOutputs(top_k=2.5), "integer"),
        (lambda: TokenOutputs(offset=True), "integer"),
    ],
)
def test_refusals(make, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make()


def test_vector_edits_in_a_variants_axis():
    """Patches as sweep variants: the JSON keeps each variant's vector, and the proto takes it."""
    axis = Variants([Variant(f"L{l}.P3", Patch(f"blocks.{l}.resid_post", [3], np.full(4, l))) for l in range(2)])
    e = Experiment(model="m", measurements=[TokenOutputs(top_k=1, max_tokens=1, offset=9)], sweep=lesion.Sweep(axis))
    p = e.to_proto()
    got = [v.interventions[0].activation_edit for v in p.sweep.axes[0].variants.variants]
    assert [list(a.vector) for a in got] == [[0.0] * 4, [1.0] * 4] and got[1].site == "blocks.1.resid_post"
    assert Experiment.from_proto(p).to_proto() == p
