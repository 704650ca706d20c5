"""lesion: Python client for lesiond, the LLM ablation / intervention experiment server.

Build specs from the builders (``Experiment``, interventions such as ``HeadAblation``, measurements
such as ``Perplexity``, ``Sweep`` of axes), run them on a server (``Client``, or ``Client.local`` for
a private one), and read the ``Result`` as numbers, DataFrames and arrays; ``lesion.plots`` draws the
outlier papers' figures; ``lesion.patching.causal_trace`` runs causal tracing (activation patching);
``Client.generate`` continues a prompt with and without interventions (a ``Generation``);
``Dataset.prompts`` evaluates a prompt set with a row per prompt (``Result.prompts``), and
``Client.cache`` returns a prompt set's activations by site (an ``ActivationCache``).
docs/python-api.md lists every call.

    import lesion
    with lesion.Client.local("models/stories260K") as c:
        data = lesion.Dataset.named("tinystories-sample")
        r = c.run(lesion.Experiment(model="stories260K", dataset=data,
                                    interventions=[lesion.HeadAblation(layer=1, heads=[3])],
                                    measurements=[lesion.Perplexity()]))
        print(r.perplexity, r.metrics)
        sweep = c.run(lesion.Experiment(model="stories260K", dataset=data,
                                        measurements=[lesion.Perplexity()],
                                        sweep=lesion.Sweep([lesion.HeadSweep()])))  # one child per head
        print(sweep.sweep)  # a row per variant; c.variants(id) lists the children
"""

from . import patching
from .cache import ActivationCache
from .client import Client, ExperimentFailed, ExperimentRecord, Handle
from .errors import InvalidArgument, LesionError, NotFound, PermissionDenied, Unauthenticated
from .generation import Generation, TokenEvent
from .result import Result
from .spec import (
    ActivationEdit,
    ActivationStats,
    AttentionBias,
    AttentionOutliers,
    AttentionSink,
    Capture,
    Dataset,
    Eval,
    Experiment,
    HeadAblation,
    HeadSweep,
    KLDivergence,
    MassiveActivations,
    NormChannelReset,
    NormChannelSweep,
    NormOutliers,
    Patch,
    Perplexity,
    ProjectOut,
    Steer,
    SuperWeights,
    Sweep,
    TokenOutputs,
    TokenProbabilities,
    Variant,
    Variants,
    WeightEdit,
    WeightValueSweep,
    sweep,
    sweep_heads,
)

__version__ = "0.1.0"


def __getattr__(name):  # lesion.plots without importing matplotlib up front
    if name == "plots":
        import importlib

        return importlib.import_module(".plots", __name__)
    raise AttributeError(f"module 'lesion' has no attribute {name!r}")


__all__ = [
    "__version__",
    "patching",
    "ActivationCache",
    "Client",
    "Handle",
    "ExperimentRecord",
    "ExperimentFailed",
    "Result",
    "Generation",
    "TokenEvent",
    "LesionError",
    "NotFound",
    "InvalidArgument",
    "PermissionDenied",
    "Unauthenticated",
    "Experiment",
    "Dataset",
    "Eval",
    "HeadAblation",
    "WeightEdit",
    "NormChannelReset",
    "AttentionBias",
    "ActivationEdit",
    "Steer",
    "ProjectOut",
    "Patch",
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
    "Sweep",
    "HeadSweep",
    "NormChannelSweep",
    "WeightValueSweep",
    "Variants",
    "Variant",
    "sweep",
    "sweep_heads",
]
