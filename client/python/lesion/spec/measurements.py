"""Measurements: what an experiment records on the baseline and the intervened pass (perplexity,
divergence, token probabilities, per-token outputs, activation statistics, captures and the outlier
detectors)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ._base import _Builder
from ._checks import _drop_none, _index, _indices, _opt_count, _opt_number
from .sites import _sites


@dataclass(frozen=True)
class Perplexity(_Builder):
    """exp(mean next-token NLL) over the dataset's windows, on both passes, with the token and window
    counts and the protocol (docs/conventions.md). ``Result.perplexity``, metric "perplexity"."""

    KIND = "perplexity"

    def body(self):
        return {}


@dataclass(frozen=True)
class KLDivergence(_Builder):
    """Mean over predicted positions of KL(baseline || intervened) of the next-token distributions,
    in nats per token (``Result.kl_divergence``, metric "kl_divergence").

    It needs the baseline pass's logits, which the server's baseline cache does not keep: an
    experiment that measures KL runs its baseline forward passes again instead of reusing a cached
    baseline of the same model, data and measurements (a sweep reuses the cached baseline's
    measurements but still runs full baseline passes for their logits). Leave it out when
    perplexity is enough and the cache should serve."""

    KIND = "kl_divergence"

    def body(self):
        return {}


MAX_TOKEN_OUTPUTS_TOP_K = 100  # lesiond's bounds of a TokenOutputs measure (spec/spec.cc)
MAX_TOKEN_OUTPUTS_TOKENS = 65536


@dataclass(frozen=True)
class TokenOutputs(_Builder):
    """Per predicted token, in window order: its window, position, target, NLL, the target's rank and
    the ``top_k`` (1..100) most likely next tokens with their probabilities, on both passes
    (``Result.token_outputs()``). A page: the predicted tokens ``[offset, offset + max_tokens)``
    (``max_tokens`` 1..65536), the result saying how many there are in all; an ``offset`` past the
    last predicted token is refused by the server. The rows count against the server's capture-bytes
    limit (about 12 bytes a top-k entry and 32 a row)."""

    top_k: int = 5
    max_tokens: int = 4096
    offset: int = 0
    KIND = "token_outputs"

    def __post_init__(self):
        top_k = _index("TokenOutputs.top_k", self.top_k)
        if not 1 <= top_k <= MAX_TOKEN_OUTPUTS_TOP_K:
            raise ValueError(f"TokenOutputs.top_k: must be in 1..{MAX_TOKEN_OUTPUTS_TOP_K}, got {top_k}")
        max_tokens = _index("TokenOutputs.max_tokens", self.max_tokens)
        if not 1 <= max_tokens <= MAX_TOKEN_OUTPUTS_TOKENS:
            raise ValueError(
                f"TokenOutputs.max_tokens: must be in 1..{MAX_TOKEN_OUTPUTS_TOKENS}, got {max_tokens} "
                "(page through more with offset)"
            )
        object.__setattr__(self, "top_k", top_k)
        object.__setattr__(self, "max_tokens", max_tokens)
        object.__setattr__(self, "offset", _index("TokenOutputs.offset", self.offset))

    def body(self):
        d = {"top_k": self.top_k, "max_tokens": self.max_tokens}
        if self.offset:
            d["offset"] = self.offset
        return d


@dataclass(frozen=True)
class TokenProbabilities(_Builder):
    """Mean probability of tokens (by id, or by text that encodes to exactly one token) over the
    predicted positions, on both passes (``Result.token_probabilities``)."""

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
    """Per site (patterns such as ``blocks.*.resid_post``; not attn_pattern): the top-k |x| (mean over
    windows, and overall with coordinates), median and mean |x|, on both passes
    (``Result.activation_stats``, ``Result.layer_stats``)."""

    sites: Sequence[str] = ("blocks.*.resid_post",)
    top_k: int = 3
    KIND = "activation_stats"

    def __post_init__(self):
        sites = _sites(
            "ActivationStats.sites",
            self.sites,
            no_pattern="attn_pattern is a probability, not an activation (use AttentionSink)",
        )
        if not sites:
            raise ValueError("ActivationStats.sites: must not be empty")
        object.__setattr__(self, "sites", tuple(sites))
        if _index("ActivationStats.top_k", self.top_k) == 0:
            raise ValueError("ActivationStats.top_k: must be >= 1")

    def body(self):
        return {"sites": list(self.sites), "top_k": int(self.top_k)}


@dataclass(frozen=True)
class AttentionSink(_Builder):
    """Per layer and head: mean over queries q >= 1 of the attention probability on key 0, on both
    passes (``Result.attention_sink``, ``Result.attention_sink_frame()``); ``layers`` None: all."""

    layers: Sequence[int] | None = None
    KIND = "attention_sink"

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(_indices("AttentionSink.layers", self.layers)))

    def body(self):
        return {"layers": list(self.layers)} if self.layers else {}


@dataclass(frozen=True)
class Capture(_Builder):
    """Raw float32 tensors at sites for the first ``max_windows`` windows, at ``positions`` (None: all),
    on both passes (``Result.captures``); they count against the server's capture-bytes limit."""

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
    """Sun et al.: entries with |x| >= min_magnitude and >= min_ratio x their window's median |x| at
    ``sites`` (default ``blocks.*.resid_post``); ``Result.massive_activations``. None: the server's
    default thresholds (docs/spec.md)."""

    sites: Sequence[str] | None = None
    min_magnitude: float | None = None
    min_ratio: float | None = None
    max_reports: int | None = None
    KIND = "massive_activations"

    def __post_init__(self):
        sites = _sites(
            "MassiveActivations.sites",
            self.sites,
            no_pattern="attn_pattern holds probabilities, not activations (use AttentionOutliers)",
        )
        object.__setattr__(self, "sites", tuple(sites))
        object.__setattr__(self, "min_magnitude", _opt_number("MassiveActivations.min_magnitude", self.min_magnitude))
        object.__setattr__(self, "min_ratio", _opt_number("MassiveActivations.min_ratio", self.min_ratio))
        object.__setattr__(self, "max_reports", _opt_count("MassiveActivations.max_reports", self.max_reports))

    def body(self):
        return _drop_none(
            {
                "sites": list(self.sites) or None,
                "min_magnitude": self.min_magnitude,
                "min_ratio": self.min_ratio,
                "max_reports": self.max_reports,
            }
        )


@dataclass(frozen=True)
class SuperWeights(_Builder):
    """Yu et al.: per layer, the candidate super weight mlp.down[row, col] from the spikes of |mlp_out|
    and |mlp_act| at one token (``Result.super_weights``). None: the server's default thresholds."""

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
    """Norm gamma channels with robust |z| >= min_z, (gamma - median) / (1.4826 MAD), read from the
    weights of each pass (``Result.norm_outliers``)."""

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
    """An et al.: keys receiving at least ``min_mass`` of the attention mass of queries q >= 1, per
    layer and head (``Result.attention_outliers``); ``layers`` None: all."""

    layers: Sequence[int] | None = None
    min_mass: float | None = None
    max_reports: int | None = None
    KIND = "attention_outliers"

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(_indices("AttentionOutliers.layers", self.layers)))
        object.__setattr__(self, "min_mass", _opt_number("AttentionOutliers.min_mass", self.min_mass))
        object.__setattr__(self, "max_reports", _opt_count("AttentionOutliers.max_reports", self.max_reports))

    def body(self):
        return _drop_none(
            {"layers": list(self.layers) or None, "min_mass": self.min_mass, "max_reports": self.max_reports}
        )


MEASUREMENTS = (
    Perplexity,
    KLDivergence,
    TokenProbabilities,
    TokenOutputs,
    ActivationStats,
    AttentionSink,
    Capture,
    MassiveActivations,
    SuperWeights,
    NormOutliers,
    AttentionOutliers,
)
_MEASUREMENT_KINDS = {c.KIND for c in MEASUREMENTS}
