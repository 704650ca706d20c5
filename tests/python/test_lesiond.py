"""End-to-end: the real `lesiond` binary on a loopback port, driven with raw gRPC calls on the stubs
generated from proto/ (those of the `lesion` package; health and reflection as raw bytes, as
grpcurl sends them): health, reflection,
models, submit / watch / get / list / cancel / run / resubmit, the baseline cache, crash recovery,
error codes and token auth."""

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

grpc = pytest.importorskip("grpc")
from google.protobuf import json_format  # noqa: E402

from conftest import CLI, ROOT, STORIES, requires_lesiond  # noqa: E402
from conftest import LesiondProcess as Server  # noqa: E402

pytestmark = requires_lesiond


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path, "--model", f"stories={STORIES}")
    yield s
    s.stop()


def stub(pb, server):
    return pb.grpc.LesionStub(server.channel)


def spec_proto(pb, spec):
    return json_format.ParseDict(spec, pb.experiment.ExperimentSpec())


PRUNE = {
    "model": "stories",
    "name": "prune",
    "tags": ["e2e", "heads"],
    "dataset": {"named": "tinystories-sample"},
    "eval": {"seq_len": 128, "add_bos": True},
    "interventions": [{"head_ablation": {"layer": 1, "heads": [3], "mode": "ZERO"}}],
    "measurements": [{"perplexity": {}}, {"attention_sink": {}}],
}
LONG = {
    "model": "stories",
    "name": "long",
    "dataset": {"named": "wikitext-2-raw-test"},
    "eval": {"seq_len": 32, "batch_size": 1},
    "interventions": [{"head_ablation": {"layer": 0, "heads": [0]}}],
    "measurements": [{"perplexity": {}}],
}


def watch_to_end(pb, lesion, experiment_id, timeout=120):
    events = list(lesion.WatchExperiment(pb.service.WatchExperimentRequest(id=experiment_id), timeout=timeout))
    assert events, "no events"
    return events


def test_health_and_reflection_answer(pb, server):
    check = server.channel.unary_unary(
        "/grpc.health.v1.Health/Check", request_serializer=lambda _: b"", response_deserializer=lambda b: b
    )
    assert check(None, timeout=10) == b"\x08\x01"  # status: SERVING
    reflect = server.channel.stream_stream(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    answer = b"".join(reflect(iter([b"\x3a\x00"]), timeout=10))  # list_services
    assert b"lesion.v1.Lesion" in answer


def test_models_are_listed_with_their_shapes(pb, server):
    models = stub(pb, server).ListModels(pb.service.ListModelsRequest(), timeout=10).models
    assert [m.name for m in models] == ["stories"]
    m = models[0]
    assert (m.architecture, m.n_layers, m.n_heads, m.d_model, m.dtype, m.device) == (
        "LlamaForCausalLM",
        5,
        8,
        64,
        "float32",
        "cpu",
    )
    assert m.weight_bytes > 0 and len(m.fingerprint) == 16


def test_submit_watch_get_and_list_match_a_local_run(pb, server, tmp_path):
    lesion = stub(pb, server)
    queued = lesion.SubmitExperiment(pb.service.SubmitExperimentRequest(spec=spec_proto(pb, PRUNE)), timeout=30)
    assert queued.id.startswith("exp-") and queued.user == "anonymous"
    events = watch_to_end(pb, lesion, queued.id)
    final = events[-1].experiment
    assert final.status == pb.service.DONE, final.error
    statuses = [e.experiment.status for e in events]
    assert statuses == sorted(statuses), "states only move forward"
    # The same spec run in-process by the CLI gives the same numbers.
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({k: v for k, v in PRUNE.items() if k != "model"}))
    local = json.loads(
        subprocess.run(
            [str(CLI), "run", "--local", "--model", str(STORIES), "--spec", str(path), "--json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert final.result.intervened.perplexity.ppl == pytest.approx(local["intervened"]["perplexity"]["ppl"], rel=1e-12)
    assert final.result.baseline.perplexity.ppl == pytest.approx(local["baseline"]["perplexity"]["ppl"], rel=1e-12)
    got = lesion.GetExperiment(pb.service.GetExperimentRequest(id=queued.id), timeout=10)
    assert got.status == pb.service.DONE and got.result.run.spec_sha256 == final.result.run.spec_sha256
    assert list(got.tags) == ["e2e", "heads"] and got.name == "prune"
    listed = lesion.ListExperiments(
        pb.service.ListExperimentsRequest(
            where='tag = "heads" AND metric.perplexity.delta_pct > 0 AND intervention.head_ablation.layer = 1'
        ),
        timeout=10,
    )
    assert [e.id for e in listed.experiments] == [queued.id] and listed.total == 1
    none = lesion.ListExperiments(
        pb.service.ListExperimentsRequest(where="intervention.head_ablation.layer = 4"), timeout=10
    )
    assert none.total == 0


def test_a_second_run_reuses_the_cached_baseline(pb, server):
    lesion = stub(pb, server)
    first = lesion.RunExperiment(pb.service.SubmitExperimentRequest(spec=spec_proto(pb, PRUNE)), timeout=120)
    other = dict(PRUNE, interventions=[{"head_ablation": {"layer": 2, "heads": [6]}}])
    second = lesion.RunExperiment(pb.service.SubmitExperimentRequest(spec=spec_proto(pb, other)), timeout=120)
    assert first.status == second.status == pb.service.DONE
    assert not first.result.run.baseline_cached and second.result.run.baseline_cached
    assert second.result.run.forward_passes * 2 == first.result.run.forward_passes
    assert second.result.baseline.perplexity.ppl == first.result.baseline.perplexity.ppl
    assert second.result.intervened.perplexity.ppl != first.result.intervened.perplexity.ppl
    # A sweep queued at once: each experiment looks the baseline up when it starts.
    sweep = [
        dict(PRUNE, tags=["sweep"], interventions=[{"head_ablation": {"layer": 3, "heads": [h]}}]) for h in range(4)
    ]
    ids = [
        lesion.SubmitExperiment(pb.service.SubmitExperimentRequest(spec=spec_proto(pb, s)), timeout=30).id
        for s in sweep
    ]
    finals = [watch_to_end(pb, lesion, i)[-1].experiment for i in ids]
    assert all(f.status == pb.service.DONE for f in finals)
    assert all(f.result.run.baseline_cached for f in finals)


def test_cancel_stops_a_running_experiment_within_a_second(pb, server):
    lesion = stub(pb, server)
    queued = lesion.SubmitExperiment(pb.service.SubmitExperimentRequest(spec=spec_proto(pb, LONG)), timeout=30)
    for event in lesion.WatchExperiment(pb.service.WatchExperimentRequest(id=queued.id), timeout=60):
        if event.experiment.status == pb.service.RUNNING and event.experiment.passes_done > 0:
            break
    start = time.time()
    lesion.CancelExperiment(pb.service.CancelExperimentRequest(id=queued.id), timeout=10)
    final = watch_to_end(pb, lesion, queued.id)[-1].experiment
    assert final.status == pb.service.CANCELLED
    assert time.time() - start < 1.5
    with pytest.raises(grpc.RpcError) as e:
        lesion.CancelExperiment(pb.service.CancelExperimentRequest(id=queued.id), timeout=10)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize(
    "change, code, needle",
    [
        ({"model": "nope"}, "NOT_FOUND", "nope"),
        (
            {"interventions": [{"head_ablation": {"layer": 9, "heads": [0]}}]},
            "INVALID_ARGUMENT",
            "layer 9 out of range",
        ),
        ({"measurements": []}, "INVALID_ARGUMENT", "measurements"),
        ({"dataset": {"named": "imagenet"}}, "INVALID_ARGUMENT", "unknown dataset"),
        ({"eval": {"seq_len": 600}}, "INVALID_ARGUMENT", "eval.seq_len 600 is longer than the model's 512 positions"),
        (
            {"interventions": [{"head_ablation": {"layer": 1, "heads": [3], "mode": "SCALE", "factor": 1e308}}]},
            "INVALID_ARGUMENT",
            "factor 1e+308 is larger in magnitude than the limit",
        ),
        ({"name": "n" * 300}, "INVALID_ARGUMENT", "(300 bytes) is longer than the limit of 256 bytes"),
        ({"tags": ["t"] * 65}, "INVALID_ARGUMENT", "65 tags, more than the limit of 64"),
    ],
)
def test_bad_submissions_get_precise_codes(pb, server, change, code, needle):
    with pytest.raises(grpc.RpcError) as e:
        stub(pb, server).SubmitExperiment(
            pb.service.SubmitExperimentRequest(spec=spec_proto(pb, {**PRUNE, **change})), timeout=30
        )
    assert e.value.code() == getattr(grpc.StatusCode, code)
    assert needle in e.value.details()


def test_unknown_experiments_and_bad_queries(pb, server):
    lesion = stub(pb, server)
    for call, request in [
        (lesion.GetExperiment, pb.service.GetExperimentRequest(id="exp-000000000000")),
        (lesion.CancelExperiment, pb.service.CancelExperimentRequest(id="exp-000000000000")),
    ]:
        with pytest.raises(grpc.RpcError) as e:
            call(request, timeout=10)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as e:
        lesion.ListExperiments(pb.service.ListExperimentsRequest(where="modle = 1"), timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "modle" in e.value.details()
    # These crashed lesiond (the parser recursed once per NOT and '('), or matched everything.
    for where, needle in [
        ("NOT " * 20000 + 'id = "x"', "limit of 16384 bytes"),
        ("(" * 50000, "limit of 16384 bytes"),
        ("NOT " * 40 + 'id = "x"', "nested more than 32 deep"),
        ("created >= 99999999999999999999999", "out of range"),
    ]:
        with pytest.raises(grpc.RpcError) as e:
            lesion.ListExperiments(pb.service.ListExperimentsRequest(where=where), timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and needle in e.value.details(), e.value.details()
        assert len(e.value.details()) < 300
    assert lesion.ListExperiments(pb.service.ListExperimentsRequest(), timeout=10).total == 0


def test_a_crash_leaves_experiments_interrupted_and_resubmittable(pb, tmp_path):
    first = Server(tmp_path, "--model", f"stories={STORIES}")
    lesion = stub(pb, first)
    queued = lesion.SubmitExperiment(pb.service.SubmitExperimentRequest(spec=spec_proto(pb, LONG)), timeout=30)
    for event in lesion.WatchExperiment(pb.service.WatchExperimentRequest(id=queued.id), timeout=60):
        if event.experiment.status == pb.service.RUNNING:
            break
    first.kill()
    second = Server(tmp_path, "--model", f"stories={STORIES}", db=first.db)
    try:
        lesion = stub(pb, second)
        got = lesion.GetExperiment(pb.service.GetExperimentRequest(id=queued.id), timeout=10)
        assert got.status == pb.service.INTERRUPTED
        again = lesion.ResubmitExperiment(pb.service.ResubmitExperimentRequest(id=queued.id), timeout=30)
        assert again.id != queued.id and again.spec.name == "long"
        lesion.CancelExperiment(pb.service.CancelExperimentRequest(id=again.id), timeout=10)
    finally:
        second.stop()


HEADS = {
    "model": "stories",
    "name": "heads",
    "tags": ["e2e", "sweep"],
    "dataset": {"named": "tinystories-sample"},
    "eval": {"seq_len": 64, "add_bos": True, "max_windows": 6},
    "measurements": [{"perplexity": {}}, {"kl_divergence": {}}, {"attention_sink": {"layers": [0, 4]}}],
    "sweep": {"axes": [{"heads": {"layers": [1, 3]}}]},
}


def run_sweep(pb, lesion, spec=HEADS):
    parent = lesion.SubmitExperiment(pb.service.SubmitExperimentRequest(spec=spec_proto(pb, spec)), timeout=30)
    final = watch_to_end(pb, lesion, parent.id)[-1].experiment
    assert final.status == pb.service.DONE, final.error
    return final


def test_a_sweep_is_a_parent_with_a_child_per_variant_that_reruns_alone(pb, server, tmp_path):
    lesion = stub(pb, server)
    parent = run_sweep(pb, lesion)
    assert parent.variants_total == parent.variants_done == 16
    rows = parent.result.sweep.variants
    assert [r.name for r in rows][:3] == ["L1.H0", "L1.H1", "L1.H2"] and rows[15].name == "L3.H7"
    assert [r.experiment_id for r in rows] == [f"{parent.id}.{i}" for i in range(16)]
    children = lesion.ListExperiments(
        pb.service.ListExperimentsRequest(
            where=f'parent = "{parent.id}"', order_by="metric.perplexity.delta_pct desc", include_results=True
        ),
        timeout=10,
    )
    assert children.total == 16 and all(c.status == pb.service.DONE for c in children.experiments)
    assert all(c.parent_id == parent.id for c in children.experiments)
    top = children.experiments[0]
    assert top.result.metrics[0].delta_pct == max(r.perplexity_delta_pct for r in rows)
    top_level = lesion.ListExperiments(pb.service.ListExperimentsRequest(where='parent = ""'), timeout=10)
    assert [e.id for e in top_level.experiments] == [parent.id]
    # A child's spec is a plain experiment: run alone in-process it gives the same numbers.
    child = lesion.GetExperiment(pb.service.GetExperimentRequest(id=top.id), timeout=10)
    assert not child.spec.HasField("sweep") and child.spec.name == top.name and top.name.startswith("heads/L")
    path = tmp_path / "child.json"
    path.write_text(json.dumps(json_format.MessageToDict(child.spec, preserving_proto_field_name=True)))
    local = json.loads(
        subprocess.run(
            [str(CLI), "run", "--local", "--model", str(STORIES), "--spec", str(path), "--json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert child.result.intervened.perplexity.ppl == pytest.approx(local["intervened"]["perplexity"]["ppl"], rel=1e-6)
    assert child.result.kl_divergence == pytest.approx(local["kl_divergence"], rel=1e-5)
    assert child.result.run.spec_sha256 == local["run"]["spec_sha256"]
    # The whole sweep run locally: the same rows, number for number.
    path.write_text(json.dumps({k: v for k, v in HEADS.items() if k != "model"}))
    whole = json.loads(
        subprocess.run(
            [str(CLI), "run", "--local", "--model", str(STORIES), "--spec", str(path), "--json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert [v["perplexity"] for v in whole["parent"]["sweep"]["variants"]] == [r.perplexity for r in rows]
    # A variant is not cancelled alone.
    with pytest.raises(grpc.RpcError) as e:
        lesion.CancelExperiment(pb.service.CancelExperimentRequest(id=f"{parent.id}.3"), timeout=10)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_a_sweep_on_two_cpu_replicas_gives_the_numbers_of_one(pb, server, tmp_path):
    two = Server(tmp_path, "--model", f"stories={STORIES}", "--device", "cpu,cpu")
    try:
        model = stub(pb, two).ListModels(pb.service.ListModelsRequest(), timeout=10).models[0]
        assert model.device == "cpu,cpu#1"
        sharded = run_sweep(pb, stub(pb, two))
        children = stub(pb, two).ListExperiments(
            pb.service.ListExperimentsRequest(where=f'parent = "{sharded.id}"', include_results=True, limit=100),
            timeout=10,
        )
        assert {c.result.run.device for c in children.experiments} == {"cpu", "cpu#1"}
    finally:
        two.stop()
    single = run_sweep(pb, stub(pb, server))
    assert [r.perplexity for r in sharded.result.sweep.variants] == [r.perplexity for r in single.result.sweep.variants]
    assert [r.kl_divergence for r in sharded.result.sweep.variants] == [
        r.kl_divergence for r in single.result.sweep.variants
    ]


def test_a_crash_during_a_sweep_interrupts_it_and_its_variants(pb, tmp_path):
    long_sweep = dict(HEADS, dataset={"named": "wikitext-2-raw-test"}, eval={"seq_len": 32, "batch_size": 1})
    first = Server(tmp_path, "--model", f"stories={STORIES}")
    lesion = stub(pb, first)
    parent = lesion.SubmitExperiment(pb.service.SubmitExperimentRequest(spec=spec_proto(pb, long_sweep)), timeout=30)
    for event in lesion.WatchExperiment(pb.service.WatchExperimentRequest(id=parent.id), timeout=60):
        if event.experiment.status == pb.service.RUNNING and event.experiment.passes_done > 0:
            break
    first.kill()
    second = Server(tmp_path, "--model", f"stories={STORIES}", db=first.db)
    try:
        lesion = stub(pb, second)
        assert (
            lesion.GetExperiment(pb.service.GetExperimentRequest(id=parent.id), timeout=10).status
            == pb.service.INTERRUPTED
        )
        children = lesion.ListExperiments(
            pb.service.ListExperimentsRequest(where=f'parent = "{parent.id}"'), timeout=10
        )
        assert children.total == 16 and {c.status for c in children.experiments} == {pb.service.INTERRUPTED}
        again = lesion.ResubmitExperiment(pb.service.ResubmitExperimentRequest(id=parent.id), timeout=30)
        assert again.variants_total == 16 and again.spec.HasField("sweep")
        lesion.CancelExperiment(pb.service.CancelExperimentRequest(id=again.id), timeout=10)
        final = watch_to_end(pb, lesion, again.id)[-1].experiment
        assert final.status == pb.service.CANCELLED
        cancelled = lesion.ListExperiments(
            pb.service.ListExperimentsRequest(where=f'parent = "{again.id}" AND status = "cancelled"'), timeout=10
        )
        assert cancelled.total == 16
    finally:
        second.stop()


def _overcommit_refuses_huge_allocations():
    try:
        return Path("/proc/sys/vm/overcommit_memory").read_text().strip() in ("0", "2")
    except OSError:
        return False


@pytest.fixture
def long_context_server(tmp_path):
    """lesiond on a copy of stories260K that claims 262144 positions: windows longer than a model's
    max_position_embeddings are refused, and the real one has 512."""
    stories_long = tmp_path / "stories-long"
    shutil.copytree(STORIES, stories_long)
    config = json.loads((stories_long / "config.json").read_text())
    config["max_position_embeddings"] = 262144
    (stories_long / "config.json").write_text(json.dumps(config))
    s = Server(tmp_path, "--model", f"stories={stories_long}")
    yield s
    s.stop()


@pytest.mark.skipif(
    not _overcommit_refuses_huge_allocations(),
    reason="the kernel would grant a terabyte allocation lazily (vm.overcommit_memory=1)",
)
def test_out_of_memory_is_resource_exhausted_and_the_server_goes_on(pb, long_context_server):
    # One 200k-token window with its attention pattern observed needs a 1.3 TB score matrix: the
    # allocator refuses it at once (a GPU's would too), nothing is touched.
    server = long_context_server
    too_big = {
        "model": "stories",
        "name": "too-big",
        "dataset": {"named": "wikitext-2-raw-test"},
        "eval": {"seq_len": 200000, "max_windows": 1, "batch_size": 1},
        "measurements": [{"perplexity": {}}, {"attention_sink": {"layers": [0]}}],
    }
    lesion = stub(pb, server)
    with pytest.raises(grpc.RpcError) as e:
        lesion.RunExperiment(pb.service.SubmitExperimentRequest(spec=spec_proto(pb, too_big)), timeout=120)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.value.details()
    assert "out of memory" in e.value.details()
    failed_id = e.value.details().split()[1]
    failed = lesion.GetExperiment(pb.service.GetExperimentRequest(id=failed_id), timeout=10)
    assert failed.status == pb.service.FAILED and failed.error_code == "RESOURCE_EXHAUSTED"
    after = lesion.RunExperiment(pb.service.SubmitExperimentRequest(spec=spec_proto(pb, PRUNE)), timeout=120)
    assert after.status == pb.service.DONE


def test_tokens_file_auth_and_roles(pb, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("# token user role\nt-admin alice admin\nt-bob bob user\nt-cat cat user\n")
    s = Server(tmp_path, "--model", f"stories={STORIES}", "--tokens-file", tokens)
    try:
        lesion = stub(pb, s)
        with pytest.raises(grpc.RpcError) as e:
            lesion.ListModels(pb.service.ListModelsRequest(), timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as e:
            lesion.ListModels(pb.service.ListModelsRequest(), timeout=10, metadata=[("authorization", "Bearer nope")])
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        bob = [("authorization", "Bearer t-bob")]
        cat = [("authorization", "Bearer t-cat")]
        admin = [("authorization", "Bearer t-admin")]
        with pytest.raises(grpc.RpcError) as e:
            lesion.UnloadModel(pb.service.UnloadModelRequest(name="stories"), timeout=10, metadata=bob)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        queued = lesion.SubmitExperiment(
            pb.service.SubmitExperimentRequest(spec=spec_proto(pb, LONG)), timeout=30, metadata=bob
        )
        assert queued.user == "bob"
        # Everyone sees it, only bob (or an admin) cancels it.
        assert (
            lesion.GetExperiment(pb.service.GetExperimentRequest(id=queued.id), timeout=10, metadata=cat).user == "bob"
        )
        with pytest.raises(grpc.RpcError) as e:
            lesion.CancelExperiment(pb.service.CancelExperimentRequest(id=queued.id), timeout=10, metadata=cat)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        lesion.CancelExperiment(pb.service.CancelExperimentRequest(id=queued.id), timeout=10, metadata=admin)
        with pytest.raises(grpc.RpcError) as e:
            lesion.LoadModel(pb.service.LoadModelRequest(name="again", dir="/etc"), timeout=10, metadata=admin)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED and "model root" in e.value.details()
    finally:
        s.stop()


def test_admin_loads_and_unloads_a_model_under_an_allowed_root(pb, tmp_path):
    s = Server(tmp_path, "--model", f"stories={STORIES}", "--model-root", ROOT / "tests" / "fixtures" / "models")
    try:
        lesion = stub(pb, s)
        info = lesion.LoadModel(
            pb.service.LoadModelRequest(name="gpt2", dir=str(ROOT / "tests/fixtures/models/gpt2")), timeout=60
        )
        assert info.architecture == "GPT2LMHeadModel"
        assert sorted(m.name for m in lesion.ListModels(pb.service.ListModelsRequest(), timeout=10).models) == [
            "gpt2",
            "stories",
        ]
        with pytest.raises(grpc.RpcError) as e:
            lesion.LoadModel(
                pb.service.LoadModelRequest(name="gpt2", dir=str(ROOT / "tests/fixtures/models/gpt2")), timeout=60
            )
        assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS
        lesion.UnloadModel(pb.service.UnloadModelRequest(name="gpt2"), timeout=10)
        with pytest.raises(grpc.RpcError) as e:
            lesion.UnloadModel(pb.service.UnloadModelRequest(name="gpt2"), timeout=10)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        s.stop()
