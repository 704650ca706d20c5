"""Operating lesiond, end to end: the Prometheus /metrics endpoint, `lesion status`,
Client.status() and the structured log lines, against a real lesiond on loopback.

Env: LESIOND (default build/server/lesiond), LESION_CLI (default build/client/cpp/lesion).
"""

import json
import re
import urllib.request

import pytest

from conftest import STORIES, LesiondProcess, requires_lesiond

pytestmark = requires_lesiond

SPEC = {
    "name": "status-metrics",
    "model": "stories",
    "dataset": {"text": "Once upon a time there was a little girl named Lily. She loved to play outside."},
    "eval": {"seq_len": 16},
    "interventions": [{"head_ablation": {"layer": 0, "heads": [0]}}],
    "measurements": [{"perplexity": {}}],
}


def samples(text):
    """The exposition's samples, 'name{labels}' -> value."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def scrape(address):
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        assert response.status == 200
        return response.read().decode()


def metrics_address(server):
    """The address lesiond logged for /metrics (it was asked for port 0)."""
    match = re.search(r"event=metrics_listening address=(\S+)", server.log_path.read_text())
    assert match, server.log_path.read_text()
    return match.group(1)


@pytest.fixture
def server(tmp_path):
    s = LesiondProcess(tmp_path, "--model", f"stories={STORIES}", "--metrics-address", "127.0.0.1:0")
    yield s
    s.stop()


def test_metrics_count_an_experiment_and_errors(server):
    from lesion import Client
    from lesion.errors import LesionError

    address = metrics_address(server)
    before = samples(scrape(address))
    for name in (
        "lesion_build_info",
        "lesion_uptime_seconds",
        "lesion_start_time_seconds",
        "lesion_models_loaded",
        "lesion_baseline_cache_bytes",
        "lesion_baseline_cache_entries",
        "lesion_baseline_cache_max_bytes",
        'lesion_database_bytes{file="main"}',
        'lesion_database_bytes{file="wal"}',
        'lesion_experiments{state="done"}',
        'lesion_experiments{state="interrupted"}',
        'lesion_queue_length{device="cpu"}',
        'lesion_device_busy{device="cpu"}',
        'lesion_device_memory_allocated_bytes{device="cpu"}',
        "lesion_status_errors_total",
    ):
        assert any(k == name or k.startswith(name + "{") for k in before), (name, sorted(before))
    assert before["lesion_models_loaded"] == 1
    assert before['lesion_experiments{state="done"}'] == 0
    assert before["lesion_status_errors_total"] == 0

    with Client(server.address, user="ada") as client:
        record = client.submit(SPEC).wait(timeout=120, progress=False)
        assert record.status == "DONE"
        with pytest.raises(LesionError):
            client.get("exp-000000000000")

    after = samples(scrape(address))
    assert after['lesion_experiments{state="done"}'] == 1
    assert after['lesion_experiment_duration_seconds_count{state="done"}'] == 1
    assert after['lesion_experiment_duration_seconds_bucket{state="done",le="+Inf"}'] == 1
    assert after['lesion_grpc_responses_total{code="OK",method="Lesion/SubmitExperiment"}'] == 1
    assert after['lesion_grpc_responses_total{code="NOT_FOUND",method="Lesion/GetExperiment"}'] == 1
    assert after['lesion_queue_length{device="cpu"}'] == 0
    assert after['lesion_database_bytes{file="main"}'] + after['lesion_database_bytes{file="wal"}'] > 0
    assert after["lesion_uptime_seconds"] >= before["lesion_uptime_seconds"]


def test_status_from_cli_and_python(server, cli):
    from lesion import Client

    with Client(server.address, user="ada") as client:
        client.run(SPEC, progress=False, timeout=120)
        status = client.status()
    assert status["version"]
    assert status["uptime_seconds"] > 0
    assert [m["name"] for m in status["models"]] == ["stories"]
    assert status["experiments"] == {
        "queued": 0,
        "running": 0,
        "done": 1,
        "failed": 0,
        "cancelled": 0,
        "interrupted": 0,
    }
    assert [d["device"] for d in status["devices"]] == ["cpu"]
    assert status["database_bytes"] + status["database_wal_bytes"] > 0
    assert status["baseline_cache_max_bytes"] > 0

    text = cli("status", "--server", server.address).stdout
    assert re.search(r"^lesiond \S+ at 127\.0\.0\.1:\d+, up ", text), text
    assert "stories" in text
    assert "experiments: queued 0, running 0, done 1, failed 0, cancelled 0, interrupted 0" in text
    assert "baseline cache:" in text and "database:" in text
    as_json = json.loads(cli("status", "--server", server.address, "--json").stdout)
    assert as_json["experiments"]["done"] == "1"  # proto3 JSON: int64 as a string
    assert as_json["models"][0]["name"] == "stories"


def test_log_lines_are_structured(tmp_path):
    from lesion import Client

    text_server = LesiondProcess(tmp_path, "--model", f"stories={STORIES}")
    try:
        with Client(text_server.address, user="ada") as client:
            client.run(SPEC, progress=False, timeout=120)
    finally:
        text_server.stop()
    lines = text_server.log_path.read_text().splitlines()
    assert lines and all(
        re.match(r"time=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z level=(info|warning|error) event=\w+", line)
        for line in lines
    ), lines
    events = [re.search(r"event=(\w+)", line).group(1) for line in lines]
    for event in (
        "starting",
        "model_loaded",
        "listening",
        "experiment_submitted",
        "experiment_finished",
        "shutting_down",
        "stopped",
    ):
        assert event in events, (event, lines)
    finished = next(line for line in lines if "event=experiment_finished" in line)
    assert "user=ada" in finished and "model=stories" in finished and "status=done" in finished
    assert re.search(r"duration_s=[0-9.e+-]+", finished), finished

    json_server = LesiondProcess(tmp_path, "--model", f"stories={STORIES}", "--log-format", "json")
    json_server.stop()
    records = [json.loads(line) for line in json_server.log_path.read_text().splitlines()]
    assert [r["event"] for r in records][:1] == ["starting"] and records[-1]["event"] == "stopped"
    assert all({"time", "level", "event"} <= r.keys() for r in records)
    assert any(r["event"] == "model_loaded" and r["model"] == "stories" for r in records)
