"""Activation patching: causal tracing (Meng et al. 2022, "Locating and Editing Factual Associations
in GPT", arXiv 2202.05262) as two requests to lesiond.

``causal_trace`` runs the clean prompt once, observationally (no interventions: one forward pass),
capturing a hook site at every layer; then submits ONE sweep on the corrupted prompt whose variants
each patch the clean vector of one (layer, position) into it (``Patch``: an ``ActivationEdit`` with
op "set_vectors") and read the probability of the answer, the prompt's last token, from a
``TokenOutputs`` measure of the last predicted token only. The variants share one baseline (the
corrupted run) and run batched, each from its own layer on. ``lesion.plots.causal_trace`` draws the
result.

    trace = lesion.patching.causal_trace(client, clean_ids, corrupt_ids)   # ids: prompt + answer
    trace.attrs["clean"], trace.attrs["corrupt"]                            # p(answer) unpatched
    lesion.plots.causal_trace(trace, save="trace.png")
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .result import Result, site_layer
from .spec import Capture, Dataset, Eval, Experiment, Patch, Sweep, TokenOutputs, Variant, Variants
from .spec._checks import _index, _indices
from .spec.sites import _sites

__all__ = ["causal_trace", "answer_probability"]


def answer_probability(result: Result, pass_="baseline") -> float:
    """p(answer) = exp(-nll) of the last row of a result's ``token_outputs`` page in ``pass_`` (for
    ``causal_trace``'s experiments: the answer, the dataset's last token); NaN when the pass has no
    token outputs."""
    t = getattr(result.raw, pass_).token_outputs
    return math.exp(-t.nll[-1]) if len(t.nll) else float("nan")


def _model_name(client, model):
    if model:
        return model
    if getattr(client, "model", None):  # Client.local's
        return client.model
    names = [m["name"] for m in client.models()]
    if len(names) != 1:
        raise ValueError(f"causal_trace: say which model (model=); the server has {names or 'none'}")
    return names[0]


def _prompts(clean_ids, corrupt_ids, answer):
    clean = _indices("causal_trace.clean_ids", clean_ids, allow_empty=False)
    corrupt = _indices("causal_trace.corrupt_ids", corrupt_ids, allow_empty=False)
    if answer is not None:
        answer = _index("causal_trace.answer", answer)
        clean, corrupt = clean + [answer], corrupt + [answer]
    if len(clean) != len(corrupt):
        raise ValueError(
            f"causal_trace: clean and corrupt prompts must have the same length (a patch moves a position's "
            f"vector to the same position), got {len(clean)} and {len(corrupt)} tokens"
        )
    if len(clean) < 2:
        raise ValueError("causal_trace: the ids are a prompt and its answer: give at least 2 tokens")
    if clean[-1] != corrupt[-1]:
        raise ValueError(
            f"causal_trace: the answer is the last token of both id lists (prompt + answer), but clean ends "
            f"with {clean[-1]} and corrupt with {corrupt[-1]}; give answer= to append it to both prompts"
        )
    return clean, corrupt


# lesiond expands a sweep only while its variants' specs, each counted at the size of the whole
# parent spec (the variants' vectors included), stay within 256 MiB (spec/spec.cc ExpandSweep).
MAX_SWEEP_SPEC_BYTES = 256 << 20


def _chunks(base, variants, limit=None):
    """``variants`` cut into as few consecutive sweeps of ``base`` as lesiond takes: n variants x the
    JSON size of the sweep's spec within ``limit``, with a margin (the spec's canonical JSON writes
    float32 numbers shorter than Python's repr does). One sweep unless the grid is large."""
    import json

    limit = MAX_SWEEP_SPEC_BYTES if limit is None else limit
    base_bytes = len(json.dumps(base.to_dict())) + 64
    sizes = [len(json.dumps(v.to_dict())) + 2 for v in variants]
    budget = 0.9 * limit
    out, start, total = [], 0, base_bytes
    for i, size in enumerate(sizes):
        n = i - start + 1
        if n > 1 and n * (total + size) > budget:
            out.append(variants[start:i])
            start, total = i, base_bytes
        total += size
    out.append(variants[start:])
    if len(out) > 1:  # as many sweeps, of even sizes where they fit
        k = len(out)
        cuts = [round(j * len(variants) / k) for j in range(k + 1)]
        even = [variants[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
        fits = all(len(c) * (base_bytes + sum(sizes[cuts[j] : cuts[j + 1]])) <= budget for j, c in enumerate(even))
        if fits:
            return even
    return out


def _row_label(sites):
    """The frame's rows: layers where every site has a distinct one, else the site names."""
    layers = [site_layer(s) for s in sites]
    if all(l is not None for l in layers) and len(set(layers)) == len(layers):
        return "layer", layers
    return "site", list(sites)


def causal_trace(
    client,
    clean_ids,
    corrupt_ids,
    site="blocks.*.resid_post",
    positions=None,
    answer=None,
    model=None,
    add_bos=False,
    name="causal-trace",
    tags=(),
    variants_per_pass=None,
    progress=False,
    timeout=None,
) -> pd.DataFrame:
    """Causal tracing by activation patching: how much of the clean prompt's p(answer) patching one
    (layer, position) of ``site`` from the clean run into the corrupted run restores.

    ``clean_ids`` and ``corrupt_ids`` are token ids of the model's vocabulary, each a prompt followed
    by its answer (so both end with the same answer token) and of equal length; or the prompts alone
    with the answer's id as ``answer=``, appended to both. ``site`` is a hook site or pattern
    (``blocks.*.resid_post``, ``blocks.*.mlp_out``, ``blocks.*.attn_out``, ``embed``; a list of them
    too; attn_z rows are patched as heads x head_dim), ``positions`` the prompt positions patched
    (None: every token of the prompt; indices into the ids, whatever ``add_bos``). ``model``: the
    server's model name (default: ``Client.local``'s, or the server's only model). ``add_bos``
    puts BOS before the ids (it is never patched).

    Two requests: an observational run of the clean prompt (``name``/clean) capturing ``site`` at
    ``positions`` with a ``TokenOutputs`` measure of the answer, then one sweep (``name``) on the
    corrupted prompt with a variant ``L<layer>.P<position>`` (``<site>.P<position>`` for sites
    without a layer) per cell, each a ``Patch`` of the clean vector, measuring the answer's
    ``TokenOutputs`` row only. A large grid of wide vectors goes as several sweeps, since lesiond
    bounds a sweep's variants x its spec's size by ``MAX_SWEEP_SPEC_BYTES`` (each variant is
    counted at the size of the whole spec, every variant's vector included; SmolLM2-135M's 30
    layers x 10 positions make 3 sweeps). ``variants_per_pass`` as ``Sweep``'s; ``progress``
    shows the bars; ``timeout`` (seconds) bounds each wait.

    Returns a DataFrame of p(answer) = exp(-nll), rows the layers (index "layer"; "site" when
    some site has no layer), columns the positions (index "position"). ``df.attrs``: clean and
    corrupt (p(answer) unpatched), answer (its id), clean_ids and corrupt_ids (with the answer),
    positions, sites (the sites of the rows), site, add_bos, clean_id and sweep_ids (the
    experiments; ``Client.variants(sweep_id)`` lists the cells). Patching the last layer's residual
    stream at the prompt's last position restores the clean probability (to float rounding):
    everything the answer's prediction reads passes there."""
    clean, corrupt = _prompts(clean_ids, corrupt_ids, answer)
    answer = clean[-1]
    n = len(clean)
    shift = 1 if add_bos else 0  # window position of ids[i]: i + shift
    if positions is None:
        positions = list(range(n - 1))
    else:
        positions = _indices("causal_trace.positions", positions, allow_empty=False)
        bad = [p for p in positions if p >= n - 1]
        if bad:
            raise ValueError(
                f"causal_trace.positions: {bad} not in the prompt (positions 0..{n - 2}; {n - 1} is the answer, "
                "whose own position cannot change its probability)"
            )
        if len(set(positions)) != len(positions):
            raise ValueError(f"causal_trace.positions: {positions} names a position twice")
    patterns = _sites(
        "causal_trace.site",
        [site] if isinstance(site, str) else site,
        no_pattern="attn_pattern cannot be patched (activation edits do not take it)",
    )
    if not patterns:
        raise ValueError("causal_trace.site: give a hook site")
    model = _model_name(client, model)
    n_predicted = n - 1 + shift  # every token after the first is predicted (with BOS: every token)
    answer_row = TokenOutputs(top_k=1, max_tokens=1, offset=n_predicted - 1)
    data = dict(model=model, eval=Eval(seq_len=n + shift, add_bos=bool(add_bos)), tags=tuple(tags))
    window_positions = [p + shift for p in positions]

    # 1. The clean prompt, observationally: the vectors to patch in, and the clean p(answer).
    clean_spec = Experiment(
        dataset=Dataset.token_ids(clean),
        measurements=[Capture(sites=list(patterns), positions=window_positions, max_windows=1), answer_row],
        name=f"{name}/clean" if name else "",
        **data,
    )
    clean_handle = client.submit(clean_spec)
    clean_result = clean_handle.result(progress=progress, timeout=timeout)
    captured = clean_result.captures["baseline"]
    if not captured:
        raise ValueError(f"causal_trace: the clean run captured nothing at {patterns}")
    sites = sorted(captured, key=lambda s: (site_layer(s) is not None, site_layer(s) or 0, s))
    vectors = {}
    for s in sites:
        at = {p: j for j, p in enumerate(clean_result.capture_positions(s))}
        arr = captured[s][0]  # [positions, ...]
        vectors[s] = [arr[at[w]].reshape(-1) for w in window_positions]
    _check_answer_row(clean_result, answer, n - 1 + shift, "clean")

    # 2. One sweep on the corrupted prompt: a variant per (site, position), each one patch.
    kind, rows = _row_label(sites)
    variants, cells = [], []
    for s, row in zip(sites, rows, strict=True):
        prefix = f"L{row}" if kind == "layer" else s
        for p, w, vec in zip(positions, window_positions, vectors[s], strict=True):
            label = f"{prefix}.P{p}"
            variants.append(Variant(label, Patch(s, [w], vec)))
            cells.append((label, row, p))
    base = Experiment(dataset=Dataset.token_ids(corrupt), measurements=[answer_row], name=name, **data)
    by_name, corrupt_p, sweep_ids = {}, float("nan"), []
    for chunk in _chunks(base, variants):
        handle = client.submit(base.replace(sweep=Sweep([Variants(chunk)], variants_per_pass=variants_per_pass)))
        sweep_ids.append(handle.id)
        parent = handle.result(progress=progress, timeout=timeout)
        children = client.variants(handle.id, include_results=True, metrics=False)
        got = {str(v): r for v, r in zip(children["variant"], children["result"], strict=True)}
        missing = [v.name for v in chunk if got.get(v.name) is None]
        if missing:
            raise ValueError(f"causal_trace: sweep {handle.id} has no result for {missing[:5]}")
        by_name.update(got)
        if math.isnan(corrupt_p):
            corrupt_p = answer_probability(parent)
    if math.isnan(corrupt_p):  # the parents' baseline without the measure: a variant's has it
        corrupt_p = answer_probability(by_name[cells[0][0]])
    for label, _, _ in cells:
        _check_answer_row(by_name[label], answer, n - 1 + shift, f"variant {label}", "intervened")

    frame = pd.DataFrame(
        np.nan, index=pd.Index(rows, name=kind), columns=pd.Index(positions, name="position"), dtype=float
    )
    for label, row, p in cells:
        frame.loc[row, p] = answer_probability(by_name[label], "intervened")
    frame.attrs.update(
        clean=answer_probability(clean_result),
        corrupt=corrupt_p,
        answer=answer,
        clean_ids=clean,
        corrupt_ids=corrupt,
        positions=list(positions),
        sites=sites,
        site=site,
        add_bos=bool(add_bos),
        clean_id=clean_handle.id,
        sweep_ids=sweep_ids,
    )
    return frame


def _check_answer_row(result, answer, position, what, pass_="baseline"):
    """The token_outputs row read is the answer's: its target and position (a guard against an
    offset that missed it)."""
    t = getattr(result.raw, pass_).token_outputs
    if not len(t.nll) or t.target[-1] != answer or t.position[-1] != position:
        got = f"target {t.target[-1]} at position {t.position[-1]}" if len(t.nll) else "no row"
        raise ValueError(f"causal_trace: the {what} run's token output is {got}, not the answer {answer} at {position}")
