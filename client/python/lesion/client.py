"""lesion.Client: the lesiond gRPC API (proto/lesion/v1/service.proto) for notebooks and scripts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import grpc
import pandas as pd
from google.protobuf import json_format

from ._proto import service_pb2, service_pb2_grpc
from .errors import LesionError
from .result import Result, _html_table, _metric_pct
from .spec import Experiment, spec_to_proto

TERMINAL = ("done", "failed", "cancelled", "interrupted")
DEFAULT_TIMEOUT = 60.0  # seconds, for every unary call
MAX_LIST_LIMIT = 10000  # ListExperiments' largest page


class Status(str):
    """An experiment's state, spelled as the query language spells it ("queued", "running", "done",
    "failed", "cancelled", "interrupted"), so that what a record or a frame shows is what
    ``where='status = "done"'`` selects. For code written when the client showed the proto's enum
    names, ``==`` and ``!=`` also match the upper-case spelling ("DONE"); hashing (sets, dict keys,
    ``isin``) knows only the lower-case one."""

    __slots__ = ()

    def __eq__(self, other):
        if isinstance(other, str):
            return str.__eq__(self, other.lower())
        return NotImplemented

    def __ne__(self, other):
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    __hash__ = str.__hash__


def _status_name(value):
    """The query language's spelling of a lesion.v1.ExperimentStatus value."""
    return Status(service_pb2.ExperimentStatus.Name(value).lower())


def _time(micros):
    if not micros:
        return None
    return pd.Timestamp(int(micros), unit="us", tz="UTC")


class ExperimentFailed(LesionError):
    """The experiment ended failed, cancelled or interrupted; ``record`` is its final record, ``code``
    the failure's own status code where it has one (RESOURCE_EXHAUSTED when the device ran out of
    memory), else CANCELLED, ABORTED (interrupted) or UNKNOWN."""

    def __init__(self, record):
        self.record = record
        code = {"cancelled": grpc.StatusCode.CANCELLED, "interrupted": grpc.StatusCode.ABORTED}.get(
            record.status, grpc.StatusCode.UNKNOWN
        )
        # A failure's own code, e.g. RESOURCE_EXHAUSTED when the device ran out of memory.
        code = getattr(grpc.StatusCode, record.error_code, code) if record.error_code else code
        super().__init__(
            code,
            f"experiment {record.id} {record.status}" + (f": {record.error}" if record.error else ""),
            rpc="experiment",
        )


@dataclass
class ExperimentRecord:
    """A stored experiment (lesion.v1.Experiment). ``status`` is spelled as the query language
    spells it: "queued", "running", "done", "failed", "cancelled" or "interrupted" (a ``Status``).

    A sweep's parent has ``variants_total`` (its variants) and ``variants_done`` (finished so far); a
    sweep's variant (child) has ``parent_id``, and its id is "<parent_id>.<index>"."""

    id: str
    user: str
    name: str
    tags: list
    model: str
    model_fingerprint: str
    status: str
    error: str
    created: Any
    started: Any
    finished: Any
    queue_position: int
    passes_done: int
    passes_planned: int
    spec: Experiment | None
    result: Result | None
    raw: Any = field(repr=False)
    parent_id: str = ""
    variants_total: int = 0
    variants_done: int = 0
    error_code: str = ""  # a failed experiment: its failure's status code ("RESOURCE_EXHAUSTED", ...)

    @classmethod
    def from_proto(cls, e):
        """From a lesion.v1.Experiment message; ``spec`` is None if the stored spec no longer parses."""
        try:
            spec = Experiment.from_proto(e.spec) if e.HasField("spec") else None
        except ValueError:
            spec = None
        return cls(
            id=e.id,
            user=e.user,
            name=e.name,
            tags=list(e.tags),
            model=e.model,
            model_fingerprint=e.model_fingerprint,
            status=_status_name(e.status),
            error=e.error,
            created=_time(e.created_unix_micros),
            started=_time(e.started_unix_micros),
            finished=_time(e.finished_unix_micros),
            queue_position=e.queue_position,
            passes_done=int(e.passes_done),
            passes_planned=int(e.passes_planned),
            spec=spec,
            result=Result(e.result, spec=e.spec if e.HasField("spec") else None) if e.HasField("result") else None,
            raw=e,
            parent_id=e.parent_id,
            variants_total=int(e.variants_total),
            variants_done=int(e.variants_done),
            error_code=e.error_code,
        )

    @property
    def done(self):
        """Whether the experiment has ended (done, failed, cancelled or interrupted)."""
        return self.status in TERMINAL

    def _repr_html_(self):
        """A compact table of the record and its result's main numbers, for Jupyter."""
        rows = [("id", self.id)]
        if self.name:
            rows.append(("name", self.name))
        rows += [("model", self.model), ("status", self.status)]
        if self.status == "queued" and self.queue_position:
            rows.append(("queue", f"{self.queue_position} ahead"))
        if self.is_sweep:
            rows.append(("variants", f"{self.variants_done}/{self.variants_total} done"))
        elif self.status == "running" and self.passes_planned:
            rows.append(("passes", f"{self.passes_done}/{self.passes_planned}"))
        if self.parent_id:
            rows.append(("sweep", self.parent_id))
        for k in ("created", "started", "finished"):
            if getattr(self, k) is not None:
                rows.append((k, getattr(self, k)))
        if self.error:
            rows.append(("error", f"{self.error_code}: {self.error}" if self.error_code else self.error))
        if self.result is not None:
            rows += [r for r in self.result._html_rows() if r[0] != "model"]
        return _html_table("lesion.ExperimentRecord", rows)

    @property
    def is_sweep(self):
        """A sweep's parent."""
        return self.variants_total > 0

    @property
    def variant_index(self):
        """A sweep variant's index in its sweep (None for other experiments)."""
        if not self.parent_id or not self.id.startswith(self.parent_id + "."):
            return None
        suffix = self.id[len(self.parent_id) + 1 :]
        return int(suffix) if suffix.isdigit() else None

    def to_dict(self):
        """The lesion.v1.Experiment message in proto3 JSON (there the status is the proto's enum
        name, "DONE")."""
        return json_format.MessageToDict(self.raw, preserving_proto_field_name=True)


def _spec_wants_captures(spec_proto):
    return any(m.WhichOneof("kind") == "capture" for m in spec_proto.measurements)


class Handle:
    """A submitted experiment: ``.wait()``, ``.result()``, ``.cancel()``, ``.status()``; for a sweep
    also ``.variants()``."""

    def __init__(self, client, record: ExperimentRecord):
        self._client = client
        self.record = record
        self.id = record.id

    def __repr__(self):
        return f"<lesion.Handle {self.id} {self.record.status}>"

    def _repr_html_(self):
        """The record's table as last seen (``status()`` refreshes it), for Jupyter."""
        return self.record._repr_html_().replace("lesion.ExperimentRecord", "lesion.Handle", 1)

    def status(self) -> str:
        """Fetch the record again and return its status ("queued", "running", "done", ...)."""
        self.record = self._client.get(self.id, include_captures=False)
        return self.record.status

    def wait(self, timeout=None, progress=True) -> ExperimentRecord:
        """Follow WatchExperiment until the experiment ends (done, failed, cancelled, interrupted) and
        return its final record; a tqdm bar shows passes_done / passes_planned (a sweep's parent:
        variants_done / variants_total, with the passes in the postfix). ``timeout`` (seconds) raises
        LesionError(DEADLINE_EXCEEDED) and leaves the experiment running."""
        if self.record.done:
            return self.record
        bar = None
        try:
            for record in self._client._watch(self.id, timeout):
                self.record = record
                if progress:
                    bar = self._update_bar(bar, record)
                if record.done:
                    break
        finally:
            if bar is not None:
                bar.close()
        if not self.record.done:  # the stream ended early: ask once
            self.record = self._client.get(self.id)
        return self.record

    def _update_bar(self, bar, record):
        from tqdm.auto import tqdm

        if record.is_sweep:  # count variants; the passes go in the postfix
            total, done, unit = record.variants_total, record.variants_done, "variant"
        else:
            total, done, unit = record.passes_planned, record.passes_done, "pass"
        if bar is None:
            bar = tqdm(total=total or None, desc=record.name or record.id, unit=unit, leave=True)
        if total and bar.total != total:
            bar.total = total
        if record.done and record.status == "done" and total:
            bar.n = total
        else:
            bar.n = done
        post = str(record.status)
        if record.status == "queued" and record.queue_position:
            post += f" ({record.queue_position} ahead)"
        if record.is_sweep and record.status == "running" and record.passes_planned:
            post += f", pass {record.passes_done}/{record.passes_planned}"
        bar.set_postfix_str(post, refresh=False)
        bar.refresh()
        return bar

    def result(self, timeout=None, progress=False) -> Result:
        """Wait for the experiment, then its Result (with captures); raises ExperimentFailed unless
        it ended done."""
        record = self.wait(timeout=timeout, progress=progress)
        if record.status != "done":
            raise ExperimentFailed(record)
        if record.result is None or (
            _spec_wants_captures(record.raw.spec)
            and not any(len(getattr(record.result.raw, p).captures) for p in ("baseline", "intervened"))
        ):
            record = self._client.get(self.id, include_captures=True)
            self.record = record
        if record.result is None:
            raise LesionError(
                grpc.StatusCode.INTERNAL, f"experiment {self.id} is done without a result", rpc="GetExperiment"
            )
        return record.result

    def cancel(self) -> ExperimentRecord:
        """Cancel the experiment (a sweep's parent: with every variant not yet done; a variant alone
        cannot be cancelled, FAILED_PRECONDITION)."""
        self.record = self._client.cancel(self.id)
        return self.record

    def variants(self, include_results=False, metrics=True, wide=False) -> pd.DataFrame:
        """A sweep's variants: ``Client.variants(self.id, ...)``."""
        return self._client.variants(self.id, include_results=include_results, metrics=metrics, wide=wide)


class Client:
    """A connection to lesiond.

    ``Client("host:port", token=None, user=None, timeout=60)``: ``token`` is sent as
    ``authorization: Bearer TOKEN``, ``user`` as ``x-lesion-user``; ``timeout`` bounds every unary
    call. ``secure=True`` (or ``root_certificates=PEM bytes``) uses TLS. Every failed call raises
    LesionError with ``.code`` (grpc.StatusCode) and ``.details`` (the server's message).
    """

    def __init__(
        self,
        address,
        token=None,
        user=None,
        timeout=DEFAULT_TIMEOUT,
        secure=False,
        root_certificates=None,
        options=None,
    ):
        self.address = address
        self.timeout = timeout
        self._metadata = []
        if token:
            self._metadata.append(("authorization", f"Bearer {token}"))
        if user:
            self._metadata.append(("x-lesion-user", user))
        options = list(options or []) + [
            ("grpc.max_receive_message_length", 512 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ]
        if secure or root_certificates:
            creds = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self._channel = grpc.secure_channel(address, creds, options=options)
        else:
            self._channel = grpc.insecure_channel(address, options=options)
        self._stub = service_pb2_grpc.LesionStub(self._channel)

    def __repr__(self):
        return f"<lesion.Client {self.address}>"

    # -- lifetime
    def close(self):
        """Close the channel (a LocalClient also stops its lesiond)."""
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @classmethod
    def local(cls, model_dir, port=None, db=None, lesiond=None, name=None, **kwargs):
        """A private lesiond on 127.0.0.1 serving ``model_dir``: a model directory, a .gguf file, or
        ``org/name[@revision]`` of the local Hugging Face cache (never downloaded). The model's name
        on the server is ``name``, by default the directory's basename, the file's name without
        ``.gguf``, or the repository's name. The process ends with close(), the with-block, or
        interpreter exit. See lesion.local."""
        from .local import start_local

        return start_local(model_dir, port=port, db=db, lesiond=lesiond, name=name, **kwargs)

    def _call(self, name, request, timeout=None):
        method = getattr(self._stub, name)
        try:
            return method(request, timeout=self.timeout if timeout is None else timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            from .errors import wrap_rpc_error

            raise wrap_rpc_error(e, name) from e

    def wait_ready(self, timeout=10.0):
        """Block until the channel connects (LesionError UNAVAILABLE otherwise)."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError as e:
            raise LesionError(
                grpc.StatusCode.UNAVAILABLE, f"no lesiond at {self.address} after {timeout}s", rpc="connect"
            ) from e

    # -- models
    def models(self, as_frame=False):
        """The loaded models: a list of dicts (ModelInfo's fields), or a DataFrame with as_frame."""
        resp = self._call("ListModels", service_pb2.ListModelsRequest())
        models = [self._model_dict(m) for m in resp.models]
        return pd.DataFrame(models) if as_frame else models

    @staticmethod
    def _model_dict(m):
        d = json_format.MessageToDict(m, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
        for k in ("n_params", "weight_bytes"):
            d[k] = int(d.get(k, 0))
        return d

    def load_model(self, name, dir, dtype=None, device=None, timeout=600.0) -> dict:
        """Admin only: load the HF directory ``dir`` as ``name``; ``dir`` may be ``org/name[@revision]``
        of the server's Hugging Face cache. The path (resolved) must lie under a server model root."""
        req = service_pb2.LoadModelRequest(name=name, dir=str(dir), dtype=dtype or "", device=device or "")
        return self._model_dict(self._call("LoadModel", req, timeout=timeout))

    def unload_model(self, name) -> None:
        """Admin only: unload the model ``name`` (FAILED_PRECONDITION while experiments on it are
        queued or running)."""
        self._call("UnloadModel", service_pb2.UnloadModelRequest(name=name))

    # -- the server
    def status(self) -> dict:
        """The server at a glance (GetServerStatus; ``lesion status``): ``version``, ``started``
        (a UTC pandas Timestamp), ``uptime_seconds``, ``models`` (as :meth:`models`), ``devices``
        (dicts: ``device``, ``queued``, ``running_id``, ``memory_allocated_bytes``, ``memory_reserved_bytes``),
        ``experiments`` (count per state: queued, running, done, failed, cancelled, interrupted),
        ``baseline_cache_bytes``, ``baseline_cache_entries``, ``baseline_cache_max_bytes``,
        ``database_bytes`` and ``database_wal_bytes``.

        The baseline cache holds recent baseline passes, so that an experiment with the same model,
        data, windows and measurements skips its baseline forward passes; an experiment that needs
        the baseline's logits or dataset means (``KLDivergence``, the "mean" modes of
        ``HeadAblation``, ``HeadSweep`` and ``ActivationEdit``) runs them again."""
        s = self._call("GetServerStatus", service_pb2.GetServerStatusRequest())
        return {
            "version": s.version,
            "started": _time(s.started_unix_micros),
            "uptime_seconds": s.uptime_seconds,
            "models": [self._model_dict(m) for m in s.models],
            "devices": [
                {
                    "device": d.device,
                    "queued": d.queued,
                    "running_id": d.running_id,
                    "memory_allocated_bytes": d.memory_allocated_bytes,
                    "memory_reserved_bytes": d.memory_reserved_bytes,
                }
                for d in s.devices
            ],
            "experiments": dict(s.experiments),
            "baseline_cache_bytes": s.baseline_cache_bytes,
            "baseline_cache_entries": s.baseline_cache_entries,
            "baseline_cache_max_bytes": s.baseline_cache_max_bytes,
            "database_bytes": s.database_bytes,
            "database_wal_bytes": s.database_wal_bytes,
        }

    # -- retention (admin only)
    def delete_experiments(self, where, dry_run=False) -> dict:
        """Delete the finished experiments matching ``where`` (the query language of
        :meth:`experiments`; required, ``"created >= 0"`` selects all), a sweep's variants with their
        parent, and reclaim the space (``lesion rm``). Queued and running ones are skipped. Returns
        the counts: ``experiments``, ``bytes`` (stored bytes freed), ``skipped_active``,
        ``skipped_variants`` (matched variants whose sweep did not match) and
        ``file_bytes_reclaimed``. ``dry_run`` only counts. PermissionDenied for a non-admin."""
        return self._retention("DeleteExperiments", where, dry_run)

    def drop_captures(self, where, dry_run=False) -> dict:
        """Drop the captured tensors' bytes of the finished experiments matching ``where``, keeping
        everything else (``lesion gc``); the counts as :meth:`delete_experiments`."""
        return self._retention("DropCaptures", where, dry_run)

    def _retention(self, rpc, where, dry_run):
        r = self._call(rpc, service_pb2.RetentionRequest(where=where or "", dry_run=bool(dry_run)))
        return {
            "experiments": r.experiments,
            "bytes": r.bytes,
            "skipped_active": r.skipped_active,
            "skipped_variants": r.skipped_variants,
            "file_bytes_reclaimed": r.file_bytes_reclaimed,
        }

    # -- experiments
    def submit(self, spec) -> Handle:
        """Queue an experiment (an Experiment, ExperimentSpec, dict or JSON): returns at once."""
        req = service_pb2.SubmitExperimentRequest(spec=spec_to_proto(spec))
        return Handle(self, ExperimentRecord.from_proto(self._call("SubmitExperiment", req)))

    def run(self, spec, progress=True, timeout=None) -> Result:
        """Submit, follow it with a progress bar, return the Result (ExperimentFailed unless done). For
        a sweep, the parent's Result: ``.sweep`` has a row per variant; ``variants()`` the children."""
        return self.submit(spec).result(timeout=timeout, progress=progress)

    def run_many(self, specs, progress=True, timeout=None) -> list:
        """Submit every spec first (so the server queues them all at once), then collect the results in order.

        Each spec is its own experiment; only a sweep's variants share forward passes."""
        handles = [self.submit(s) for s in specs]
        if progress:
            from tqdm.auto import tqdm

            return [h.result(timeout=timeout) for h in tqdm(handles, desc="experiments", unit="exp")]
        return [h.result(timeout=timeout) for h in handles]

    def _watch(self, id, timeout=None):
        try:
            for event in self._stub.WatchExperiment(
                service_pb2.WatchExperimentRequest(id=id), timeout=timeout, metadata=self._metadata
            ):
                yield ExperimentRecord.from_proto(event.experiment)
        except grpc.RpcError as e:
            from .errors import wrap_rpc_error

            raise wrap_rpc_error(e, "WatchExperiment") from e

    def watch(self, id, timeout=None):
        """Iterate over the experiment's records as it changes, ending after the final one."""
        return self._watch(id, timeout)

    # -- generation
    def generate(
        self,
        model,
        prompt=None,
        ids=None,
        interventions=(),
        max_new_tokens=64,
        temperature=0.0,
        top_k=0,
        seed=0,
        baseline=True,
        stream=False,
        timeout=None,
    ):
        """Continue a prompt with the model as loaded and with ``interventions`` acting in every step
        (lesiond's Generate; see lesion.generation), side by side.

        ``prompt`` is text (tokenized after BOS) or ``ids`` token ids as given (a list, numpy or
        torch; one of the two). ``interventions``: builders (``HeadAblation``, ``WeightEdit``,
        ``NormChannelReset``, ``AttentionBias``, ``ActivationEdit`` / ``Steer`` / ``ProjectOut`` /
        ``Patch``) or their dicts, applied together; activation-edit ``positions`` count in the whole
        sequence (prompt, BOS included, then the new tokens). Up to ``max_new_tokens`` (1..4096) new
        tokens, fewer where the model's end-of-sequence token comes; greedy at ``temperature=0``,
        else sampled at that temperature from the ``top_k`` most likely tokens (0: all) with
        ``seed`` (the same seed, the same tokens). ``baseline=False`` runs only the intervened model.

        With ``stream=False`` returns the ``Generation``. With ``stream=True`` returns at once an
        iterator that yields a ``TokenEvent`` (intervened, id, logprob, text) per token as lesiond
        chooses it, the baseline run's first, then the intervened run's, and last the
        ``Generation``; leaving it early (``break``, ``close()``) cancels the call and the
        generation. The job is queued on the model's device like an experiment; ``timeout``
        (seconds; None: none) bounds the whole call, queueing included: past it the generation is
        cancelled and LesionError(DEADLINE_EXCEEDED) raised. Errors as every call's:
        InvalidArgument for what cannot apply (a "mean" mode, an edit past the sequence, a layer out
        of range; named ``interventions[i]``), NotFound for an unknown model; ValueError for
        arguments wrong without asking the server."""
        from .generation import generate_request, stream_events

        request, fields = generate_request(
            model,
            prompt=prompt,
            ids=ids,
            interventions=interventions,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            seed=seed,
            baseline=baseline,
        )
        call = self._stub.Generate(request, timeout=timeout, metadata=self._metadata)
        events = stream_events(call, fields)
        if stream:
            return events
        generation = None
        for item in events:
            generation = item
        return generation

    # -- activation cache
    def cache(self, model, prompts, sites, positions=None, interventions=(), add_bos=False, timeout=None):
        """TransformerLens's ``run_with_cache`` for a prompt set: the activations at ``sites`` (site
        names or patterns such as "blocks.*.resid_post") of every prompt (text, or a list of token
        ids; a single string is one prompt) as an ``ActivationCache`` {site: array [prompts,
        positions, ...]}, zero-padded past each prompt's length (``cache.lengths``,
        ``cache.prompt(i)``). ``positions``: only these positions (None: all). With
        ``interventions`` the cache is of the intervened model (``cache.result`` has both passes).
        One experiment, recorded like any other; its captures count against the server's
        capture-bytes limit, which refuses a cache too large with InvalidArgument before any work
        (ask for fewer sites, positions or prompts)."""
        from .cache import ActivationCache, cache_experiment

        spec = cache_experiment(
            model, prompts, sites, positions=positions, interventions=interventions, add_bos=add_bos
        )
        result = self.run(spec, progress=False, timeout=timeout)
        return ActivationCache(result, "intervened" if interventions else "baseline")

    def iter_cache(
        self,
        model,
        prompts,
        sites,
        prompts_per_request=64,
        positions=None,
        interventions=(),
        add_bos=False,
        timeout=None,
    ):
        """``cache`` streamed: yields ``(first, ActivationCache)`` for the prompts
        ``[first, first + prompts_per_request)``, one experiment each, the next submitted while
        this one is read, so that a prompt set whose activations exceed the server's capture limit
        (or the client's memory) is read a slice at a time. Each slice is what ``cache`` gives for
        its prompts (padded to its own longest prompt)."""
        from .cache import ActivationCache, cache_experiment

        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if isinstance(prompts_per_request, bool) or not isinstance(prompts_per_request, int) or prompts_per_request < 1:
            raise ValueError(f"iter_cache: prompts_per_request must be a positive int, got {prompts_per_request!r}")
        pass_name = "intervened" if interventions else "baseline"

        def submit(first):
            chunk = prompts[first : first + prompts_per_request]
            return self.submit(cache_experiment(model, chunk, sites, positions, interventions, add_bos))

        firsts = list(range(0, len(prompts), prompts_per_request))
        pending = submit(firsts[0]) if firsts else None
        try:
            for i, first in enumerate(firsts):
                handle = pending
                pending = submit(firsts[i + 1]) if i + 1 < len(firsts) else None
                yield first, ActivationCache(handle.result(timeout=timeout, progress=False), pass_name)
        finally:  # left early (break, an error): the slice submitted ahead is not wanted
            if pending is not None:
                try:
                    pending.cancel()
                except LesionError:
                    pass  # it ended meanwhile

    def handle(self, id) -> Handle:
        """A Handle of an experiment submitted earlier (by anyone), to wait for or cancel."""
        return Handle(self, self.get(id, include_captures=False))

    def get(self, id, include_captures=False) -> ExperimentRecord:
        """The experiment's record now, with its result once done (captured tensors only with
        ``include_captures``: they can be large). NotFound for an unknown id."""
        req = service_pb2.GetExperimentRequest(id=id, include_captures=include_captures)
        return ExperimentRecord.from_proto(self._call("GetExperiment", req))

    def result(self, id) -> Result:
        """The Result of a finished experiment, with captures."""
        return Handle(self, self.get(id)).result()

    def cancel(self, id) -> ExperimentRecord:
        """Cancel a queued or running experiment (a sweep's parent: with its unfinished variants) and
        return its record; FAILED_PRECONDITION for one that has ended or a sweep's variant alone."""
        return ExperimentRecord.from_proto(self._call("CancelExperiment", service_pb2.CancelExperimentRequest(id=id)))

    def resubmit(self, id) -> Handle:
        """Queue a new experiment with the spec of an interrupted, failed or cancelled one (a sweep:
        only its unfinished variants run) and return its Handle."""
        e = self._call("ResubmitExperiment", service_pb2.ResubmitExperimentRequest(id=id))
        return Handle(self, ExperimentRecord.from_proto(e))

    def list(self, where=None, order_by=None, limit=100, offset=0, include_results=False):
        """(records, total) of ListExperiments."""
        req = service_pb2.ListExperimentsRequest(
            where=where or "", order_by=order_by or "", limit=limit, offset=offset, include_results=include_results
        )
        resp = self._call("ListExperiments", req)
        return [ExperimentRecord.from_proto(e) for e in resp.experiments], int(resp.total)

    def experiments(self, where=None, order_by=None, limit=100, offset=0, metrics=True, wide=False) -> pd.DataFrame:
        """Experiments matching the query (docs/queries.md) as a DataFrame, one row each.

        By default the compact columns (``COMPACT_COLUMNS``): id, user, name, model, status ("done",
        as the query language spells it), created, finished, tags, started, seconds (finished -
        started), error, parent_id, variants_total (a sweep's parent: its variants), interventions
        (their kinds) and the main metrics
        ``metric.perplexity.baseline`` / ``.value`` / ``.delta_pct`` and ``metric.kl_divergence.value``
        (NaN where not measured). ``wide=True`` gives every column instead: also the spec's fields
        (``dataset.*``, ``eval.*``, ``intervention.KIND.FIELD``, ``measurements``, ``sweep``), the
        sweep counts and ``metric.NAME.value`` / ``.baseline`` / ``.delta`` / ``.delta_pct`` of every
        metric (hundreds with per-head attention-sink metrics). Column names are the query
        language's fields where it has them. ``metrics=False`` fetches no results and has no
        ``metric.*`` columns. ``df.attrs["total"]`` is the match count before limit and offset."""
        records, total = self.list(where, order_by, limit, offset, include_results=metrics)
        df = records_frame(records, wide=wide, metrics=metrics)
        df.attrs["total"] = total
        return df

    def variants(self, parent_id, include_results=False, metrics=True, wide=False) -> pd.DataFrame:
        """A sweep's variants (its child experiments), in the sweep's order, as a DataFrame with the
        columns of ``experiments()`` (compact, or every one with ``wide=True``) plus ``variant`` (the
        variant's name, "L3.H5") and ``index`` (its place in the sweep) after the first eight;
        ``metrics`` fills the ``metric.*`` columns, ``include_results`` adds a ``result`` column of
        Result objects (both fetch the results).
        Every child is listed, page by page (``where parent = "<id>"``); ``df.attrs["total"]`` is their
        count, ``df.attrs["parent"]`` the parent's id. NotFound for an unknown id."""
        if isinstance(parent_id, (Handle, ExperimentRecord)):
            parent_id = parent_id.id
        parent = self.get(parent_id)
        where = f'parent = "{_quote(parent_id)}"'
        fetch = bool(metrics or include_results)
        records, total, offset = [], None, 0
        while total is None or offset < total:
            page, total = self.list(where, order_by="id", limit=MAX_LIST_LIMIT, offset=offset, include_results=fetch)
            if not page:
                break
            records.extend(page)
            offset += len(page)
        records.sort(key=lambda r: (r.variant_index is None, r.variant_index or 0, r.id))
        names = {}
        if parent.result is not None:
            names = {v.experiment_id: v.name for v in parent.result.raw.sweep.variants}
        prefix = f"{parent.name}/" if parent.name else ""
        df = records_frame(records, wide=wide, metrics=metrics)
        variant = [
            names.get(r.id) or (r.name[len(prefix) :] if prefix and r.name.startswith(prefix) else r.name)
            for r in records
        ]
        df.insert(len(_BASE_COLUMNS), "variant", pd.Series(variant, dtype=object))
        df.insert(len(_BASE_COLUMNS) + 1, "index", pd.Series([r.variant_index for r in records], dtype="Int64"))
        if include_results:
            df["result"] = pd.Series([r.result for r in records], dtype=object)
        df.attrs["total"] = len(records)
        df.attrs["parent"] = parent_id
        return df


def _quote(s):
    """A string for a double-quoted value of the query language."""
    return str(s).replace("\\", "\\\\").replace('"', '\\"')


# ------------------------------------------------------------------------------------------- flattening

_BASE_COLUMNS = ["id", "user", "name", "model", "status", "created", "finished", "tags"]
# Client.experiments()'s default columns: who, what, when, and the main metrics.
COMPACT_COLUMNS = _BASE_COLUMNS + [
    "started",
    "seconds",
    "error",
    "parent_id",
    "variants_total",
    "interventions",
    "metric.perplexity.baseline",
    "metric.perplexity.value",
    "metric.perplexity.delta_pct",
    "metric.kl_divergence.value",
]
_MAX_LIST = 16  # longer repeated fields (attention-bias vectors) are left out of the frame


def _simple(v):
    if isinstance(v, list):
        if len(v) > _MAX_LIST or not all(isinstance(x, (int, float, str, bool)) for x in v):
            return None
        return tuple(v)
    if isinstance(v, (int, float, str, bool)):
        return v
    return None


def flatten_spec(spec_dict) -> dict:
    """Simple spec fields as columns: dataset.KIND, eval.FIELD, intervention.KIND.FIELD (a list when
    the kind occurs more than once), measurements (the kinds, comma-separated), and for a sweep's
    parent sweep (its axes' kinds, comma-separated)."""
    out = {}
    ds = spec_dict.get("dataset") or {}
    for k, v in ds.items():
        if k == "token_ids":
            out["dataset.token_ids"] = len((v or {}).get("ids", []))
        elif k == "text":
            out["dataset.text"] = v if len(v) <= 80 else v[:77] + "..."
        else:
            out[f"dataset.{k}"] = v
    for k, v in (spec_dict.get("eval") or {}).items():
        out[f"eval.{k}"] = v
    grouped = {}
    for iv in spec_dict.get("interventions") or []:
        for kind, body in iv.items():
            for k, v in (body or {}).items():
                sv = _simple(v)
                if sv is not None:
                    grouped.setdefault(f"intervention.{kind}.{k}", []).append(sv)
    for k, vals in grouped.items():
        out[k] = vals[0] if len(vals) == 1 else vals
    out["interventions"] = ",".join(next(iter(iv)) for iv in spec_dict.get("interventions") or [] if iv)
    out["measurements"] = ",".join(next(iter(m)) for m in spec_dict.get("measurements") or [] if m)
    if spec_dict.get("sweep"):
        out["sweep"] = ",".join(next(iter(a)) for a in spec_dict["sweep"].get("axes") or [] if a)
    return out


def records_frame(records, wide=True, metrics=True) -> pd.DataFrame:
    """ExperimentRecords as the frame of ``Client.experiments()``: every column (``wide``), or
    ``COMPACT_COLUMNS`` only, each present (NaN where an experiment lacks it). ``metrics=False``
    leaves out the ``metric.*`` columns. A metric's ``delta_pct`` is NaN where it is undefined (a
    baseline of 0, as KL divergence's)."""
    rows = []
    for r in records:
        row = {
            "id": r.id,
            "user": r.user,
            "name": r.name,
            "model": r.model,
            "status": r.status,
            "created": r.created,
            "finished": r.finished,
            "tags": tuple(r.tags),
            "started": r.started,
            "seconds": (
                (r.finished - r.started).total_seconds()
                if r.started is not None and r.finished is not None
                else float("nan")
            ),
            "error": r.error,
            "parent_id": r.parent_id,
            "variants_total": r.variants_total,
            "variants_done": r.variants_done,
        }
        if r.raw.HasField("spec"):
            # unset fields as their defaults (layer 0, mode "ZERO"), as the query language reads them
            row.update(
                flatten_spec(
                    json_format.MessageToDict(
                        r.raw.spec, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
                    )
                )
            )
        if metrics and r.result is not None:
            for m in r.result.raw.metrics:
                row[f"metric.{m.name}.value"] = m.value
                row[f"metric.{m.name}.baseline"] = m.baseline
                row[f"metric.{m.name}.delta"] = m.delta
                row[f"metric.{m.name}.delta_pct"] = _metric_pct(m)
        rows.append(row)
    df = pd.DataFrame(rows)
    if not wide:
        columns = [c for c in COMPACT_COLUMNS if metrics or not c.startswith("metric.")]
        return df.reindex(columns=columns) if len(df) else pd.DataFrame(columns=columns)
    if not len(df):
        return pd.DataFrame(columns=_BASE_COLUMNS)
    rest = [c for c in df.columns if c not in _BASE_COLUMNS]
    spec_cols = [c for c in rest if not c.startswith("metric.")]
    metric_cols = [c for c in rest if c.startswith("metric.")]
    return df[_BASE_COLUMNS + spec_cols + metric_cols]
