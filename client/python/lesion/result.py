"""ExperimentResult (proto/lesion/v1/result.proto) as Python objects, numpy arrays and DataFrames."""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd

PASSES = ("baseline", "intervened")
_LAYER = re.compile(r"^blocks\.(\d+)\.")
_DTYPES = {
    "float32": "<f4",
    "float16": "<f2",
    "float64": "<f8",
    "int32": "<i4",
    "int64": "<i8",
    "int8": "i1",
    "uint8": "u1",
}


def site_layer(site):
    """The layer of "blocks.L.x" (None for embed, final_norm, logits)."""
    m = _LAYER.match(site)
    return int(m.group(1)) if m else None


def decode_tensor(t) -> np.ndarray:
    """A lesion.v1.Tensor -> numpy array of its shape (little-endian bytes; bfloat16 -> float32)."""
    shape = tuple(int(s) for s in t.shape)
    dtype = t.dtype or "float32"
    if dtype == "bfloat16":
        raw = np.frombuffer(t.data, dtype="<u2").astype(np.uint32) << 16
        arr = raw.view(np.float32)
    elif dtype in _DTYPES:
        le = np.dtype(_DTYPES[dtype])
        arr = np.frombuffer(t.data, dtype=le).astype(le.newbyteorder("="))
    else:
        raise ValueError(f"tensor {t.name!r}: unsupported dtype {dtype!r}")
    expected = int(np.prod(shape)) if shape else 1
    if arr.size != expected:
        raise ValueError(f"tensor {t.name!r}: {arr.size} values for shape {list(shape)} ({expected} expected)")
    return arr.reshape(shape).copy()


class SinkScores(NamedTuple):
    """Attention-sink scores of both passes: arrays [len(layers), n_heads] (None if not measured)."""

    baseline: np.ndarray | None
    intervened: np.ndarray | None
    layers: list


@dataclass(frozen=True)
class PerplexityPair:
    """Baseline and intervened perplexity; unpacks as ``baseline, intervened = r.perplexity``."""

    baseline: float
    intervened: float
    baseline_nll: float
    intervened_nll: float
    n_tokens: int
    n_windows: int
    protocol: str

    @property
    def delta(self):
        return self.intervened - self.baseline

    @property
    def delta_pct(self):
        return 100.0 * self.delta / abs(self.baseline) if self.baseline else 0.0

    def __iter__(self):
        return iter((self.baseline, self.intervened))


SWEEP_COLUMNS = ["name", "experiment_id", "perplexity", "perplexity_delta_pct", "kl_divergence"]


class Result:
    """One experiment's result. ``raw`` is the lesion.v1.ExperimentResult message.

    A sweep's parent (``is_sweep``) has the baseline pass and ``sweep``, a row per variant; it has no
    intervened pass and no metrics: each variant is an experiment of its own with the whole result
    (``Client.variants(parent_id)``, ``Client.result(row.experiment_id)``).
    """

    def __init__(self, raw):
        self.raw = raw

    # -- construction / forms
    @classmethod
    def from_json(cls, text_or_dict):
        from google.protobuf import json_format

        from ._proto import result_pb2

        d = json.loads(text_or_dict) if isinstance(text_or_dict, (str, bytes)) else text_or_dict
        return cls(json_format.ParseDict(d, result_pb2.ExperimentResult()))

    def to_dict(self):
        from google.protobuf import json_format

        return json_format.MessageToDict(
            self.raw, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )

    def to_json(self, indent=None):
        return json.dumps(self.to_dict(), indent=indent)

    def __repr__(self):
        if self.is_sweep:
            ppl = (
                f", baseline ppl {self.raw.baseline.perplexity.ppl:.4g}"
                if self.raw.baseline.HasField("perplexity")
                else ""
            )
            return (
                f"<lesion.Result sweep of {len(self.raw.sweep.variants)} variants{ppl}, model {self.raw.run.model!r}>"
            )
        ppl = ""
        if self.raw.baseline.HasField("perplexity"):
            p = self.perplexity
            ppl = f" ppl {p.baseline:.4g} -> {p.intervened:.4g} ({p.delta_pct:+.2f}%)"
        return f"<lesion.Result{ppl}, {len(self.raw.metrics)} metrics, model {self.raw.run.model!r}>"

    def _pass(self, name):
        if name not in PASSES:
            raise ValueError(f"pass: unknown {name!r}; valid: {', '.join(PASSES)}")
        return getattr(self.raw, name)

    @property
    def warnings(self) -> list:
        """The results that are not finite numbers, one line each ("metric perplexity: intervened
        value is nan"); empty when every number is finite."""
        return list(self.raw.warnings)

    # -- scalars
    @property
    def metrics(self) -> pd.DataFrame:
        rows = [(m.name, m.baseline, m.value, m.delta, m.delta_pct) for m in self.raw.metrics]
        return pd.DataFrame(rows, columns=["name", "baseline", "value", "delta", "delta_pct"])

    def metric(self, name) -> dict:
        for m in self.raw.metrics:
            if m.name == name:
                return {
                    "name": m.name,
                    "baseline": m.baseline,
                    "value": m.value,
                    "delta": m.delta,
                    "delta_pct": m.delta_pct,
                }
        raise KeyError(f"no metric {name!r}; have: {', '.join(m.name for m in self.raw.metrics)}")

    @property
    def perplexity(self) -> PerplexityPair | None:
        """Baseline and intervened perplexity (a sweep's parent: the intervened values are NaN, see
        ``sweep``)."""
        b, i = self.raw.baseline, self.raw.intervened
        if not b.HasField("perplexity") and not i.HasField("perplexity"):
            return None
        if self.is_sweep:
            nan = float("nan")
            return PerplexityPair(
                b.perplexity.ppl,
                nan,
                b.perplexity.mean_nll,
                nan,
                int(b.perplexity.n_tokens),
                int(b.perplexity.n_windows),
                b.perplexity.protocol,
            )
        return PerplexityPair(
            b.perplexity.ppl,
            i.perplexity.ppl,
            b.perplexity.mean_nll,
            i.perplexity.mean_nll,
            int(b.perplexity.n_tokens),
            int(b.perplexity.n_windows),
            b.perplexity.protocol,
        )

    # -- sweeps
    @property
    def is_sweep(self) -> bool:
        """Whether this is a sweep's parent (its result has the per-variant table)."""
        return self.raw.HasField("sweep") and len(self.raw.sweep.variants) > 0

    @property
    def sweep(self) -> pd.DataFrame:
        """A sweep parent's table, one row per variant in the sweep's order (the index is the variant's
        index, the suffix of its experiment id "<parent>.<index>"): name ("L3.H5"), experiment_id (the
        child; empty for local runs), perplexity, perplexity_delta_pct (against the shared baseline),
        kl_divergence (0 without the measures). ``df.attrs["variants_per_pass"]``: as run. Empty for
        a result that is not a sweep's."""
        rows = [
            (v.name, v.experiment_id, v.perplexity, v.perplexity_delta_pct, v.kl_divergence)
            for v in self.raw.sweep.variants
        ]
        df = pd.DataFrame(rows, columns=SWEEP_COLUMNS)
        df.attrs["variants_per_pass"] = int(self.raw.sweep.variants_per_pass)
        return df

    @property
    def kl_divergence(self) -> float:
        return self.raw.kl_divergence

    @property
    def run(self) -> dict:
        from google.protobuf import json_format

        d = json_format.MessageToDict(
            self.raw.run, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        d["forward_passes"] = int(d.get("forward_passes", 0))
        return d

    # -- tables
    @property
    def activation_stats(self) -> pd.DataFrame:
        """One row per pass and site: top1..topK (mean over windows of the i-th largest |x|), max1..maxK
        (overall largest) with max1_sequence/token/dim, median, mean_abs, n_windows."""
        rows = []
        for p in PASSES:
            for s in self._pass(p).activation_stats:
                row = {"pass": p, "site": s.site, "layer": site_layer(s.site)}
                for k, v in enumerate(s.mean_top, 1):
                    row[f"top{k}"] = v
                for k, t in enumerate(s.max_top, 1):
                    row[f"max{k}"] = t.value
                if s.max_top:
                    t = s.max_top[0]
                    row.update(max1_sequence=int(t.sequence), max1_token=int(t.token), max1_dim=int(t.dim))
                row.update(median=s.median, mean_abs=s.mean_abs, n_windows=int(s.n_windows))
                rows.append(row)
        df = pd.DataFrame(rows, columns=None if rows else ["pass", "site", "layer", "median", "mean_abs", "n_windows"])
        if len(df):
            df["layer"] = df["layer"].astype("Int64")
        return df

    def layer_stats(self, site="blocks.*.resid_post", pass_="baseline") -> pd.DataFrame:
        """activation_stats of one pass for the sites matching ``site`` (fnmatch), ordered by layer
        (sites without a layer, such as embed, first)."""
        df = self.activation_stats
        if not len(df):
            return df
        df = df[(df["pass"] == pass_) & df["site"].map(lambda s: fnmatch.fnmatchcase(s, site))]
        order = df["layer"].fillna(-1).astype(int)
        return df.assign(_o=order).sort_values("_o").drop(columns="_o").reset_index(drop=True)

    @property
    def attention_sink(self) -> SinkScores:
        arrays, layers = {}, []
        for p in PASSES:
            pr = self._pass(p)
            if not pr.HasField("attention_sink") or not pr.attention_sink.n_heads:
                arrays[p] = None
                continue
            a = pr.attention_sink
            layers = list(a.layers)
            arr = np.asarray(a.scores, dtype=np.float64)
            rows = len(layers) if layers else arr.size // a.n_heads
            arrays[p] = arr.reshape(rows, a.n_heads)
            if not layers:
                layers = list(range(rows))
        return SinkScores(arrays["baseline"], arrays["intervened"], layers)

    def attention_sink_frame(self) -> pd.DataFrame:
        """Long form: layer, head, baseline, intervened, delta."""
        s = self.attention_sink
        ref = s.baseline if s.baseline is not None else s.intervened
        if ref is None:
            return pd.DataFrame(columns=["layer", "head", "baseline", "intervened", "delta"])
        rows = []
        for i, l in enumerate(s.layers):
            for h in range(ref.shape[1]):
                b = s.baseline[i, h] if s.baseline is not None else np.nan
                v = s.intervened[i, h] if s.intervened is not None else np.nan
                rows.append((l, h, b, v, v - b))
        return pd.DataFrame(rows, columns=["layer", "head", "baseline", "intervened", "delta"])

    @property
    def token_probabilities(self) -> pd.DataFrame:
        rows = [(p, t.token_id, t.token, t.mean_probability) for p in PASSES for t in self._pass(p).token_probabilities]
        return pd.DataFrame(rows, columns=["pass", "token_id", "token", "mean_probability"])

    @property
    def captures(self) -> dict:
        """{"baseline": {site: array}, "intervened": {site: array}}: float32 arrays of the capture's shape
        ([windows, positions, ...], attn_pattern [windows, heads, positions, keys])."""
        return {p: {t.name: decode_tensor(t) for t in self._pass(p).captures} for p in PASSES}

    def capture_positions(self, site, pass_="baseline") -> list:
        for t in self._pass(pass_).captures:
            if t.name == site:
                return list(t.positions)
        raise KeyError(f"no capture of {site!r} in the {pass_} pass")

    def torch_captures(self) -> dict:
        """captures as torch tensors (torch is imported only here)."""
        try:
            import torch
        except ImportError as e:
            raise ImportError("Result.torch_captures needs torch (pip install torch)") from e
        return {p: {k: torch.from_numpy(v) for k, v in d.items()} for p, d in self.captures.items()}

    @property
    def massive_activations(self) -> pd.DataFrame:
        """One row per reported entry: pass, site, layer, sequence, token, dim, value, ratio, count (the
        site's total above both thresholds)."""
        rows = []
        for p in PASSES:
            for r in self._pass(p).massive_activations:
                for a in r.top:
                    rows.append(
                        (
                            p,
                            r.site,
                            site_layer(r.site),
                            int(a.sequence),
                            int(a.token),
                            int(a.dim),
                            a.value,
                            a.ratio,
                            int(r.count),
                        )
                    )
        return pd.DataFrame(
            rows, columns=["pass", "site", "layer", "sequence", "token", "dim", "value", "ratio", "count"]
        )

    @property
    def massive_activation_counts(self) -> pd.DataFrame:
        rows = [(p, r.site, int(r.count)) for p in PASSES for r in self._pass(p).massive_activations]
        return pd.DataFrame(rows, columns=["pass", "site", "count"])

    @property
    def super_weights(self) -> pd.DataFrame:
        cols = [
            "layer",
            "row",
            "col",
            "weight",
            "sequence",
            "token",
            "input_spike",
            "output_spike",
            "input_ratio",
            "output_ratio",
        ]
        rows = []
        for p in PASSES:
            for w in self._pass(p).super_weights:
                rows.append([p] + [getattr(w, c) for c in cols])
        df = pd.DataFrame(rows, columns=["pass"] + cols)
        return df.astype({c: "int64" for c in ("layer", "row", "col", "sequence", "token")})

    @property
    def norm_outliers(self) -> pd.DataFrame:
        rows = [
            (p, o.norm, o.layer, int(o.channel), o.gamma, o.z, o.median)
            for p in PASSES
            for o in self._pass(p).norm_outliers
        ]
        return pd.DataFrame(rows, columns=["pass", "norm", "layer", "channel", "gamma", "z", "median"])

    @property
    def attention_outliers(self) -> pd.DataFrame:
        rows = [
            (p, o.layer, o.head, int(o.key_position), o.mass) for p in PASSES for o in self._pass(p).attention_outliers
        ]
        return pd.DataFrame(rows, columns=["pass", "layer", "head", "key_position", "mass"])
