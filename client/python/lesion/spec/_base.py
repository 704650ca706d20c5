"""Base classes of the builders that are members of a proto oneof (interventions, measurements, sweep
axes), and the check of an intervention or measurement given as a builder or as its dict."""

from __future__ import annotations

import copy
from collections.abc import Mapping


class _OneOf:
    """A proto oneof member: ``to_dict()`` gives {KIND: body}."""

    KIND = ""

    def body(self) -> dict:
        """The message's fields in proto3 JSON (proto field names, enum values by name), without
        the kind: what goes inside ``{KIND: ...}``."""
        raise NotImplementedError

    def to_dict(self):
        """``{KIND: body()}``: this part of a spec in proto3 JSON, as docs/spec.md writes it."""
        return {self.KIND: self.body()}


class _Builder(_OneOf):
    """An intervention or a measurement."""


class _Axis(_OneOf):
    """A sweep axis: ``to_dict()`` gives its SweepAxis proto3 JSON ({KIND: body})."""


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
