"""Prompt sets (Dataset.prompts) against transformers' batched forward with right padding and an
attention mask: each prompt's NLL, last-token NLL, next-token probabilities and KL divergence, in
both passes and in a sweep's variants, on families with learned positions, sliding windows and
soft-capping; captures of unequal prompts zero-padded in prompt order; per-token outputs and
detector reports numbered by prompt; and the refusals of what a prompt set cannot take."""

import base64
import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from conftest import requires_cli, run_spec, saved_checkpoints
from hf_reference import VOCAB, capture_tensors, make_model_with_bos, zero_heads

pytestmark = [requires_cli, pytest.mark.usefixtures("single_torch_thread")]
TOL = 1e-5
BOS = 1
_gen = torch.Generator().manual_seed(77)
# Unequal lengths, out of length order, two of equal length (they share a forward pass).
PROMPTS = [torch.randint(2, VOCAB, (n,), generator=_gen).tolist() for n in (7, 13, 3, 9, 13, 2)]
TOKENS = [5, 40, 96]


def with_bos(kind):
    return make_model_with_bos(kind, 910, BOS)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return saved_checkpoints(tmp_path_factory.mktemp("prompt_sets"), with_bos)


def spec(interventions=(), measurements=None, bos=False, batch_size=2, sweep=None, prompts=PROMPTS):
    s = {
        "dataset": {"prompts": {"prompts": [{"token_ids": {"ids": p}} for p in prompts]}},
        "eval": {"add_bos": bos, "batch_size": batch_size},
        "interventions": list(interventions),
        "measurements": measurements
        or [{"perplexity": {}}, {"kl_divergence": {}}, {"token_probabilities": {"token_ids": TOKENS}}],
    }
    if sweep is not None:
        s["sweep"] = sweep
    return s


def hf_padded_logprobs(model, bos=False):
    """Per prompt: its input ids and float64 log-probabilities [length, vocab] from one batched
    forward of every prompt, right-padded, with the attention mask."""
    seqs = [([BOS] if bos else []) + p for p in PROMPTS]
    longest = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), longest, dtype=torch.long)
    mask = torch.zeros(len(seqs), longest, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits.double()
    return [(s, torch.log_softmax(logits[i, : len(s)], -1)) for i, s in enumerate(seqs)]


def hf_rows(model, bos=False, reference=None):
    """The per-prompt numbers lesion reports, from transformers; `reference`: the baseline's
    hf_padded_logprobs, for the KL divergence."""
    rows = []
    for i, (seq, logp) in enumerate(hf_padded_logprobs(model, bos)):
        n = len(seq)
        nll = [-float(logp[q - 1, seq[q]]) for q in range(1, n)]
        row = {
            "length": n,
            "n_tokens": n - 1,
            "mean_nll": float(np.mean(nll)),
            "last_token_nll": nll[-1],
            "next": logp[n - 1, TOKENS].exp().numpy(),
        }
        if reference is not None:
            ref = reference[i][1]
            row["kl"] = float((ref.exp() * (ref - logp)).sum(-1)[: n - 1].mean())
        rows.append(row)
    return rows


def check_rows(got, want, what):
    assert [int(r["prompt"]) for r in got] == list(range(len(want))), what
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        where = f"{what}, prompt {i}"
        assert g["length"] == w["length"] and int(g["n_tokens"]) == w["n_tokens"], where
        assert abs(g["mean_nll"] - w["mean_nll"]) < TOL, f"{where}: mean_nll {g['mean_nll']} vs {w['mean_nll']}"
        assert abs(g["perplexity"] - np.exp(w["mean_nll"])) < TOL * np.exp(w["mean_nll"]), where
        assert abs(g["last_token_nll"] - w["last_token_nll"]) < TOL, where
        assert np.abs(np.array(g["next_token_probabilities"]) - w["next"]).max() < TOL, where
        if "kl" in w:
            assert abs(g["kl_divergence"] - w["kl"]) < TOL, f"{where}: kl {g['kl_divergence']} vs {w['kl']}"


@pytest.mark.parametrize(
    "kind, bos", [("llama", False), ("llama", True), ("gpt2", False), ("opt", True), ("gemma2", False), ("neox", False)]
)
def test_every_prompt_matches_a_padded_transformers_batch(cli, tmp_path, checkpoint, kind, bos):
    model = with_bos(kind)
    ablation = {"head_ablation": {"layer": 1, "heads": [0], "mode": "ZERO"}}
    result = run_spec(cli, tmp_path, checkpoint(kind), spec([ablation], bos=bos))
    base = hf_padded_logprobs(model, bos)
    check_rows(result["baseline"]["prompts"], hf_rows(model, bos), f"{kind} baseline")
    zero_heads(model, 1, [0])
    check_rows(result["intervened"]["prompts"], hf_rows(model, bos, reference=base), f"{kind} heads zeroed")
    # The pooled numbers are the prompts' together.
    rows = result["baseline"]["prompts"]
    n = sum(int(r["n_tokens"]) for r in rows)
    pooled = sum(r["mean_nll"] * int(r["n_tokens"]) for r in rows) / n
    ppl = result["baseline"]["perplexity"]
    assert int(ppl["n_tokens"]) == n and int(ppl["n_windows"]) == len(PROMPTS)
    assert abs(ppl["mean_nll"] - pooled) < 1e-9
    assert ppl["protocol"] == f"prompt set of {len(PROMPTS)} prompts, {'BOS per prompt' if bos else 'no BOS'}"
    kl = sum(r["kl_divergence"] * int(r["n_tokens"]) for r in result["intervened"]["prompts"]) / n
    assert abs(result["kl_divergence"] - kl) < 1e-9


def test_a_sweep_reports_every_prompt_of_every_variant(cli, tmp_path, checkpoint):
    model = with_bos("llama")
    sweep = {"axes": [{"heads": {"layers": [0], "heads": [0, 1]}}], "variants_per_pass": 2}
    result = run_spec(cli, tmp_path, checkpoint("llama"), spec(sweep=sweep))
    base = hf_padded_logprobs(model)
    check_rows(result["parent"]["baseline"]["prompts"], hf_rows(model), "sweep baseline")
    for head, variant in enumerate(result["variants"]):
        hooks = zero_heads(model, 0, [head])
        check_rows(variant["intervened"]["prompts"], hf_rows(model, reference=base), f"variant L0.H{head}")
        hooks.remove()


def test_captures_and_reports_name_prompts_in_order(cli, tmp_path, checkpoint):
    model = with_bos("llama")
    measurements = [
        {"capture": {"sites": ["blocks.1.resid_post", "blocks.0.attn_pattern"], "max_windows": 5}},
        {"activation_stats": {"sites": ["blocks.1.resid_post"], "top_k": 2}},
        {"token_outputs": {"top_k": 2}},
    ]
    result = run_spec(cli, tmp_path, checkpoint("llama"), spec(measurements=measurements, batch_size=3))
    assert result["observational"]
    base = result["baseline"]
    want = [capture_tensors(model, torch.tensor(p)[None]) for p in PROMPTS]
    longest = max(len(p) for p in PROMPTS[:5])
    for tensor in base["captures"]:
        site = tensor["name"]
        got = np.frombuffer(base64.b64decode(tensor["data"]), "<f4").reshape([int(d) for d in tensor["shape"]])
        assert tensor["lengths"] == [len(p) for p in PROMPTS[:5]], site
        for i, p in enumerate(PROMPTS[:5]):
            n, ref = len(p), want[i][site][0].numpy()
            if site.endswith("attn_pattern"):  # [heads, q, k]: padded queries and keys are zero
                assert got.shape == (5, ref.shape[0], longest, longest)
                assert np.abs(got[i, :, :n, :n] - ref).max() < TOL, (site, i)
                assert not got[i, :, n:].any() and not got[i, :, :, n:].any(), (site, i)
            else:
                assert got.shape == (5, longest, ref.shape[-1])
                assert np.abs(got[i, :n] - ref).max() < TOL, (site, i)
                assert not got[i, n:].any(), (site, i)
    # Per prompt: the largest |x| and the mean |x| of the stats site; the top entries name prompts.
    stats = base["activation_stats"][0]
    for i, row in enumerate(base["prompts"]):
        ref = want[i]["blocks.1.resid_post"][0].abs()
        assert abs(row["max_abs"][0] - float(ref.max())) < TOL and abs(row["mean_abs"][0] - float(ref.mean())) < TOL
    top = stats["max_top"][0]
    peaks = [float(w["blocks.1.resid_post"].abs().max()) for w in want]
    assert int(top["sequence"]) == int(np.argmax(peaks))
    # Per-token outputs: prompt after prompt, every token but each prompt's first, paged in that order.
    outputs = base["token_outputs"]
    assert [int(w) for w in outputs["window"]] == [i for i, p in enumerate(PROMPTS) for _ in p[1:]]
    assert outputs["position"] == [q for p in PROMPTS for q in range(1, len(p))]
    measurements[2] = {"token_outputs": {"top_k": 2, "offset": 5, "max_tokens": 9}}
    page = run_spec(cli, tmp_path, checkpoint("llama"), spec(measurements=measurements[2:], batch_size=3))
    got = page["baseline"]["token_outputs"]
    assert got["window"] == outputs["window"][5:14] and got["position"] == outputs["position"][5:14]
    assert np.abs(np.array(got["nll"]) - outputs["nll"][5:14]).max() < TOL


@pytest.mark.parametrize(
    "change, needle",
    [
        (lambda s: s["eval"].update(stride=2), "a prompt set is one window per prompt: leave stride 0"),
        (lambda s: s["eval"].update(seq_len=8), "prompt 1 has 13 tokens, more than seq_len 8"),
        (lambda s: s["dataset"]["prompts"]["prompts"].append({"token_ids": {"ids": [4]}}), "prompt 6 has 1 token"),
        (lambda s: s["dataset"]["prompts"].update(prompts=[]), "dataset.prompts: give at least one prompt"),
        (lambda s: s["dataset"]["prompts"]["prompts"].append({}), "prompts[6]: give text or token_ids"),
        (
            lambda s: s["dataset"]["prompts"]["prompts"].append({"token_ids": {"ids": [4, VOCAB]}}),
            f"token id {VOCAB}",
        ),
    ],
)
def test_what_a_prompt_set_cannot_take_is_refused(cli, tmp_path, checkpoint, change, needle):
    s = spec()
    change(s)
    proc = run_spec(cli, tmp_path, checkpoint("llama"), s, check=False)
    assert proc.returncode == 2 and needle in proc.stderr, proc.stderr


def test_the_cli_prints_a_row_per_prompt(cli, tmp_path, checkpoint):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec([{"head_ablation": {"layer": 0, "heads": [1]}}])))
    out = cli("run", "--local", "--model", checkpoint("llama"), "--spec", path).stdout
    table = out.split("per prompt, baseline -> intervened:\n")[1].split("\n\n")[0].splitlines()
    assert table[0].split()[:3] == ["prompt", "length", "perplexity"]
    assert [int(line.split()[0]) for line in table[1:]] == list(range(len(PROMPTS)))
    assert [int(line.split()[1]) for line in table[1:]] == [len(p) for p in PROMPTS]


def test_dump_of_a_prompt_set_pads_each_prompt(cli, tmp_path, checkpoint):
    """`lesion dump --prompts-json`: Client.cache from the shell."""
    model = with_bos("llama")
    (tmp_path / "prompts.json").write_text(json.dumps(PROMPTS[:4]))
    out = tmp_path / "acts.safetensors"
    cli("dump", "--model", checkpoint("llama"), "--prompts-json", tmp_path / "prompts.json",
        "--sites", "blocks.0.resid_post,blocks.1.mlp_act", "--out", out)  # fmt: skip
    got = load_file(str(out))
    assert got["lengths"].tolist() == [len(p) for p in PROMPTS[:4]]
    longest = max(len(p) for p in PROMPTS[:4])
    for i, p in enumerate(PROMPTS[:4]):
        want = capture_tensors(model, torch.tensor(p)[None])
        for site in ("blocks.0.resid_post", "blocks.1.mlp_act"):
            assert got[site].shape[:2] == (4, longest)
            assert np.abs(got[site][i, : len(p)] - want[site][0].numpy()).max() < TOL, (site, i)
            assert not got[site][i, len(p) :].any(), (site, i)
    proc = cli("dump", "--model", checkpoint("llama"), "--prompts-json", tmp_path / "prompts.json", "--text", "a",
               "--sites", "embed", "--out", out, check=False)  # fmt: skip
    assert proc.returncode == 2 and "give --prompts-json or one of" in proc.stderr


def test_a_texts_shorter_last_window_is_still_left_out_of_captures(cli, tmp_path, checkpoint):
    ids = [t for p in PROMPTS for t in p]  # 47 tokens: windows of 12, 12, 12 and 11
    s = {
        "dataset": {"token_ids": {"ids": ids}},
        "eval": {"seq_len": 12},
        "measurements": [{"capture": {"sites": ["embed"], "max_windows": 10}}],
    }
    capture = run_spec(cli, tmp_path, checkpoint("llama"), s)["baseline"]["captures"][0]
    assert [int(d) for d in capture["shape"]][:2] == [3, 12] and not capture.get("lengths")


def test_per_prompt_rows_count_against_the_capture_budget(cli, tmp_path, checkpoint):
    s = spec(prompts=[[3, 4]] * 16384)
    s["measurements"] = [{"perplexity": {}}, {"token_probabilities": {"token_ids": list(range(VOCAB)) * 30}}]
    proc = run_spec(cli, tmp_path, checkpoint("llama"), s, check=False)
    assert proc.returncode == 2 and "dataset.prompts: the per-prompt rows take" in proc.stderr, proc.stderr
