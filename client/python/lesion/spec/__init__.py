"""Typed builders for the experiment spec (proto/lesion/v1/experiment.proto, docs/spec.md).

Every builder has ``to_dict()``, its proto3 JSON form with the proto's field names and enum values by
name (what `lesion run --local --spec` reads), and ``Experiment`` adds ``to_proto()`` /
``to_json()``. Obvious mistakes (unknown modes, modules, norms or sites, negative indices, a missing
``factor`` / ``value``) raise ``ValueError`` when the builder is made, naming the valid choices;
everything that depends on the model (layer and head ranges, dims, a vector's width) is checked by
the server before any forward pass. ``Steer``, ``ProjectOut`` and ``Patch`` make the vector ops of
``ActivationEdit`` (steering, a direction ablated, activation patching).

A sweep (``Experiment(..., sweep=Sweep([HeadSweep()]))``) is one spec that the server expands into
one child experiment per variant, all sharing one baseline and batched in shared forward passes:
``Sweep`` of axes ``HeadSweep``, ``NormChannelSweep``, ``WeightValueSweep`` and ``Variants`` (of
``Variant``), their product with the last axis varying fastest. The client-side ``sweep()`` /
``sweep_heads()`` helpers instead make separate experiments.

The modules: ``sites`` (module, norm and hook-site names), ``dataset`` (``Dataset``, ``Eval``),
``interventions``, ``measurements``, ``server_sweep`` (the axes and ``Sweep``), ``experiment``
(``Experiment``, ``spec_to_proto``) and ``client_sweep`` (``sweep``, ``sweep_heads``); everything
public is importable from ``lesion.spec`` itself.
"""

from .client_sweep import sweep, sweep_heads
from .dataset import NAMED_DATASETS, Dataset, Eval
from .experiment import Experiment, spec_to_proto
from .interventions import (
    INTERVENTIONS,
    ActivationEdit,
    AttentionBias,
    HeadAblation,
    NormChannelReset,
    Patch,
    ProjectOut,
    Steer,
    WeightEdit,
)
from .measurements import (
    MEASUREMENTS,
    ActivationStats,
    AttentionOutliers,
    AttentionSink,
    Capture,
    KLDivergence,
    MassiveActivations,
    NormOutliers,
    Perplexity,
    SuperWeights,
    TokenOutputs,
    TokenProbabilities,
)
from .server_sweep import AXES, HeadSweep, NormChannelSweep, Sweep, Variant, Variants, WeightValueSweep
from .sites import GLOBAL_SITES, MODULES, NORMS, SITE_NAMES, check_site, parse_site

__all__ = [
    # sites
    "MODULES",
    "NORMS",
    "SITE_NAMES",
    "GLOBAL_SITES",
    "check_site",
    "parse_site",
    # dataset
    "NAMED_DATASETS",
    "Dataset",
    "Eval",
    # interventions
    "HeadAblation",
    "WeightEdit",
    "NormChannelReset",
    "AttentionBias",
    "ActivationEdit",
    "Steer",
    "ProjectOut",
    "Patch",
    "INTERVENTIONS",
    # measurements
    "Perplexity",
    "KLDivergence",
    "TokenProbabilities",
    "TokenOutputs",
    "ActivationStats",
    "AttentionSink",
    "Capture",
    "MassiveActivations",
    "SuperWeights",
    "NormOutliers",
    "AttentionOutliers",
    "MEASUREMENTS",
    # server-side sweeps
    "HeadSweep",
    "NormChannelSweep",
    "WeightValueSweep",
    "Variant",
    "Variants",
    "AXES",
    "Sweep",
    # experiment
    "Experiment",
    "spec_to_proto",
    # client-side sweeps
    "sweep",
    "sweep_heads",
]
