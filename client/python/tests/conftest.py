"""Shared fixtures: a hand-built ExperimentResult, and a real lesiond (skipped until it is built)."""

import os
from pathlib import Path

import numpy as np
import pytest

from lesion._proto import result_pb2

ROOT = Path(__file__).resolve().parents[3]
LESIOND = Path(os.environ.get("LESIOND", ROOT / "build" / "server" / "lesiond"))
STORIES = ROOT / "models" / "stories260K"
N_LAYERS, N_HEADS = 5, 8


def make_pass(scale, sink_shift=0.0):
    p = result_pb2.PassResult()
    p.perplexity.ppl = 4.0 * scale
    p.perplexity.mean_nll = float(np.log(4.0 * scale))
    p.perplexity.n_tokens = 561
    p.perplexity.n_windows = 5
    p.perplexity.protocol = "non-overlapping windows of 128, BOS per window"
    for l in range(N_LAYERS):
        s = p.activation_stats.add()
        s.site = f"blocks.{l}.resid_post"
        s.mean_top.extend([100.0 * (l + 1) * scale, 50.0 * (l + 1), 10.0 * (l + 1)])
        for k, v in enumerate([120.0 * (l + 1) * scale, 60.0, 12.0]):
            t = s.max_top.add()
            t.value, t.sequence, t.token, t.dim = v, 1, 0, 30 + k
        s.median, s.mean_abs, s.n_windows = 0.5, 0.8, 5
    e = p.activation_stats.add()
    e.site, e.median, e.mean_abs, e.n_windows = "embed", 0.4, 0.5, 5
    e.mean_top.extend([1.0, 0.9, 0.8])
    p.attention_sink.layers.extend(range(N_LAYERS))
    p.attention_sink.n_heads = N_HEADS
    p.attention_sink.scores.extend(
        [min(1.0, (l * N_HEADS + h) / 40.0 + sink_shift) for l in range(N_LAYERS) for h in range(N_HEADS)]
    )
    tp = p.token_probabilities.add()
    tp.token_id, tp.token, tp.mean_probability = 426, "the", 0.05 * scale
    cap = p.captures.add()
    cap.name, cap.dtype = "blocks.0.resid_post", "float32"
    arr = (np.arange(1 * 4 * 64, dtype=np.float32).reshape(1, 4, 64) - 100.0) * scale
    arr[0, 0, 30] = 2000.0
    cap.shape.extend(arr.shape)
    cap.data = arr.astype("<f4").tobytes()
    cap.positions.extend(range(4))
    ma = p.massive_activations.add()
    ma.site, ma.count = "blocks.1.resid_post", 2
    a = ma.top.add()
    a.sequence, a.token, a.dim, a.value, a.ratio = 0, 0, 30, -1500.0, 3000.0
    sw = p.super_weights.add()
    sw.layer, sw.row, sw.col, sw.weight = 1, 30, 7, -0.25 * scale
    sw.sequence, sw.token, sw.input_spike, sw.output_spike, sw.input_ratio, sw.output_ratio = (
        0,
        0,
        9.0,
        800.0,
        150.0,
        2000.0,
    )
    no = p.norm_outliers.add()
    no.norm, no.layer, no.channel, no.gamma, no.z, no.median = "mlp", 2, 30, 5.0 * scale, 12.0, 1.0
    ao = p.attention_outliers.add()
    ao.layer, ao.head, ao.key_position, ao.mass = 3, 2, 0, 0.9
    fill_token_outputs(p.token_outputs, scale)
    return p


def fill_token_outputs(t, scale, offset=0, rows=4, top_k=3, n_predicted=10):
    """A TokenOutputs page: rows predicted tokens [offset, offset + rows) of window 0, the target at
    position offset + 1 + i, id 100 + i, nll (i + 1) * scale / 10, rank i; top ids 10i..10i+2."""
    t.top_k, t.n_predicted, t.offset = top_k, n_predicted, offset
    for i in range(rows):
        t.window.append(0)
        t.position.append(offset + 1 + i)
        t.target.append(100 + i)
        t.nll.append((i + 1) * scale / 10)
        t.rank.append(i)
        t.top_ids.extend(10 * i + k for k in range(top_k))
        t.top_probs.extend(0.5 / (k + 1) for k in range(top_k))


def make_result():
    r = result_pb2.ExperimentResult()
    r.baseline.CopyFrom(make_pass(1.0))
    r.intervened.CopyFrom(make_pass(1.5, sink_shift=-0.1))
    r.kl_divergence = 0.0063
    for name, b, v in [
        ("perplexity", 4.0, 6.0),
        ("mean_nll", float(np.log(4.0)), float(np.log(6.0))),
        ("top1:blocks.0.resid_post", 100.0, 150.0),
        ("kl_divergence", 0.0, 0.0063),
    ]:
        m = r.metrics.add()
        m.name, m.baseline, m.value, m.delta = name, b, v, v - b
        m.delta_pct = 100.0 * (v - b) / abs(b) if b else 0.0
    r.run.model, r.run.architecture, r.run.dtype, r.run.device = "stories260K", "LlamaForCausalLM", "float32", "cpu"
    r.run.lesion_version, r.run.seconds, r.run.forward_passes = "0.1.0", 0.05, 10
    return r


def make_observational_result():
    """A result as lesiond sends one for a spec without interventions: the baseline pass only,
    observational set, each metric's value its baseline (delta 0), KL exactly 0."""
    r = make_result()
    r.ClearField("intervened")
    r.observational = True
    r.kl_divergence = 0.0
    for m in r.metrics:
        m.value, m.delta, m.delta_pct = m.baseline, 0.0, 0.0
    return r


@pytest.fixture
def result_proto():
    return make_result()


@pytest.fixture
def result(result_proto):
    import lesion

    return lesion.Result(result_proto)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A LocalClient on a real lesiond serving the bundled stories260K (skipped when not built)."""
    if not (LESIOND.is_file() and os.access(LESIOND, os.X_OK)):
        pytest.skip(f"lesiond not built at {LESIOND} (build it, or set LESIOND)")
    import lesion

    db = tmp_path_factory.mktemp("lesiond") / "lesion.db"
    client = lesion.Client.local(STORIES, db=db, lesiond=LESIOND, timeout=60)
    yield client
    client.close()
