"""End-to-end: errors quote user input at a bounded length (the real `lesiond`, raw gRPC). A status
message travels as trailing metadata, which a gRPC client refuses beyond 16 KiB: an error that
echoed a 1 MB name reached the client as RESOURCE_EXHAUSTED "Stream removed" instead of the real
error."""

import pytest

grpc = pytest.importorskip("grpc")
from google.protobuf import json_format  # noqa: E402

from conftest import STORIES, requires_lesiond  # noqa: E402
from conftest import LesiondProcess as Server  # noqa: E402

pytestmark = requires_lesiond

MB = "m" * (1 << 20)
TEXT = "x" * 100_000
# What a message that quotes its input may add to it (the limit of lesiond's safety net is 4096).
SHORT = 1024


@pytest.fixture(scope="module")
def lesion(pb, tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("bounded"), "--model", f"stories={STORIES}", "--model-root", STORIES.parent)
    yield pb.grpc.LesionStub(server.channel)
    server.stop()


def fails(call, request, code, limit=SHORT):
    with pytest.raises(grpc.RpcError) as e:
        call(request, timeout=30)
    details = e.value.details()
    assert e.value.code() == code, f"{e.value.code()}: {details[:300]}"
    assert len(details) <= limit, f"{len(details)} bytes: {details[:300]}..."
    return details


SPEC = {
    "model": "stories",
    "dataset": {"named": "tinystories-sample"},
    "eval": {"seq_len": 64, "max_windows": 1},
    "measurements": [{"perplexity": {}}],
}


@pytest.mark.parametrize(
    "change, code, needle",
    [
        ({"model": MB}, "NOT_FOUND", "no model named"),
        ({"measurements": [{"token_probabilities": {"tokens": [TEXT, TEXT]}}]}, "INVALID_ARGUMENT", "not one"),
        ({"measurements": [{"activation_stats": {"sites": [TEXT]}}]}, "INVALID_ARGUMENT", "unknown hook site"),
        (
            {"measurements": [{"capture": {"sites": ["blocks." + TEXT + ".resid_post"]}}]},
            "INVALID_ARGUMENT",
            "is not a number",
        ),
        ({"interventions": [{"activation_edit": {"site": TEXT}}]}, "INVALID_ARGUMENT", "unknown hook site"),
        ({"interventions": [{"weight_edit": {"layer": 0, "module": TEXT}}]}, "INVALID_ARGUMENT", "unknown module"),
        ({"dataset": {"named": TEXT}}, "INVALID_ARGUMENT", "unknown dataset"),
    ],
)
def test_submissions_that_quote_huge_input_get_their_real_error(pb, lesion, change, code, needle):
    spec = json_format.ParseDict({**SPEC, **change}, pb.experiment.ExperimentSpec())
    details = fails(
        lesion.SubmitExperiment, pb.service.SubmitExperimentRequest(spec=spec), getattr(grpc.StatusCode, code)
    )
    assert needle in details, details


def test_a_query_of_1100_terms_gets_its_real_error(pb, lesion):
    where = " OR ".join([f'name = "{"y" * 10}"'] * 1100)
    details = fails(
        lesion.ListExperiments, pb.service.ListExperimentsRequest(where=where), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert "more than the limit" in details or "comparisons" in details, details


@pytest.mark.parametrize("call", ["GetExperiment", "CancelExperiment", "ResubmitExperiment"])
def test_huge_experiment_ids_get_not_found(pb, lesion, call):
    request = getattr(pb.service, f"{call}Request")(id=MB)
    fails(getattr(lesion, call), request, grpc.StatusCode.NOT_FOUND)


def test_load_and_unload_with_huge_names_get_their_real_error(pb, lesion):
    load = pb.service.LoadModelRequest
    assert "longer than the limit" in fails(
        lesion.LoadModel, load(name=MB, dir=str(STORIES)), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert "dtype" in fails(
        lesion.LoadModel, load(name="d", dir=str(STORIES), dtype=TEXT), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert "device" in fails(
        lesion.LoadModel, load(name="d", dir=str(STORIES), device=TEXT), grpc.StatusCode.INVALID_ARGUMENT
    )
    # A directory that does not exist (or lies outside the roots): the message is cut to lesiond's
    # limit at worst.
    with pytest.raises(grpc.RpcError) as e:
        lesion.LoadModel(load(name="d", dir=str(STORIES.parent / TEXT)), timeout=30)
    assert e.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED), e.value.details()[:300]
    assert len(e.value.details()) <= 4096
    fails(lesion.UnloadModel, pb.service.UnloadModelRequest(name=MB), grpc.StatusCode.NOT_FOUND)
    assert [m.name for m in lesion.ListModels(pb.service.ListModelsRequest(), timeout=10).models] == ["stories"]
