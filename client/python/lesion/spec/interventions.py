"""Interventions: what an experiment changes in the model (heads, weights, norm channels, attention
slots, activations), applied together on the intervened pass."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._base import _Builder, _part_dict
from ._checks import _choice, _floats, _index, _indices, _number, _vector
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
    (None: all; positions count from a window's start, BOS included, and must lie within the
    windows) changed by ``op``:

    - ``"zero"``; ``"set"`` to ``value``; ``"scale"`` by ``value``; ``"mean"``: their dataset mean;
    - with a ``vector`` of D numbers, D = ``len(dims)`` (the site's width when ``dims`` is None):
      ``"add"``, x += ``value`` x vector (steering; ``value`` is alpha: ``Steer``);
      ``"project_out"``, x -= (x . u) u with u = vector / |vector| (a direction ablated:
      ``ProjectOut``); ``"set_vectors"``, x = vector at every selected position, or one row of D
      numbers per position in the order of ``positions`` (patching activations captured in another
      run: ``Patch``).

    ``vector`` is any 1-D array-like (a list, numpy, torch), or for ``"set_vectors"`` a 2-D one with
    a row per position, flattened row-major and sent as float32; every number must be finite and at
    most 1e15 in magnitude. What does not need the model is checked here (a vector only for the
    vector ops, its length against ``dims`` and ``positions``, a nonzero direction); its length
    against the site's width is checked by the server before any forward pass. attn_z dims are
    ``head * head_dim + i``.

    Op "mean" needs the dataset means from a full baseline pass first, so an experiment using it
    never takes its baseline from the server's baseline cache: its baseline passes run again."""

    site: str
    positions: Sequence[int] | None = None
    dims: Sequence[int] | None = None
    op: str = "zero"
    value: float | None = None
    vector: Any = None
    KIND = "activation_edit"
    OPS = ("zero", "set", "scale", "mean", "add", "project_out", "set_vectors")
    VECTOR_OPS = ("add", "project_out", "set_vectors")  # the ops that take a vector
    VALUE_OPS = ("set", "scale", "add")  # the ops that take a value (for "add": alpha)

    def __post_init__(self):
        if parse_site(check_site("ActivationEdit.site", self.site))[0] == "attn_pattern":
            raise ValueError(
                "ActivationEdit.site: attn_pattern cannot be edited (use a HeadAblation or an AttentionBias)"
            )
        object.__setattr__(self, "positions", tuple(_indices("ActivationEdit.positions", self.positions)))
        object.__setattr__(self, "dims", tuple(_indices("ActivationEdit.dims", self.dims)))
        object.__setattr__(self, "op", _choice("ActivationEdit.op", self.op, self.OPS).lower())
        if self.op in self.VALUE_OPS:
            if self.value is None:
                raise ValueError(
                    f"ActivationEdit: op {self.op!r} needs value="
                    + (" (alpha, the steering strength)" if self.op == "add" else "")
                )
            object.__setattr__(self, "value", _number("ActivationEdit.value", self.value))
        elif self.value is not None:
            raise ValueError(f"ActivationEdit: value is only used with op 'set', 'scale' or 'add', not {self.op!r}")
        if self.op not in self.VECTOR_OPS:
            if self.vector is not None:
                raise ValueError(
                    "ActivationEdit: vector is only used with op 'add', 'project_out' or 'set_vectors', "
                    f"not {self.op!r}"
                )
            return
        if self.vector is None:
            raise ValueError(f"ActivationEdit: op {self.op!r} needs vector=")
        vector, rows = _vector("ActivationEdit.vector", self.vector)
        object.__setattr__(self, "vector", tuple(vector))
        self._check_vector_length(rows)

    def _check_vector_length(self, rows):
        """The length rules that need no model: D = len(dims) where dims are given; a 2-D vector has
        one row (add, project_out) or a row per position (set_vectors)."""
        n, n_pos = len(self.vector), len(self.positions)
        if self.op != "set_vectors":
            if rows != 1:
                raise ValueError(f"ActivationEdit: op {self.op!r} takes one direction (a 1-D vector), got {rows} rows")
            if self.dims and n != len(self.dims):
                raise ValueError(
                    f"ActivationEdit: vector has {n} numbers, needs {len(self.dims)} (one per dim of dims)"
                )
            if self.op == "project_out" and not any(self.vector):
                raise ValueError("ActivationEdit: op 'project_out' needs a nonzero vector (the direction)")
            return
        if rows > 1 and rows != n_pos:
            where = f"{n_pos} positions" if n_pos else "no positions (every position)"
            raise ValueError(f"ActivationEdit: vector has {rows} rows for {where}: give one row, or one per position")
        if self.dims:
            width = len(self.dims)
            if n != width and not (n_pos and n == width * n_pos):
                per = f" or {width * n_pos} ({n_pos} positions x {width})" if n_pos else ""
                raise ValueError(
                    f"ActivationEdit: op 'set_vectors' needs {width} numbers (one per dim of dims){per}, got {n}"
                )
        elif n_pos > 1 and rows == 1 and n % n_pos:
            raise ValueError(
                f"ActivationEdit: op 'set_vectors' needs D numbers or {n_pos} x D (one row per position), "
                f"got {n}, which is no multiple of {n_pos}"
            )

    def __repr__(self):
        parts = [f"site={self.site!r}"]
        if self.positions:
            parts.append(f"positions={list(self.positions)!r}")
        if self.dims:
            parts.append(f"dims={list(self.dims)!r}")
        parts.append(f"op={self.op!r}")
        if self.value is not None:
            parts.append(f"value={self.value!r}")
        if self.vector is not None:
            parts.append(f"vector=<{len(self.vector)} floats>")
        return f"ActivationEdit({', '.join(parts)})"

    @classmethod
    def steer(cls, site, direction, alpha, positions=None, dims=None) -> ActivationEdit:
        """x += alpha x direction at ``site`` (``positions`` / ``dims`` None: all): op "add"."""
        return cls(site, positions=positions, dims=dims, op="add", value=alpha, vector=direction)

    @classmethod
    def project_out(cls, site, direction, positions=None, dims=None) -> ActivationEdit:
        """The component of x along ``direction`` removed at ``site``, x -= (x . u) u with
        u = direction / |direction| (``positions`` / ``dims`` None: all): op "project_out"."""
        return cls(site, positions=positions, dims=dims, op="project_out", vector=direction)

    @classmethod
    def patch(cls, site, positions, vectors, dims=None) -> ActivationEdit:
        """x = the given vectors at ``site``: ``vectors`` [len(positions), D] (a row per position, in
        the order of ``positions``) or one row of D for all of them: op "set_vectors"."""
        if positions is None or (not isinstance(positions, (int, np.integer)) and len(positions) == 0):
            raise ValueError("Patch: give the positions to patch (positions count from a window's start)")
        return cls(site, positions=positions, dims=dims, op="set_vectors", vector=vectors)

    def body(self):
        d = {"site": self.site}
        if self.positions:
            d["positions"] = list(self.positions)
        if self.dims:
            d["dims"] = list(self.dims)
        d["op"] = self.op.upper()
        if self.op in self.VALUE_OPS:
            d["value"] = self.value
        if self.op in self.VECTOR_OPS:
            d["vector"] = list(self.vector)
        return d


def Steer(site, direction, alpha, positions=None, dims=None) -> ActivationEdit:
    """Steering: ``alpha`` x ``direction`` added to ``site`` at ``positions`` (None: every position),
    over ``dims`` (None: the site's whole width, D numbers; else ``len(dims)`` numbers). An
    ``ActivationEdit`` with op "add": ``Steer("blocks.2.resid_post", v, 4.0)``."""
    return ActivationEdit.steer(site, direction, alpha, positions=positions, dims=dims)


def ProjectOut(site, direction, positions=None, dims=None) -> ActivationEdit:
    """A direction ablated: the component of ``site`` along ``direction`` removed, x -= (x . u) u with
    u = direction / |direction|, at ``positions`` (None: all) over ``dims`` (None: the whole width).
    An ``ActivationEdit`` with op "project_out": ``ProjectOut("blocks.*.resid_post", v)``."""
    return ActivationEdit.project_out(site, direction, positions=positions, dims=dims)


def Patch(site, positions, vectors, dims=None) -> ActivationEdit:
    """Activation patching: ``site`` at ``positions`` set to ``vectors``, one row per position in the
    order of ``positions`` (an array [len(positions), D], e.g. a slice of a capture of another run:
    ``Result.captures["baseline"][site][0]``) or one row of D for every position. An
    ``ActivationEdit`` with op "set_vectors"; ``lesion.patching.causal_trace`` sweeps it."""
    return ActivationEdit.patch(site, positions, vectors, dims=dims)


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
