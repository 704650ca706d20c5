"""The Client against an in-process fake lesiond (the generated servicer on a loopback grpc.server):
metadata, every RPC's request/response mapping, watch + progress, error wrapping, the DataFrame."""

from concurrent import futures

import grpc
import numpy as np
import pytest

import lesion
from conftest import make_observational_result, make_result
from lesion._proto import experiment_pb2, service_pb2, service_pb2_grpc
from lesion.client import COMPACT_COLUMNS
from lesion.errors import wrap_rpc_error


class FakeRpcError(grpc.RpcError):
    def __init__(self, code, details):
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


def test_error_wrapping_of_a_fake_rpc_error():
    e = wrap_rpc_error(
        FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "interventions[0].head_ablation: layer 9"), "SubmitExperiment"
    )
    assert isinstance(e, lesion.InvalidArgument) and isinstance(e, lesion.LesionError)
    assert e.code is grpc.StatusCode.INVALID_ARGUMENT and "layer 9" in e.details and e.rpc == "SubmitExperiment"
    assert str(e) == "SubmitExperiment: INVALID_ARGUMENT: interventions[0].head_ablation: layer 9"
    e = wrap_rpc_error(FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full"))
    assert type(e) is lesion.LesionError and e.code is grpc.StatusCode.RESOURCE_EXHAUSTED


def sweep_variants(spec):
    """(name, interventions) of a fake sweep on the fake 5 x 8 model: `heads` and `variants` axes, one
    axis (enough for the client's side)."""
    axis = spec.sweep.axes[0]
    if axis.WhichOneof("kind") == "heads":
        return [
            (f"L{l}.H{h}", [experiment_pb2.Intervention(head_ablation=experiment_pb2.HeadAblation(layer=l, heads=[h]))])
            for l in (axis.heads.layers or range(5))
            for h in (axis.heads.heads or range(8))
        ]
    return [(v.name or f"v{i}", list(v.interventions)) for i, v in enumerate(axis.variants.variants)]


class Fake(service_pb2_grpc.LesionServicer):
    def __init__(self):
        self.experiments = {}
        self.metadata = []
        self.requests = []
        self.page_cap = None  # ListExperiments returns at most this many per call (tests paging)

    def _auth(self, context):
        md = dict(context.invocation_metadata())
        self.metadata.append(md)
        if md.get("authorization") == "Bearer bad":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown token")

    def ListModels(self, request, context):
        self._auth(context)
        return service_pb2.ListModelsResponse(
            models=[
                service_pb2.ModelInfo(
                    name="stories260K", architecture="LlamaForCausalLM", n_layers=5, n_heads=8, n_params=260000
                )
            ]
        )

    def LoadModel(self, request, context):
        self._auth(context)
        self.requests.append(request)
        if not request.dir.startswith("/models"):
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{request.dir} is not under a model root")
        return service_pb2.ModelInfo(name=request.name, dir=request.dir, dtype=request.dtype or "float32")

    def UnloadModel(self, request, context):
        self._auth(context)
        if request.name != "stories260K":
            context.abort(grpc.StatusCode.NOT_FOUND, f"no model {request.name!r}")
        return service_pb2.UnloadModelResponse()

    def _new(self, spec, status=service_pb2.QUEUED):
        eid = f"e{len(self.experiments) + 1}"
        e = service_pb2.Experiment(
            id=eid,
            user="alice",
            name=spec.name,
            tags=spec.tags,
            model=spec.model,
            spec=spec,
            status=status,
            created_unix_micros=1_700_000_000_000_000,
            queue_position=1,
        )
        self.experiments[eid] = e
        return e

    def SubmitExperiment(self, request, context):
        self._auth(context)
        if request.spec.model != "stories260K":
            context.abort(grpc.StatusCode.NOT_FOUND, f"model {request.spec.model!r} is not loaded")
        parent = self._new(request.spec)
        if request.spec.HasField("sweep"):
            variants = sweep_variants(request.spec)
            parent.variants_total = len(variants)
            for i, (name, interventions) in enumerate(variants):
                child_spec = experiment_pb2.ExperimentSpec()
                child_spec.CopyFrom(request.spec)
                child_spec.ClearField("sweep")
                child_spec.interventions.extend(interventions)
                child_spec.name = f"{request.spec.name}/{name}" if request.spec.name else name
                cid = f"{parent.id}.{i}"
                self.experiments[cid] = service_pb2.Experiment(
                    id=cid,
                    user="alice",
                    name=child_spec.name,
                    model=child_spec.model,
                    spec=child_spec,
                    status=service_pb2.QUEUED,
                    parent_id=parent.id,
                    created_unix_micros=parent.created_unix_micros,
                )
        return parent

    def _finish_sweep(self, parent):
        """Every child DONE with a result whose perplexity rises by its index (%); the parent's table."""
        parent.result.CopyFrom(make_result())
        parent.result.ClearField("intervened")
        del parent.result.metrics[:]
        parent.result.sweep.variants_per_pass = 8
        for i in range(parent.variants_total):
            child = self.experiments[f"{parent.id}.{i}"]
            child.status = service_pb2.DONE
            child.result.CopyFrom(make_result())
            m = child.result.metrics[0]
            m.value, m.delta, m.delta_pct = 4.0 * (1 + i / 100), 0.04 * i, float(i)
            name = child.name.split("/", 1)[1] if "/" in child.name else child.name
            parent.result.sweep.variants.add(
                name=name,
                experiment_id=child.id,
                perplexity=m.value,
                perplexity_delta_pct=m.delta_pct,
                kl_divergence=0.001 * i,
            )

    def WatchExperiment(self, request, context):
        self._auth(context)
        e = self.experiments.get(request.id)
        if e is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no experiment {request.id}")
        yield service_pb2.ExperimentEvent(experiment=e)
        if e.status in (service_pb2.DONE, service_pb2.CANCELLED):
            return
        if e.spec.name == "fails":
            e.status, e.error = service_pb2.FAILED, "RESOURCE_EXHAUSTED: device out of memory"
            e.error_code = "RESOURCE_EXHAUSTED"
            yield service_pb2.ExperimentEvent(experiment=e)
            return
        if e.variants_total:  # a sweep: the passes, then the variants one by one
            e.status, e.queue_position, e.passes_done, e.passes_planned = service_pb2.RUNNING, 0, 6, 6
            yield service_pb2.ExperimentEvent(experiment=e)
            for done in range(1, e.variants_total):
                e.variants_done = done
                yield service_pb2.ExperimentEvent(experiment=e)
            e.status, e.variants_done = service_pb2.DONE, e.variants_total
            e.finished_unix_micros = 1_700_000_001_000_000
            self._finish_sweep(e)
            yield service_pb2.ExperimentEvent(experiment=e)
            return
        for done in (1, 2):
            e.status, e.queue_position, e.passes_done, e.passes_planned = service_pb2.RUNNING, 0, done, 4
            yield service_pb2.ExperimentEvent(experiment=e)
        e.status, e.passes_done, e.finished_unix_micros = service_pb2.DONE, 4, 1_700_000_001_000_000
        e.result.CopyFrom(make_result() if e.spec.interventions else make_observational_result())
        yield service_pb2.ExperimentEvent(experiment=e)

    def GetExperiment(self, request, context):
        self._auth(context)
        self.requests.append(request)
        e = self.experiments.get(request.id)
        if e is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no experiment {request.id}")
        out = service_pb2.Experiment()
        out.CopyFrom(e)
        if not request.include_captures and out.HasField("result"):
            del out.result.baseline.captures[:]
            del out.result.intervened.captures[:]
        return out

    def ListExperiments(self, request, context):
        self._auth(context)
        self.requests.append(request)
        if request.where == "bogus":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "where: unknown field 'bogus'")
        if request.limit > 10000:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"limit {request.limit} out of range: use 0 to 10000")
        exps = list(self.experiments.values())
        if request.where.startswith("parent = "):  # the one query the fake understands
            parent = request.where.split("=", 1)[1].strip().strip('"')
            exps = [e for e in exps if e.parent_id == parent]
        if request.order_by == "id":
            exps.sort(key=lambda e: e.id)  # as text, like the server: "p.10" before "p.2"
        limit = min(request.limit or 100, self.page_cap or 10000)
        page = []
        for e in exps[request.offset : request.offset + limit]:
            out = service_pb2.Experiment()
            out.CopyFrom(e)
            if not request.include_results:
                out.ClearField("result")
            page.append(out)
        return service_pb2.ListExperimentsResponse(experiments=page, total=len(exps))

    def CancelExperiment(self, request, context):
        self._auth(context)
        e = self.experiments[request.id]
        if e.parent_id:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"experiment {e.id} is a variant of sweep {e.parent_id}: cancel the sweep",
            )
        if e.status == service_pb2.DONE:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"experiment {request.id} is DONE")
        e.status = service_pb2.CANCELLED
        return e

    def ResubmitExperiment(self, request, context):
        self._auth(context)
        return self._new(self.experiments[request.id].spec)


@pytest.fixture
def fake():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = Fake()
    service_pb2_grpc.add_LesionServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(0)


def spec(name="ppl", model="stories260K"):
    return lesion.Experiment(
        model=model,
        name=name,
        tags=["t"],
        dataset=lesion.Dataset.named("tinystories-sample"),
        interventions=[lesion.HeadAblation(layer=1, heads=[3])],
        measurements=[lesion.Perplexity(), lesion.Capture(sites=["blocks.0.resid_post"])],
    )


def test_metadata_models_and_admin_calls(fake):
    servicer, address = fake
    with lesion.Client(address, token="tok", user="alice", timeout=5) as c:
        c.wait_ready(5)
        models = c.models()
        assert models[0]["name"] == "stories260K" and models[0]["n_params"] == 260000
        assert c.models(as_frame=True).loc[0, "n_layers"] == 5
        assert servicer.metadata[-1]["authorization"] == "Bearer tok"
        assert servicer.metadata[-1]["x-lesion-user"] == "alice"
        info = c.load_model("gpt2", "/models/gpt2", dtype="bfloat16")
        assert info["name"] == "gpt2" and info["dtype"] == "bfloat16" and servicer.requests[-1].device == ""
        with pytest.raises(lesion.PermissionDenied, match="not under a model root") as ei:
            c.load_model("x", "/etc")
        assert ei.value.code is grpc.StatusCode.PERMISSION_DENIED
        c.unload_model("stories260K")
        with pytest.raises(lesion.NotFound):
            c.unload_model("nope")
    with lesion.Client(address, token="bad") as c:
        with pytest.raises(lesion.Unauthenticated) as ei:
            c.models()
        assert ei.value.details == "unknown token"


def test_submit_wait_result(fake, capsys):
    servicer, address = fake
    c = lesion.Client(address, timeout=5)
    h = c.submit(spec())
    assert h.id == "e1" and h.record.status == "queued" and h.record.spec.name == "ppl"
    record = h.wait(progress=True)
    assert record.status == "done" and record.passes_done == 4 and str(record.finished.year) == "2023"
    assert "4/4" in capsys.readouterr().err  # the tqdm bar
    r = h.result()
    assert r.perplexity.baseline == 4.0
    # the watch's final record had captures, so no extra GetExperiment was needed
    assert r.captures["baseline"]["blocks.0.resid_post"].shape == (1, 4, 64)
    assert h.status() == "done"
    # a later fetch by id asks for captures
    r2 = c.result("e1")
    assert servicer.requests[-1].include_captures is True and r2.captures["intervened"]
    c.close()


def test_run_and_failure(fake):
    _, address = fake
    c = lesion.Client(address, timeout=5)
    r = c.run(spec(), progress=False)
    assert r.metric("perplexity")["delta_pct"] == 50.0
    with pytest.raises(lesion.ExperimentFailed, match="failed: RESOURCE_EXHAUSTED: device out of memory") as ei:
        c.run(spec(name="fails"), progress=False)
    assert ei.value.record.status == "failed"
    assert ei.value.record.error_code == "RESOURCE_EXHAUSTED"
    assert ei.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED, "the failure's own code"
    with pytest.raises(lesion.NotFound, match="not loaded") as ei:
        c.submit(spec(model="gpt2"))
    assert ei.value.rpc == "SubmitExperiment"
    with pytest.raises(lesion.NotFound):
        c.get("nope")
    with pytest.raises(lesion.NotFound):
        list(c.watch("nope"))
    results = c.run_many([spec("a"), spec("b")], progress=False)
    assert len(results) == 2


def test_cancel_resubmit(fake):
    _, address = fake
    c = lesion.Client(address, timeout=5)
    h = c.submit(spec())
    rec = h.cancel()
    assert rec.status == "cancelled"
    with pytest.raises(lesion.ExperimentFailed) as ei:
        h.result()
    assert ei.value.code is grpc.StatusCode.CANCELLED
    h2 = c.resubmit(h.id)
    assert h2.id != h.id and h2.record.spec.to_proto() == spec().to_proto()
    h2.wait(progress=False)
    with pytest.raises(lesion.LesionError) as ei:
        c.cancel(h2.id)
    assert ei.value.code is grpc.StatusCode.FAILED_PRECONDITION


def test_experiments_frame(fake):
    servicer, address = fake
    c = lesion.Client(address, timeout=5)
    c.run(spec("one"), progress=False)
    c.submit(spec("two"))
    df = c.experiments(where='model = "stories260K"', order_by="created desc", limit=10, wide=True)
    req = servicer.requests[-1]
    assert (req.where, req.order_by, req.limit, req.include_results) == (
        'model = "stories260K"',
        "created desc",
        10,
        True,
    )
    assert list(df.columns[:8]) == ["id", "user", "name", "model", "status", "created", "finished", "tags"]
    assert df.attrs["total"] == 2 and list(df["status"]) == ["done", "queued"]
    assert df.loc[0, "status"] == "DONE"  # the spelling of the enum names, for older code
    assert df.loc[0, "metric.perplexity.delta_pct"] == 50.0 and df.loc[0, "metric.perplexity.value"] == 6.0
    assert df.loc[0, "intervention.head_ablation.layer"] == 1
    assert df.loc[0, "intervention.head_ablation.heads"] == (3,)
    assert df.loc[0, "dataset.named"] == "tinystories-sample" and df.loc[0, "measurements"] == "perplexity,capture"
    assert df.loc[0, "tags"] == ("t",)
    fig = lesion.plots.perplexity_change_per_head(df.iloc[:1])
    assert fig.axes[0].get_xticklabels()[0].get_text() == "L1.H3"
    with pytest.raises(lesion.InvalidArgument, match="unknown field"):
        c.experiments(where="bogus")
    assert c.experiments(offset=5).empty and list(c.experiments(offset=5).columns) == COMPACT_COLUMNS


def test_unreachable_server_is_a_lesion_error():
    c = lesion.Client("127.0.0.1:1", timeout=0.5)
    with pytest.raises(lesion.LesionError) as ei:
        c.models()
    assert ei.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    with pytest.raises(lesion.LesionError, match="no lesiond"):
        c.wait_ready(0.2)


def test_local_passes_hugging_face_cache_references_through(tmp_path, monkeypatch):
    from lesion import local

    monkeypatch.chdir(tmp_path)
    for ref, name in [
        ("openai-community/gpt2", "gpt2"),
        ("org/m@v1.0", "m"),
        ("org/m@some/branch", "m"),
        ("org/q-GGUF/q.Q8_0.gguf", "q-GGUF"),
    ]:
        assert local.model_reference(ref) == (name, ref)
        assert local.build_command("/bin/lesiond", ref, 5000, "db")[-1] == f"{name}={ref}"
    (tmp_path / "org" / "m").mkdir(parents=True)  # an existing directory wins
    assert local.model_reference("org/m") == ("m", str(tmp_path / "org" / "m"))
    for missing in ("/no/such/dir", "./no/such", "plainname"):
        with pytest.raises(lesion.LesionError, match="model directory not found"):
            local.model_reference(missing)


def test_local_command_line_and_errors(tmp_path, monkeypatch):
    from lesion import local

    cmd = local.build_command("/bin/lesiond", tmp_path, 5000, tmp_path / "db")
    assert cmd == [
        "/bin/lesiond",
        "--listen",
        "127.0.0.1:5000",
        "--db",
        str(tmp_path / "db"),
        "--model",
        f"{tmp_path.name}={tmp_path}",
    ]
    with pytest.raises(lesion.LesionError, match="model directory not found"):
        lesion.Client.local(tmp_path / "missing")
    with pytest.raises(lesion.LesionError, match="lesiond binary not found"):
        lesion.Client.local(tmp_path, lesiond=tmp_path / "no-such-binary")
    # a "server" that exits at once: the error carries its output
    fake = tmp_path / "lesiond"
    fake.write_text('#!/bin/sh\necho "bad flag $1" >&2\nexit 3\n')
    fake.chmod(0o755)
    with pytest.raises(lesion.LesionError, match="exited with status 3") as ei:
        lesion.Client.local(tmp_path, lesiond=fake)
    assert "bad flag --listen" in ei.value.details
    # one that prints the ready line and serves nothing: Client.local returns, close() stops it
    fake.write_text('#!/bin/sh\necho "lesiond listening on 127.0.0.1:$(echo $2 | cut -d: -f2)"\nexec sleep 60\n')
    c = lesion.Client.local(tmp_path, lesiond=fake, startup_timeout=10)
    assert c.model == tmp_path.name and c.address.startswith("127.0.0.1:") and c.process.proc.poll() is None
    c.close()
    assert c.process.proc.poll() is not None
    # a GGUF file is named without its extension, and name= overrides any default
    gguf_file = tmp_path / "Tiny.Q4_1.gguf"
    gguf_file.write_bytes(b"GGUF")
    assert local.model_reference(gguf_file) == ("Tiny.Q4_1", str(gguf_file.resolve()))
    c = lesion.Client.local(gguf_file, lesiond=fake, startup_timeout=10, name="tiny")
    assert c.model == "tiny"
    c.close()
    with pytest.raises(lesion.LesionError, match="model name"):
        lesion.Client.local(gguf_file, lesiond=fake, name="a b")
    # and one that never gets ready
    fake.write_text("#!/bin/sh\nexec sleep 60\n")
    with pytest.raises(lesion.LesionError, match="did not print") as ei:
        lesion.Client.local(tmp_path, lesiond=fake, startup_timeout=0.5)
    assert ei.value.code is grpc.StatusCode.DEADLINE_EXCEEDED


def head_sweep_spec(name="heads"):
    return lesion.Experiment(
        model="stories260K",
        name=name,
        dataset=lesion.Dataset.named("tinystories-sample"),
        measurements=[lesion.Perplexity()],
        sweep=lesion.Sweep([lesion.HeadSweep()]),
    )


def test_sweep_run_progress_and_result(fake, capsys):
    servicer, address = fake
    c = lesion.Client(address, timeout=5)
    h = c.submit(head_sweep_spec())
    assert h.record.is_sweep and h.record.variants_total == 40 and h.record.variants_done == 0
    assert h.record.spec.sweep == lesion.Sweep([lesion.HeadSweep()])
    record = h.wait(progress=True)
    assert record.status == "done" and record.variants_done == 40
    err = capsys.readouterr().err
    assert "40/40" in err and "variant" in err  # the bar counts variants, not passes
    r = h.result()
    assert r.is_sweep and "sweep of 40 variants" in repr(r)
    assert r.perplexity.baseline == 4.0 and np.isnan(r.perplexity.intervened)
    table = r.sweep
    assert list(table.columns) == ["name", "experiment_id", "perplexity", "perplexity_delta_pct", "kl_divergence"]
    assert len(table) == 40 and table.attrs["variants_per_pass"] == 8
    assert table.loc[13, "name"] == "L1.H5" and table.loc[13, "experiment_id"] == f"{h.id}.13"
    assert table.loc[13, "perplexity_delta_pct"] == 13.0
    child = c.get(f"{h.id}.13")
    assert child.parent_id == h.id and child.variant_index == 13 and not child.is_sweep
    assert child.spec.name == "heads/L1.H5" and child.spec.sweep is None
    with pytest.raises(lesion.LesionError, match="cancel the sweep") as ei:
        c.cancel(child.id)
    assert ei.value.code is grpc.StatusCode.FAILED_PRECONDITION
    # a result that is not a sweep's has an empty table
    assert not make_result().HasField("sweep")
    plain = lesion.Result(make_result())
    assert not plain.is_sweep and plain.sweep.empty and list(plain.sweep.columns) == list(table.columns)


def test_variants_pages_through_every_child(fake):
    servicer, address = fake
    servicer.page_cap = 7
    c = lesion.Client(address, timeout=5)
    c.run(spec("before"), progress=False)
    h = c.submit(head_sweep_spec())
    h.wait(progress=False)
    servicer.requests.clear()
    df = c.variants(h.id, wide=True)
    lists = [r for r in servicer.requests if isinstance(r, service_pb2.ListExperimentsRequest)]
    assert [r.offset for r in lists] == [0, 7, 14, 21, 28, 35]
    assert all(r.limit == 10000 and r.include_results and r.where == f'parent = "{h.id}"' for r in lists)
    assert len(df) == 40 and df.attrs["total"] == 40 and df.attrs["parent"] == h.id
    assert list(df.columns[:10]) == [
        "id",
        "user",
        "name",
        "model",
        "status",
        "created",
        "finished",
        "tags",
        "variant",
        "index",
    ]
    assert list(df["index"]) == list(range(40)) and list(df["id"]) == [f"{h.id}.{i}" for i in range(40)]
    assert df.loc[13, "variant"] == "L1.H5" and (df["status"] == "done").all() and (df["parent_id"] == h.id).all()
    assert df.loc[13, "metric.perplexity.delta_pct"] == 13.0
    assert df.loc[13, "intervention.head_ablation.layer"] == 1 and df.loc[0, "intervention.head_ablation.layer"] == 0
    # the same columns as experiments() (which also lists the parent and the other experiment)
    every = c.experiments(limit=100, wide=True)
    assert set(df.columns) - set(every.columns) == {"variant", "index"}
    assert set(c.variants(h.id).columns) - set(c.experiments(limit=100).columns) == {"variant", "index"}
    assert every.set_index("id").loc[h.id, "variants_total"] == 40
    assert every.set_index("id").loc[h.id, "sweep"] == "heads"
    # without metrics: no results fetched, no metric columns; include_results: Result objects
    servicer.requests.clear()
    bare = c.variants(h.id, metrics=False)
    assert not any(col.startswith("metric.") for col in bare.columns)
    assert not any(r.include_results for r in servicer.requests if isinstance(r, service_pb2.ListExperimentsRequest))
    full = c.variants(h, include_results=True)
    assert isinstance(full.loc[5, "result"], lesion.Result)
    assert full.loc[5, "result"].metric("perplexity")["delta_pct"] == 5.0
    assert h.variants(metrics=False)["variant"].tolist() == bare["variant"].tolist()
    with pytest.raises(lesion.NotFound):
        c.variants("nope")
    # the per-head plot from the parent's Result, its table, and the variants frame
    r = h.result()
    for data in (r, r.sweep, df, c.get(h.id)):
        fig = lesion.plots.perplexity_change_per_head(data, sort=True)
        labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
        assert len(labels) == 40 and labels[0] == "L4.H7" and labels[-1] == "L0.H0"


def test_variants_of_an_unnamed_sweep_in_progress(fake):
    servicer, address = fake
    c = lesion.Client(address, timeout=5)
    h = c.submit(
        lesion.Experiment(
            model="stories260K",
            dataset=lesion.Dataset.text("hi"),
            measurements=[lesion.Perplexity()],
            sweep=lesion.Variants(
                [("a", lesion.HeadAblation(0, [1])), lesion.Variant("b", [lesion.HeadAblation(1, [2])])]
            ),
        )
    )
    df = c.variants(h.id)  # queued: no parent table yet, the names come from the children's
    assert df["variant"].tolist() == ["a", "b"] and df["status"].tolist() == ["queued", "queued"]
    assert df["metric.perplexity.value"].isna().all()  # no results yet: NaN, never 0


def test_status_is_spelled_as_the_query_language_spells_it(fake, capsys):
    """Records, frames and reprs show "done", as `where='status = "done"'` spells it."""
    servicer, address = fake
    c = lesion.Client(address, timeout=5)
    h = c.submit(spec("one"))
    assert h.record.status == "queued" and "queued" in repr(h) and "QUEUED" not in repr(h)
    record = h.wait(progress=True)
    assert str(record.status) == "done" and record.done and "done" in capsys.readouterr().err
    assert record.status == "DONE" and not record.status != "DONE"  # older code's spelling still compares
    assert record.status in {"done"} and repr(record).count("status='done'") == 1
    assert c.experiments()["status"].tolist() == ["done"]
    assert {str(s) for s in c.experiments(wide=True)["status"]} == {"done"}
    with pytest.raises(lesion.ExperimentFailed, match="experiment e2 failed: ") as ei:
        c.run(spec(name="fails"), progress=False)
    assert ei.value.record.status == "failed"


def test_experiments_compact_by_default_wide_on_request(fake):
    """An experiment with a metric per head (attention sinks) keeps the default frame narrow."""
    servicer, address = fake
    c = lesion.Client(address, timeout=5)
    c.run(spec("one"), progress=False)
    e = servicer.experiments["e1"]
    e.started_unix_micros = 1_700_000_000_500_000  # finished 0.5 s later
    for l in range(30):
        for h in range(9):
            e.result.metrics.add(name=f"attention_sink:L{l}.H{h}", baseline=0.1, value=0.2, delta=0.1, delta_pct=100)
    c.submit(spec("two"))  # queued: no result, no metrics
    df = c.experiments()
    assert list(df.columns) == COMPACT_COLUMNS and len(df.columns) <= 20
    assert df.loc[0, "metric.perplexity.value"] == 6.0 and df.loc[0, "metric.perplexity.delta_pct"] == 50.0
    assert df.loc[0, "metric.kl_divergence.value"] == pytest.approx(0.0063)
    assert df.loc[0, "seconds"] == 0.5 and np.isnan(df.loc[1, "seconds"])
    assert df.loc[0, "interventions"] == "head_ablation" and df.loc[0, "error"] == ""
    assert np.isnan(df.loc[1, "metric.perplexity.value"]), "not measured (yet): NaN, never 0"
    wide = c.experiments(wide=True)
    assert len(wide.columns) > 4 * 270 and set(COMPACT_COLUMNS) <= set(wide.columns)
    assert wide.loc[0, "metric.attention_sink:L29.H8.value"] == 0.2
    assert wide.loc[0, "intervention.head_ablation.heads"] == (3,)
    assert np.isnan(wide.loc[0, "metric.kl_divergence.delta_pct"]), "undefined against a baseline of 0"
    bare = c.experiments(metrics=False)
    assert list(bare.columns) == [col for col in COMPACT_COLUMNS if not col.startswith("metric.")]


def test_record_and_handle_html(fake):
    servicer, address = fake
    c = lesion.Client(address, timeout=5)
    h = c.submit(spec("<b>bold</b> & co"))
    page = h._repr_html_()
    assert page.startswith("<table>") and "lesion.Handle" in page and "queued" in page
    assert "<b>bold</b>" not in page and "&lt;b&gt;bold&lt;/b&gt; &amp; co" in page
    record = h.wait(progress=False)
    page = record._repr_html_()
    assert "lesion.ExperimentRecord" in page and "done" in page and "perplexity, intervened" in page
    assert "6 (+50.000%)" in page


def test_no_client_frame_has_a_python_keyword_for_a_column(fake):
    import keyword

    servicer, address = fake
    c = lesion.Client(address, timeout=5)
    c.run(spec("one"), progress=False)
    h = c.submit(head_sweep_spec())
    h.wait(progress=False)
    for df in (c.experiments(), c.experiments(wide=True), c.variants(h.id), c.variants(h.id, wide=True)):
        assert not [col for col in df.columns if keyword.iskeyword(col) or keyword.issoftkeyword(col)]


def fake_binary(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def test_find_lesiond_searches_and_says_how_to_get_it(tmp_path, monkeypatch):
    """explicit, $LESIOND, PATH, then build/server/lesiond above the model or the current directory;
    the error when none is found says how to build it and how to point at it."""
    from lesion import local

    monkeypatch.setattr(local, "_install_dirs", lambda: [])  # not the checkout these tests run in
    monkeypatch.delenv("LESIOND", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    elsewhere = tmp_path / "notebooks"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    repo = tmp_path / "lesion"
    model = repo / "models" / "stories260K"
    model.mkdir(parents=True)

    with pytest.raises(lesion.LesionError, match="lesiond not found") as ei:
        local.find_lesiond(near=[model])
    message = ei.value.details
    for what in ("run `make`", "build/server/lesiond", "LESIOND=", "on PATH", "lesiond=PATH", str(model)):
        assert what in message, what

    built = fake_binary(repo / "build" / "server" / "lesiond")
    assert local.find_lesiond(near=[model]) == built  # a build tree above the model
    with pytest.raises(lesion.LesionError, match="lesiond not found"):
        local.find_lesiond()  # neither the model nor the current directory is in the checkout
    monkeypatch.chdir(model)
    assert local.find_lesiond() == built  # the current directory inside the checkout
    monkeypatch.chdir(repo)
    assert local.find_lesiond(near=["models/stories260K"]) == built  # README's relative path

    on_path = fake_binary(tmp_path / "bin" / "lesiond")
    monkeypatch.setenv("PATH", str(on_path.parent))
    assert local.find_lesiond(near=[model]) == on_path  # PATH before build trees
    env = fake_binary(tmp_path / "env" / "lesiond")
    monkeypatch.setenv("LESIOND", str(env))
    assert local.find_lesiond(near=[model]) == env  # $LESIOND before PATH
    explicit = fake_binary(tmp_path / "mine" / "lesiond")
    assert local.find_lesiond(explicit, near=[model]) == explicit
    monkeypatch.setenv("LESIOND", str(tmp_path / "gone"))
    with pytest.raises(lesion.LesionError, match="no such file; lesiond is built from the lesion repository"):
        local.find_lesiond()


def test_find_lesiond_from_the_checkout_the_package_was_installed_from(tmp_path, monkeypatch):
    from lesion import local

    checkout = tmp_path / "lesion"
    built = fake_binary(checkout / "build" / "server" / "lesiond")
    monkeypatch.setattr(local, "_source_checkout", lambda: checkout / "client" / "python")
    monkeypatch.delenv("LESIOND", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.chdir(tmp_path)
    assert local.find_lesiond() == built


def test_local_names_the_model_as_asked(tmp_path, monkeypatch):
    """Client.local(dir, name=...) serves the model under that name (its --model flag), and by
    default under the directory's basename."""
    fake = tmp_path / "lesiond"
    fake.write_text('#!/bin/sh\necho "lesiond listening on 127.0.0.1:$(echo $2 | cut -d: -f2)"\nexec sleep 60\n')
    fake.chmod(0o755)
    model = tmp_path / "models" / "stories260K"
    model.mkdir(parents=True)
    with lesion.Client.local(model, lesiond=fake, name="tiny-stories", startup_timeout=10) as c:
        assert c.model == "tiny-stories"
        assert c.process.cmd[c.process.cmd.index("--model") + 1] == f"tiny-stories={model}"
    with lesion.Client.local(model, lesiond=fake, startup_timeout=10) as c:
        assert c.model == "stories260K" and f"stories260K={model}" in c.process.cmd
    monkeypatch.setenv("LESIOND", str(fake))  # found without lesiond=, as in the README
    with lesion.Client.local(model, startup_timeout=10) as c:
        assert c.process.cmd[0] == str(fake)


def test_observational_run_through_the_client(fake):
    """A spec without interventions comes back observational (as lesiond sends it): the record's
    table and the frames show one pass."""
    servicer, address = fake
    c = lesion.Client(address, timeout=5)
    observe = spec("observe").replace(interventions=(), measurements=[lesion.Perplexity(), lesion.TokenOutputs()])
    h = c.submit(observe)
    r = h.result()
    assert r.is_observational and r.perplexity.baseline == 4.0 and list(r.metrics.columns) == ["name", "value"]
    assert servicer.experiments[h.id].spec.measurements[1].token_outputs.top_k == 5
    assert len(r.token_outputs()) == 4 and r.token_outputs("intervened").empty
    page = h.record._repr_html_()
    assert "none: one pass" in page and "perplexity, intervened" not in page and "+0.000%" not in page
    df = c.experiments(wide=True)
    row = df.set_index("id").loc[h.id]
    assert row["interventions"] == "" and row["metric.perplexity.value"] == row["metric.perplexity.baseline"] == 4.0
    assert row["measurements"] == "perplexity,token_outputs"
    # the same client, an ablation: both passes again
    assert not c.run(spec("ablate"), progress=False).is_observational
