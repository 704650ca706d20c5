"""Crash safety of lesiond under repeated `kill -9`.

One database, one loop: start the real `lesiond`, submit a batch of small experiments (singles and a
head sweep) plus resubmissions of earlier interrupted ones, SIGKILL the server at a moment a seeded
RNG picks, check the database the crash left behind, restart, check again through the API. The kill
moments are random on purpose (while Submits are in flight, right after they are acknowledged, while
an experiment runs, in the middle of a sweep, right after a result is reported, at a random instant:
results are then being written); what is asserted must
hold for every one of them, which is docs/server.md's durability contract:

- the file is never corrupt: `PRAGMA integrity_check` and `foreign_key_check` of a read-only open
  of the crashed database, before the next server touches it;
- nothing finished is lost: an experiment a watcher saw DONE, or that the database held as done at
  an earlier check, is still done, with a byte-identical stored result (SHA-256 of the blob), and
  the restarted server answers the same result the watcher got;
- nothing acknowledged is lost: every id a SubmitExperiment / ResubmitExperiment answered is in the
  database; after the restart none is left queued or running (they are `interrupted`, or done);
  a sweep's variants are done or interrupted, and all done when their parent is;
- interrupted experiments can be resubmitted, and a resubmission runs to DONE.

LESION_KILL9_SEED fixes the RNG (it is printed, and named in every failure, for a rerun);
LESION_KILL9_ROUNDS sets the number of kills (default 8; 20-40 s on 2 cores)."""

import collections
import difflib
import hashlib
import os
import random
import sqlite3
import threading
import time

import pytest

grpc = pytest.importorskip("grpc")
pytest.importorskip("lesion._proto", reason="the lesion Python package (client/python) is not installed")
from google.protobuf import json_format  # noqa: E402

from conftest import STORIES, LesiondProcess, requires_lesiond  # noqa: E402
from lesion._proto import experiment_pb2, service_pb2, service_pb2_grpc  # noqa: E402

pytestmark = requires_lesiond

SEED = int(os.environ.get("LESION_KILL9_SEED") or random.SystemRandom().randrange(1 << 32))
ROUNDS = int(os.environ.get("LESION_KILL9_ROUNDS", "8"))
# Each kill mode at least once when ROUNDS >= 6 (the list is shuffled by the seeded RNG).
MODES = ("submitting", "queued", "running", "mid-sweep", "after-done", "random")

FINAL = {service_pb2.DONE, service_pb2.FAILED, service_pb2.CANCELLED, service_pb2.INTERRUPTED}
STATUS_NAME = {
    service_pb2.QUEUED: "queued",
    service_pb2.RUNNING: "running",
    service_pb2.DONE: "done",
    service_pb2.FAILED: "failed",
    service_pb2.CANCELLED: "cancelled",
    service_pb2.INTERRUPTED: "interrupted",
}


def single_spec(rng, index):
    """A one-head ablation of ~1 s on 2 cores; distinct heads so results differ."""
    return {
        "model": "stories",
        "name": f"k9-single-{index}",
        "tags": ["kill9"],
        "dataset": {"named": "tinystories-sample"},
        "eval": {"seq_len": 32, "max_windows": 4},
        "interventions": [{"head_ablation": {"layer": rng.randrange(5), "heads": [rng.randrange(8)]}}],
        "measurements": [{"perplexity": {}}],
    }


def sweep_spec(rng, index):
    """Every head of one layer: a parent and 8 variants."""
    return {
        "model": "stories",
        "name": f"k9-sweep-{index}",
        "tags": ["kill9"],
        "dataset": {"named": "tinystories-sample"},
        "eval": {"seq_len": 32, "max_windows": 4},
        "measurements": [{"perplexity": {}}],
        "sweep": {"axes": [{"heads": {"layers": [rng.randrange(5)]}}]},
    }


def crashed_database(db):
    """Integrity of the file a crash left, read without changing it: {id: (status, parent_id,
    sha256 of the stored result or None)}."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        problems = conn.execute("PRAGMA integrity_check").fetchall()
        assert problems == [("ok",)], f"integrity_check: {problems[:5]}"
        dangling = conn.execute("PRAGMA foreign_key_check").fetchall()
        assert not dangling, f"foreign_key_check: {dangling[:5]}"
        rows = conn.execute(
            "SELECT e.id, e.status, e.parent_id, CAST(r.result AS BLOB) FROM experiments AS e "
            "LEFT JOIN results AS r ON r.experiment_id = e.id"
        ).fetchall()
    finally:
        conn.close()
    return {
        i: (status, parent, hashlib.sha256(blob).hexdigest() if blob is not None else None)
        for i, status, parent, blob in rows
    }


class Round:
    """One server life: submissions, the watchers of every top-level experiment, and what they saw."""

    def __init__(self, server):
        self.server = server
        self.lesion = service_pb2_grpc.LesionStub(server.channel)
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.acked = []  # ids whose Submit / Resubmit was answered
        self.last = {}  # id -> the latest Experiment its watcher saw
        self.done = {}  # id -> ExperimentResult of a DONE final event
        self.threads = []
        self.submitter = None  # the thread of a submission that a kill may interrupt

    def watch(self, experiment_id):
        def run():
            try:
                for event in self.lesion.WatchExperiment(
                    service_pb2.WatchExperimentRequest(id=experiment_id), timeout=120
                ):
                    with self.changed:
                        self.last[experiment_id] = event.experiment
                        if event.experiment.status == service_pb2.DONE:
                            self.done[experiment_id] = event.experiment.result
                        self.changed.notify_all()
            except grpc.RpcError:
                pass  # the server was killed

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.threads.append(thread)

    def submit(self, calls):
        """Runs `calls` (functions returning the acknowledged Experiment) in order; stops at the first
        one the dying server does not answer."""
        for call in calls:
            try:
                experiment = call()
            except grpc.RpcError:
                return
            with self.changed:
                self.acked.append(experiment.id)
                self.changed.notify_all()
            self.watch(experiment.id)

    def wait_for(self, predicate, timeout=60):
        with self.changed:
            return self.changed.wait_for(lambda: predicate(self), timeout=timeout)

    def kill(self):
        self.server.kill()
        if self.submitter is not None:
            self.submitter.join(timeout=60)  # its last answer, if any, is recorded before we look
        self.server.channel.close()
        for thread in self.threads:
            thread.join(timeout=30)


def test_kill9_loop_loses_nothing_finished_or_acknowledged(tmp_path):
    rng = random.Random(SEED)
    context = f"(LESION_KILL9_SEED={SEED})"
    print(f"kill -9 loop: {ROUNDS} kills, seed {SEED}")
    db = tmp_path / "lesion.db"
    modes = [MODES[i % len(MODES)] for i in range(ROUNDS)]
    rng.shuffle(modes)

    acknowledged = set()  # every id a server ever acknowledged
    known_done = {}  # id -> sha256 of its stored result, first seen at a check
    reported_done = {}  # id -> the result a watcher saw DONE
    resubmitted = set()  # interrupted ids already resubmitted
    for round_index, mode in enumerate([*modes, None]):
        server = LesiondProcess(tmp_path, "--model", f"stories={STORIES}", db=db)
        current = Round(server)
        try:
            interrupted = (
                check_after_restart(current.lesion, acknowledged, known_done, reported_done, context)
                if round_index
                else []
            )
            candidates = sorted(set(interrupted) - resubmitted)
            again = rng.sample(candidates, min(2, len(candidates)))
            resubmitted.update(again)
            if mode is None:
                break
            calls = [
                lambda i=i, current=current: current.lesion.ResubmitExperiment(
                    service_pb2.ResubmitExperimentRequest(id=i), timeout=30
                )
                for i in again
            ]
            specs = [single_spec(rng, f"{round_index}.{n}") for n in range(rng.randint(2, 4))]
            specs.insert(rng.randrange(len(specs) + 1), sweep_spec(rng, round_index))
            calls += [
                lambda s=s, current=current: current.lesion.SubmitExperiment(
                    service_pb2.SubmitExperimentRequest(spec=json_format.ParseDict(s, experiment_pb2.ExperimentSpec())),
                    timeout=30,
                )
                for s in specs
            ]
            moment = kill_moment(rng, mode, current, calls)
            with current.lock:
                seen = sorted(STATUS_NAME[e.status] for e in current.last.values())
            current.kill()
            acknowledged.update(current.acked)
            reported_done.update(current.done)
            rows = check_crashed_file(db, acknowledged, known_done, reported_done, context)
            stored = collections.Counter(status for status, _, _ in rows.values())
            print(
                f"kill {round_index + 1} ({mode}, {moment}): acknowledged {len(current.acked)} of {len(calls)}, "
                f"watchers saw {seen}; the file holds {dict(sorted(stored.items()))}"
            )
        except BaseException:
            if server.proc.poll() is None:
                server.kill()
            raise
    # The last life: the resubmissions it made run to DONE; a clean stop leaves a sound file.
    try:
        assert again, f"no kill left an interrupted experiment to resubmit {context}"
        for experiment_id in again:
            fresh = current.lesion.ResubmitExperiment(
                service_pb2.ResubmitExperimentRequest(id=experiment_id), timeout=30
            )
            events = list(current.lesion.WatchExperiment(service_pb2.WatchExperimentRequest(id=fresh.id), timeout=120))
            assert events[-1].experiment.status == service_pb2.DONE, f"{fresh.id}: {events[-1].experiment.error}"
            acknowledged.add(fresh.id)
    finally:
        server.stop()
    rows = check_crashed_file(db, acknowledged, known_done, reported_done, context)
    assert not {i for i, (status, _, _) in rows.items() if status in ("queued", "running")}, (
        f"a clean stop leaves nothing queued or running {context}"
    )
    print(
        f"after {ROUNDS} kills: {len(rows)} experiments stored, {len(known_done)} done and byte-identical "
        f"at every check, {len(acknowledged)} acknowledged, none lost"
    )


def kill_moment(rng, mode, current, calls):
    """Submits `calls` and returns (having waited for it) the moment `mode` names, described."""
    if mode == "submitting":
        # Kill while Submits are still in flight: acknowledged ones must survive, the others may not.
        current.submitter = threading.Thread(target=current.submit, args=(calls,), daemon=True)
        current.submitter.start()
        current.wait_for(lambda r: r.acked)
        delay = rng.uniform(0, 0.3)
        time.sleep(delay)
        return f"{delay * 1000:.0f} ms after the first acknowledgement"
    current.submit(calls)
    assert len(current.acked) == len(calls), "a live server answers every submission"
    if mode == "queued":
        return "right after every submission was acknowledged"
    if mode == "running":
        target = rng.choice(current.acked)
        delay = rng.uniform(0, 0.5)
        current.wait_for(lambda r: r.last.get(target) is not None and r.last[target].status != service_pb2.QUEUED)
        time.sleep(delay)
        return f"{delay * 1000:.0f} ms after {target} left the queue"
    if mode == "mid-sweep":
        delay = rng.uniform(0, 0.3)
        current.wait_for(lambda r: any(e.variants_total and e.passes_done for e in r.last.values()))
        time.sleep(delay)
        return f"{delay * 1000:.0f} ms after the sweep's first pass"
    if mode == "after-done":
        # The writer is then storing the next results (a sweep's variants, the next single).
        count = rng.randint(1, len(calls))
        current.wait_for(lambda r: len(r.done) >= count)
        return f"as done event {count} arrived"
    delay = rng.uniform(0, 0.4 * len(calls))
    time.sleep(delay)
    return f"{delay:.2f} s after the submissions"


def check_crashed_file(db, acknowledged, known_done, reported_done, context):
    """The database file while no server runs: as a crash left it (before a server opens it again),
    or after the last, clean stop. Its rows."""
    try:
        rows = crashed_database(db)
    except (AssertionError, sqlite3.DatabaseError) as e:
        raise AssertionError(f"the crashed database is not sound {context}: {e!r}") from None
    lost = acknowledged - rows.keys()
    assert not lost, f"acknowledged submissions missing from the database {context}: {sorted(lost)}"
    for experiment_id, digest in known_done.items():
        status, _, now = rows[experiment_id]
        assert (status, now) == ("done", digest), (
            f"{experiment_id} was done with result {digest[:12]}, now {status} with {now and now[:12]} {context}"
        )
    for experiment_id in reported_done:
        assert rows.get(experiment_id, (None,))[0] == "done", (
            f"{experiment_id} was reported done but is stored as {rows.get(experiment_id, ('missing',))[0]} {context}"
        )
    for experiment_id, (status, _, digest) in rows.items():
        if status == "done":
            assert digest is not None, f"{experiment_id} is done without a stored result {context}"
            known_done.setdefault(experiment_id, digest)
    return rows


def check_after_restart(lesion, acknowledged, known_done, reported_done, context):
    """What the restarted server answers; returns the ids it holds as interrupted."""
    listed = lesion.ListExperiments(service_pb2.ListExperimentsRequest(limit=10000), timeout=30)
    assert listed.total == len(listed.experiments), "more than one page: lower LESION_KILL9_ROUNDS"
    status = {e.id: e.status for e in listed.experiments}
    parent = {e.id: e.parent_id for e in listed.experiments}
    left = {i: STATUS_NAME[s] for i, s in status.items() if s not in FINAL}
    assert not left, f"left unfinished by a restart {context}: {left}"
    for experiment_id in acknowledged:
        assert status[experiment_id] in (service_pb2.DONE, service_pb2.INTERRUPTED), (
            f"{experiment_id} is {STATUS_NAME[status[experiment_id]]} after a restart {context}"
        )
    for experiment_id in known_done:
        assert status[experiment_id] == service_pb2.DONE, f"{experiment_id} is no longer done {context}"
    for child, of in parent.items():
        if of:
            assert status[child] in (service_pb2.DONE, service_pb2.INTERRUPTED), (
                f"variant {child} is {STATUS_NAME[status[child]]} {context}"
            )
            if status[of] == service_pb2.DONE:
                assert status[child] == service_pb2.DONE, f"{of} is done but its variant {child} is not {context}"
    for experiment_id, result in reported_done.items():
        got = lesion.GetExperiment(
            service_pb2.GetExperimentRequest(id=experiment_id, include_captures=True), timeout=30
        )
        if got.result != result:
            diff = "\n".join(
                difflib.unified_diff(
                    str(result).splitlines(), str(got.result).splitlines(), "reported", "stored", lineterm="", n=2
                )
            )
            raise AssertionError(
                f"{experiment_id}: the restarted server's result differs from the one "
                f"reported before the crash {context}:\n{diff}"
            )
    return [i for i, s in status.items() if s == service_pb2.INTERRUPTED]
