"""ExperimentResult (proto/lesion/v1/result.proto) as Python objects, numpy arrays and DataFrames."""

from __future__ import annotations

import fnmatch
import html
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd

PASSES = ("baseline", "intervened")
# The column naming the pass of a row ("baseline" or "intervened") in every per-pass frame, as the
# ``pass_=`` arguments name it (``pass`` itself is a Python keyword: ``df.pass`` does not parse).
PASS_COLUMN = "pass_name"
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


_NAN = float("nan")


def _presence(msg, field):
    """Whether ``field`` of ``msg`` was measured, where the message can tell: its ``has_FIELD`` flag
    or the field's own presence (proto3 ``optional``); None where it cannot (a plain double is 0
    both when measured as 0 and when not measured)."""
    fields = msg.DESCRIPTOR.fields_by_name
    if f"has_{field}" in fields:
        return bool(getattr(msg, f"has_{field}"))
    fd = fields.get(field)
    if fd is not None and fd.has_presence:
        return msg.HasField(field)
    return None


def _delta_pct(baseline, value):
    """100 (value - baseline) / |baseline|; NaN where that is undefined (a baseline of 0, such as
    KL divergence's, with a value that is not), where the server stores 0."""
    if baseline == 0:
        return 0.0 if value == 0 else _NAN
    return 100.0 * (value - baseline) / abs(baseline)


def _metric_pct(m):
    """A Metric's delta_pct as the server computed it, but NaN where undefined (the server's 0)."""
    return _delta_pct(m.baseline, m.value) if m.baseline == 0 else m.delta_pct


def _measurement_kinds(spec):
    """The measurement kinds of a spec (an ExperimentSpec proto, an Experiment or its dict), or None."""
    if spec is None:
        return None
    if hasattr(spec, "DESCRIPTOR"):
        return frozenset(m.WhichOneof("kind") for m in spec.measurements)
    if hasattr(spec, "to_dict"):
        spec = spec.to_dict()
    if isinstance(spec, Mapping):
        return frozenset(next(iter(m)) for m in spec.get("measurements") or [] if isinstance(m, Mapping) and m)
    raise TypeError(f"Result(spec=...): expected an Experiment, an ExperimentSpec or a dict, got {type(spec).__name__}")


def _prompt_texts(spec):
    """A prompt set's prompts as the spec gives them (text, or the ids as a list), or None."""
    if spec is None:
        return None
    if hasattr(spec, "DESCRIPTOR"):
        if spec.dataset.WhichOneof("source") != "prompts":
            return None
        return [
            p.text if p.WhichOneof("source") == "text" else list(p.token_ids.ids) for p in spec.dataset.prompts.prompts
        ]
    if hasattr(spec, "to_dict"):
        spec = spec.to_dict()
    if not isinstance(spec, Mapping):
        return None
    dataset = spec.get("dataset") or {}
    prompts = dataset.get("prompts") if isinstance(dataset, Mapping) else None
    if not isinstance(prompts, Mapping):
        return None
    return [p.get("text", (p.get("token_ids") or {}).get("ids")) for p in prompts.get("prompts") or []]


def _html_table(title, rows) -> str:
    """A two-column HTML table for Jupyter, every string escaped."""
    body = "".join(
        f"<tr><th style='text-align:left'>{html.escape(str(k))}</th><td style='text-align:left'>"
        f"{html.escape(str(v))}</td></tr>"
        for k, v in rows
    )
    return f"<table><caption style='text-align:left'>{html.escape(title)}</caption>{body}</table>"


def _token_text(tokenizer):
    """id -> text of a callable, or of an object with ``decode`` (Hugging Face tokenizers,
    sentencepiece processors), remembered per id."""
    if callable(tokenizer) and not hasattr(tokenizer, "decode"):
        fn = tokenizer
    elif hasattr(tokenizer, "decode"):

        def fn(i):
            return tokenizer.decode([i])

    else:
        raise TypeError(f"tokenizer: expected a callable id -> text or an object with decode(), got {tokenizer!r}")
    seen = {}

    def text(i):
        if i not in seen:
            seen[i] = str(fn(i))
        return seen[i]

    return text


class SinkScores(NamedTuple):
    """Attention-sink scores of both passes: arrays [len(layers), n_heads] (None if not measured)."""

    baseline: np.ndarray | None
    intervened: np.ndarray | None
    layers: list


@dataclass(frozen=True)
class PerplexityPair:
    """Baseline and intervened perplexity; unpacks as ``baseline, intervened = r.perplexity``. The
    intervened values are NaN where no intervened perplexity was measured (a sweep's parent); in
    a run without interventions (``observational``) they equal the baseline's, as its metrics do."""

    baseline: float
    intervened: float
    baseline_nll: float
    intervened_nll: float
    n_tokens: int
    n_windows: int
    protocol: str

    @property
    def delta(self):
        """intervened - baseline (NaN when either is)."""
        return self.intervened - self.baseline

    @property
    def delta_pct(self):
        """The change in percent of the baseline (NaN when either is NaN or the baseline is 0)."""
        return _delta_pct(self.baseline, self.intervened)

    def __iter__(self):
        return iter((self.baseline, self.intervened))


SWEEP_COLUMNS = ["name", "experiment_id", "perplexity", "perplexity_delta_pct", "kl_divergence"]


class Result:
    """One experiment's result. ``raw`` is the lesion.v1.ExperimentResult message; ``spec`` (optional:
    an Experiment, an ExperimentSpec or its dict, as ``Client`` passes it) tells which measurements
    were asked for, so that a number the result holds as 0 because it was never measured reads as
    NaN / None instead.

    A sweep's parent (``is_sweep``) has the baseline pass and ``sweep``, a row per variant; it has no
    intervened pass and no metrics: each variant is an experiment of its own with the whole result
    (``Client.variants(parent_id)``, ``Client.result(row.experiment_id)``).

    Unmeasured numbers are never shown as 0: scalar accessors (``kl_divergence``, ``metric()``'s
    ``delta_pct``) give None and frames give NaN.
    """

    def __init__(self, raw, spec=None):
        self.raw = raw
        self._kinds = _measurement_kinds(spec)
        self._prompts = _prompt_texts(spec)

    # -- construction / forms
    @classmethod
    def from_json(cls, text_or_dict, spec=None):
        """From the JSON of a result (``lesion run --local --json``, ``to_json()``) or its dict."""
        from google.protobuf import json_format

        from ._proto import result_pb2

        d = json.loads(text_or_dict) if isinstance(text_or_dict, (str, bytes)) else text_or_dict
        return cls(json_format.ParseDict(d, result_pb2.ExperimentResult()), spec=spec)

    def to_dict(self):
        """The result's proto3 JSON as a dict, with the proto's field names and every field."""
        from google.protobuf import json_format

        return json_format.MessageToDict(
            self.raw, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )

    def to_json(self, indent=None):
        """``to_dict()`` as JSON text (``Result.from_json`` reads it back)."""
        return json.dumps(self.to_dict(), indent=indent)

    def __repr__(self):
        model = f"model {self.raw.run.model!r}"
        if self.is_sweep:
            ppl = (
                f", baseline ppl {self.raw.baseline.perplexity.ppl:.4g}"
                if self.raw.baseline.HasField("perplexity")
                else ""
            )
            return f"<lesion.Result sweep of {len(self.raw.sweep.variants)} variants{ppl}, {model}>"
        parts = []
        p = self.perplexity
        if p is not None:
            if self.observational:
                parts.append(f"ppl {p.baseline:.4g} (no interventions)")
            else:
                parts.append(f"ppl {p.baseline:.4g} -> {p.intervened:.4g} ({p.delta_pct:+.2f}%)")
        kl = self.kl_divergence
        if kl is not None and not self.observational:
            parts.append(f"KL {kl:.4g}")
        if self.observational and p is None:
            parts.append("no interventions")
        parts.append(f"{len(self.raw.metrics)} metrics")
        return f"<lesion.Result {', '.join(parts)}, {model}>"

    def _repr_html_(self):
        """A compact table of the main numbers, for Jupyter."""
        return _html_table("lesion.Result", self._html_rows())

    def _html_rows(self):
        rows = [("model", self.raw.run.model)]
        p = self.perplexity
        if self.is_sweep:
            rows.append(("sweep", f"{len(self.raw.sweep.variants)} variants"))
        if self.observational:
            rows.append(("interventions", "none: one pass, reported as the baseline"))
        if p is not None:
            if self.observational:
                rows.append(("perplexity", f"{p.baseline:.6g}"))
            else:
                rows.append(("perplexity, baseline", f"{p.baseline:.6g}"))
            if not self.is_sweep and not self.observational:
                rows.append(("perplexity, intervened", f"{p.intervened:.6g} ({p.delta_pct:+.3f}%)"))
        kl = self.kl_divergence
        if kl is not None and not self.observational:
            rows.append(("KL divergence", f"{kl:.6g} nats/token"))
        if not self.is_sweep:
            rows.append(("metrics", str(len(self.raw.metrics))))
        run = self.raw.run
        if run.seconds or run.forward_passes:
            rows.append(("run", f"{run.seconds:.3g} s, {int(run.forward_passes)} forward passes, {run.device}"))
        for w in self.raw.warnings:
            rows.append(("warning", w))
        return rows

    def _pass(self, name):
        if name not in PASSES:
            raise ValueError(f"pass: unknown {name!r}; valid: {', '.join(PASSES)}")
        return getattr(self.raw, name)

    @property
    def warnings(self) -> list:
        """The results that are not finite numbers, one line each ("metric perplexity: intervened
        value is nan"); empty when every number is finite."""
        return list(self.raw.warnings)

    @property
    def observational(self) -> bool:
        """Whether the spec had no interventions: one pass ran, reported as the baseline, and each
        metric's value is its baseline (False where the server does not say so). The same as
        ``is_observational``."""
        return bool(getattr(self.raw, "observational", False))

    @property
    def is_observational(self) -> bool:
        """Whether this is an observational run: a spec without interventions (and without a sweep),
        of which one pass ran, reported as the baseline. Its per-pass frames have baseline rows
        only, ``metrics`` has one value per metric, ``perplexity`` gives the baseline's numbers for
        both passes and ``kl_divergence`` is 0."""
        return self.observational

    def measured(self, kind) -> bool | None:
        """Whether the spec asked for the measurement ``kind`` ("kl_divergence", "perplexity", ...);
        None when the result was made without its spec (``Result.from_json``)."""
        return None if self._kinds is None else kind in self._kinds

    # -- scalars
    @property
    def metrics(self) -> pd.DataFrame:
        """One row per scalar both passes have: name ("perplexity", "mean_nll", "kl_divergence",
        "top1:SITE", "median:SITE", "attention_sink:L1.H3", ...), baseline, value, delta, delta_pct
        (NaN where undefined: a baseline of 0, as KL divergence's, with a value that is not).
        Empty for a sweep's parent. An observational result (no interventions, one pass) has the
        columns name and value only (its baseline: the one pass measured), and no kl_divergence row
        (KL of a pass against itself)."""
        if self.observational:
            rows = [(m.name, m.baseline) for m in self.raw.metrics if m.name != "kl_divergence"]
            return pd.DataFrame(rows, columns=["name", "value"])
        rows = [(m.name, m.baseline, m.value, m.delta, _metric_pct(m)) for m in self.raw.metrics]
        return pd.DataFrame(rows, columns=["name", "baseline", "value", "delta", "delta_pct"])

    def metric(self, name) -> dict:
        """One row of ``metrics`` as a dict (name, baseline, value, delta, delta_pct; delta_pct None
        where undefined); KeyError naming the metrics there are. For an observational result the
        dict has every key too: value = baseline, delta and delta_pct 0."""
        for m in self.raw.metrics:
            if m.name == name:
                pct = _metric_pct(m)
                return {
                    "name": m.name,
                    "baseline": m.baseline,
                    "value": m.value,
                    "delta": m.delta,
                    "delta_pct": None if math.isnan(pct) and not math.isnan(m.value - m.baseline) else pct,
                }
        raise KeyError(f"no metric {name!r}; have: {', '.join(m.name for m in self.raw.metrics)}")

    @property
    def perplexity(self) -> PerplexityPair | None:
        """Baseline and intervened perplexity, None without a Perplexity measure (a sweep's parent:
        the intervened values are NaN, see ``sweep``)."""
        b, i = self.raw.baseline, self.raw.intervened
        if not b.HasField("perplexity") and not i.HasField("perplexity"):
            return None
        if self.observational:
            i = b
        if self.is_sweep or not i.HasField("perplexity"):
            return PerplexityPair(
                b.perplexity.ppl,
                _NAN,
                b.perplexity.mean_nll,
                _NAN,
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

    def _variant_measured(self, kind):
        """Per variant, whether ``kind`` was measured: the row's own flag where the proto has one,
        else the spec, else what the numbers show (perplexity: the parent's baseline has one; KL: some
        variant's is not 0)."""
        variants = self.raw.sweep.variants
        flags = [_presence(v, kind) for v in variants]
        if all(f is not None for f in flags):
            return flags
        known = self.measured(kind)
        if known is None:
            if kind == "perplexity":
                known = self.raw.baseline.HasField("perplexity") or any(v.perplexity != 0 for v in variants)
            else:
                known = any(getattr(v, kind) != 0 for v in variants)
        return [known] * len(variants)

    @property
    def sweep(self) -> pd.DataFrame:
        """A sweep parent's table, one row per variant in the sweep's order (the index is the variant's
        index, the suffix of its experiment id "<parent>.<index>"): name ("L3.H5"), experiment_id (the
        child; empty for local runs), perplexity, perplexity_delta_pct (against the shared baseline),
        kl_divergence (NaN where not measured, never 0). ``df.attrs["variants_per_pass"]``: as run.
        Empty for a result that is not a sweep's."""
        ppl = self._variant_measured("perplexity")
        kl = self._variant_measured("kl_divergence")
        rows = [
            (
                v.name,
                v.experiment_id,
                v.perplexity if p else _NAN,
                v.perplexity_delta_pct if p else _NAN,
                v.kl_divergence if k else _NAN,
            )
            for v, p, k in zip(self.raw.sweep.variants, ppl, kl, strict=True)
        ]
        df = pd.DataFrame(rows, columns=SWEEP_COLUMNS)
        df.attrs["variants_per_pass"] = int(self.raw.sweep.variants_per_pass)
        return df

    @property
    def kl_divergence(self) -> float | None:
        """Mean KL(baseline || intervened) in nats per predicted token; None without a KLDivergence
        measure (and for a sweep's parent: see ``sweep``)."""
        if self.is_sweep:
            return None
        flag = _presence(self.raw, "kl_divergence")
        if flag is None:
            flag = self.measured("kl_divergence")
        if flag is None:  # no spec: a kl_divergence measure always adds its metric
            flag = any(m.name == "kl_divergence" for m in self.raw.metrics)
        return self.raw.kl_divergence if flag else None

    @property
    def run(self) -> dict:
        """How it ran (lesion.v1.RunInfo): model, architecture, dtype, device, model_fingerprint,
        spec_sha256, lesion_version, seconds, forward_passes, tf32, checkpoint_format,
        dequantized_from."""
        from google.protobuf import json_format

        d = json_format.MessageToDict(
            self.raw.run, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        d["forward_passes"] = int(d.get("forward_passes", 0))
        return d

    # -- tables
    @property
    def activation_stats(self) -> pd.DataFrame:
        """One row per pass and site: pass_name ("baseline" or "intervened"), site, layer (<NA> for
        embed, final_norm, logits), top1..topK (mean over windows of the i-th largest |x|), max1..maxK
        (overall largest) with max1_sequence/token/dim, median, mean_abs, n_windows."""
        rows = []
        for p in PASSES:
            for s in self._pass(p).activation_stats:
                row = {PASS_COLUMN: p, "site": s.site, "layer": site_layer(s.site)}
                for k, v in enumerate(s.mean_top, 1):
                    row[f"top{k}"] = v
                for k, t in enumerate(s.max_top, 1):
                    row[f"max{k}"] = t.value
                if s.max_top:
                    t = s.max_top[0]
                    row.update(max1_sequence=int(t.sequence), max1_token=int(t.token), max1_dim=int(t.dim))
                row.update(median=s.median, mean_abs=s.mean_abs, n_windows=int(s.n_windows))
                rows.append(row)
        df = pd.DataFrame(
            rows, columns=None if rows else [PASS_COLUMN, "site", "layer", "median", "mean_abs", "n_windows"]
        )
        if len(df):
            df["layer"] = df["layer"].astype("Int64")
        return df

    def layer_stats(self, site="blocks.*.resid_post", pass_="baseline") -> pd.DataFrame:
        """activation_stats of one pass for the sites matching ``site`` (fnmatch), ordered by layer
        (sites without a layer, such as embed, first)."""
        df = self.activation_stats
        if not len(df):
            return df
        df = df[(df[PASS_COLUMN] == pass_) & df["site"].map(lambda s: fnmatch.fnmatchcase(s, site))]
        order = df["layer"].fillna(-1).astype(int)
        return df.assign(_o=order).sort_values("_o").drop(columns="_o").reset_index(drop=True)

    @property
    def attention_sink(self) -> SinkScores:
        """The AttentionSink scores of both passes as arrays [len(layers), n_heads] (None for a pass
        without them) with the layers they belong to."""
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
        """Long form: layer, head, baseline, intervened, delta (an observational result: layer, head,
        baseline)."""
        s = self.attention_sink
        if self.observational:
            if s.baseline is None:
                return pd.DataFrame(columns=["layer", "head", "baseline"])
            rows = [(l, h, s.baseline[i, h]) for i, l in enumerate(s.layers) for h in range(s.baseline.shape[1])]
            return pd.DataFrame(rows, columns=["layer", "head", "baseline"])
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
        """One row per pass and token: pass_name, token_id, token (its text, if given by text),
        mean_probability."""
        rows = [(p, t.token_id, t.token, t.mean_probability) for p in PASSES for t in self._pass(p).token_probabilities]
        return pd.DataFrame(rows, columns=[PASS_COLUMN, "token_id", "token", "mean_probability"])

    def prompts(self, pass_=None) -> pd.DataFrame:
        """A prompt set's per-prompt rows (``Dataset.prompts``): one row per pass and prompt, in
        prompt order. Columns: pass_name, prompt (its index), text (the prompt as the spec gave it,
        when the result knows its spec), length (input tokens, BOS included), n_tokens (predicted),
        mean_nll, perplexity, last_token_nll and last_token_prob (of the prompt's last token given
        the rest: put the answer last), kl_divergence (intervened pass with a ``KLDivergence``
        measure, else NaN), ``p_next:<token>`` for each ``TokenProbabilities`` token (p(token | the
        whole prompt), the distribution after it), and ``max_abs:<site>`` / ``mean_abs:<site>`` for
        each ``ActivationStats`` site. ``pass_``: "baseline" or "intervened" for one pass only.
        Empty for a dataset that is not a prompt set."""
        passes = PASSES if pass_ is None else (pass_,)
        tokens = self.raw.baseline.token_probabilities
        texts = [t.token for t in tokens]
        # A token's text names its column unless another token has the same text: then its id.
        labels = [t.token if t.token and texts.count(t.token) == 1 else str(t.token_id) for t in tokens]
        sites = [s.site for s in self.raw.baseline.activation_stats]
        kl_measured = self.measured("kl_divergence")
        if kl_measured is None:  # no spec: measured where the result has the metric
            kl_measured = any(m.name == "kl_divergence" for m in self.raw.metrics)
        rows = []
        for p in passes:
            for r in self._pass(p).prompts:
                nll = r.last_token_nll
                row = {
                    PASS_COLUMN: p,
                    "prompt": int(r.prompt),
                    "length": int(r.length),
                    "n_tokens": int(r.n_tokens),
                    "mean_nll": r.mean_nll,
                    "perplexity": r.perplexity,
                    "last_token_nll": nll,
                    "last_token_prob": math.exp(-nll),
                    "kl_divergence": r.kl_divergence if p == "intervened" and kl_measured else _NAN,
                }
                if self._prompts is not None and int(r.prompt) < len(self._prompts):
                    row["text"] = self._prompts[int(r.prompt)]
                for label, v in zip(labels, r.next_token_probabilities, strict=False):
                    row[f"p_next:{label}"] = v
                for site, mx, mean in zip(sites, r.max_abs, r.mean_abs, strict=False):
                    row[f"max_abs:{site}"] = mx
                    row[f"mean_abs:{site}"] = mean
                rows.append(row)
        columns = [PASS_COLUMN, "prompt", "text", "length", "n_tokens", "mean_nll", "perplexity", "last_token_nll"]
        columns += ["last_token_prob", "kl_divergence"]
        df = pd.DataFrame(rows)
        if not len(df):
            return pd.DataFrame(columns=[c for c in columns if c != "text" or self._prompts is not None])
        ordered = [c for c in columns if c in df.columns]
        return df[ordered + [c for c in df.columns if c not in ordered]]

    def prompt_table(self, column="last_token_prob") -> pd.DataFrame:
        """One ``prompts()`` column side by side: a row per prompt (indexed by prompt, with its
        text when known) with baseline, intervened, delta and delta_pct. An observational result
        has the baseline only."""
        df = self.prompts()
        if column not in df.columns:
            raise KeyError(f"prompt_table: no column {column!r}; the prompt rows have {', '.join(df.columns)}")
        wide = df.pivot(index="prompt", columns=PASS_COLUMN, values=column)
        wide.columns.name = None
        if "intervened" in wide.columns:
            wide["delta"] = wide["intervened"] - wide["baseline"]
            wide["delta_pct"] = [_delta_pct(b, v) for b, v in zip(wide["baseline"], wide["intervened"], strict=True)]
        if "text" in df.columns:
            texts = df.drop_duplicates("prompt").set_index("prompt")["text"]
            wide.insert(0, "text", texts)
        return wide

    def token_outputs(self, pass_="baseline", tokenizer=None) -> pd.DataFrame:
        """The TokenOutputs measure of one pass: a row per predicted token of the page, in window
        order, indexed by its number among the pass's predicted tokens (``predicted``: offset,
        offset + 1, ...). Columns: window, position (of the predicted token in the window's input,
        BOS included), target (its id), nll (-log p(target)), logprob (-nll), prob (p(target)),
        rank (vocabulary entries more likely than the target; 0: top-1), top_ids and top_probs (a
        list of top_k each, most likely first). ``tokenizer``: a callable id -> text, or an object
        with ``decode`` (a Hugging Face tokenizer, a sentencepiece processor) adds target_text and
        top_tokens. ``df.attrs``: n_predicted (the pass's predicted tokens; page on with
        ``TokenOutputs(offset=...)``), offset, top_k. Empty (with the columns) for a pass without
        the measure, e.g. the intervened pass of an observational result or of a sweep's parent."""
        t = self._pass(pass_).token_outputs
        rows = len(t.nll)
        k = int(t.top_k)
        ids = np.asarray(t.top_ids, dtype=np.int64)
        probs = np.asarray(t.top_probs, dtype=np.float64)
        if k and ids.size == rows * k and probs.size == rows * k:
            ids, probs = ids.reshape(rows, k), probs.reshape(rows, k)
        else:  # no top-k (or an inconsistent message): empty lists
            ids, probs = np.zeros((rows, 0), dtype=np.int64), np.zeros((rows, 0))
        nll = np.asarray(t.nll, dtype=np.float64)
        df = pd.DataFrame(
            {
                "window": np.asarray(t.window, dtype=np.int64),
                "position": np.asarray(t.position, dtype=np.int64),
                "target": np.asarray(t.target, dtype=np.int64),
                "nll": nll,
                "logprob": -nll,
                "prob": np.exp(-nll),
                "rank": np.asarray(t.rank, dtype=np.int64),
                "top_ids": pd.Series([r.tolist() for r in ids], dtype=object),
                "top_probs": pd.Series([r.tolist() for r in probs], dtype=object),
            }
        )
        df.index = pd.RangeIndex(int(t.offset), int(t.offset) + rows, name="predicted")
        if tokenizer is not None:
            text = _token_text(tokenizer)
            df.insert(df.columns.get_loc("target") + 1, "target_text", [text(int(i)) for i in df["target"]])
            df["top_tokens"] = pd.Series(
                [[text(int(i)) for i in r] for r in df["top_ids"]], index=df.index, dtype=object
            )
        df.attrs.update(n_predicted=int(t.n_predicted), offset=int(t.offset), top_k=k)
        return df

    @property
    def captures(self) -> dict:
        """{"baseline": {site: array}, "intervened": {site: array}}: float32 arrays of the capture's shape
        ([windows, positions, ...], attn_pattern [windows, heads, positions, keys])."""
        return {p: {t.name: decode_tensor(t) for t in self._pass(p).captures} for p in PASSES}

    def capture_positions(self, site, pass_="baseline") -> list:
        """The positions a capture of ``site`` holds, in the order of its position axis (KeyError if
        the pass has no capture of it)."""
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
        """One row per reported entry: pass_name, site, layer, sequence, token, dim, value, ratio, count (the
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
            rows, columns=[PASS_COLUMN, "site", "layer", "sequence", "token", "dim", "value", "ratio", "count"]
        )

    @property
    def massive_activation_counts(self) -> pd.DataFrame:
        """One row per pass and site of MassiveActivations: pass_name, site, count (every entry above
        both thresholds, reported or not)."""
        rows = [(p, r.site, int(r.count)) for p in PASSES for r in self._pass(p).massive_activations]
        return pd.DataFrame(rows, columns=[PASS_COLUMN, "site", "count"])

    @property
    def super_weights(self) -> pd.DataFrame:
        """One row per pass and candidate of SuperWeights: pass_name, layer, row, col (of mlp.down),
        weight, sequence and token (where the spikes were), input_spike (|mlp_act| at col),
        output_spike (|mlp_out| at row) and their ratios to their site's median."""
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
        df = pd.DataFrame(rows, columns=[PASS_COLUMN] + cols)
        return df.astype({c: "int64" for c in ("layer", "row", "col", "sequence", "token")})

    @property
    def norm_outliers(self) -> pd.DataFrame:
        """One row per pass and outlying gamma channel of NormOutliers: pass_name, norm ("attn",
        "mlp", ..., "final"), layer, channel, gamma, z (robust z-score) and the norm's median gamma."""
        rows = [
            (p, o.norm, o.layer, int(o.channel), o.gamma, o.z, o.median)
            for p in PASSES
            for o in self._pass(p).norm_outliers
        ]
        return pd.DataFrame(rows, columns=[PASS_COLUMN, "norm", "layer", "channel", "gamma", "z", "median"])

    @property
    def attention_outliers(self) -> pd.DataFrame:
        """One row per pass and reported key of AttentionOutliers: pass_name, layer, head,
        key_position, mass (its share of the attention of queries q >= 1; key 0 is the sink)."""
        rows = [
            (p, o.layer, o.head, int(o.key_position), o.mass) for p in PASSES for o in self._pass(p).attention_outliers
        ]
        return pd.DataFrame(rows, columns=[PASS_COLUMN, "layer", "head", "key_position", "mass"])
