"""`--model org/name[@revision]`: models in the local Hugging Face hub cache, never downloaded.

A cache is laid out in tmp_path as huggingface_hub writes it (blobs/, snapshots/<commit>/ with
symlinks into blobs/, refs/<revision> holding the commit), with the bundled stories260K as the
snapshot; the CLI and lesiond find it through HF_HUB_CACHE / HF_HOME.
Env: LESION_CLI (default build/client/cpp/lesion), LESIOND (default build/server/lesiond)."""

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import CLI, LESIOND, STORIES, LesiondProcess, requires_cli, requires_lesiond

pytestmark = [
    requires_cli,
    pytest.mark.skipif(not (STORIES / "model.safetensors").exists(), reason="models/stories260K not converted"),
]

LESION = CLI.resolve()
MAIN = "0123456789abcdef0123456789abcdef01234567"
V1 = "89abcdef0123456789abcdef0123456789abcdef"
CACHE_VARS = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME")
SHAPE = (5, 8, 4, 64, 172, 512)  # layers, heads, kv heads, d_model, d_ffn, vocab of stories260K


def make_cache(hub, org="org", name="stories", refs=None):
    """models--{org}--{name} in `hub` holding stories260K at every commit of `refs` (ref -> commit)."""
    refs = refs or {"main": MAIN, "v1": V1, "some/branch": V1}
    repo = hub / f"models--{org}--{name}"
    (repo / "blobs").mkdir(parents=True)
    for commit in sorted(set(refs.values())):
        snapshot = repo / "snapshots" / commit
        snapshot.mkdir(parents=True)
        for f in sorted(p for p in STORIES.iterdir() if p.is_file()):
            blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
            if not blob.exists():
                shutil.copy(f, blob)
            (snapshot / f.name).symlink_to(Path("..") / ".." / "blobs" / blob.name)
    for ref, commit in refs.items():
        (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)  # no newline, as huggingface_hub writes it
    return repo


def environment(**cache_vars):
    """os.environ without any cache variable, then `cache_vars`."""
    env = {k: v for k, v in os.environ.items() if k not in CACHE_VARS}
    env.update({k: str(v) for k, v in cache_vars.items()})
    return env


def lesion(*args, env, cwd=None):
    return subprocess.run([str(LESION), *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


def shape(proc):
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    return (info["n_layers"], info["n_heads"], info["n_kv_heads"], info["d_model"], info["d_ffn"], info["vocab_size"])


def test_inspect_finds_the_model_at_each_revision(tmp_path):
    hub = tmp_path / "hub"
    make_cache(hub)
    env = environment(HF_HUB_CACHE=hub)
    for ref in ("org/stories", "org/stories@main", "org/stories@v1", "org/stories@some/branch", f"org/stories@{V1}"):
        assert shape(lesion("inspect", "--model", ref, "--json", env=env)) == SHAPE, ref


def test_hf_home_and_xdg_cache_home_locate_the_cache(tmp_path):
    make_cache(tmp_path / "home" / "hub")
    assert (
        shape(lesion("inspect", "--model", "org/stories", "--json", env=environment(HF_HOME=tmp_path / "home")))
        == SHAPE
    )
    make_cache(tmp_path / "xdg" / "huggingface" / "hub")
    assert (
        shape(lesion("inspect", "--model", "org/stories", "--json", env=environment(XDG_CACHE_HOME=tmp_path / "xdg")))
        == SHAPE
    )


def test_generate_from_the_cache_equals_the_directory(tmp_path):
    make_cache(tmp_path / "hub")
    env = environment(HF_HUB_CACHE=tmp_path / "hub")
    direct = lesion("generate", "--model", STORIES, "--max-tokens", 8, "--json", env=env)
    cached = lesion("generate", "--model", "org/stories@v1", "--max-tokens", 8, "--json", env=env)
    assert direct.returncode == 0 and cached.returncode == 0, direct.stderr + cached.stderr
    assert json.loads(cached.stdout)["generated_ids"] == json.loads(direct.stdout)["generated_ids"]


def test_a_model_not_in_the_cache_fails_naming_what_is_missing(tmp_path):
    hub = tmp_path / "hub"
    repo = make_cache(hub)
    env = environment(HF_HUB_CACHE=hub)
    proc = lesion("inspect", "--model", "openai-community/gpt2", env=env)
    assert proc.returncode == 1
    for needle in (
        "model 'openai-community/gpt2' is not in the Hugging Face cache",
        f"{hub / 'models--openai-community--gpt2'} does not exist",
        "never downloads",
        "NOT_FOUND",
    ):
        assert needle in proc.stderr, proc.stderr
    proc = lesion("inspect", "--model", "org/stories@nope", env=env)
    assert proc.returncode == 1 and f"{repo / 'refs' / 'nope'} does not exist" in proc.stderr, proc.stderr
    assert "cached refs: main, some/branch, v1" in proc.stderr, proc.stderr
    proc = lesion("inspect", "--model", "org/bad..id", env=env)
    assert proc.returncode == 2 and "INVALID_ARGUMENT" in proc.stderr, proc.stderr


def test_an_existing_directory_wins_over_the_cache(tmp_path):
    (tmp_path / "hub").mkdir()  # an empty cache
    (tmp_path / "work" / "org").mkdir(parents=True)
    (tmp_path / "work" / "org" / "stories").symlink_to(STORIES, target_is_directory=True)
    proc = lesion(
        "inspect",
        "--model",
        "org/stories",
        "--json",
        env=environment(HF_HUB_CACHE=tmp_path / "hub"),
        cwd=tmp_path / "work",
    )
    assert shape(proc) == SHAPE


# ---- lesiond: --model NAME=REF and LoadModel; model roots apply to the resolved path ----------------


@requires_lesiond
def test_lesiond_preloads_and_loads_models_from_the_cache(tmp_path):
    grpc = pytest.importorskip("grpc")
    pytest.importorskip("lesion._proto", reason="the lesion Python package (client/python) is not installed")
    from lesion._proto import service_pb2, service_pb2_grpc

    hub = tmp_path / "hub"
    repo = make_cache(hub)
    env = environment(HF_HUB_CACHE=hub)
    (tmp_path / "elsewhere").mkdir()
    for root, allowed in ((hub, True), (tmp_path / "elsewhere", False)):
        server = LesiondProcess(tmp_path, "--model", "stories=org/stories", "--model-root", root, env=env)
        try:
            loaded = [line for line in server.log_path.read_text().splitlines() if "event=model_loaded" in line]
            assert len(loaded) == 1 and "model=stories" in loaded[0], loaded
            assert f"dir={repo / 'snapshots' / MAIN}" in loaded[0] or f'dir="{repo / "snapshots" / MAIN}"' in loaded[0]
            stub = service_pb2_grpc.LesionStub(grpc.insecure_channel(server.address))
            request = service_pb2.LoadModelRequest(name="stories-v1", dir="org/stories@v1")
            if allowed:
                info = stub.LoadModel(request, timeout=120)
                assert V1 in info.dir and (info.n_layers, info.d_model) == (5, 64)
                with pytest.raises(grpc.RpcError) as missing:
                    stub.LoadModel(service_pb2.LoadModelRequest(name="m", dir="org/missing"), timeout=30)
                assert missing.value.code() == grpc.StatusCode.NOT_FOUND
                assert "is not in the Hugging Face cache" in missing.value.details()
            else:  # the cache is not under the model root: refused, naming the resolved path
                with pytest.raises(grpc.RpcError) as refused:
                    stub.LoadModel(request, timeout=30)
                assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
                assert str(repo / "snapshots" / V1) in refused.value.details()
        finally:
            server.stop()


@requires_lesiond
def test_lesiond_refuses_to_start_with_a_model_not_in_the_cache(tmp_path):
    (tmp_path / "hub").mkdir()
    proc = subprocess.run(
        [
            str(LESIOND),
            "--listen",
            "127.0.0.1:0",
            "--db",
            str(tmp_path / "lesion.db"),
            "--model",
            "gpt2=openai-community/gpt2",
        ],
        capture_output=True,
        text=True,
        env=environment(HF_HUB_CACHE=tmp_path / "hub"),
        timeout=60,
    )
    assert proc.returncode == 2
    assert "preloaded model gpt2: model 'openai-community/gpt2' is not in the Hugging Face cache" in proc.stderr
    assert str(tmp_path / "hub" / "models--openai-community--gpt2") in proc.stderr
