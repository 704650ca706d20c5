"""Per-token outputs (the token_outputs measure) against transformers' own logits: every predicted
token's NLL, the target's rank and the top-k next tokens with probabilities, for the baseline and
an intervened pass, over non-overlapping and sliding windows with and without BOS, paged with
offset, in a sweep's variants, and their mean equal to the reported perplexity."""

import numpy as np
import pytest
import torch

from conftest import requires_cli, run_spec, saved_checkpoints
from hf_reference import VOCAB, hf_windows, make_model, make_model_with_bos, zero_heads

pytestmark = [requires_cli, pytest.mark.usefixtures("single_torch_thread")]
TOL = 1e-5
IDS = torch.randint(0, VOCAB, (37,), generator=torch.Generator().manual_seed(41))
BOS = 1


def with_bos(kind):
    return make_model_with_bos(kind, 900, BOS)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return saved_checkpoints(tmp_path_factory.mktemp("token_outputs"), with_bos)


def hf_token_outputs(model, seq_len, stride=None, bos=False, top_k=5):
    """Rows (window, position, target, nll, rank, top_ids, top_probs) in window order, from
    transformers' logits of each window of the transformers guide's loop (hf_windows)."""
    rows = []
    for w, (begin, end, trg_len) in enumerate(hf_windows(len(IDS), seq_len, stride, bos)):
        window = IDS[begin:end]
        if bos:
            window = torch.cat([torch.tensor([BOS]), window])
        with torch.no_grad():
            logp = torch.log_softmax(model(window[None]).logits[0].double(), -1)  # [n, vocab]
        n = len(window)
        first = max(n - trg_len, 1)
        for q in range(first, n):
            row, target = logp[q - 1], int(window[q])
            top = torch.topk(row, top_k)
            rank = int((row > row[target]).sum())
            rows.append((w, q, target, -float(row[target]), rank, top.indices.tolist(), top.values.exp()))
    return rows


def spec(seq_len, stride=None, bos=False, interventions=(), top_k=5, max_tokens=None, offset=0, sweep=None):
    outputs = {"top_k": top_k, "offset": offset}
    if max_tokens is not None:
        outputs["max_tokens"] = max_tokens
    s = {
        "dataset": {"token_ids": {"ids": IDS.tolist()}},
        "eval": {"seq_len": seq_len, "stride": stride or 0, "add_bos": bos, "batch_size": 2},
        "interventions": list(interventions),
        "measurements": [{"perplexity": {}}, {"token_outputs": outputs}],
    }
    if sweep is not None:
        s["sweep"] = sweep
    return s


def check(got, want, what, top_k=5):
    n = len(want)
    assert len(got["nll"]) == n, f"{what}: {len(got['nll'])} rows, transformers {n}"
    assert [int(x) for x in got["window"]] == [r[0] for r in want], what
    assert got["position"] == [r[1] for r in want], what
    assert got["target"] == [r[2] for r in want], what
    nll_diff = np.abs(np.array(got["nll"]) - [r[3] for r in want]).max()
    assert nll_diff < TOL, f"{what}: max |nll diff| {nll_diff}"
    assert [int(x) for x in got["rank"]] == [r[4] for r in want], what
    top_ids = np.array(got["top_ids"]).reshape(n, top_k)
    top_probs = np.array(got["top_probs"]).reshape(n, top_k)
    for i, r in enumerate(want):
        assert top_ids[i].tolist() == r[5], f"{what}: row {i} top ids {top_ids[i]} != {r[5]}"
        assert np.abs(top_probs[i] - r[6].numpy()).max() < TOL, f"{what}: row {i} top probs"


@pytest.mark.parametrize(
    "kind, seq_len, stride, bos", [("llama", 12, None, False), ("llama", 12, 5, True), ("gpt2", 10, 4, False)]
)
def test_every_predicted_token_matches_transformers_in_both_passes(
    cli, tmp_path, checkpoint, kind, seq_len, stride, bos
):
    model = make_model(kind, 900)
    ablation = {"head_ablation": {"layer": 1, "heads": [0], "mode": "ZERO"}}
    result = run_spec(cli, tmp_path, checkpoint(kind), spec(seq_len, stride, bos, [ablation]))
    want_base = hf_token_outputs(model, seq_len, stride, bos)
    base = result["baseline"]["token_outputs"]
    assert int(base["n_predicted"]) == len(want_base) == int(result["baseline"]["perplexity"]["n_tokens"])
    check(base, want_base, f"{kind} baseline")
    # The per-token NLLs average to the reported perplexity's mean NLL.
    assert abs(np.mean(base["nll"]) - result["baseline"]["perplexity"]["mean_nll"]) < 1e-9
    zero_heads(model, 1, [0])
    want_inter = hf_token_outputs(model, seq_len, stride, bos)
    check(result["intervened"]["token_outputs"], want_inter, f"{kind} heads zeroed")
    assert [r[3] for r in want_inter] != [r[3] for r in want_base]


def test_pages_are_slices_of_the_whole(cli, tmp_path, checkpoint):
    model = make_model("llama", 900)
    want = hf_token_outputs(model, 12, top_k=3)
    page = run_spec(cli, tmp_path, checkpoint("llama"), spec(12, top_k=3, max_tokens=7, offset=10))
    got = page["baseline"]["token_outputs"]
    assert int(got["offset"]) == 10 and int(got["n_predicted"]) == len(want)
    check(got, want[10:17], "page [10, 17)", top_k=3)
    # A page running past the end stops there; an offset past it is refused.
    tail = run_spec(cli, tmp_path, checkpoint("llama"), spec(12, top_k=3, max_tokens=100, offset=30))
    check(tail["baseline"]["token_outputs"], want[30:], "tail page", top_k=3)
    proc = run_spec(cli, tmp_path, checkpoint("llama"), spec(12, offset=len(want)), check=False)
    assert proc.returncode == 2 and f"offset {len(want)} is past the last predicted token" in proc.stderr


def test_sweep_variants_each_report_their_own(cli, tmp_path, checkpoint):
    model = make_model("llama", 900)
    sweep = {"axes": [{"heads": {"layers": [0], "heads": [0, 1]}}], "variants_per_pass": 2}
    result = run_spec(cli, tmp_path, checkpoint("llama"), spec(12, sweep=sweep))
    for name, variant in zip(["L0.H0", "L0.H1"], result["variants"], strict=True):
        head = int(name[-1])
        hooks = zero_heads(model, 0, [head])
        check(variant["intervened"]["token_outputs"], hf_token_outputs(model, 12), f"variant {name}")
        hooks.remove()


@pytest.mark.parametrize(
    "outputs, needle",
    [
        ({"top_k": 101}, "top_k must be in 1..100, got 101"),
        ({"max_tokens": 70000}, "max_tokens must be in 1..65536, got 70000 (page through more with offset)"),
        ({"offset": -1}, "offset must be >= 0"),
    ],
)
def test_out_of_bounds_requests_are_refused(cli, tmp_path, checkpoint, outputs, needle):
    s = spec(12)
    s["measurements"][1] = {"token_outputs": outputs}
    proc = run_spec(cli, tmp_path, checkpoint("llama"), s, check=False)
    assert proc.returncode == 2 and needle in proc.stderr, proc.stderr
