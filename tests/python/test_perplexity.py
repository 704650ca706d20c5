"""`lesion perplexity` against transformers' own loss, windowed as in the transformers perplexity
guide (see hf_reference.hf_perplexity for the exact semantics)."""

import json
import math

import pytest
import torch

from conftest import requires_cli
from hf_reference import VOCAB, hf_perplexity, hf_windows, make_model

pytestmark = requires_cli


def run_ppl(cli, model_dir, ids_file, seq_len, stride=None, add_bos=False):
    args = ["perplexity", "--model", model_dir, "--ids-json", ids_file, "--seq-len", seq_len, "--json"]
    if stride:
        args += ["--stride", stride]
    if add_bos:
        args.append("--add-bos")
    return json.loads(cli(*args).stdout)


def check(got, model, ids, seq_len, stride=None, bos_id=None, what=""):
    nll, count = hf_perplexity(model, ids, seq_len, stride, bos_id)
    windows = len(hf_windows(len(ids), seq_len, stride, bos_id is not None))
    msg = (
        f"{what}: lesion {got} vs HF mean_nll {nll:.8f} n_tokens {count} n_windows {windows} "
        f"(|d mean_nll| {abs(got['mean_nll'] - nll):.3e})"
    )
    assert got["n_tokens"] == count, msg
    assert got["n_windows"] == windows, msg
    assert abs(got["mean_nll"] - nll) < 1e-5, msg
    assert abs(got["ppl"] - math.exp(nll)) < 1e-5 * math.exp(nll), msg
    return nll, count


# (text length, seq_len, stride): the tail window kept (101 = 6 x 16 + 5) or dropped as it would
# predict nothing (97 = 6 x 16 + 1); sliding windows with a stride that does not divide seq_len,
# stride == seq_len (the same as non-overlapping), stride 1.
CASES = [(101, 16, None), (97, 16, None), (96, 16, None), (101, 16, 7), (101, 16, 16), (40, 16, 1), (10, 16, None)]


@pytest.mark.parametrize("kind", ["llama_gqa", "gpt2", "mistral"])
@pytest.mark.parametrize("n, seq_len, stride", CASES)
def test_perplexity_matches_transformers(cli, tmp_path, write_ids, kind, n, seq_len, stride):
    model = make_model(kind, seed=9)
    model.save_pretrained(tmp_path / "m")
    ids = torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(n))
    got = run_ppl(cli, tmp_path / "m", write_ids(ids.tolist()), seq_len, stride)
    _, count = check(got, model, ids, seq_len, stride, what=f"{kind} n={n} seq_len={seq_len} stride={stride}")
    if stride and stride < seq_len:
        assert count == n - 1  # sliding: every token but the first is scored exactly once
    else:
        assert count == n - len(hf_windows(n, seq_len)) - (1 if n % seq_len == 1 else 0)


@pytest.mark.parametrize("n, seq_len, stride", [(101, 16, None), (91, 16, None), (101, 16, 5)])
def test_perplexity_with_bos_per_window(cli, tmp_path, write_ids, n, seq_len, stride):
    """--add-bos: every window is BOS + seq_len - 1 text tokens, all text tokens predicted."""
    model = make_model("qwen2", seed=3)
    model.config.bos_token_id = 5
    model.save_pretrained(tmp_path / "m")
    ids = torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(n + 1))
    got = run_ppl(cli, tmp_path / "m", write_ids(ids.tolist()), seq_len, stride, add_bos=True)
    _, count = check(got, model, ids, seq_len, stride, bos_id=5, what=f"BOS n={n} stride={stride}")
    assert count == n


def test_single_window_is_the_labels_loss(cli, tmp_path, write_ids):
    """One full window is exactly transformers' model(ids, labels=ids).loss."""
    model = make_model("qwen2", seed=4)
    model.save_pretrained(tmp_path / "m")
    ids = torch.randint(0, VOCAB, (16,), generator=torch.Generator().manual_seed(16))
    got = run_ppl(cli, tmp_path / "m", write_ids(ids.tolist()), 16)
    with torch.no_grad():
        loss = model(ids[None], labels=ids[None]).loss.item()
    assert got["n_tokens"] == 15 and got["n_windows"] == 1
    assert abs(got["mean_nll"] - loss) < 1e-5, (got, loss)


def test_plain_output_reports_the_numbers(cli, tmp_path, write_ids):
    model = make_model("llama", seed=5)
    model.save_pretrained(tmp_path / "m")
    ids = torch.randint(0, VOCAB, (50,), generator=torch.Generator().manual_seed(50))
    out = cli("perplexity", "--model", tmp_path / "m", "--ids-json", write_ids(ids.tolist()), "--seq-len", 16).stdout
    nll, count = hf_perplexity(model, ids, 16)
    assert str(count) in out, out
    assert f"{math.exp(nll):.2f}" in out or f"{math.exp(nll):.3f}" in out, (out, math.exp(nll))
