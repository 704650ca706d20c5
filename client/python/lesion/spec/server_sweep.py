"""Server-side sweeps: the axes (``HeadSweep``, ``NormChannelSweep``, ``WeightValueSweep``, ``Variants``
of ``Variant``) and ``Sweep``, their product, which the server expands into one child experiment per
variant sharing one baseline."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._base import _Axis, _part_dict
from ._checks import _choice, _enum_name, _index, _indices, _number, _numbers, _opt_count
from .interventions import _INTERVENTION_KINDS, HeadAblation, NormChannelReset, WeightEdit, _intervention_list
from .sites import MODULES, NORMS


@dataclass(frozen=True)
class HeadSweep(_Axis):
    """Single-head ablations: one variant per (layer, head), named ``L<layer>.H<head>``, layer-major.
    ``layers`` / ``heads`` None (or empty): every layer / every head of the model. ``mode`` as
    ``HeadAblation``'s; "mean" needs the dataset means, so the sweep then does not take its baseline's
    measurements from the server's baseline cache."""

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
        from .._proto import experiment_pb2

        mode = _enum_name(experiment_pb2.HeadAblation.Mode, m.mode)
        return cls(layers=list(m.layers), heads=list(m.heads), mode=mode, factor=m.factor if mode == "scale" else None)


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
        from .._proto import experiment_pb2

        mode = _enum_name(experiment_pb2.NormChannelReset.Mode, m.mode)
        return cls(
            norm=m.norm,
            layers=[] if m.norm == "final" else list(m.layers),
            channels=list(m.channels),
            mode=mode,
            value=m.value if mode == "value" else None,
        )


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
        from .._proto import experiment_pb2

        return cls(
            layer=m.layer,
            module=m.module,
            row=int(m.row),
            col=int(m.col),
            op=_enum_name(experiment_pb2.WeightEdit.Op, m.op),
            values=list(m.values),
        )


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
        object.__setattr__(
            self, "interventions", _intervention_list(f"Variant({self.name!r}).interventions", self.interventions)
        )

    def to_dict(self):
        """The variant's proto3 JSON: its name (if any) and interventions."""
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
        if isinstance(items, (Variant, Mapping)) or (
            isinstance(items, tuple) and len(items) == 2 and isinstance(items[0], str)
        ):
            items = [items]
        if not isinstance(items, (list, tuple)):
            raise ValueError(
                f"Variants: expected a list of Variant or (name, interventions) pairs, got {type(items).__name__}"
            )
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

        return cls(
            [
                Variant(
                    v.name, [json_format.MessageToDict(iv, preserving_proto_field_name=True) for iv in v.interventions]
                )
                for v in m.variants
            ]
        )


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
            raise ValueError(
                f"Sweep.axes: expected a list of axes ({', '.join(a.__name__ for a in AXES)}), "
                f"got {type(axes).__name__}"
            )
        out = []
        for i, a in enumerate(axes):
            if isinstance(a, _Axis):
                out.append(a)
            elif isinstance(a, Mapping):
                out.append(_axis_from_dict(f"Sweep.axes[{i}]", a))
            else:
                raise ValueError(
                    f"Sweep.axes[{i}]: expected one of {', '.join(a.__name__ for a in AXES)}, got {type(a).__name__}"
                )
        if not out:
            raise ValueError("Sweep.axes: give at least one axis")
        object.__setattr__(self, "axes", tuple(out))
        vpp = _opt_count("Sweep.variants_per_pass", self.variants_per_pass)
        object.__setattr__(self, "variants_per_pass", vpp or None)

    def to_dict(self) -> dict:
        """The sweep's proto3 JSON (the spec's ``sweep`` field)."""
        d = {"axes": [a.to_dict() for a in self.axes]}
        if self.variants_per_pass:
            d["variants_per_pass"] = int(self.variants_per_pass)
        return d

    def to_proto(self):
        """The lesion.v1.Sweep message."""
        from google.protobuf import json_format

        from .._proto import experiment_pb2

        return json_format.ParseDict(self.to_dict(), experiment_pb2.Sweep())

    @classmethod
    def from_proto(cls, m) -> Sweep:
        """From a lesion.v1.Sweep message (each axis becomes its builder)."""
        axes = []
        for i, a in enumerate(m.axes):
            kind = a.WhichOneof("kind")
            if kind is None:
                raise ValueError(f"Sweep.axes[{i}]: no axis set; valid: {', '.join(sorted(_AXIS_BY_KIND))}")
            axes.append(_AXIS_BY_KIND[kind]._from_message(getattr(a, kind)))
        return cls(axes, variants_per_pass=m.variants_per_pass or None)

    @classmethod
    def from_dict(cls, d: Mapping) -> Sweep:
        """From the proto3 JSON form (field names as in the proto or lowerCamelCase)."""
        from google.protobuf import json_format

        from .._proto import experiment_pb2

        try:
            m = json_format.ParseDict(dict(d), experiment_pb2.Sweep())
        except json_format.ParseError as e:
            raise ValueError(f"Sweep: not a valid lesion.v1.Sweep: {e}") from e
        axes = d.get("axes", [])
        if not isinstance(axes, (list, tuple)):
            return cls.from_proto(m)
        return cls(
            [_axis_from_dict(f"Sweep.axes[{i}]", a) for i, a in enumerate(axes)],
            variants_per_pass=m.variants_per_pass or None,
        )


def _axis_from_dict(what, d):
    from google.protobuf import json_format

    from .._proto import experiment_pb2

    valid = ", ".join(sorted(_AXIS_BY_KIND))
    if len(d) != 1:
        raise ValueError(f"{what}: expected one of {valid}, got {list(d)}")
    try:
        m = json_format.ParseDict(dict(d), experiment_pb2.SweepAxis())  # also takes lowerCamelCase
    except json_format.ParseError as e:
        raise ValueError(f"{what}: expected one of {valid}: {e}") from e
    kind = m.WhichOneof("kind")
    if kind == "variants" and isinstance(d.get("variants"), Mapping):  # keep the interventions as given
        return Variants(
            [Variant(v.get("name", ""), v.get("interventions", ())) for v in d["variants"].get("variants", [])]
        )
    return _AXIS_BY_KIND[kind]._from_message(getattr(m, kind))
