"""Typed builders for the experiment spec (proto/lesion/v1/experiment.proto, docs/spec.md).

Every builder has ``to_dict()``, its proto3 JSON form with the proto's field names and enum values by
name (what `lesion run --local --spec` reads), and ``Experiment`` adds ``to_proto()`` /
``to_json()``. Obvious mistakes (unknown modes, modules, norms or sites, negative indices, a missing
``factor`` / ``value``) raise ``ValueError`` when the builder is made, naming the valid choices;
everything that depends on the model (layer and head ranges, dims) is checked by the server before
any forward pass.

A sweep (``Experiment(..., sweep=Sweep([HeadSweep()]))``) is one spec that the server expands into
one child experiment per variant, all sharing one baseline and batched in shared forward passes:
``Sweep`` of axes ``HeadSweep``, ``NormChannelSweep``, ``WeightValueSweep`` and ``Variants`` (of
``Variant``), their product with the last axis varying fastest. The client-side ``sweep()`` /
``sweep_heads()`` helpers instead make separate experiments.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

MODULES = ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down")
NORMS = ("attn", "mlp", "final")
SITE_NAMES = ("attn_in", "attn_z", "attn_pattern", "attn_out", "resid_mid", "mlp_in", "mlp_act",
              "mlp_out", "resid_post")
GLOBAL_SITES = ("embed", "final_norm", "logits")
NAMED_DATASETS = ("wikitext-2-raw-test", "tinystories-sample")  # bundled with the server (not enforced)
_SITE = re.compile(r"^(?:embed|final_norm|logits|blocks\.(?:\d+|\*)\.(?:%s|\*))$" % "|".join(SITE_NAMES))


# --------------------------------------------------------------------------------------------- checks

def _choice(what, value, choices):
    """Case-insensitive enum choice -> the proto's enum value name (upper case)."""
    if not isinstance(value, str) or value.lower() not in choices:
        raise ValueError(f"{what}: unknown value {value!r}; valid: {', '.join(choices)}")
    return value.upper()


def _index(what, value, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{what}: expected a non-negative integer, got {value!r}")
    if value < 0:
        raise ValueError(f"{what}: must be >= 0, got {value}")
    return int(value)


def _indices(what, values, allow_empty=True):
    if values is None:
        values = []
    if isinstance(values, (int, np.integer)):
        values = [values]
    values = [_index(f"{what}[{i}]", v) for i, v in enumerate(np.asarray(values).ravel().tolist()
                                                                  if isinstance(values, np.ndarray)
                                                                  else values)]
    if not values and not allow_empty:
        raise ValueError(f"{what}: must not be empty")
    return values


def _number(what, value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{what}: expected a number, got {value!r}")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{what}: must be finite, got {value}")
    return value


def _opt_number(what, value):
    return None if value is None else _number(what, value)


def _opt_count(what, value):
    return None if value is None else _index(what, value)


def check_site(what, site):
    """A hook site name (DESIGN.md); '*' stands for every layer (or every site name of a block)."""
    if not isinstance(site, str) or not _SITE.match(site):
        raise ValueError(
            f"{what}: unknown hook site {site!r}; valid: {', '.join(GLOBAL_SITES)} or blocks.L.NAME "
            f"(L a layer or '*') with NAME one of {', '.join(SITE_NAMES)}")
    return site


def _sites(what, sites, default=None):
    if sites is None:
        return list(default or [])
    if isinstance(sites, str):
        sites = [sites]
    sites = [check_site(f"{what}[{i}]", s) for i, s in enumerate(sites)]
    return sites


def _floats(what, values):
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size == 0:
        raise ValueError(f"{what}: must not be empty")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what}: must be finite")
    return [float(v) for v in arr.astype(np.float32)]  # the proto field is float


def _drop_none(d):
    return {k: v for k, v in d.items() if v is not None}


# --------------------------------------------------------------------------------------------- dataset

@dataclass(frozen=True)
class Dataset:
    """What text to evaluate on: ``Dataset.text(s)``, ``Dataset.token_ids(ids)``, ``Dataset.named(n)``."""
    kind: str
    value: Any

    @classmethod
    def text(cls, s: str) -> "Dataset":
        if not isinstance(s, str) or not s:
            raise ValueError("Dataset.text: expected a non-empty string")
        return cls("text", s)

    @classmethod
    def token_ids(cls, ids: Iterable[int]) -> "Dataset":
        return cls("token_ids", tuple(_indices("Dataset.token_ids", ids, allow_empty=False)))

    @classmethod
    def named(cls, name: str) -> "Dataset":
        if not isinstance(name, str) or not name:
            raise ValueError(f"Dataset.named: expected a dataset name such as {', '.join(NAMED_DATASETS)}")
        return cls("named", name)

    def to_dict(self):
        if self.kind == "token_ids":
            return {"token_ids": {"ids": list(self.value)}}
        return {self.kind: self.value}


@dataclass(frozen=True)
class Eval:
    """How windows are cut (docs/conventions.md); zeros mean the server's defaults."""
    seq_len: int = 0
    stride: int = 0
    max_windows: int = 0
    batch_size: int = 0
    add_bos: bool = False

    def __post_init__(self):
        for name in ("seq_len", "stride", "max_windows", "batch_size"):
            _index(f"Eval.{name}", getattr(self, name))
        if not isinstance(self.add_bos, (bool, np.bool_)):
            raise ValueError(f"Eval.add_bos: expected a bool, got {self.add_bos!r}")

    def to_dict(self):
        return {"seq_len": int(self.seq_len), "stride": int(self.stride), "max_windows": int(self.max_windows),
                "batch_size": int(self.batch_size), "add_bos": bool(self.add_bos)}


# --------------------------------------------------------------------------------------- interventions

class _OneOf:
    """A proto oneof member: ``to_dict()`` gives {KIND: body}."""
    KIND = ""

    def body(self) -> dict:
        raise NotImplementedError

    def to_dict(self):
        return {self.KIND: self.body()}


class _Builder(_OneOf):
    """An intervention or a measurement."""


@dataclass(frozen=True)
class HeadAblation(_Builder):
    """Heads' slices of blocks.LAYER.attn_z set to zero, scaled by ``factor``, or to their mean."""
    layer: int
    heads: Sequence[int]
    mode: str = "zero"
    factor: float | None = None
    KIND = "head_ablation"
    MODES = ("zero", "mean", "scale")

    def __post_init__(self):
        object.__setattr__(self, "layer", _index("HeadAblation.layer", self.layer))
        object.__setattr__(self, "heads", tuple(_indices("HeadAblation.heads", self.heads, allow_empty=False)))
        object.__setattr__(self, "mode", _choice("HeadAblation.mode", self.mode, self.MODES).lower())
        if self.mode == "scale":
            if self.factor is None:
                raise ValueError("HeadAblation: mode 'scale' needs factor=")
            object.__setattr__(self, "factor", _number("HeadAblation.factor", self.factor))
        elif self.factor is not None:
            raise ValueError(f"HeadAblation: factor is only used with mode 'scale', not {self.mode!r}")

    def body(self):
        d = {"layer": self.layer, "heads": list(self.heads), "mode": self.mode.upper()}
        if self.mode == "scale":
            d["factor"] = self.factor
        return d


@dataclass(frozen=True)
class WeightEdit(_Builder):
    """One scalar of a projection, [row, col] in nn.Linear convention [out, in] for every architecture.

    ``WeightEdit.zero(layer=2, module="mlp.down", row=3968, col=7003)``, ``.scale(..., factor=)``,
    ``.set(..., value=)``.
    """
    layer: int
    module: str
    row: int
    col: int
    op: str = "zero"
    value: float = 0.0
    KIND = "weight_edit"
    OPS = ("zero", "scale", "set")

    def __post_init__(self):
        object.__setattr__(self, "layer", _index("WeightEdit.layer", self.layer))
        if self.module not in MODULES:
            raise ValueError(f"WeightEdit.module: unknown module {self.module!r}; valid: {', '.join(MODULES)}")
        object.__setattr__(self, "row", _index("WeightEdit.row", self.row))
        object.__setattr__(self, "col", _index("WeightEdit.col", self.col))
        object.__setattr__(self, "op", _choice("WeightEdit.op", self.op, self.OPS).lower())
        object.__setattr__(self, "value", _number("WeightEdit.value", self.value))

    @classmethod
    def zero(cls, layer, module, row, col):
        return cls(layer, module, row, col, "zero", 0.0)

    @classmethod
    def scale(cls, layer, module, row, col, factor):
        return cls(layer, module, row, col, "scale", factor)

    @classmethod
    def set(cls, layer, module, row, col, value):
        return cls(layer, module, row, col, "set", value)

    def body(self):
        d = {"layer": self.layer, "module": self.module, "row": self.row, "col": self.col, "op": self.op.upper()}
        if self.op != "zero":
            d["value"] = self.value
        return d


@dataclass(frozen=True)
class NormChannelReset(_Builder):
    """Gamma channels of norm ``attn`` / ``mlp`` at ``layer`` (or ``final``) reset to 1, the gamma mean,
    or ``value``."""
    layer: int
    norm: str
    channels: Sequence[int]
    mode: str = "one"
    value: float | None = None
    KIND = "norm_channel_reset"
    MODES = ("one", "gamma_mean", "value")

    def __post_init__(self):
        object.__setattr__(self, "layer", _index("NormChannelReset.layer", 0 if self.layer is None else self.layer))
        if self.norm not in NORMS:
            raise ValueError(f"NormChannelReset.norm: unknown norm {self.norm!r}; valid: {', '.join(NORMS)}")
        object.__setattr__(self, "channels", tuple(_indices("NormChannelReset.channels", self.channels,
                                                            allow_empty=False)))
        object.__setattr__(self, "mode", _choice("NormChannelReset.mode", self.mode, self.MODES).lower())
        if self.mode == "value":
            if self.value is None:
                raise ValueError("NormChannelReset: mode 'value' needs value=")
            object.__setattr__(self, "value", _number("NormChannelReset.value", self.value))
        elif self.value is not None:
            raise ValueError(f"NormChannelReset: value is only used with mode 'value', not {self.mode!r}")

    def body(self):
        d = {"layer": self.layer, "norm": self.norm, "channels": list(self.channels), "mode": self.mode.upper()}
        if self.mode == "value":
            d["value"] = self.value
        return d


@dataclass(frozen=True, eq=False)
class AttentionBias(_Builder):
    """An extra key/value slot per KV head at ``layer``: ``key`` and ``value`` hold n_kv_heads x head_dim
    numbers (any array-like, e.g. numpy [n_kv_heads, head_dim]; flattened row-major, sent as float32)."""
    layer: int
    key: Any
    value: Any
    KIND = "attention_bias"

    def __post_init__(self):
        object.__setattr__(self, "layer", _index("AttentionBias.layer", self.layer))
        key, value = _floats("AttentionBias.key", self.key), _floats("AttentionBias.value", self.value)
        if len(key) != len(value):
            raise ValueError(f"AttentionBias: key has {len(key)} numbers but value has {len(value)}")
        object.__setattr__(self, "key", tuple(key))
        object.__setattr__(self, "value", tuple(value))

    def __eq__(self, other):
        return isinstance(other, AttentionBias) and self.to_dict() == other.to_dict()

    def body(self):
        return {"layer": self.layer, "key": list(self.key), "value": list(self.value)}


@dataclass(frozen=True)
class ActivationEdit(_Builder):
    """Entries of a hook site (``*`` for every layer) at ``positions`` and ``dims`` (None: all) set to
    zero, ``value``, scaled by ``value``, or set to their dataset mean (``op="mean"``)."""
    site: str
    positions: Sequence[int] | None = None
    dims: Sequence[int] | None = None
    op: str = "zero"
    value: float | None = None
    KIND = "activation_edit"
    OPS = ("zero", "set", "scale", "mean")

    def __post_init__(self):
        check_site("ActivationEdit.site", self.site)
        object.__setattr__(self, "positions", tuple(_indices("ActivationEdit.positions", self.positions)))
        object.__setattr__(self, "dims", tuple(_indices("ActivationEdit.dims", self.dims)))
        object.__setattr__(self, "op", _choice("ActivationEdit.op", self.op, self.OPS).lower())
        if self.op in ("set", "scale"):
            if self.value is None:
                raise ValueError(f"ActivationEdit: op {self.op!r} needs value=")
            object.__setattr__(self, "value", _number("ActivationEdit.value", self.value))
        elif self.value is not None:
            raise ValueError(f"ActivationEdit: value is only used with op 'set' or 'scale', not {self.op!r}")

    def body(self):
        d = {"site": self.site}
        if self.positions:
            d["positions"] = list(self.positions)
        if self.dims:
            d["dims"] = list(self.dims)
        d["op"] = self.op.upper()
        if self.op in ("set", "scale"):
            d["value"] = self.value
        return d


INTERVENTIONS = (HeadAblation, WeightEdit, NormChannelReset, AttentionBias, ActivationEdit)


# ---------------------------------------------------------------------------------------- measurements

@dataclass(frozen=True)
class Perplexity(_Builder):
    KIND = "perplexity"

    def body(self):
        return {}


@dataclass(frozen=True)
class KLDivergence(_Builder):
    KIND = "kl_divergence"

    def body(self):
        return {}


@dataclass(frozen=True)
class TokenProbabilities(_Builder):
    """Mean probability of tokens (by id, or by text that encodes to exactly one token)."""
    tokens: Sequence[str] | None = None
    token_ids: Sequence[int] | None = None
    KIND = "token_probabilities"

    def __post_init__(self):
        tokens = [self.tokens] if isinstance(self.tokens, str) else list(self.tokens or [])
        if not all(isinstance(t, str) and t for t in tokens):
            raise ValueError("TokenProbabilities.tokens: expected non-empty strings")
        ids = _indices("TokenProbabilities.token_ids", self.token_ids)
        if not tokens and not ids:
            raise ValueError("TokenProbabilities: give tokens= and/or token_ids=")
        object.__setattr__(self, "tokens", tuple(tokens))
        object.__setattr__(self, "token_ids", tuple(ids))

    def body(self):
        d = {}
        if self.token_ids:
            d["token_ids"] = list(self.token_ids)
        if self.tokens:
            d["tokens"] = list(self.tokens)
        return d


@dataclass(frozen=True)
class ActivationStats(_Builder):
    """Per site: top-k |x| (mean over windows and overall with coordinates), median and mean |x|."""
    sites: Sequence[str] = ("blocks.*.resid_post",)
    top_k: int = 3
    KIND = "activation_stats"

    def __post_init__(self):
        sites = _sites("ActivationStats.sites", self.sites)
        if not sites:
            raise ValueError("ActivationStats.sites: must not be empty")
        object.__setattr__(self, "sites", tuple(sites))
        if _index("ActivationStats.top_k", self.top_k) == 0:
            raise ValueError("ActivationStats.top_k: must be >= 1")

    def body(self):
        return {"sites": list(self.sites), "top_k": int(self.top_k)}


@dataclass(frozen=True)
class AttentionSink(_Builder):
    """Per layer and head: mean over queries q >= 1 of the attention probability on key 0."""
    layers: Sequence[int] | None = None
    KIND = "attention_sink"

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(_indices("AttentionSink.layers", self.layers)))

    def body(self):
        return {"layers": list(self.layers)} if self.layers else {}


@dataclass(frozen=True)
class Capture(_Builder):
    """Raw float32 tensors at sites for the first ``max_windows`` windows, at ``positions`` (None: all)."""
    sites: Sequence[str]
    positions: Sequence[int] | None = None
    max_windows: int = 1
    KIND = "capture"

    def __post_init__(self):
        sites = _sites("Capture.sites", self.sites)
        if not sites:
            raise ValueError("Capture.sites: must not be empty")
        object.__setattr__(self, "sites", tuple(sites))
        object.__setattr__(self, "positions", tuple(_indices("Capture.positions", self.positions)))
        _index("Capture.max_windows", self.max_windows)

    def body(self):
        d = {"sites": list(self.sites)}
        if self.positions:
            d["positions"] = list(self.positions)
        d["max_windows"] = int(self.max_windows)
        return d


@dataclass(frozen=True)
class MassiveActivations(_Builder):
    """Sun et al.: entries with |x| >= min_magnitude and >= min_ratio x their window's median |x|."""
    sites: Sequence[str] | None = None
    min_magnitude: float | None = None
    min_ratio: float | None = None
    max_reports: int | None = None
    KIND = "massive_activations"

    def __post_init__(self):
        object.__setattr__(self, "sites", tuple(_sites("MassiveActivations.sites", self.sites)))
        object.__setattr__(self, "min_magnitude", _opt_number("MassiveActivations.min_magnitude", self.min_magnitude))
        object.__setattr__(self, "min_ratio", _opt_number("MassiveActivations.min_ratio", self.min_ratio))
        object.__setattr__(self, "max_reports", _opt_count("MassiveActivations.max_reports", self.max_reports))

    def body(self):
        return _drop_none({"sites": list(self.sites) or None, "min_magnitude": self.min_magnitude,
                           "min_ratio": self.min_ratio, "max_reports": self.max_reports})


@dataclass(frozen=True)
class SuperWeights(_Builder):
    """Yu et al.: per layer, mlp.down[row, col] from the spikes of |mlp_out| and |mlp_act|."""
    min_ratio: float | None = None
    min_magnitude: float | None = None
    KIND = "super_weights"

    def __post_init__(self):
        object.__setattr__(self, "min_ratio", _opt_number("SuperWeights.min_ratio", self.min_ratio))
        object.__setattr__(self, "min_magnitude", _opt_number("SuperWeights.min_magnitude", self.min_magnitude))

    def body(self):
        return _drop_none({"min_ratio": self.min_ratio, "min_magnitude": self.min_magnitude})


@dataclass(frozen=True)
class NormOutliers(_Builder):
    """Norm gamma channels with robust |z| >= min_z."""
    min_z: float | None = None
    max_reports: int | None = None
    KIND = "norm_outliers"

    def __post_init__(self):
        object.__setattr__(self, "min_z", _opt_number("NormOutliers.min_z", self.min_z))
        object.__setattr__(self, "max_reports", _opt_count("NormOutliers.max_reports", self.max_reports))

    def body(self):
        return _drop_none({"min_z": self.min_z, "max_reports": self.max_reports})


@dataclass(frozen=True)
class AttentionOutliers(_Builder):
    """An et al.: keys receiving at least ``min_mass`` of the attention mass of queries q >= 1."""
    layers: Sequence[int] | None = None
    min_mass: float | None = None
    max_reports: int | None = None
    KIND = "attention_outliers"

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(_indices("AttentionOutliers.layers", self.layers)))
        object.__setattr__(self, "min_mass", _opt_number("AttentionOutliers.min_mass", self.min_mass))
        object.__setattr__(self, "max_reports", _opt_count("AttentionOutliers.max_reports", self.max_reports))

    def body(self):
        return _drop_none({"layers": list(self.layers) or None, "min_mass": self.min_mass,
                           "max_reports": self.max_reports})


MEASUREMENTS = (Perplexity, KLDivergence, TokenProbabilities, ActivationStats, AttentionSink, Capture,
                MassiveActivations, SuperWeights, NormOutliers, AttentionOutliers)
_INTERVENTION_KINDS = {c.KIND for c in INTERVENTIONS}
_MEASUREMENT_KINDS = {c.KIND for c in MEASUREMENTS}


def _part_dict(what, part, kinds):
    """A builder or a proto3-JSON dict ({"head_ablation": {...}}) -> the dict."""
    if isinstance(part, _Builder):
        d = part.to_dict()
    elif isinstance(part, Mapping):
        d = copy.deepcopy(dict(part))
    else:
        raise ValueError(f"{what}: expected a builder or a dict, got {type(part).__name__}")
    if len(d) != 1 or next(iter(d)) not in kinds:
        raise ValueError(f"{what}: expected one of {', '.join(sorted(kinds))}, got {list(d)}")
    return d


# ---------------------------------------------------------------------------------------- sweep axes

def _numbers(what, values):
    if values is None:
        return []
    if isinstance(values, np.ndarray):
        values = values.ravel().tolist()
    elif isinstance(values, (int, float, np.integer, np.floating)) and not isinstance(values, (bool, np.bool_)):
        values = [values]
    return [_number(f"{what}[{i}]", v) for i, v in enumerate(values)]


def _intervention_list(what, interventions):
    """One intervention (builder or dict) or a sequence of them -> a tuple, each checked."""
    if interventions is None:
        interventions = ()
    if isinstance(interventions, (_Builder, Mapping)):
        interventions = [interventions]
    if not isinstance(interventions, (list, tuple)):
        raise ValueError(f"{what}: expected an intervention or a list of them, got {type(interventions).__name__}")
    for i, p in enumerate(interventions):
        _part_dict(f"{what}[{i}]", p, _INTERVENTION_KINDS)
    return tuple(interventions)


def _enum_name(enum, value):
    return enum.Name(value).lower()


class _Axis(_OneOf):
    """A sweep axis: ``to_dict()`` gives its SweepAxis proto3 JSON ({KIND: body})."""


@dataclass(frozen=True)
class HeadSweep(_Axis):
    """Single-head ablations: one variant per (layer, head), named ``L<layer>.H<head>``, layer-major.
    ``layers`` / ``heads`` None (or empty): every layer / every head of the model."""
    layers: Sequence[int] | None = None
    heads: Sequence[int] | None = None
    mode: str = "zero"
    factor: float | None = None
    KIND = "heads"
    MODES = HeadAblation.MODES

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(_indices("HeadSweep.layers", self.layers)))
        object.__setattr__(self, "heads", tuple(_indices("HeadSweep.heads", self.heads)))
        object.__setattr__(self, "mode", _choice("HeadSweep.mode", self.mode, self.MODES).lower())
        if self.mode == "scale":
            if self.factor is None:
                raise ValueError("HeadSweep: mode 'scale' needs factor=")
            object.__setattr__(self, "factor", _number("HeadSweep.factor", self.factor))
        elif self.factor is not None:
            raise ValueError(f"HeadSweep: factor is only used with mode 'scale', not {self.mode!r}")

    def body(self):
        d = {}
        if self.layers:
            d["layers"] = list(self.layers)
        if self.heads:
            d["heads"] = list(self.heads)
        d["mode"] = self.mode.upper()
        if self.mode == "scale":
            d["factor"] = self.factor
        return d

    @classmethod
    def _from_message(cls, m):
        from ._proto import experiment_pb2
        mode = _enum_name(experiment_pb2.HeadAblation.Mode, m.mode)
        return cls(layers=list(m.layers), heads=list(m.heads), mode=mode,
                   factor=m.factor if mode == "scale" else None)


@dataclass(frozen=True)
class NormChannelSweep(_Axis):
    """Single-channel norm resets: one variant per (layer, channel), named ``<norm>.L<layer>.C<channel>``
    (``final.C<channel>`` for the final norm, which takes no layers). ``layers`` / ``channels`` None (or
    empty): every layer / every channel."""
    norm: str
    layers: Sequence[int] | None = None
    channels: Sequence[int] | None = None
    mode: str = "one"
    value: float | None = None
    KIND = "norm_channels"
    MODES = NormChannelReset.MODES

    def __post_init__(self):
        if self.norm not in NORMS:
            raise ValueError(f"NormChannelSweep.norm: unknown norm {self.norm!r}; valid: {', '.join(NORMS)}")
        object.__setattr__(self, "layers", tuple(_indices("NormChannelSweep.layers", self.layers)))
        if self.norm == "final" and self.layers:
            raise ValueError("NormChannelSweep: norm 'final' takes no layers (it follows the last block)")
        object.__setattr__(self, "channels", tuple(_indices("NormChannelSweep.channels", self.channels)))
        object.__setattr__(self, "mode", _choice("NormChannelSweep.mode", self.mode, self.MODES).lower())
        if self.mode == "value":
            if self.value is None:
                raise ValueError("NormChannelSweep: mode 'value' needs value=")
            object.__setattr__(self, "value", _number("NormChannelSweep.value", self.value))
        elif self.value is not None:
            raise ValueError(f"NormChannelSweep: value is only used with mode 'value', not {self.mode!r}")

    def body(self):
        d = {"norm": self.norm}
        if self.layers:
            d["layers"] = list(self.layers)
        if self.channels:
            d["channels"] = list(self.channels)
        d["mode"] = self.mode.upper()
        if self.mode == "value":
            d["value"] = self.value
        return d

    @classmethod
    def _from_message(cls, m):
        from ._proto import experiment_pb2
        mode = _enum_name(experiment_pb2.NormChannelReset.Mode, m.mode)
        return cls(norm=m.norm, layers=[] if m.norm == "final" else list(m.layers), channels=list(m.channels),
                   mode=mode, value=m.value if mode == "value" else None)


@dataclass(frozen=True)
class WeightValueSweep(_Axis):
    """One weight element ([row, col] of ``module`` at ``layer``, nn.Linear convention) at several
    values: one variant per value, named ``x<value>`` (op ``scale``: w *= value) or ``=<value>``
    (op ``set``: w = value); op ``zero`` takes no values and makes one variant, ``zero``."""
    layer: int
    module: str
    row: int
    col: int
    op: str = "scale"
    values: Sequence[float] | None = None
    KIND = "weight_values"
    OPS = WeightEdit.OPS

    def __post_init__(self):
        object.__setattr__(self, "layer", _index("WeightValueSweep.layer", self.layer))
        if self.module not in MODULES:
            raise ValueError(f"WeightValueSweep.module: unknown module {self.module!r}; valid: {', '.join(MODULES)}")
        object.__setattr__(self, "row", _index("WeightValueSweep.row", self.row))
        object.__setattr__(self, "col", _index("WeightValueSweep.col", self.col))
        object.__setattr__(self, "op", _choice("WeightValueSweep.op", self.op, self.OPS).lower())
        values = tuple(_numbers("WeightValueSweep.values", self.values))
        if self.op == "zero" and values:
            raise ValueError("WeightValueSweep: op 'zero' takes no values (it makes one variant)")
        if self.op != "zero" and not values:
            raise ValueError(f"WeightValueSweep: op {self.op!r} needs values= (one variant each)")
        object.__setattr__(self, "values", values)

    def body(self):
        d = {"layer": self.layer, "module": self.module, "row": self.row, "col": self.col, "op": self.op.upper()}
        if self.values:
            d["values"] = list(self.values)
        return d

    @classmethod
    def _from_message(cls, m):
        from ._proto import experiment_pb2
        return cls(layer=m.layer, module=m.module, row=int(m.row), col=int(m.col),
                   op=_enum_name(experiment_pb2.WeightEdit.Op, m.op), values=list(m.values))


@dataclass(frozen=True)
class Variant:
    """One variant of a ``Variants`` axis: its name (``""``: the server names it ``v<index>``) and the
    interventions it adds to the spec's own (builders or their dicts; one or a list)."""
    name: str = ""
    interventions: Sequence[Any] = ()

    def __post_init__(self):
        if self.name is None:
            object.__setattr__(self, "name", "")
        if not isinstance(self.name, str):
            raise ValueError(f"Variant.name: expected a string, got {self.name!r}")
        object.__setattr__(self, "interventions",
                           _intervention_list(f"Variant({self.name!r}).interventions", self.interventions))

    def to_dict(self):
        d = {"name": self.name} if self.name else {}
        d["interventions"] = [_part_dict("interventions", p, _INTERVENTION_KINDS) for p in self.interventions]
        return d


@dataclass(frozen=True)
class Variants(_Axis):
    """An explicit list of variants: ``Variant(name, interventions)`` or ``(name, intervention-or-list)``
    pairs (or ``{"name": ..., "interventions": [...]}`` dicts). Names must be unique."""
    variants: Sequence[Any]
    KIND = "variants"

    def __post_init__(self):
        items = self.variants
        if isinstance(items, (Variant, Mapping)) or (isinstance(items, tuple) and len(items) == 2
                                                      and isinstance(items[0], str)):
            items = [items]
        if not isinstance(items, (list, tuple)):
            raise ValueError(f"Variants: expected a list of Variant or (name, interventions) pairs, "
                             f"got {type(items).__name__}")
        out = []
        for i, v in enumerate(items):
            if isinstance(v, Variant):
                out.append(v)
            elif isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str):
                out.append(Variant(v[0], v[1]))
            elif isinstance(v, Mapping) and set(v) <= {"name", "interventions"}:
                out.append(Variant(v.get("name", ""), v.get("interventions", ())))
            else:
                raise ValueError(f"Variants[{i}]: expected a Variant or a (name, interventions) pair, got {v!r}")
        if not out:
            raise ValueError("Variants: must not be empty")
        seen = set()
        for v in out:
            if v.name and v.name in seen:
                raise ValueError(f"Variants: the name {v.name!r} is used twice")
            seen.add(v.name)
        object.__setattr__(self, "variants", tuple(out))

    def __len__(self):
        return len(self.variants)

    def body(self):
        return {"variants": [v.to_dict() for v in self.variants]}

    @classmethod
    def _from_message(cls, m):
        from google.protobuf import json_format
        return cls([Variant(v.name, [json_format.MessageToDict(iv, preserving_proto_field_name=True)
                                     for iv in v.interventions]) for v in m.variants])


AXES = (Variants, HeadSweep, NormChannelSweep, WeightValueSweep)
_AXIS_BY_KIND = {a.KIND: a for a in AXES}


@dataclass(frozen=True)
class Sweep:
    """A server-side sweep: one child experiment per variant, the product of ``axes`` (the last axis
    varying fastest), each with the spec's interventions followed by its choice on every axis and
    named by their names joined by ``+`` ("L3.H5", "L0.H1+x0.5"). All variants share the spec's
    dataset, windows and measurements, so one baseline, and run together ``variants_per_pass`` at a
    time in shared forward passes (None: the server picks from its token budget). Axes are
    ``HeadSweep``, ``NormChannelSweep``, ``WeightValueSweep``, ``Variants`` or their proto3-JSON
    dicts ({"heads": {}})."""
    axes: Sequence[Any]
    variants_per_pass: int | None = None

    def __post_init__(self):
        axes = self.axes
        if isinstance(axes, (_Axis, Mapping)):
            axes = [axes]
        if not isinstance(axes, (list, tuple)):
            raise ValueError(f"Sweep.axes: expected a list of axes ({', '.join(a.__name__ for a in AXES)}), "
                             f"got {type(axes).__name__}")
        out = []
        for i, a in enumerate(axes):
            if isinstance(a, _Axis):
                out.append(a)
            elif isinstance(a, Mapping):
                out.append(_axis_from_dict(f"Sweep.axes[{i}]", a))
            else:
                raise ValueError(f"Sweep.axes[{i}]: expected one of {', '.join(a.__name__ for a in AXES)}, "
                                 f"got {type(a).__name__}")
        if not out:
            raise ValueError("Sweep.axes: give at least one axis")
        object.__setattr__(self, "axes", tuple(out))
        vpp = _opt_count("Sweep.variants_per_pass", self.variants_per_pass)
        object.__setattr__(self, "variants_per_pass", vpp or None)

    def to_dict(self) -> dict:
        d = {"axes": [a.to_dict() for a in self.axes]}
        if self.variants_per_pass:
            d["variants_per_pass"] = int(self.variants_per_pass)
        return d

    def to_proto(self):
        from google.protobuf import json_format
        from ._proto import experiment_pb2
        return json_format.ParseDict(self.to_dict(), experiment_pb2.Sweep())

    @classmethod
    def from_proto(cls, m) -> "Sweep":
        axes = []
        for i, a in enumerate(m.axes):
            kind = a.WhichOneof("kind")
            if kind is None:
                raise ValueError(f"Sweep.axes[{i}]: no axis set; valid: {', '.join(sorted(_AXIS_BY_KIND))}")
            axes.append(_AXIS_BY_KIND[kind]._from_message(getattr(a, kind)))
        return cls(axes, variants_per_pass=m.variants_per_pass or None)

    @classmethod
    def from_dict(cls, d: Mapping) -> "Sweep":
        """From the proto3 JSON form (field names as in the proto or lowerCamelCase)."""
        from google.protobuf import json_format
        from ._proto import experiment_pb2
        try:
            m = json_format.ParseDict(dict(d), experiment_pb2.Sweep())
        except json_format.ParseError as e:
            raise ValueError(f"Sweep: not a valid lesion.v1.Sweep: {e}") from e
        axes = d.get("axes", [])
        if not isinstance(axes, (list, tuple)):
            return cls.from_proto(m)
        return cls([_axis_from_dict(f"Sweep.axes[{i}]", a) for i, a in enumerate(axes)],
                   variants_per_pass=m.variants_per_pass or None)


def _axis_from_dict(what, d):
    from google.protobuf import json_format
    from ._proto import experiment_pb2
    valid = ", ".join(sorted(_AXIS_BY_KIND))
    if len(d) != 1:
        raise ValueError(f"{what}: expected one of {valid}, got {list(d)}")
    try:
        m = json_format.ParseDict(dict(d), experiment_pb2.SweepAxis())  # also takes lowerCamelCase
    except json_format.ParseError as e:
        raise ValueError(f"{what}: expected one of {valid}: {e}") from e
    kind = m.WhichOneof("kind")
    if kind == "variants" and isinstance(d.get("variants"), Mapping):  # keep the interventions as given
        return Variants([Variant(v.get("name", ""), v.get("interventions", ()))
                         for v in d["variants"].get("variants", [])])
    return _AXIS_BY_KIND[kind]._from_message(getattr(m, kind))


# ------------------------------------------------------------------------------------------ experiment

@dataclass(frozen=True)
class Experiment:
    """One experiment: data, windows, interventions (applied together) and measurements (taken on the
    baseline and the intervened model). Interventions and measurements are builders or their
    proto3-JSON dicts. With ``sweep`` (a ``Sweep``, one axis, a list of axes or a dict) it is a
    sweep's parent: the server runs one child experiment per variant (``Client.variants``)."""
    model: str = ""
    dataset: Dataset | Mapping | None = None
    eval: Eval | Mapping | None = None
    interventions: Sequence[Any] = ()
    measurements: Sequence[Any] = ()
    name: str = ""
    tags: Sequence[str] = ()
    sweep: Sweep | None = None

    def __post_init__(self):
        if isinstance(self.tags, str):
            object.__setattr__(self, "tags", (self.tags,))
        object.__setattr__(self, "tags", tuple(self.tags or ()))
        if not all(isinstance(t, str) for t in self.tags):
            raise ValueError("Experiment.tags: expected strings")
        if not isinstance(self.model, str) or not isinstance(self.name, str):
            raise ValueError("Experiment.model and Experiment.name are strings")
        if self.dataset is not None and not isinstance(self.dataset, (Dataset, Mapping)):
            raise ValueError("Experiment.dataset: expected Dataset.text(...), .token_ids(...) or .named(...)")
        if self.eval is not None and not isinstance(self.eval, (Eval, Mapping)):
            raise ValueError("Experiment.eval: expected an Eval(...)")
        interventions = self.interventions
        if isinstance(interventions, (_Builder, Mapping)):
            interventions = [interventions]
        measurements = self.measurements
        if isinstance(measurements, (_Builder, Mapping)):
            measurements = [measurements]
        for i, p in enumerate(interventions):
            _part_dict(f"Experiment.interventions[{i}]", p, _INTERVENTION_KINDS)
        for i, p in enumerate(measurements):
            _part_dict(f"Experiment.measurements[{i}]", p, _MEASUREMENT_KINDS)
        object.__setattr__(self, "interventions", tuple(interventions))
        object.__setattr__(self, "measurements", tuple(measurements))
        sw = self.sweep
        if sw is not None and not isinstance(sw, Sweep):
            if isinstance(sw, (_Axis, list, tuple)):
                sw = Sweep(sw)
            elif isinstance(sw, Mapping):
                sw = Sweep.from_dict(sw)
            else:
                raise ValueError(f"Experiment.sweep: expected a Sweep(...), an axis or a list of axes, "
                                 f"got {type(sw).__name__}")
            object.__setattr__(self, "sweep", sw)

    # -- forms
    def to_dict(self) -> dict:
        d = {}
        if self.name:
            d["name"] = self.name
        if self.tags:
            d["tags"] = list(self.tags)
        if self.model:
            d["model"] = self.model
        if self.dataset is not None:
            d["dataset"] = self.dataset.to_dict() if isinstance(self.dataset, Dataset) else dict(self.dataset)
        if self.eval is not None:
            d["eval"] = self.eval.to_dict() if isinstance(self.eval, Eval) else dict(self.eval)
        d["interventions"] = [_part_dict("interventions", p, _INTERVENTION_KINDS) for p in self.interventions]
        d["measurements"] = [_part_dict("measurements", p, _MEASUREMENT_KINDS) for p in self.measurements]
        if self.sweep is not None:
            d["sweep"] = self.sweep.to_dict()
        return d

    def to_json(self, indent=None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_proto(self):
        from google.protobuf import json_format
        from ._proto import experiment_pb2
        try:
            return json_format.ParseDict(self.to_dict(), experiment_pb2.ExperimentSpec())
        except json_format.ParseError as e:
            raise ValueError(f"Experiment: not a valid lesion.v1.ExperimentSpec: {e}") from e

    @classmethod
    def from_dict(cls, d: Mapping) -> "Experiment":
        """From the proto3 JSON form (interventions and measurements stay dicts; a sweep becomes a
        ``Sweep`` of axis builders)."""
        d = dict(d)
        known = {"name", "tags", "model", "dataset", "eval", "interventions", "measurements", "sweep"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"Experiment.from_dict: unknown fields {sorted(unknown)}")
        return cls(model=d.get("model", ""), dataset=d.get("dataset"), eval=d.get("eval"),
                   interventions=d.get("interventions", ()), measurements=d.get("measurements", ()),
                   name=d.get("name", ""), tags=d.get("tags", ()), sweep=d.get("sweep"))

    @classmethod
    def from_json(cls, s: str) -> "Experiment":
        return cls.from_dict(json.loads(s))

    @classmethod
    def from_proto(cls, spec) -> "Experiment":
        from google.protobuf import json_format
        return cls.from_dict(json_format.MessageToDict(spec, preserving_proto_field_name=True))

    # -- variations
    def replace(self, **changes) -> "Experiment":
        return dataclasses.replace(self, **changes)

    def with_interventions(self, *interventions, name=None) -> "Experiment":
        """A copy with ``interventions`` added to the existing ones."""
        return dataclasses.replace(self, interventions=tuple(self.interventions) + tuple(interventions),
                                   name=self.name if name is None else name)


def spec_to_proto(spec):
    """An Experiment, an ExperimentSpec proto, a proto3-JSON dict or JSON text -> ExperimentSpec."""
    from google.protobuf import json_format
    from ._proto import experiment_pb2
    if isinstance(spec, Experiment):
        return spec.to_proto()
    if isinstance(spec, experiment_pb2.ExperimentSpec):
        return spec
    if isinstance(spec, str):
        spec = json.loads(spec)
    if isinstance(spec, Mapping):
        try:
            return json_format.ParseDict(spec, experiment_pb2.ExperimentSpec())
        except json_format.ParseError as e:
            raise ValueError(f"not a valid lesion.v1.ExperimentSpec: {e}") from e
    raise TypeError(f"expected an Experiment, ExperimentSpec, dict or JSON string, got {type(spec).__name__}")


# ---------------------------------------------------------------------------------------------- sweeps

def sweep(base: Experiment, variants: Iterable[Any]) -> list:
    """One experiment per variant, as a plain loop would make them (submitted separately, e.g. with
    ``Client.run_many``). For variants that differ only in their interventions, a server-side sweep is
    the fast path: ``base.replace(sweep=Sweep([Variants([...])]))`` is one submission whose variants
    share one baseline and run batched in shared forward passes. A variant is

    - an intervention builder or a list of them: added to ``base``'s interventions;
    - a dict of Experiment fields to replace (``{"eval": Eval(seq_len=256)}``);
    - a callable ``base -> Experiment``;
    - a ``(label, variant)`` pair: the label is appended to the name as ``NAME/label``.
    """
    out = []
    for i, v in enumerate(variants):
        label = None
        if isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str):
            label, v = v
        if callable(v) and not isinstance(v, (_Builder, Mapping)):
            exp = v(base)
        elif isinstance(v, Mapping) and not (len(v) == 1 and next(iter(v)) in _INTERVENTION_KINDS):
            exp = base.replace(**v)
        elif isinstance(v, (_Builder, Mapping)):
            exp = base.with_interventions(v)
        elif isinstance(v, (list, tuple)):
            exp = base.with_interventions(*v)
        else:
            raise ValueError(f"sweep: variant {i}: unsupported {type(v).__name__}")
        if not isinstance(exp, Experiment):
            raise ValueError(f"sweep: variant {i} did not produce an Experiment")
        if label is not None:
            exp = exp.replace(name=f"{base.name}/{label}" if base.name else label)
        out.append(exp)
    return out


def sweep_heads(base: Experiment, n_layers: int, n_heads: int, mode="zero", factor=None,
                layers: Iterable[int] | None = None) -> list:
    """One single-head ablation per (layer, head), named ``NAME/L<l>.H<h>``, in layer-major order: separate
    experiments. The fast path is a server-side sweep, ``base.replace(sweep=Sweep([HeadSweep()]))``: one
    submission, one child experiment per head (named the same), one shared baseline, the heads batched
    in shared forward passes."""
    _index("sweep_heads.n_layers", n_layers)
    _index("sweep_heads.n_heads", n_heads)
    layers = range(n_layers) if layers is None else layers
    return sweep(base, [(f"L{l}.H{h}", HeadAblation(layer=l, heads=[h], mode=mode, factor=factor))
                        for l in layers for h in range(n_heads)])
