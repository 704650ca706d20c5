"""Prompt sets from Python: Dataset.prompts, Result.prompts / prompt_table on a hand-built result,
and on a real lesiond the per-prompt rows of a run and Client.cache, each prompt's activations
equal to the prompt captured alone."""

import math
import time

import numpy as np
import pytest

import lesion
from lesion._proto import result_pb2

PROMPTS = ["Once upon a time, there was a little girl", "The cat sat", [1, 400, 500, 260]]


def test_dataset_prompts_take_text_and_ids():
    d = lesion.Dataset.prompts(["a b", [1, 2], np.array([3, 4])])
    assert d.to_dict() == {
        "prompts": {"prompts": [{"text": "a b"}, {"token_ids": {"ids": [1, 2]}}, {"token_ids": {"ids": [3, 4]}}]}
    }
    with pytest.raises(ValueError, match="one string"):
        lesion.Dataset.prompts("a b")
    with pytest.raises(ValueError, match="at least one prompt"):
        lesion.Dataset.prompts([])
    with pytest.raises(ValueError, match="prompt 1 is an empty string"):
        lesion.Dataset.prompts(["a", ""])
    with pytest.raises(ValueError, match=r"Dataset.prompts\[0\]"):
        lesion.Dataset.prompts([[1, -2]])
    with pytest.raises(ValueError, match=r"prompt 0 is a single id 1; a prompt of ids is a list"):
        lesion.Dataset.prompts([1, 2, 3])


def hand_built():
    r = result_pb2.ExperimentResult()
    for pass_name, scale in (("baseline", 1.0), ("intervened", 2.0)):
        p = getattr(r, pass_name)
        t = p.token_probabilities.add()
        t.token_id, t.token = 7, " Paris"
        p.activation_stats.add().site = "blocks.0.resid_post"
        for i, (length, nll) in enumerate([(5, 0.5), (3, 2.0)]):
            row = p.prompts.add()
            row.prompt, row.length, row.n_tokens = i, length, length - 1
            row.mean_nll = scale * nll
            row.perplexity = math.exp(row.mean_nll)
            row.last_token_nll = scale * nll
            row.next_token_probabilities.append(0.1 * scale)
            row.kl_divergence = 0.01 * (scale - 1)
            row.max_abs.append(10.0 * scale)
            row.mean_abs.append(scale)
    return r


def test_prompt_rows_and_table():
    spec = lesion.Experiment(
        model="m",
        dataset=lesion.Dataset.prompts(["The capital of France is Paris", [1, 2, 3]]),
        measurements=[lesion.Perplexity(), lesion.KLDivergence(), lesion.TokenProbabilities(token_ids=[7])],
    )
    r = lesion.Result(hand_built(), spec=spec)
    df = r.prompts()
    assert list(df.columns[:10]) == [
        "pass_name",
        "prompt",
        "text",
        "length",
        "n_tokens",
        "mean_nll",
        "perplexity",
        "last_token_nll",
        "last_token_prob",
        "kl_divergence",
    ]
    assert list(df["pass_name"]) == ["baseline", "baseline", "intervened", "intervened"]
    assert df["text"].tolist()[:2] == ["The capital of France is Paris", [1, 2, 3]]
    assert df["last_token_prob"].tolist()[:2] == pytest.approx([math.exp(-0.5), math.exp(-2.0)])
    assert df["kl_divergence"].iloc[:2].isna().all() and df["kl_divergence"].iloc[2] == pytest.approx(0.01)
    assert df["p_next: Paris"].tolist() == pytest.approx([0.1, 0.1, 0.2, 0.2])
    assert df["max_abs:blocks.0.resid_post"].tolist() == pytest.approx([10, 10, 20, 20])
    assert len(r.prompts("intervened")) == 2
    table = r.prompt_table("mean_nll")
    assert list(table.columns) == ["text", "baseline", "intervened", "delta", "delta_pct"]
    assert table["delta"].tolist() == pytest.approx([0.5, 2.0]) and table["delta_pct"].tolist() == pytest.approx(
        [100, 100]
    )
    with pytest.raises(KeyError, match="no column 'nope'"):
        r.prompt_table("nope")
    # Without a prompt set: empty, with the columns.
    assert r.prompts().shape[0] == 4 and lesion.Result(result_pb2.ExperimentResult()).prompts().empty


def test_a_prompt_set_on_a_real_server(server):
    r = server.run(
        lesion.Experiment(
            model="stories260K",
            dataset=lesion.Dataset.prompts(PROMPTS),
            interventions=[lesion.HeadAblation(layer=1, heads=[2])],
            measurements=[lesion.Perplexity(), lesion.KLDivergence()],
        ),
        progress=False,
    )
    df = r.prompts("intervened")
    assert df["prompt"].tolist() == [0, 1, 2] and df["text"].tolist() == PROMPTS
    assert df["length"].iloc[2] == 4 and (df["kl_divergence"] > 0).all()
    # The pooled perplexity is the prompts' together.
    pooled = (df["mean_nll"] * df["n_tokens"]).sum() / df["n_tokens"].sum()
    assert r.perplexity.intervened == pytest.approx(math.exp(pooled), rel=1e-9)


def test_cache_gives_each_prompt_what_it_gives_alone(server):
    sites = ["blocks.0.resid_post", "blocks.2.mlp_act", "blocks.1.attn_pattern"]
    cache = server.cache("stories260K", PROMPTS, sites)
    assert set(cache) == set(sites) and len(cache.lengths) == 3
    longest = int(cache.lengths.max())
    assert cache["blocks.0.resid_post"].shape == (3, longest, 64)
    assert cache["blocks.1.attn_pattern"].shape[0] == 3
    for i, prompt in enumerate(PROMPTS):
        alone = server.run(
            lesion.Experiment(
                model="stories260K",
                dataset=lesion.Dataset.text(prompt) if isinstance(prompt, str) else lesion.Dataset.token_ids(prompt),
                eval=lesion.Eval(seq_len=int(cache.lengths[i])),
                measurements=[lesion.Capture(sites=sites)],
            ),
            progress=False,
        ).captures["baseline"]
        mine = cache.prompt(i)
        for site in sites:
            assert mine[site].shape == alone[site][0].shape, site
            np.testing.assert_allclose(mine[site], alone[site][0], atol=1e-5, err_msg=f"prompt {i} {site}")
        n = int(cache.lengths[i])
        assert not cache["blocks.0.resid_post"][i, n:].any()
    with pytest.raises(KeyError, match="no activations of 'embed'"):
        cache["embed"]
    with pytest.raises(IndexError):
        cache.prompt(3)
    # With interventions, the cache is the intervened model's.
    ablated = server.cache(
        "stories260K", PROMPTS[:1], ["blocks.1.attn_z"], interventions=[lesion.HeadAblation(layer=1, heads=[0])]
    )
    assert ablated.pass_name == "intervened" and not ablated["blocks.1.attn_z"][0, :, 0].any()


def test_iter_cache_reads_a_prompt_set_a_slice_at_a_time(server):
    prompts = PROMPTS + ["Lily and Tom went to the park", [1, 300, 301, 302, 303]]
    whole = server.cache("stories260K", prompts, ["blocks.1.resid_post"])
    slices = list(server.iter_cache("stories260K", prompts, ["blocks.1.resid_post"], prompts_per_request=2))
    assert [first for first, _ in slices] == [0, 2, 4]
    i = 0
    for first, cache in slices:
        assert first == i and len(cache.lengths) == min(2, len(prompts) - first)
        for j in range(len(cache.lengths)):
            np.testing.assert_allclose(
                cache.prompt(j)["blocks.1.resid_post"], whole.prompt(i)["blocks.1.resid_post"], atol=1e-5
            )
            i += 1
    with pytest.raises(ValueError, match="prompts_per_request"):
        next(server.iter_cache("stories260K", prompts, ["embed"], prompts_per_request=0))
    # Left after the first slice: the one submitted ahead is cancelled (or had already ended).
    stream = server.iter_cache("stories260K", prompts, ["embed"], prompts_per_request=2)
    next(stream)
    stream.close()
    deadline = time.monotonic() + 30
    while True:
        statuses = set(server.experiments(where='name = "cache"', limit=1000)["status"])
        if statuses <= {"done", "cancelled"} or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert statuses <= {"done", "cancelled"}, statuses
