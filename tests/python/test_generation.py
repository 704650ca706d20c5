"""Generation under interventions (`lesion generate --spec`) against transformers decoding the same
prompt step by step with the same interventions done by hooks, on tiny random checkpoints.

lesion decodes through its KV cache; the reference recomputes the whole sequence every step
(transformers without a cache), so the hooks of an edit see every position at its place in the
sequence, and a sliding window (gemma2, qwen2_sliding: 4 tokens) and learned positions (gpt2, opt)
are crossed by the generated tokens. Greedy tokens must be equal and their log-probabilities
within 1e-5; sampled runs must repeat with their seed and their log-probabilities must be
transformers' for the tokens drawn."""

import json

import pytest
import torch

from conftest import LESIOND, STORIES, LesiondProcess, requires_cli, saved_checkpoints
from hf_reference import VOCAB, edit_site, make_model, zero_heads

pytestmark = [requires_cli, pytest.mark.usefixtures("single_torch_thread")]
KINDS = ["llama", "gpt2", "gemma2", "neox", "qwen2_sliding", "opt"]
TOL = 1e-5
PROMPT = torch.randint(1, VOCAB, (7,), generator=torch.Generator().manual_seed(17)).tolist()
NEW = 12


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return saved_checkpoints(tmp_path_factory.mktemp("generation"), fresh)


def fresh(kind):
    return make_model(kind, 700 + KINDS.index(kind))


def generate(cli, tmp_path, model_dir, interventions=None, *extra):
    ids = tmp_path / "prompt.json"
    ids.write_text(json.dumps(PROMPT))
    args = ["generate", "--model", model_dir, "--ids-json", ids, "--max-tokens", NEW, "--json", *extra]
    if interventions is not None:
        spec = tmp_path / "spec.json"
        spec.write_text(json.dumps({"interventions": interventions}))
        args += ["--spec", spec]
    return json.loads(cli(*args).stdout)


def hf_greedy(model):
    """(tokens, logprobs) of greedy decoding, recomputing the whole sequence each step."""
    ids, tokens, logprobs = list(PROMPT), [], []
    eos = model.config.eos_token_id
    for _ in range(NEW):
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].double(), -1)
        token = int(logp.argmax())
        tokens.append(token)
        logprobs.append(float(logp[token]))
        ids.append(token)
        if token == eos:
            break
    return tokens, logprobs


def hf_logprobs(model, tokens):
    """log p of each of `tokens` after the prompt and the tokens before it (teacher forcing)."""
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([PROMPT + tokens])).logits[0].double(), -1)
    return [float(logp[len(PROMPT) - 1 + i, t]) for i, t in enumerate(tokens)]


def changed(a, b):
    return a["ids"] != b["ids"] or max(abs(x - y) for x, y in zip(a["logprobs"], b["logprobs"], strict=False)) > 1e-3


def check(got, want, what):
    tokens, logprobs = want
    assert got["ids"] == tokens, f"{what}: tokens {got['ids']} != transformers {tokens}"
    diff = max(abs(a - b) for a, b in zip(got["logprobs"], logprobs, strict=True))
    assert diff < TOL, f"{what}: max |logprob diff| {diff}"


@pytest.mark.parametrize("kind", KINDS)
def test_greedy_decoding_with_interventions_matches_transformers(cli, tmp_path, checkpoint, kind):
    """A head ablation, steering of every position and a SET at a position the generation
    reaches (prompt 7 + 3): lesion's baseline and intervened runs against transformers'."""
    model = fresh(kind)
    d = model.config.hidden_size
    v = torch.randn(d, generator=torch.Generator().manual_seed(3))
    target = len(PROMPT) + 3
    interventions = [
        {"head_ablation": {"layer": 0, "heads": [1], "mode": "ZERO"}},
        {"activation_edit": {"site": "blocks.1.resid_post", "op": "ADD", "value": 2.0, "vector": v.tolist()}},
        dict(activation_edit=dict(site="blocks.0.mlp_out", positions=[target], dims=[2, 5], op="SET", value=9.0)),
    ]
    got = generate(cli, tmp_path, checkpoint(kind), interventions)
    check(got["baseline"], hf_greedy(model), f"{kind} baseline")

    def steer(x):
        return x + 2.0 * v

    def set_cells(x):
        if x.shape[1] > target:
            x[:, target, [2, 5]] = 9.0
        return x

    hooks = [zero_heads(model, 0, [1]), edit_site(model, "blocks.1.resid_post", steer)]
    hooks.append(edit_site(model, "blocks.0.mlp_out", set_cells))
    want = hf_greedy(model)
    for h in hooks:
        h.remove()
    check(got["intervened"], want, f"{kind} intervened")
    assert changed(got["baseline"], got["intervened"]), f"{kind}: the interventions change nothing"


@pytest.mark.parametrize("kind", ["llama", "gemma2"])
def test_sampling_repeats_with_its_seed_and_reports_transformers_logprobs(cli, tmp_path, checkpoint, kind):
    model = fresh(kind)
    first = generate(cli, tmp_path, checkpoint(kind), None, "--temperature", "1.5", "--top-k", "20", "--seed", "7")
    again = generate(cli, tmp_path, checkpoint(kind), None, "--temperature", "1.5", "--top-k", "20", "--seed", "7")
    other = generate(cli, tmp_path, checkpoint(kind), None, "--temperature", "1.5", "--top-k", "20", "--seed", "8")
    assert first == again
    assert other["baseline"]["ids"] != first["baseline"]["ids"]
    tokens = first["baseline"]["ids"]
    assert tokens != hf_greedy(model)[0], "sampling at temperature 1.5 gave the greedy tokens"
    diff = max(abs(a - b) for a, b in zip(first["baseline"]["logprobs"], hf_logprobs(model, tokens), strict=True))
    assert diff < TOL, f"{kind}: max |logprob diff| {diff}"
    # Every drawn token is among the 20 most likely at its step.
    with torch.no_grad():
        logits = model(torch.tensor([PROMPT + tokens])).logits[0]
    for i, t in enumerate(tokens):
        assert int((logits[len(PROMPT) - 1 + i] > logits[len(PROMPT) - 1 + i, t]).sum()) < 20


def test_weight_edits_apply_while_generating_and_are_restored(cli, tmp_path, checkpoint):
    model = fresh("llama")
    edit = {"weight_edit": {"layer": 1, "module": "mlp.down", "row": 3, "col": 7, "op": "SET", "value": 40.0}}
    got = generate(cli, tmp_path, checkpoint("llama"), [edit])
    base = hf_greedy(model)
    check(got["baseline"], base, "baseline before the edit")
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[3, 7] = 40.0
    check(got["intervened"], hf_greedy(model), "weight edit")
    assert changed(got["baseline"], got["intervened"]), "the weight edit changes nothing"


@pytest.mark.parametrize(
    "interventions, needle",
    [
        ([{"head_ablation": {"layer": 0, "heads": [1], "mode": "MEAN"}}], "MEAN mode needs a dataset's means"),
        (
            [{"activation_edit": {"site": "embed", "positions": [len(PROMPT) + NEW], "op": "ZERO"}}],
            f"position {len(PROMPT) + NEW} lies beyond",
        ),
        ([{"head_ablation": {"layer": 9, "heads": [1]}}], "layer 9 out of range"),
    ],
)
def test_what_cannot_apply_is_refused_before_decoding(cli, tmp_path, checkpoint, interventions, needle):
    ids = tmp_path / "prompt.json"
    ids.write_text(json.dumps(PROMPT))
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"interventions": interventions}))
    proc = cli(
        "generate", "--model", checkpoint("llama"), "--ids-json", ids, "--max-tokens", NEW, "--spec", spec, check=False
    )
    assert proc.returncode == 2 and needle in proc.stderr, proc.stderr


# --- lesiond's Generate --------------------------------------------------------------------------


def test_lesiond_streams_the_tokens_the_cli_generates(cli, tmp_path, pb):
    """The server's Generate on stories260K: tokens stream baseline first, then the intervened run,
    each with its text, and the final event equals `lesion generate --spec` on the same prompt."""
    grpc = pytest.importorskip("grpc")
    from google.protobuf import json_format

    if not LESIOND.is_file():
        pytest.skip(f"lesiond not built at {LESIOND}")
    ablation = [{"head_ablation": {"layer": 2, "heads": [0, 1, 2, 3, 4, 5, 6, 7], "mode": "ZERO"}}]
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"interventions": ablation}))
    want = json.loads(
        cli(
            "generate",
            "--model",
            STORIES,
            "--prompt",
            "Once upon a time",
            "--max-tokens",
            20,
            "--spec",
            spec,
            "--temperature",
            "0.8",
            "--seed",
            "3",
            "--json",
        ).stdout
    )
    server = LesiondProcess(tmp_path, "--model", f"stories={STORIES}")
    try:
        stub = pb.grpc.LesionStub(server.channel)
        request = pb.service.GenerateRequest(
            model="stories", text="Once upon a time", max_new_tokens=20, temperature=0.8, seed=3
        )
        request.interventions.extend([json_format.ParseDict(i, pb.experiment.Intervention()) for i in ablation])
        events = list(stub.Generate(request, timeout=120))
        tokens = [e.token for e in events if e.HasField("token")]
        done = events[-1].done
        assert events[-1].HasField("done") and len(tokens) == len(events) - 1
        base = [t.id for t in tokens if not t.intervened]
        inter = [t.id for t in tokens if t.intervened]
        assert tokens[: len(base)] == [t for t in tokens if not t.intervened], "the baseline streams first"
        assert base == want["baseline"]["ids"] == list(done.baseline_ids)
        assert inter == want["intervened"]["ids"] == list(done.intervened_ids)
        assert list(done.prompt_ids) == want["prompt_ids"]
        assert done.baseline_text == want["baseline"]["text"] and done.intervened_text == want["intervened"]["text"]
        assert [t.logprob for t in tokens if t.intervened] == pytest.approx(want["intervened"]["logprobs"], abs=1e-9)
        # The pieces join to each run's text.
        assert "".join(t.text for t in tokens if not t.intervened) == done.baseline_text
        assert "".join(t.text for t in tokens if t.intervened) == done.intervened_text
        # What cannot apply is refused before decoding, naming the intervention.
        bad = pb.service.GenerateRequest(model="stories", text="Hi", max_new_tokens=5)
        bad.interventions.append(
            json_format.ParseDict(
                {"head_ablation": {"layer": 0, "heads": [1], "mode": "MEAN"}}, pb.experiment.Intervention()
            )
        )
        with pytest.raises(grpc.RpcError) as error:
            list(stub.Generate(bad, timeout=60))
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "MEAN mode needs a dataset's means" in error.value.details()
        with pytest.raises(grpc.RpcError) as error:
            list(stub.Generate(pb.service.GenerateRequest(model="nope", text="Hi"), timeout=60))
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        server.stop()
