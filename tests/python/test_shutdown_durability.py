"""lesiond's shutdown and per-variant durability, end to end: SIGTERM records what was queued or
running as interrupted before the process exits (with an optional grace period for running
experiments), a sweep's finished variants survive a crash, and resubmitting the sweep runs only the
others; results that are not finite numbers are flagged."""

import signal
import sqlite3

import pytest

pytest.importorskip("grpc")
from google.protobuf import json_format  # noqa: E402

from conftest import STORIES, requires_lesiond  # noqa: E402
from conftest import LesiondProcess as Server  # noqa: E402

pytestmark = requires_lesiond


def submit(pb, server, spec):
    lesion = pb.grpc.LesionStub(server.channel)
    return lesion.SubmitExperiment(
        pb.service.SubmitExperimentRequest(spec=json_format.ParseDict(spec, pb.experiment.ExperimentSpec())), timeout=30
    )


def wait_until(pb, server, experiment_id, predicate, timeout=120):
    lesion = pb.grpc.LesionStub(server.channel)
    for event in lesion.WatchExperiment(pb.service.WatchExperimentRequest(id=experiment_id), timeout=timeout):
        if predicate(event.experiment):
            return event.experiment
    raise AssertionError(f"{experiment_id} ended without reaching the state waited for")


def stored_statuses(db):
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return dict(conn.execute("SELECT id, status FROM experiments"))


def long_spec(name, windows):
    return {
        "model": "stories",
        "name": name,
        "dataset": {"named": "wikitext-2-raw-test"},
        "eval": {"seq_len": 32, "batch_size": 1, "max_windows": windows},
        "interventions": [{"head_ablation": {"layer": 0, "heads": [0]}}],
        "measurements": [{"perplexity": {}}],
    }


def test_sigterm_records_running_and_queued_experiments_interrupted_before_exit(pb, tmp_path):
    server = Server(tmp_path, "--model", f"stories={STORIES}")
    running = submit(pb, server, long_spec("running", 100000))
    queued = submit(pb, server, long_spec("queued", 100000))
    wait_until(pb, server, running.id, lambda e: e.status == pb.service.RUNNING and e.passes_done > 0)
    server.stop()  # SIGTERM
    assert server.proc.returncode == 0
    statuses = stored_statuses(server.db)
    assert statuses[running.id] == "interrupted" and statuses[queued.id] == "interrupted", statuses
    assert "event=experiments_interrupted count=2" in server.log_path.read_text()


def test_a_grace_period_lets_the_running_experiment_finish(pb, tmp_path):
    server = Server(tmp_path, "--model", f"stories={STORIES}", "--shutdown-grace-seconds", "300")
    running = submit(pb, server, long_spec("finishes", 400))
    queued = submit(pb, server, long_spec("queued", 400))
    wait_until(pb, server, running.id, lambda e: e.status == pb.service.RUNNING and e.passes_done > 0)
    # SIGTERM, then as long as the grace period allows (LesiondProcess.stop kills after 30 s, which a
    # busy machine may need for the running experiment).
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=300) == 0
    server.stop()
    statuses = stored_statuses(server.db)
    assert statuses[running.id] == "done", statuses
    assert statuses[queued.id] == "interrupted", statuses


# One window batch of 64 x 256 tokens and one variant per pass: each of the 32 groups takes a
# forward pass of its own, and each variant is stored as its pass ends.
SWEEP = {
    "model": "stories",
    "name": "heads",
    "dataset": {"named": "wikitext-2-raw-test"},
    "eval": {"seq_len": 256, "batch_size": 64, "max_windows": 64},
    "measurements": [{"perplexity": {}}],
    "sweep": {"axes": [{"heads": {"layers": [1, 2, 3, 4]}}], "variants_per_pass": 1},
}


def test_a_crash_mid_sweep_keeps_finished_variants_and_resubmit_runs_only_the_rest(pb, tmp_path):
    first = Server(tmp_path, "--model", f"stories={STORIES}")
    parent = submit(pb, first, SWEEP)
    total = parent.variants_total
    wait_until(pb, first, parent.id, lambda e: e.variants_done >= 1)
    first.kill()
    statuses = stored_statuses(first.db)
    done_before = sorted(i for i, s in statuses.items() if i.startswith(parent.id + ".") and s == "done")
    assert 1 <= len(done_before) < total, f"{len(done_before)} of {total} variants stored before the crash"

    second = Server(tmp_path, "--model", f"stories={STORIES}", db=first.db)
    try:
        lesion = pb.grpc.LesionStub(second.channel)
        again = lesion.ResubmitExperiment(pb.service.ResubmitExperimentRequest(id=parent.id), timeout=30)
        assert again.variants_total == total and again.variants_done == len(done_before)
        final = wait_until(
            pb, second, again.id, lambda e: e.status != pb.service.QUEUED and e.status != pb.service.RUNNING
        )
        assert final.status == pb.service.DONE, final.error
        rows = final.result.sweep.variants
        assert len(rows) == total and all(r.name for r in rows)
        reused = {r.experiment_id for r in rows if r.experiment_id.startswith(parent.id + ".")}
        assert reused == set(done_before)
        rerun = lesion.ListExperiments(pb.service.ListExperimentsRequest(where=f'parent = "{again.id}"'), timeout=10)
        assert rerun.total == total - len(done_before)
    finally:
        second.stop()


def test_a_non_finite_result_is_flagged(pb, tmp_path):
    server = Server(tmp_path, "--model", f"stories={STORIES}")
    try:
        spec = {
            "model": "stories",
            "name": "overflow",
            "dataset": {"named": "tinystories-sample"},
            "eval": {"seq_len": 64, "max_windows": 2},
            # Three scalings by 1e15 in a row reach 1e45: beyond float32, so inf and then nan.
            "interventions": [
                {"activation_edit": {"site": f"blocks.{layer}.resid_post", "op": "SCALE", "value": 1e15}}
                for layer in range(3)
            ],
            "measurements": [{"perplexity": {}}],
        }
        experiment = submit(pb, server, spec)
        final = wait_until(pb, server, experiment.id, lambda e: e.status not in (pb.service.QUEUED, pb.service.RUNNING))
        assert final.status == pb.service.DONE, final.error
        assert any("perplexity" in w and ("nan" in w or "inf" in w) for w in final.result.warnings), list(
            final.result.warnings
        )
    finally:
        server.stop()
