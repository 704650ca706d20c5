"""``Experiment``, the whole spec, with its proto3 JSON / JSON / proto forms, and ``spec_to_proto``."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._base import _Axis, _Builder, _part_dict
from .dataset import Dataset, Eval
from .interventions import _INTERVENTION_KINDS
from .measurements import _MEASUREMENT_KINDS
from .server_sweep import Sweep


@dataclass(frozen=True)
class Experiment:
    """One experiment: data, windows, interventions (applied together) and measurements (taken on the
    baseline and the intervened model). Interventions and measurements are builders or their
    proto3-JSON dicts. With ``sweep`` (a ``Sweep``, one axis, a list of axes or a dict) it is a
    sweep's parent: the server runs one child experiment per variant (``Client.variants``).

    The baseline pass depends only on the model, ``dataset``, ``eval`` and ``measurements``, and
    lesiond keeps computed baselines (the baseline cache): a later experiment with the same ones
    reuses it instead of running the baseline's forward passes, unless it needs the baseline's
    logits or dataset means (a ``KLDivergence`` measure, ``HeadAblation(mode="mean")``,
    ``ActivationEdit(op="mean")``)."""

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
            raise ValueError(
                "Experiment.dataset: expected Dataset.text(...), .token_ids(...), .named(...) or .prompts(...)"
            )
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
                raise ValueError(
                    f"Experiment.sweep: expected a Sweep(...), an axis or a list of axes, got {type(sw).__name__}"
                )
            object.__setattr__(self, "sweep", sw)

    # -- forms
    def to_dict(self) -> dict:
        """The spec's proto3 JSON (what ``lesion run --local --spec`` reads; docs/spec.md)."""
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
        """``to_dict()`` as JSON text."""
        return json.dumps(self.to_dict(), indent=indent)

    def to_proto(self):
        """The lesion.v1.ExperimentSpec message; ValueError where the proto refuses a value."""
        from google.protobuf import json_format

        from .._proto import experiment_pb2

        try:
            return json_format.ParseDict(self.to_dict(), experiment_pb2.ExperimentSpec())
        except json_format.ParseError as e:
            raise ValueError(f"Experiment: not a valid lesion.v1.ExperimentSpec: {e}") from e

    @classmethod
    def from_dict(cls, d: Mapping) -> Experiment:
        """From the proto3 JSON form (interventions and measurements stay dicts; a sweep becomes a
        ``Sweep`` of axis builders)."""
        d = dict(d)
        known = {"name", "tags", "model", "dataset", "eval", "interventions", "measurements", "sweep"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"Experiment.from_dict: unknown fields {sorted(unknown)}")
        return cls(
            model=d.get("model", ""),
            dataset=d.get("dataset"),
            eval=d.get("eval"),
            interventions=d.get("interventions", ()),
            measurements=d.get("measurements", ()),
            name=d.get("name", ""),
            tags=d.get("tags", ()),
            sweep=d.get("sweep"),
        )

    @classmethod
    def from_json(cls, s: str) -> Experiment:
        """From the spec's JSON text (as ``from_dict``)."""
        return cls.from_dict(json.loads(s))

    @classmethod
    def from_proto(cls, spec) -> Experiment:
        """From a lesion.v1.ExperimentSpec message (as ``from_dict``; ``ExperimentRecord.spec``)."""
        from google.protobuf import json_format

        return cls.from_dict(json_format.MessageToDict(spec, preserving_proto_field_name=True))

    # -- variations
    def replace(self, **changes) -> Experiment:
        """A copy with the given fields changed (``spec.replace(name="b", eval=Eval(seq_len=256))``)."""
        return dataclasses.replace(self, **changes)

    def with_interventions(self, *interventions, name=None) -> Experiment:
        """A copy with ``interventions`` added to the existing ones."""
        return dataclasses.replace(
            self,
            interventions=tuple(self.interventions) + tuple(interventions),
            name=self.name if name is None else name,
        )


def spec_to_proto(spec):
    """An Experiment, an ExperimentSpec proto, a proto3-JSON dict or JSON text -> ExperimentSpec."""
    from google.protobuf import json_format

    from .._proto import experiment_pb2

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
