"""Interventions: what an experiment changes in the model (heads, weights, norm channels, attention
slots, activations), applied together on the intervened pass."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._base import _Builder, _part_dict
from ._checks import _choice, _floats, _index, _indices, _number
from .sites import MODULES, NORMS, check_site, parse_site


@dataclass(frozen=True)
class HeadAblation(_Builder):
    """Heads' slices of blocks.LAYER.attn_z set to zero (``mode="zero"``), scaled by ``factor``
    (``"scale"``), or set to their mean over the dataset (``"mean"``).

    Mode "mean" needs the dataset means from a full baseline pass first, so an experiment using it
    never takes its baseline from the server's baseline cache: its baseline passes run again."""

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
        """The element set to 0 (a super weight removed)."""
        return cls(layer, module, row, col, "zero", 0.0)

    @classmethod
    def scale(cls, layer, module, row, col, factor):
        """The element multiplied by ``factor``."""
        return cls(layer, module, row, col, "scale", factor)

    @classmethod
    def set(cls, layer, module, row, col, value):
        """The element set to ``value``."""
        return cls(layer, module, row, col, "set", value)

    def body(self):
        d = {"layer": self.layer, "module": self.module, "row": self.row, "col": self.col, "op": self.op.upper()}
        if self.op != "zero":
            d["value"] = self.value
        return d


@dataclass(frozen=True)
class NormChannelReset(_Builder):
    """Gamma channels of a norm at ``layer`` (or of ``final``) reset to 1, the gamma mean, or ``value``.
    Norms: ``attn`` / ``mlp`` before each branch, ``attn_post`` / ``mlp_post`` after it, ``q`` / ``k``
    (QK-norm), ``final``; which of them a model has depends on its family (docs/architectures.md)."""

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
        object.__setattr__(
            self, "channels", tuple(_indices("NormChannelReset.channels", self.channels, allow_empty=False))
        )
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
    """Entries of a hook site (``*`` for every layer; not attn_pattern) at ``positions`` and ``dims``
    (None: all) set to zero, ``value``, scaled by ``value``, or set to their dataset mean
    (``op="mean"``).

    Op "mean" needs the dataset means from a full baseline pass first, so an experiment using it
    never takes its baseline from the server's baseline cache: its baseline passes run again."""

    site: str
    positions: Sequence[int] | None = None
    dims: Sequence[int] | None = None
    op: str = "zero"
    value: float | None = None
    KIND = "activation_edit"
    OPS = ("zero", "set", "scale", "mean")

    def __post_init__(self):
        if parse_site(check_site("ActivationEdit.site", self.site))[0] == "attn_pattern":
            raise ValueError(
                "ActivationEdit.site: attn_pattern cannot be edited (use a HeadAblation or an AttentionBias)"
            )
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
_INTERVENTION_KINDS = {c.KIND for c in INTERVENTIONS}


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
