"""Auth hygiene of a real lesiond: the model roots hold against links and probing, a tokens
file others can write is refused, and anonymous admins are not served to other machines.

Env: LESIOND (conftest.py)."""

import shutil
import subprocess

import pytest

from conftest import LESIOND, STORIES, LesiondProcess, requires_lesiond

pytestmark = requires_lesiond


def lesiond_fails(tmp_path, *flags):
    """lesiond's exit status and stderr for flags it should refuse at start-up."""
    proc = subprocess.run(
        [str(LESIOND), "--db", str(tmp_path / "refused.db"), *map(str, flags)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc.returncode, proc.stderr


def test_load_model_follows_no_link_out_of_the_roots(tmp_path):
    grpc = pytest.importorskip("grpc")
    pytest.importorskip("lesion._proto", reason="the lesion Python package (client/python) is not installed")
    from lesion._proto import service_pb2, service_pb2_grpc

    root, outside = tmp_path / "root", tmp_path / "outside"
    shutil.copytree(STORIES, root / "linked")
    shutil.copytree(STORIES, outside / "stories")
    (root / "linked" / "config.json").unlink()
    (root / "linked" / "config.json").symlink_to(outside / "stories" / "config.json")
    (root / "out").symlink_to(outside)
    shutil.copytree(STORIES, root / "fine")
    (root / "alias").symlink_to(root / "fine")  # a link that stays inside the root

    server = LesiondProcess(tmp_path, "--model", f"stories={STORIES}", "--model-root", root)
    try:
        stub = service_pb2_grpc.LesionStub(server.channel)

        def load(name, path):
            return stub.LoadModel(service_pb2.LoadModelRequest(name=name, dir=str(path)), timeout=60)

        with pytest.raises(grpc.RpcError) as e:
            load("linked", root / "linked")
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "config.json" in e.value.details() and str(outside) not in e.value.details()

        # Outside the roots, existing or not, directly or through a link: one answer.
        answers = []
        for path in (outside / "stories", outside / "missing", root / "out" / "stories", root / "out" / "missing"):
            with pytest.raises(grpc.RpcError) as e:
                load("x", path)
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED, path
            answers.append(e.value.details().replace(str(path), "PATH"))
        assert len(set(answers)) == 1, answers

        assert load("alias", root / "alias").n_layers == 5
    finally:
        server.stop()


def test_tokens_file_that_others_can_write_is_refused(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("t-admin alice admin\n")
    tokens.chmod(0o666)
    status, stderr = lesiond_fails(tmp_path, "--tokens-file", tokens, "--no-default-model")
    assert status == 2, stderr
    assert "mode 0666" in stderr and f"chmod 600 {tokens}" in stderr, stderr


def test_anonymous_admins_are_not_served_to_other_machines(tmp_path):
    status, stderr = lesiond_fails(tmp_path, "--listen", "0.0.0.0:0", "--no-default-model")
    assert status == 2, stderr
    assert "--tokens-file" in stderr and "--allow-anonymous-remote" in stderr, stderr
