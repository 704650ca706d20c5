"""End-to-end tests of the `lesion` CLI's server commands against a real lesiond on loopback.

Env: LESIOND (default build/server/lesiond), LESION_CLI (default build/client/cpp/lesion).
Skipped when the server binary is missing.
"""

import csv
import io
import json
import os
import pathlib
import socket
import subprocess
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
LESIOND = pathlib.Path(os.environ.get("LESIOND", ROOT / "build/server/lesiond"))
CLI = pathlib.Path(os.environ.get("LESION_CLI", ROOT / "build/client/cpp/lesion"))
MODEL_DIR = ROOT / "models/stories260K"

pytestmark = pytest.mark.skipif(not LESIOND.exists() or not CLI.exists(), reason=f"needs {LESIOND} and {CLI}")

SPEC = {
    "name": "cli-remote-ablate",
    "tags": ["cli-test"],
    "dataset": {
        "text": "Once upon a time there was a little girl named Lily. She loved to play "
        "outside in the sun with her dog and her friends in the park."
    },
    "eval": {"seq_len": 16},
    "interventions": [{"head_ablation": {"layer": 0, "heads": [0, 1]}}],
    "measurements": [{"perplexity": {}}, {"kl_divergence": {}}],
}
LONG_SPEC = {
    "name": "cli-remote-long",
    "dataset": {"named": "wikitext-2-raw-test"},
    "eval": {"seq_len": 32, "batch_size": 1},
    "interventions": [{"head_ablation": {"layer": 1, "heads": [0]}}],
    "measurements": [{"perplexity": {}}],
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tmp_path, *extra):
    port = free_port()
    log = open(tmp_path / f"lesiond-{port}.log", "w+")
    proc = subprocess.Popen(
        [
            str(LESIOND),
            "--listen",
            f"127.0.0.1:{port}",
            "--db",
            str(tmp_path / f"{port}.db"),
            "--model",
            f"stories={MODEL_DIR}",
            *extra,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        log.seek(0)
        if "lesiond listening on" in log.read():
            return proc, f"127.0.0.1:{port}"
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    log.seek(0)
    pytest.fail(f"lesiond did not start:\n{log.read()}")


def stop_server(proc):
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc, addr = start_server(tmp_path_factory.mktemp("lesiond"))
    yield addr
    stop_server(proc)


def lesion(*args, server=None, env=None, timeout=120):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("LESION_")}
    if server:
        full_env["LESION_SERVER"] = server
    full_env.update(env or {})
    return subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True, env=full_env, timeout=timeout)


@pytest.fixture
def spec_file(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(SPEC))
    return path


def metrics(result):
    return {m["name"]: m for m in result["metrics"]}


def test_models(server):
    r = lesion("models", "--json", server=server)
    assert r.returncode == 0, r.stderr
    (model,) = json.loads(r.stdout)["models"]
    assert model["name"] == "stories" and model["n_layers"] == 5 and model["n_heads"] == 8

    table = lesion("models", "--server", server)  # the flag, not the environment
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split()[:5] == ["name", "architecture", "layers", "heads", "d_model"]
    assert "stories" in table.stdout and "LlamaForCausalLM" in table.stdout

    rows = list(csv.DictReader(io.StringIO(lesion("models", "--csv", server=server).stdout)))
    assert rows[0]["name"] == "stories" and rows[0]["d_model"] == "64"


def test_run_matches_local(server, spec_file):
    remote = lesion("run", spec_file, "--model", "stories", "--json", server=server)
    assert remote.returncode == 0, remote.stderr
    experiment = json.loads(remote.stdout)
    assert experiment["status"] == "DONE" and experiment["id"].startswith("exp-")
    assert "passes" in remote.stderr  # the progress lines (stderr is not a TTY here)

    local = lesion("run", "--local", "--model", MODEL_DIR, "--spec", spec_file, "--json")
    assert local.returncode == 0, local.stderr
    got, want = metrics(experiment["result"]), metrics(json.loads(local.stdout))
    assert set(got) == set(want) and {"perplexity", "kl_divergence"} <= set(want)
    for name in want:
        for field in ("baseline", "value", "delta", "delta_pct"):
            assert got[name][field] == pytest.approx(want[name][field], rel=1e-5, abs=1e-7), (name, field)

    table = lesion("run", spec_file, "--model", "stories", server=server)
    assert table.returncode == 0, table.stderr
    local_table = lesion("run", "--local", "--model", MODEL_DIR, "--spec", spec_file)

    def ppl_line(out):
        return next(line for line in out.splitlines() if line.startswith("perplexity"))

    assert ppl_line(table.stdout) == ppl_line(local_table.stdout)
    assert "experiment cli-remote-ablate: 1 intervention(s)" in table.stdout


def test_submit_watch_show(server, spec_file):
    sub = lesion("submit", spec_file, "--model", "stories", server=server)
    assert sub.returncode == 0, sub.stderr
    exp_id = sub.stdout.strip()
    assert exp_id.startswith("exp-") and len(exp_id) == len("exp-") + 12

    watch = lesion("watch", exp_id, server=server)
    assert watch.returncode == 0, watch.stderr
    assert "perplexity      baseline" in watch.stdout and exp_id in watch.stderr

    show = lesion("show", exp_id, "--json", server=server)
    assert show.returncode == 0, show.stderr
    shown = json.loads(show.stdout)
    assert shown["id"] == exp_id and shown["status"] == "DONE" and shown["spec"]["name"] == SPEC["name"]

    text = lesion("show", exp_id, server=server)
    assert text.returncode == 0 and exp_id in text.stdout and "done" in text.stdout
    assert "KL divergence" in text.stdout


def test_ls_where_and_csv(server, spec_file):
    assert lesion("submit", spec_file, "--model", "stories", server=server).returncode == 0
    named = dict(SPEC, name="cli-remote-other")
    other = spec_file.parent / "other.json"
    other.write_text(json.dumps(named))
    other_id = lesion("run", other, "--model", "stories", "--json", server=server)
    assert other_id.returncode == 0, other_id.stderr
    other_id = json.loads(other_id.stdout)["id"]

    r = lesion("ls", "--where", 'name = "cli-remote-other"', "--csv", server=server)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert r.stdout.startswith("id,user,name,model,status,created,ppl_delta_pct\n")
    assert [row["id"] for row in rows] == [other_id]
    assert rows[0]["status"] == "done" and rows[0]["model"] == "stories"
    assert float(rows[0]["ppl_delta_pct"]) != 0
    assert "1 of 1" in r.stderr

    table = lesion("ls", "--order-by", "created desc", "--limit", "1", server=server)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:5] == ["id", "user", "name", "model", "status"] and len(lines) == 2
    assert "1 of " in table.stderr

    js = json.loads(lesion("ls", "--where", 'name = "cli-remote-other"', "--json", server=server).stdout)
    assert js["total"] == "1" or js["total"] == 1

    bad = lesion("ls", "--where", "no_such_column = 3", server=server)
    assert bad.returncode == 2 and "INVALID_ARGUMENT" in bad.stderr


def test_cancel_long_experiment(server, tmp_path):
    spec = tmp_path / "long.json"
    spec.write_text(json.dumps(LONG_SPEC))
    sub = lesion("submit", spec, "--model", "stories", server=server)
    assert sub.returncode == 0, sub.stderr
    exp_id = sub.stdout.strip()
    cancel = lesion("cancel", exp_id, server=server)
    assert cancel.returncode == 0, cancel.stderr
    assert cancel.stdout.split()[0] == exp_id
    watch = lesion("watch", exp_id, server=server, timeout=60)
    assert watch.returncode == 1 and "CANCELLED" in watch.stderr and "was cancelled" in watch.stderr
    shown = json.loads(lesion("show", exp_id, "--json", server=server).stdout)
    assert shown["status"] == "CANCELLED"
    again = lesion("cancel", exp_id, server=server)
    assert again.returncode == 1 and "FAILED_PRECONDITION" in again.stderr


def test_run_timeout_cancels(server, tmp_path):
    spec = tmp_path / "long.json"
    spec.write_text(json.dumps(dict(LONG_SPEC, name="cli-remote-timeout")))
    r = lesion("run", spec, "--model", "stories", "--timeout", "2", server=server, timeout=60)
    assert r.returncode == 1 and "DEADLINE_EXCEEDED" in r.stderr and "(cancelled)" in r.stderr, r.stderr


def test_errors(server, spec_file, tmp_path):
    missing = lesion("show", "exp-000000000000", server=server)
    assert missing.returncode == 2 and "NOT_FOUND" in missing.stderr

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(dict(SPEC, interventions=[{"head_ablation": {"layer": 99, "heads": [0]}}])))
    r = lesion("run", bad, "--model", "stories", server=server)
    assert r.returncode == 2 and "INVALID_ARGUMENT" in r.stderr and "layer 99 out of range" in r.stderr

    unparsable = tmp_path / "unparsable.json"
    unparsable.write_text('{"bogus": 1}')
    r = lesion("submit", unparsable, server=server)
    assert r.returncode == 2 and "bogus" in r.stderr

    r = lesion("submit", spec_file, "--model", "no-such-model", server=server)
    assert r.returncode == 2 and "NOT_FOUND" in r.stderr

    r = lesion("models", "--bogus-flag", server=server)
    assert r.returncode == 2 and "--bogus-flag" in r.stderr

    port = free_port()
    r = lesion("models", "--server", f"127.0.0.1:{port}", "--timeout", "1")
    assert r.returncode == 1 and "UNAVAILABLE" in r.stderr


def test_token(tmp_path, spec_file):
    tokens = tmp_path / "tokens"
    tokens.write_text("secret-alice alice user\nsecret-root root admin\n")
    proc, addr = start_server(tmp_path, "--tokens-file", tokens)
    try:
        r = lesion("models", server=addr)
        assert r.returncode == 1 and "UNAUTHENTICATED" in r.stderr
        r = lesion("models", "--token", "wrong", server=addr)
        assert r.returncode == 1 and "UNAUTHENTICATED" in r.stderr
        r = lesion("submit", spec_file, "--model", "stories", "--token", "secret-alice", server=addr)
        assert r.returncode == 0, r.stderr
        exp_id = r.stdout.strip()
        shown = json.loads(lesion("show", exp_id, "--json", server=addr, env={"LESION_TOKEN": "secret-alice"}).stdout)
        assert shown["user"] == "alice"
    finally:
        stop_server(proc)
