"""Client-side sweeps: ``sweep()`` and ``sweep_heads()`` make one separate ``Experiment`` per variant
(a server-side ``Sweep`` is the fast path)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ._base import _Builder
from ._checks import _index
from .experiment import Experiment
from .interventions import _INTERVENTION_KINDS, HeadAblation


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


def sweep_heads(
    base: Experiment, n_layers: int, n_heads: int, mode="zero", factor=None, layers: Iterable[int] | None = None
) -> list:
    """One single-head ablation per (layer, head), named ``NAME/L<l>.H<h>``, in layer-major order: separate
    experiments. The fast path is a server-side sweep, ``base.replace(sweep=Sweep([HeadSweep()]))``: one
    submission, one child experiment per head (named the same), one shared baseline, the heads batched
    in shared forward passes."""
    _index("sweep_heads.n_layers", n_layers)
    _index("sweep_heads.n_heads", n_heads)
    layers = range(n_layers) if layers is None else layers
    return sweep(
        base,
        [
            (f"L{l}.H{h}", HeadAblation(layer=l, heads=[h], mode=mode, factor=factor))
            for l in layers
            for h in range(n_heads)
        ],
    )
