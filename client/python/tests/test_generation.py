"""Client.generate: against the real lesiond on the bundled stories260K (fixture `server`; skipped
until lesiond is built), equal to `lesion generate --json` of the CLI (build/client/cpp/lesion, or
$LESION_CLI) for the same prompt and spec; and against an in-process fake lesiond for the request's
fields, the stream's protocol and cancellation."""

import json
import os
import subprocess
import threading
import time
from concurrent import futures

import grpc
import numpy as np
import pytest

import lesion
from conftest import ROOT, STORIES
from lesion._proto import service_pb2, service_pb2_grpc
from lesion.generation import FRAME_COLUMNS, generate_request

CLI = os.environ.get("LESION_CLI", str(ROOT / "build" / "client" / "cpp" / "lesion"))
PROMPT = "Once upon a time"
# Every head of layer 1: the greedy continuation turns at step 8 (" girl named Lily" -> " girly cat named Tom").
ABLATION = lesion.HeadAblation(layer=1, heads=range(8))
# A fixed random direction added to layer 3's residual stream at every position.
DIRECTION = np.random.default_rng(0).standard_normal(64)
STEERING = lesion.Steer("blocks.3.resid_post", DIRECTION, 1.0)
LOGPROB_TOL = 1e-9  # the CLI and lesiond run the same code on the same CPU


def cli_generate(tmp_path, interventions=(), prompt=PROMPT, *extra, max_tokens=24):
    """`lesion generate --json` on stories260K with a spec file of `interventions` (builders)."""
    if not (os.path.isfile(CLI) and os.access(CLI, os.X_OK)):
        pytest.skip(f"the lesion CLI is not built at {CLI} (build it, or set LESION_CLI)")
    args = [CLI, "generate", "--model", str(STORIES), "--prompt", prompt, "--max-tokens", str(max_tokens), "--json"]
    if interventions:
        spec = tmp_path / "spec.json"
        spec.write_text(json.dumps({"interventions": [i.to_dict() for i in interventions]}))
        args += ["--spec", str(spec)]
    proc = subprocess.run([*args, *map(str, extra)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def assert_same(gen, want):
    """A Generation equals the CLI's JSON: prompt ids, and per run the ids, texts and log-probs."""
    got = gen.to_dict()
    assert got["prompt_ids"] == want["prompt_ids"]
    assert ("baseline" in got) == ("baseline" in want) and ("intervened" in got) == ("intervened" in want)
    for run in ("baseline", "intervened"):
        if run not in want:
            continue
        assert got[run]["ids"] == want[run]["ids"], run
        assert got[run]["text"] == want[run]["text"], run
        assert got[run]["logprobs"] == pytest.approx(want[run]["logprobs"], abs=LOGPROB_TOL), run


# ------------------------------------------------------------------------------- the real lesiond


@pytest.mark.parametrize("intervention", [ABLATION, STEERING], ids=["head_ablation", "steering"])
def test_greedy_generation_equals_the_cli(server, tmp_path, intervention):
    gen = server.generate(server.model, PROMPT, interventions=[intervention], max_new_tokens=24)
    assert_same(gen, cli_generate(tmp_path, [intervention]))
    assert gen.has_baseline and gen.has_intervened and not gen.sampled
    assert gen.prompt_ids[0] == 1 and len(gen.baseline_ids) == len(gen.intervened_ids) == 24
    assert gen.baseline_text.startswith(", there was a little girl named Lily")
    assert gen.first_difference is not None and gen.baseline_ids != gen.intervened_ids
    if intervention is ABLATION:
        assert gen.first_difference == 8 and "Tom" in gen.intervened_text
    # each token's text is what it adds to the continuation; the logprobs are the model's (<= 0)
    assert "".join(gen.baseline_tokens) == gen.baseline_text
    assert all(lp <= 0 for lp in gen.baseline_logprobs + gen.intervened_logprobs)
    assert gen.logprob("baseline") == pytest.approx(sum(gen.baseline_logprobs))
    assert gen.interventions == (intervention.to_dict(),)


def test_the_frame_has_a_row_per_step(server):
    gen = server.generate(server.model, PROMPT, interventions=[ABLATION], max_new_tokens=12)
    df = gen.frame()
    assert list(df.columns) == list(FRAME_COLUMNS) and len(df) == 12
    assert df["step"].tolist() == list(range(12))
    assert df["baseline_id"].tolist() == list(gen.baseline_ids)
    assert df["intervened_id"].tolist() == list(gen.intervened_ids)
    assert df["intervened_logprob"].tolist() == list(gen.intervened_logprobs)
    assert df["baseline_text"].tolist() == list(gen.baseline_tokens)
    assert df.loc[1, "baseline_text"] == " there"
    assert "".join(df["baseline_text"]) == gen.baseline_text


def test_every_intervention_kind_generates_as_the_cli(server, tmp_path):
    """Weight edits, norm-channel resets, attention-bias slots, projections and patches act in every
    step as the CLI has them, all together; the weights are restored for the next call."""
    n_kv, head_dim = 4, 8
    rng = np.random.default_rng(1)
    interventions = [
        lesion.WeightEdit.set(layer=1, module="mlp.down", row=3, col=7, value=40.0),
        lesion.NormChannelReset(layer=2, norm="mlp", channels=[5, 9], mode="value", value=3.0),
        lesion.AttentionBias(layer=0, key=rng.standard_normal((n_kv, head_dim)), value=rng.standard_normal(32)),
        lesion.ProjectOut("blocks.2.resid_post", DIRECTION),
        lesion.Patch("blocks.0.resid_post", positions=[3, 7], vectors=rng.standard_normal((2, 64))),
    ]
    gen = server.generate(server.model, PROMPT, interventions=interventions, max_new_tokens=16)
    assert_same(gen, cli_generate(tmp_path, interventions, max_tokens=16))
    assert gen.first_difference is not None
    plain = server.generate(server.model, PROMPT, max_new_tokens=16)
    assert plain.baseline_ids == gen.baseline_ids and plain.baseline_logprobs == gen.baseline_logprobs
    assert not plain.has_intervened and plain.intervened_ids == () and plain.first_difference is None


def test_seeded_sampling_repeats_with_its_seed(server, tmp_path):
    kw = dict(interventions=[STEERING], max_new_tokens=24, temperature=1.0, top_k=20)
    first = server.generate(server.model, PROMPT, seed=7, **kw)
    again = server.generate(server.model, PROMPT, seed=7, **kw)
    other = server.generate(server.model, PROMPT, seed=8, **kw)
    assert first.sampled and first.to_dict() == again.to_dict()
    assert other.baseline_ids != first.baseline_ids
    greedy = server.generate(server.model, PROMPT, max_new_tokens=24)
    assert first.baseline_ids != greedy.baseline_ids, "sampling at temperature 1 gave the greedy tokens"
    want = cli_generate(tmp_path, [STEERING], PROMPT, "--temperature", "1.0", "--top-k", "20", "--seed", "7")
    assert_same(first, want)


def test_ids_and_no_baseline(server):
    by_text = server.generate(server.model, PROMPT, interventions=[ABLATION], max_new_tokens=10)
    ids = np.array(by_text.prompt_ids)
    by_ids = server.generate(server.model, ids=ids, interventions=[ABLATION], max_new_tokens=10)
    assert by_ids.prompt is None and by_ids.prompt_ids == by_text.prompt_ids
    assert by_ids.to_dict()["baseline"] == by_text.to_dict()["baseline"]
    alone = server.generate(server.model, PROMPT, interventions=[ABLATION], max_new_tokens=10, baseline=False)
    assert not alone.has_baseline and alone.baseline_ids == () and "baseline" not in alone.to_dict()
    assert alone.intervened_ids == by_text.intervened_ids and alone.intervened_logprobs == by_text.intervened_logprobs
    assert alone.frame()["baseline_id"].isna().all() and alone.first_difference is None
    assert "baseline:" not in repr(alone) and "intervened:" in repr(alone)


def test_stream_yields_the_tokens_in_order_then_the_generation(server):
    want = server.generate(server.model, PROMPT, interventions=[STEERING], max_new_tokens=15)
    items = list(server.generate(server.model, PROMPT, interventions=[STEERING], max_new_tokens=15, stream=True))
    *tokens, last = items
    assert isinstance(last, lesion.Generation) and last.to_dict() == want.to_dict()
    assert all(isinstance(t, lesion.TokenEvent) for t in tokens) and len(tokens) == 30
    assert [t.intervened for t in tokens] == [False] * 15 + [True] * 15, "the baseline streams first"
    assert [t.id for t in tokens] == list(want.baseline_ids + want.intervened_ids)
    assert [t.logprob for t in tokens] == list(want.baseline_logprobs + want.intervened_logprobs)
    assert [t.text for t in tokens] == list(want.baseline_tokens + want.intervened_tokens)
    assert tokens[1] == (False, want.baseline_ids[1], want.baseline_logprobs[1], want.baseline_tokens[1])


@pytest.mark.parametrize(
    "intervention",
    [lesion.HeadAblation(layer=0, heads=[1], mode="mean"), lesion.ActivationEdit("blocks.1.attn_out", op="mean")],
    ids=["head_ablation", "activation_edit"],
)
def test_a_mean_mode_is_refused_naming_it(server, intervention):
    for stream in (False, True):
        with pytest.raises(lesion.InvalidArgument, match=r"interventions\[1\]: MEAN mode") as error:
            out = server.generate(server.model, PROMPT, interventions=[STEERING, intervention], stream=stream)
            if stream:
                next(out)
        assert error.value.code is grpc.StatusCode.INVALID_ARGUMENT and error.value.rpc == "Generate"


def test_what_else_the_server_refuses(server):
    past = lesion.ActivationEdit("embed", positions=[5 + 10], op="zero")  # prompt 5 + 10 new: 0..14
    with pytest.raises(lesion.InvalidArgument, match="position 15 lies beyond"):
        server.generate(server.model, PROMPT, interventions=[past], max_new_tokens=10)
    with pytest.raises(lesion.InvalidArgument, match="layer 9"):
        server.generate(server.model, PROMPT, interventions=[lesion.HeadAblation(layer=9, heads=[0])])
    with pytest.raises(lesion.InvalidArgument, match="token id 600"):
        server.generate(server.model, ids=[1, 600])
    with pytest.raises(lesion.NotFound):
        server.generate("no-such-model", PROMPT)


def running(server):
    return [d["running_id"] for d in server.status()["devices"] if d["running_id"]]


def wait_idle(server, seconds=10.0):
    """Whether the server's executors are idle within `seconds`."""
    deadline = time.monotonic() + seconds
    while running(server):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_closing_the_stream_cancels_the_generation(server):
    """4096 tokens take lesiond about a minute on stories260K on a CPU; the stream is closed after
    three, the job leaves the executor at once, and the next call is answered as before."""
    want = server.generate(server.model, PROMPT, interventions=[ABLATION], max_new_tokens=8)
    events = server.generate(server.model, PROMPT, max_new_tokens=4096, stream=True)
    first = [next(events) for _ in range(3)]
    assert [t.id for t in first] == list(want.baseline_ids[:3])
    assert [r for r in running(server) if r.startswith("generate-")], "the generation is not running"
    events.close()
    assert wait_idle(server), f"still running after the stream was closed: {running(server)}"
    after = server.generate(server.model, PROMPT, interventions=[ABLATION], max_new_tokens=8, timeout=30)
    assert after.to_dict() == want.to_dict()
    # breaking out of a for-loop does the same
    for item in server.generate(server.model, PROMPT, max_new_tokens=4096, stream=True):
        assert isinstance(item, lesion.TokenEvent)
        break
    assert wait_idle(server), f"still running after the loop was left: {running(server)}"
    assert server.generate(server.model, PROMPT, max_new_tokens=8, timeout=30).baseline_ids == want.baseline_ids
    assert all(d["queued"] == 0 for d in server.status()["devices"])


def test_a_deadline_cancels_the_generation(server):
    with pytest.raises(lesion.LesionError) as error:
        server.generate(server.model, PROMPT, max_new_tokens=4096, timeout=0.5)
    assert error.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert wait_idle(server), f"still running after the deadline: {running(server)}"
    assert len(server.generate(server.model, PROMPT, max_new_tokens=4, timeout=30).baseline_ids) == 4


def test_repr_and_html_show_both_runs(server):
    gen = server.generate(server.model, PROMPT, interventions=[ABLATION], max_new_tokens=12)
    text = repr(gen)
    assert "'stories260K'" in text and "greedy" in text and "first difference at step 8" in text
    assert repr(gen.baseline_text) in text and repr(gen.intervened_text) in text
    page = gen._repr_html_()
    assert page.count("<th") == 2 and "baseline" in page and "intervened" in page
    assert "first difference at step 8" in page and page.count("#fde2b8") == 12 - 8 + 12 - 8
    assert "&#x27;Once upon a time&#x27;" in page  # the prompt, escaped


# ------------------------------------------------------------------------------------ a fake lesiond


class FakeGenerate(service_pb2_grpc.LesionServicer):
    """Generate only: answers with `script(request, context)` (default_script unless set) and
    records the requests, their metadata and when a call ended."""

    def __init__(self):
        self.requests, self.metadata = [], []
        self.script = None
        self.ended = threading.Event()

    def Generate(self, request, context):
        self.requests.append(request)
        self.metadata.append(dict(context.invocation_metadata()))
        context.add_callback(self.ended.set)  # the call ended: finished, failed or cancelled
        yield from (self.script or default_script)(request, context)


def token(intervened, id, logprob=-0.5, text="x"):
    return service_pb2.GenerateEvent(
        token=service_pb2.GenerateEvent.Token(intervened=intervened, id=id, logprob=logprob, text=text)
    )


def default_script(request, context):
    yield token(False, 10, -0.1, "a")
    yield token(False, 11, -0.2, "b")
    yield token(True, 10, -0.3, "a")
    yield token(True, 12, -0.4, "<c>")
    yield service_pb2.GenerateEvent(
        done=service_pb2.GenerateEvent.Done(
            prompt_ids=[1, 5],
            baseline_ids=[10, 11],
            intervened_ids=[10, 12],
            baseline_text="ab",
            intervened_text="a<c>",
        )
    )


@pytest.fixture
def fake():
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = FakeGenerate()
    service_pb2_grpc.add_LesionServicer_to_server(servicer, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    yield servicer, lesion.Client(f"127.0.0.1:{port}", token="tok", timeout=5)
    grpc_server.stop(0)


def test_the_request_carries_every_argument(fake):
    servicer, client = fake
    interventions = [ABLATION, {"weight_edit": {"layer": 0, "module": "mlp.up", "row": 1, "col": 2, "op": "ZERO"}}]
    options = dict(max_new_tokens=2, temperature=0.7, top_k=3, seed=9)
    gen = client.generate("m", ids=[1, 5], interventions=interventions, **options)
    r = servicer.requests[-1]
    assert r.model == "m" and r.WhichOneof("prompt") == "ids" and list(r.ids.ids) == [1, 5]
    assert (r.max_new_tokens, r.temperature, r.top_k, r.seed, r.skip_baseline) == (2, 0.7, 3, 9, False)
    assert [i.WhichOneof("kind") for i in r.interventions] == ["head_ablation", "weight_edit"]
    assert list(r.interventions[0].head_ablation.heads) == list(range(8))
    assert servicer.metadata[-1]["authorization"] == "Bearer tok"
    assert gen.baseline_ids == (10, 11) and gen.intervened_ids == (10, 12) and gen.first_difference == 1
    assert gen.baseline_logprobs == (-0.1, -0.2) and gen.intervened_tokens == ("a", "<c>")
    assert gen.sampled and "temperature 0.7, top-3, seed 9" in repr(gen)
    assert "&lt;c&gt;" in gen._repr_html_() and "<c>" not in gen._repr_html_()
    client.generate("m", "hello", interventions=ABLATION, baseline=False)
    r = servicer.requests[-1]
    assert r.WhichOneof("prompt") == "text" and r.text == "hello" and r.skip_baseline
    assert (r.max_new_tokens, r.temperature, r.top_k, r.seed) == (64, 0.0, 0, 0)


def test_client_side_refusals(fake):
    servicer, client = fake
    for kwargs, needle in [
        (dict(), "give prompt= .* or ids="),
        (dict(prompt="a", ids=[1]), "one of them"),
        (dict(prompt=[1, 2]), "prompt must be text"),
        (dict(ids=[]), "non-empty"),
        (dict(ids=[1.5]), "integers"),
        (dict(ids=[-1]), "token ids must be in"),
        (dict(prompt="a", max_new_tokens=0), r"max_new_tokens must be in 1..4096"),
        (dict(prompt="a", max_new_tokens=4097), r"max_new_tokens must be in 1..4096"),
        (dict(prompt="a", temperature=-1), "temperature must be >= 0"),
        (dict(prompt="a", temperature=float("nan")), "temperature must be >= 0"),
        (dict(prompt="a", top_k=-1), "top_k must be in"),
        (dict(prompt="a", seed=-1), "seed must be in"),
        (dict(prompt="a", baseline=False), "baseline=False needs interventions"),
        (dict(prompt="a", interventions=[lesion.Perplexity()]), "expected one of"),
        (dict(prompt="a", interventions=5), "expected an intervention or a list"),
    ]:
        with pytest.raises(ValueError, match=needle):
            client.generate("m", **kwargs)
    with pytest.raises(ValueError, match="model must be"):
        generate_request("", "a")
    assert servicer.requests == []


def test_stream_protocol_and_what_a_broken_stream_raises(fake):
    servicer, client = fake
    items = list(client.generate("m", "a", interventions=[ABLATION], stream=True))
    assert [type(i).__name__ for i in items] == ["TokenEvent"] * 4 + ["Generation"]
    assert items[3] == lesion.TokenEvent(True, 12, -0.4, "<c>")

    def no_done(request, context):
        yield token(False, 10)

    servicer.script = no_done
    with pytest.raises(lesion.LesionError, match="without its final event") as error:
        client.generate("m", "a")
    assert error.value.code is grpc.StatusCode.INTERNAL

    def mismatch(request, context):
        yield token(False, 10)
        yield service_pb2.GenerateEvent(done=service_pb2.GenerateEvent.Done(prompt_ids=[1], baseline_ids=[11]))

    servicer.script = mismatch
    with pytest.raises(lesion.LesionError, match="differ from the final event"):
        client.generate("m", "a")

    def refused(request, context):
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full")
        yield  # a generator

    servicer.script = refused
    with pytest.raises(lesion.LesionError, match="queue full") as error:
        client.generate("m", "a")
    assert error.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED and error.value.rpc == "Generate"


def test_closing_the_stream_cancels_the_call(fake):
    servicer, client = fake

    def endless(request, context):
        i = 0
        while context.is_active():
            yield token(False, i % 500)
            i += 1
            time.sleep(0.01)

    servicer.script = endless  # it never ends unless the call is cancelled
    events = client.generate("m", "a", stream=True)
    assert next(events).id == 0 and next(events).id == 1
    assert not servicer.ended.is_set()
    events.close()
    assert servicer.ended.wait(5), "the server did not see the call cancelled"
