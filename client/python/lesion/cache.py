"""Activations of a prompt set keyed by site, as TransformerLens's ``run_with_cache`` gives them:
``Client.cache`` runs one observational experiment (or one with interventions) that captures
``sites`` for every prompt, and returns an ``ActivationCache``."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .result import PASSES, Result, decode_tensor
from .spec import Capture, Dataset, Eval, Experiment


class ActivationCache(Mapping):
    """Captured activations of one pass of a prompt set, keyed by site ("blocks.3.resid_post").

    ``cache[site]`` is a float32 array [prompts, positions, ...] (attn_pattern: [prompts, heads,
    positions, keys]), padded with zeros past each prompt's length; ``cache.lengths`` holds the
    lengths (input tokens, BOS included) and ``cache.prompt(i)`` one prompt's arrays without the
    padding. ``positions(site)`` are the token positions along the position axis. ``result`` is
    the whole ``Result`` (per-prompt rows, perplexity, ...); ``torch()`` the arrays as tensors."""

    def __init__(self, result: Result, pass_name: str = "baseline"):
        if pass_name not in PASSES:
            raise ValueError(f"ActivationCache: unknown pass {pass_name!r}; valid: {', '.join(PASSES)}")
        self.result = result
        self.pass_name = pass_name
        tensors = list(getattr(result.raw, pass_name).captures)
        self._arrays = {t.name: decode_tensor(t) for t in tensors}
        self._positions = {t.name: list(t.positions) for t in tensors}
        rows = getattr(result.raw, pass_name).prompts
        self.lengths = np.asarray([int(r.length) for r in rows], dtype=np.int64)

    def __getitem__(self, site):
        try:
            return self._arrays[site]
        except KeyError:
            raise KeyError(f"no activations of {site!r} in this cache; it has {', '.join(self._arrays)}") from None

    def __iter__(self):
        return iter(self._arrays)

    def __len__(self):
        return len(self._arrays)

    def __repr__(self):
        shapes = ", ".join(f"{k}: {list(v.shape)}" for k, v in self._arrays.items())
        return f"ActivationCache({len(self.lengths)} prompts, {self.pass_name}; {shapes})"

    def positions(self, site) -> list:
        """The token positions along ``site``'s position axis."""
        self[site]
        return list(self._positions[site])

    def prompt(self, i) -> dict:
        """Prompt ``i``'s activations without padding: {site: array} with the positions it has
        (attn_pattern also cut to its keys, an attention-bias slot dropped)."""
        if not 0 <= i < len(self.lengths):
            raise IndexError(f"prompt {i} out of range: the cache holds {len(self.lengths)} prompts")
        n = int(self.lengths[i])
        out = {}
        for site, a in self._arrays.items():
            keep = [j for j, p in enumerate(self._positions[site]) if p < n]
            if site.endswith("attn_pattern"):
                out[site] = a[i][:, keep][:, :, :n]
            else:
                out[site] = a[i][keep]
        return out

    def torch(self) -> dict:
        """{site: torch.Tensor} (torch is imported only here)."""
        try:
            import torch
        except ImportError as e:
            raise ImportError("ActivationCache.torch needs torch (pip install torch)") from e
        return {k: torch.from_numpy(v) for k, v in self._arrays.items()}


def cache_experiment(model, prompts, sites, positions=None, interventions=(), add_bos=False, batch_size=0):
    """The experiment ``Client.cache`` runs: a prompt set, a ``Capture`` of every prompt at
    ``sites`` (and ``positions``, None: all) and the per-prompt rows of ``Perplexity``."""
    from .spec import Perplexity

    prompts = list(prompts) if not isinstance(prompts, str) else [prompts]
    return Experiment(
        model=model,
        dataset=Dataset.prompts(prompts),
        eval=Eval(add_bos=add_bos, batch_size=batch_size),
        interventions=list(interventions),
        measurements=[Capture(sites=sites, positions=positions, max_windows=len(prompts)), Perplexity()],
        name="cache",
    )
