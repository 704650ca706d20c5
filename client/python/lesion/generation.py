"""Generation under interventions: ``Client.generate``, lesiond's streaming Generate
(proto/lesion/v1/service.proto).

lesiond decodes a prompt (text, tokenized after BOS; or token ids as given) with the model as loaded
(the baseline run) and, when interventions are given, with them acting in every step through the KV
cache (the intervened run), greedy (``temperature=0``) or sampled (``temperature``, ``top_k``,
``seed``: the same seed draws the same tokens). ``Client.generate`` returns a ``Generation``: both
continuations, their tokens and the log-probability of each under the model that chose it, side by
side. With ``stream=True`` it yields the tokens as lesiond chooses them instead, as ``TokenEvent``
tuples, the whole baseline run first, then the intervened run, and last the ``Generation``:

    for item in client.generate("stories260K", "Once upon a time", interventions=[...], stream=True):
        if isinstance(item, lesion.Generation):
            gen = item                                  # always the last item
        else:                                           # a TokenEvent: intervened, id, logprob, text
            print(item.text, end="|", flush=True)

A token's ``text`` is what it adds to its run's decoded continuation (" there", with its word's
space), so the texts of a run join to the ``Generation``'s ``baseline_text`` / ``intervened_text``.
Leaving the loop early (``break``, an exception, or ``close()`` of the iterator) cancels the call,
and lesiond stops the generation. Generations are not stored: the request is its own record.

What cannot apply is refused before any decoding: a "mean" mode (``HeadAblation(mode="mean")``,
``ActivationEdit(op="mean")``: generation has no dataset to average over) or an activation edit at
a position past prompt + ``max_new_tokens`` raise ``lesion.InvalidArgument`` naming
``interventions[i]``; an unknown model ``lesion.NotFound``.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import grpc
import numpy as np
import pandas as pd

from .errors import LesionError, wrap_rpc_error

MAX_NEW_TOKENS = 4096  # lesiond's bound on GenerateRequest.max_new_tokens
FRAME_COLUMNS = (
    "step",
    "baseline_id",
    "baseline_text",
    "baseline_logprob",
    "intervened_id",
    "intervened_text",
    "intervened_logprob",
)


class TokenEvent(NamedTuple):
    """One token as lesiond chose it (``Client.generate(..., stream=True)``): ``intervened`` says which
    run it belongs to (False: the baseline, streamed first), ``id`` the token, ``logprob`` its
    log-probability under the model at its step (before temperature), ``text`` the token decoded
    alone ("" when the model has no tokenizer)."""

    intervened: bool
    id: int
    logprob: float
    text: str


@dataclass(frozen=True, eq=False)
class Generation:
    """A prompt's continuations by the model as loaded (``baseline_*``) and with the interventions
    (``intervened_*``), as ``Client.generate`` returns them.

    ``prompt_ids`` is the prompt as decoded (BOS and the tokenized text, or the ids as given),
    ``prompt`` the text given (None for ids); per run, ``*_ids`` the new tokens (a run stops early at
    the model's end-of-sequence token, which it includes), ``*_logprobs`` the log-probability of each
    under the model that chose it, ``*_tokens`` the text each token adds and ``*_text`` the
    continuation decoded as a whole ("" without a tokenizer). ``has_baseline`` is False for
    ``baseline=False``, ``has_intervened`` False without interventions; the runs not made have empty
    fields. ``interventions`` are the interventions' proto3-JSON dicts, ``max_new_tokens`` to
    ``seed`` the request's options and ``raw`` the final event (lesion.v1.GenerateEvent.Done)."""

    model: str
    prompt: str | None
    prompt_ids: tuple
    baseline_ids: tuple
    intervened_ids: tuple
    baseline_logprobs: tuple
    intervened_logprobs: tuple
    baseline_tokens: tuple
    intervened_tokens: tuple
    baseline_text: str
    intervened_text: str
    has_baseline: bool
    has_intervened: bool
    interventions: tuple = ()
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 0
    seed: int = 0
    raw: object = field(default=None, repr=False)  # the final lesion.v1.GenerateEvent.Done

    @property
    def sampled(self) -> bool:
        """Whether the tokens were drawn (temperature > 0) rather than chosen greedily."""
        return self.temperature > 0

    @property
    def first_difference(self):
        """The first step (0: the first new token) where the intervened run chose another token than
        the baseline, or where one of them ended first; None where they are equal or only one ran."""
        if not (self.has_baseline and self.has_intervened):
            return None
        for step, (a, b) in enumerate(zip(self.baseline_ids, self.intervened_ids, strict=False)):
            if a != b:
                return step
        if len(self.baseline_ids) != len(self.intervened_ids):
            return min(len(self.baseline_ids), len(self.intervened_ids))
        return None

    def logprob(self, pass_="intervened") -> float:
        """The sum of the run's token log-probabilities (``pass_`` "baseline" or "intervened"), each
        under the model that chose it: the log-likelihood of the continuation given the prompt. NaN
        for a run not made."""
        ran, logprobs = self._run(pass_)
        return float(sum(logprobs)) if ran else float("nan")

    def _run(self, pass_):
        if pass_ not in ("baseline", "intervened"):
            raise ValueError(f"pass_: expected 'baseline' or 'intervened', got {pass_!r}")
        if pass_ == "baseline":
            return self.has_baseline, self.baseline_logprobs
        return self.has_intervened, self.intervened_logprobs

    def frame(self) -> pd.DataFrame:
        """One row per step (``step`` 0 is the first new token): ``baseline_id``, ``baseline_text``,
        ``baseline_logprob``, ``intervened_id``, ``intervened_text``, ``intervened_logprob`` (the text
        each token adds to its run's continuation, and its log-probability under the model that
        chose it). Every column is
        there for every generation; a run that was not made, or that ended earlier (end of
        sequence), reads <NA> / NaN / None from there on."""
        n = max(len(self.baseline_ids), len(self.intervened_ids))

        def column(values, dtype):
            values = list(values)
            if dtype == "Int64":
                return pd.array(values + [pd.NA] * (n - len(values)), dtype="Int64")
            if dtype == "float":
                return np.array(values + [math.nan] * (n - len(values)), dtype=np.float64)
            return pd.Series(values + [None] * (n - len(values)), dtype=object).to_numpy()

        return pd.DataFrame(
            {
                "step": np.arange(n, dtype=np.int64),
                "baseline_id": column(self.baseline_ids, "Int64"),
                "baseline_text": column(self.baseline_tokens, "object"),
                "baseline_logprob": column(self.baseline_logprobs, "float"),
                "intervened_id": column(self.intervened_ids, "Int64"),
                "intervened_text": column(self.intervened_tokens, "object"),
                "intervened_logprob": column(self.intervened_logprobs, "float"),
            },
            columns=list(FRAME_COLUMNS),
        )

    def to_dict(self) -> dict:
        """The form of ``lesion generate --json``: ``prompt_ids``, and ``baseline`` / ``intervened``
        (for the runs made), each ``ids``, ``logprobs`` and ``text``; ``prompt`` is the text given
        (absent for ids)."""
        d = {"prompt_ids": list(self.prompt_ids)}
        if self.prompt is not None:
            d["prompt"] = self.prompt
        if self.has_baseline:
            d["baseline"] = {
                "ids": list(self.baseline_ids),
                "logprobs": list(self.baseline_logprobs),
                "text": self.baseline_text,
            }
        if self.has_intervened:
            d["intervened"] = {
                "ids": list(self.intervened_ids),
                "logprobs": list(self.intervened_logprobs),
                "text": self.intervened_text,
            }
        return d

    # -- display
    def _how(self):
        if not self.sampled:
            return "greedy"
        top = f", top-{self.top_k}" if self.top_k else ""
        return f"sampled at temperature {self.temperature:g}{top}, seed {self.seed}"

    def _prompt_shown(self):
        if self.prompt is not None:
            return repr(self.prompt)
        ids = list(self.prompt_ids)
        return f"ids {ids}" if len(ids) <= 24 else f"ids {ids[:24]}... ({len(ids)} tokens)"

    def __repr__(self):
        lines = [
            f"<lesion.Generation {self.model!r}, {len(self.prompt_ids)} prompt tokens, {self._how()}, "
            f"{len(self.interventions)} intervention{'s' if len(self.interventions) != 1 else ''}",
            f"  prompt:     {self._prompt_shown()}",
        ]
        for name, ran, text, ids in (
            ("baseline", self.has_baseline, self.baseline_text, self.baseline_ids),
            ("intervened", self.has_intervened, self.intervened_text, self.intervened_ids),
        ):
            if ran:
                shown = repr(text) if text or not ids else " ".join(map(str, ids))
                lines.append(f"  {name + ':':<11} {shown} ({len(ids)} tokens, logprob {self.logprob(name):.4g})")
        if self.has_baseline and self.has_intervened:
            step = self.first_difference
            lines.append("  identical" if step is None else f"  first difference at step {step}")
        return "\n".join(lines) + ">"

    def _repr_html_(self):
        """Baseline and intervened side by side, for Jupyter: each continuation's text, then its tokens
        one by one (hover: step and id; from the first difference on, marked), its length and
        log-likelihood; every string escaped."""
        runs = [
            (name, ids, tokens, text)
            for name, ran, ids, tokens, text in (
                ("baseline", self.has_baseline, self.baseline_ids, self.baseline_tokens, self.baseline_text),
                ("intervened", self.has_intervened, self.intervened_ids, self.intervened_tokens, self.intervened_text),
            )
            if ran
        ]
        diff = self.first_difference

        def continuation(ids, tokens, text):
            pieces = list(tokens) if any(tokens) else [str(i) for i in ids]  # no tokenizer: the ids
            out = []
            for step, piece in enumerate(pieces):
                color = "#fde2b8" if diff is not None and step >= diff else "#f2f2f2"
                out.append(
                    f"<span title='step {step}, id {ids[step]}' style='background:{color};margin:1px;"
                    f"padding:0 2px;white-space:pre'>{html.escape(piece)}</span>"
                )
            whole = f"<div>{html.escape(text)}</div>" if text else ""
            return whole + "<div style='line-height:1.8'>" + "".join(out) + "</div>"

        cell = "style='text-align:left;vertical-align:top'"
        head = "".join(f"<th {cell}>{name}</th>" for name, *_ in runs)
        body = "".join(f"<td {cell}>{continuation(ids, tokens, text)}</td>" for _, ids, tokens, text in runs)
        stats = "".join(
            f"<td {cell}>{len(ids)} tokens, logprob {self.logprob(name):.4g}</td>" for name, ids, *_ in runs
        )
        note = ""
        if len(runs) == 2:
            note = "identical" if diff is None else f"first difference at step {diff} (marked)"
        caption = html.escape(
            f"lesion.Generation {self.model}, {self._how()}, prompt {self._prompt_shown()}"
            + (f"; {note}" if note else "")
        )
        return (
            f"<table><caption style='text-align:left'>{caption}</caption><tr>{head}</tr><tr>{body}</tr>"
            f"<tr>{stats}</tr></table>"
        )


# ------------------------------------------------------------------------------------------ request


def _intervention_protos(interventions):
    """Builders, proto3-JSON dicts or lesion.v1.Intervention messages -> (messages, their dicts)."""
    from google.protobuf import json_format

    from ._proto import experiment_pb2
    from .spec._base import _Builder
    from .spec.interventions import _intervention_list

    if interventions is None:
        interventions = ()
    if isinstance(interventions, (experiment_pb2.Intervention, _Builder, Mapping)):
        interventions = [interventions]
    elif not isinstance(interventions, (list, tuple)):
        try:
            interventions = list(interventions)  # any other iterable
        except TypeError:
            raise ValueError(
                f"Client.generate: interventions: expected an intervention or a list of them, "
                f"got {type(interventions).__name__}"
            ) from None
    items = [
        json_format.MessageToDict(p, preserving_proto_field_name=True)
        if isinstance(p, experiment_pb2.Intervention)
        else p
        for p in interventions
    ]
    checked = _intervention_list("Client.generate: interventions", items)
    dicts, messages = [], []
    for i, p in enumerate(checked):
        d = p.to_dict() if not isinstance(p, Mapping) else dict(p)
        try:
            messages.append(json_format.ParseDict(d, experiment_pb2.Intervention()))
        except json_format.ParseError as e:
            raise ValueError(f"Client.generate: interventions[{i}] is no valid lesion.v1.Intervention: {e}") from e
        dicts.append(d)
    return messages, tuple(dicts)


def _int(what, value, low, high):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"Client.generate: {what} must be an integer, got {value!r}")
    if not low <= int(value) <= high:
        raise ValueError(f"Client.generate: {what} must be in {low}..{high}, got {value}")
    return int(value)


def _prompt_ids(ids):
    if hasattr(ids, "detach") and hasattr(ids, "cpu"):  # a torch tensor, without importing torch
        ids = ids.detach().cpu().numpy()
    arr = np.asarray(ids)
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"Client.generate: ids must be one non-empty sequence of token ids, got shape {arr.shape}")
    if arr.dtype.kind not in "iu" and not (arr.dtype == object and all(isinstance(v, (int, np.integer)) for v in arr)):
        raise ValueError(f"Client.generate: ids must be integers, got {arr.dtype}")
    values = [int(v) for v in arr.tolist()]
    bad = [v for v in values if not 0 <= v < 2**31]
    if bad:
        raise ValueError(f"Client.generate: token ids must be in 0..2**31-1, got {bad[0]}")
    return values


def generate_request(
    model,
    prompt=None,
    ids=None,
    interventions=(),
    max_new_tokens=64,
    temperature=0.0,
    top_k=0,
    seed=0,
    baseline=True,
):
    """The lesion.v1.GenerateRequest of ``Client.generate``'s arguments, and the ``Generation`` fields
    they fix; ValueError for what is wrong without asking the server (no prompt, or both ``prompt``
    and ``ids``; ``max_new_tokens`` outside 1..4096; a negative or non-finite temperature; a
    negative ``top_k`` or ``seed``; ``baseline=False`` without interventions)."""
    from ._proto import service_pb2

    if not isinstance(model, str) or not model:
        raise ValueError(f"Client.generate: model must be a model's name, got {model!r}")
    if (prompt is None) == (ids is None):
        raise ValueError("Client.generate: give prompt= (text) or ids= (token ids), one of them")
    if prompt is not None and not isinstance(prompt, str):
        raise ValueError(f"Client.generate: prompt must be text (use ids= for token ids), got {type(prompt).__name__}")
    max_new_tokens = _int("max_new_tokens", max_new_tokens, 1, MAX_NEW_TOKENS)
    top_k = _int("top_k", top_k, 0, 2**31 - 1)
    seed = _int("seed", seed, 0, 2**64 - 1)
    if isinstance(temperature, (bool, np.bool_)) or not isinstance(temperature, (int, float, np.integer, np.floating)):
        raise ValueError(f"Client.generate: temperature must be a number, got {temperature!r}")
    temperature = float(temperature)
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"Client.generate: temperature must be >= 0 (0: greedy), got {temperature}")
    messages, dicts = _intervention_protos(interventions)
    if not baseline and not messages:
        raise ValueError("Client.generate: baseline=False needs interventions: there would be nothing to run")
    request = service_pb2.GenerateRequest(
        model=model,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        seed=seed,
        skip_baseline=not baseline,
    )
    if prompt is not None:
        request.text = prompt
    else:
        request.ids.ids.extend(_prompt_ids(ids))
    request.interventions.extend(messages)
    fields = dict(
        model=model,
        prompt=prompt,
        has_baseline=bool(baseline),
        has_intervened=bool(messages),
        interventions=dicts,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        seed=seed,
    )
    return request, fields


# ------------------------------------------------------------------------------------------- stream


def _generation(fields, tokens, done) -> Generation:
    """The Generation of a finished call: the streamed tokens, checked against the final event."""
    runs = {}
    for intervened, ids in ((False, done.baseline_ids), (True, done.intervened_ids)):
        mine = [t for t in tokens if t.intervened == intervened]
        if [t.id for t in mine] != list(ids):
            which = "intervened" if intervened else "baseline"
            raise LesionError(
                grpc.StatusCode.INTERNAL,
                f"the streamed {which} tokens {[t.id for t in mine]} differ from the final event's {list(ids)}",
                rpc="Generate",
            )
        runs[intervened] = mine
    return Generation(
        prompt_ids=tuple(done.prompt_ids),
        baseline_ids=tuple(done.baseline_ids),
        intervened_ids=tuple(done.intervened_ids),
        baseline_logprobs=tuple(t.logprob for t in runs[False]),
        intervened_logprobs=tuple(t.logprob for t in runs[True]),
        baseline_tokens=tuple(t.text for t in runs[False]),
        intervened_tokens=tuple(t.text for t in runs[True]),
        baseline_text=done.baseline_text,
        intervened_text=done.intervened_text,
        raw=done,
        **fields,
    )


def stream_events(call, fields):
    """Iterate a Generate call: a ``TokenEvent`` per token as it arrives, then the ``Generation``.
    gRPC errors raise as ``LesionError`` (by status code, as every call's); closing the iterator
    early cancels the call (and with it the generation on the server)."""
    tokens, done = [], None
    try:
        try:
            for event in call:
                kind = event.WhichOneof("kind")
                if kind == "token":
                    t = event.token
                    token = TokenEvent(bool(t.intervened), int(t.id), float(t.logprob), t.text)
                    tokens.append(token)
                    yield token
                elif kind == "done":
                    done = event.done
        except grpc.RpcError as e:
            raise wrap_rpc_error(e, "Generate") from e
        if done is None:
            raise LesionError(grpc.StatusCode.INTERNAL, "the stream ended without its final event", rpc="Generate")
        yield _generation(fields, tokens, done)
    finally:
        call.cancel()  # a no-op once the call has ended


__all__ = ["Generation", "TokenEvent", "generate_request", "stream_events"]
