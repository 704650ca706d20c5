"""Retention and quotas end to end: `lesion rm` / `lesion gc` and Client.delete_experiments /
drop_captures against a real lesiond with token auth, and --max-user-bytes refusing a submission.

Env: LESIOND, LESION_CLI (conftest.py). Skipped without the binaries or the Python client."""

import json
import os

import pytest

from conftest import CLI_MISSING, STORIES, LesiondProcess, requires_lesiond

pytestmark = [requires_lesiond, pytest.mark.skipif(CLI_MISSING is not None, reason=CLI_MISSING or "")]
lesion = pytest.importorskip("lesion", reason="the lesion Python package (client/python) is not installed")

SPEC = {
    "name": "retention",
    "model": "stories",
    "dataset": {"text": "Once upon a time there was a little girl named Lily. She loved to play outside."},
    "eval": {"seq_len": 16},
    "interventions": [{"head_ablation": {"layer": 0, "heads": [0]}}],
    "measurements": [{"perplexity": {}}, {"capture": {"sites": ["blocks.0.resid_post"], "max_windows": 1}}],
}


@pytest.fixture
def server(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("tok-root root admin\ntok-alice alice user\n")
    os.chmod(tokens, 0o600)
    started = []

    def start(*flags):
        s = LesiondProcess(tmp_path, "--model", f"stories={STORIES}", "--tokens-file", tokens, *flags)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


def run_cli(cli, server, token, *args, check=True):
    return cli(*args, "--server", server.address, "--token", token, check=check)


def capture_bytes(client, id):
    result = client.get(id, include_captures=True).result
    return sum(len(t.data) for t in result.raw.intervened.captures)


def test_rm_and_gc_by_query(server, cli):
    s = server()
    alice = lesion.Client(s.address, token="tok-alice")
    admin = lesion.Client(s.address, token="tok-root")
    kept, dropped = (alice.submit(dict(SPEC, name=n)).wait(timeout=120, progress=False).id for n in ("kept", "dropped"))
    assert capture_bytes(alice, dropped) > 0

    # A user may not; an empty filter is refused.
    denied = run_cli(cli, s, "tok-alice", "gc", "--where", 'name = "dropped"', check=False)
    assert denied.returncode == 1 and "PERMISSION_DENIED" in denied.stderr and "admin" in denied.stderr
    no_filter = run_cli(cli, s, "tok-root", "rm", check=False)
    assert no_filter.returncode == 2 and "--where" in no_filter.stderr

    plan = run_cli(cli, s, "tok-root", "gc", "--where", 'name = "dropped"', "--dry-run")
    assert "would drop the captures of 1 experiment(s)" in plan.stdout
    assert capture_bytes(alice, dropped) > 0  # a dry run changes nothing
    gc = json.loads(run_cli(cli, s, "tok-root", "gc", "--where", 'name = "dropped"', "--json").stdout)
    assert int(gc["experiments"]) == 1 and int(gc["bytes"]) > 0
    assert capture_bytes(alice, dropped) == 0
    assert alice.get(dropped).result.raw.intervened.perplexity.ppl > 0  # the rest stays
    assert capture_bytes(alice, kept) > 0

    rm = run_cli(cli, s, "tok-root", "rm", "--where", 'name = "dropped"')
    assert "deleted 1 experiment(s)" in rm.stdout
    with pytest.raises(lesion.LesionError) as e:
        alice.get(dropped)
    assert e.value.code.name == "NOT_FOUND"

    # The Python client: the same calls.
    with pytest.raises(lesion.LesionError) as e:
        alice.delete_experiments('user = "alice"')
    assert e.value.code.name == "PERMISSION_DENIED"
    planned = admin.delete_experiments('user = "alice"', dry_run=True)
    assert planned["experiments"] == 1 and planned["bytes"] > 0 and planned["file_bytes_reclaimed"] == 0
    assert admin.drop_captures('user = "alice"')["experiments"] == 1
    done = admin.delete_experiments('user = "alice"')
    assert done["experiments"] == 1 and done["skipped_active"] == 0
    assert alice.list()[1] == 0


def test_stored_bytes_quota_refuses_submit_naming_the_limit(server):
    s = server("--max-user-bytes", "1")
    alice = lesion.Client(s.address, token="tok-alice")
    alice.submit(SPEC).wait(timeout=120, progress=False)  # nothing stored yet: accepted
    with pytest.raises(lesion.LesionError) as e:
        alice.submit(SPEC)
    assert e.value.code.name == "RESOURCE_EXHAUSTED"
    assert "--max-user-bytes 1" in e.value.details
    lesion.Client(s.address, token="tok-root").delete_experiments('user = "alice"')
    alice.submit(SPEC).wait(timeout=120, progress=False)  # room again
