"""End-to-end: LoadModel behaves like a request (the real `lesiond`, raw gRPC). A load whose deadline
passes is abandoned and leaves nothing loaded; loads of different models run at once; a FIFO in a
model directory is refused at once instead of hanging the load."""

import json
import os
import shutil
import threading
import time

import pytest

grpc = pytest.importorskip("grpc")
np = pytest.importorskip("numpy")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

from conftest import STORIES, requires_lesiond  # noqa: E402
from conftest import LesiondProcess as Server  # noqa: E402

pytestmark = requires_lesiond


def make_llama(directory, layers=12, d=512, ffn=1536, vocab=4096):
    """A random Llama checkpoint (float16) that takes lesiond a second or more to load: many tensors
    of some size, so that a deadline can pass between two of them."""
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["LlamaForCausalLM"],
                "model_type": "llama",
                "hidden_size": d,
                "intermediate_size": ffn,
                "num_attention_heads": d // 64,
                "num_key_value_heads": d // 64,
                "num_hidden_layers": layers,
                "vocab_size": vocab,
                "max_position_embeddings": 256,
                "rms_norm_eps": 1e-5,
                "rope_theta": 10000.0,
                "tie_word_embeddings": True,
                "hidden_act": "silu",
                "torch_dtype": "float16",
            }
        )
    )
    rng = np.random.default_rng(0)

    def matrix(rows, cols):
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float16)

    tensors = {"model.embed_tokens.weight": matrix(vocab, d), "model.norm.weight": np.ones(d, np.float16)}
    for layer in range(layers):
        p = f"model.layers.{layer}."
        for n in ("q", "k", "v", "o"):
            tensors[p + f"self_attn.{n}_proj.weight"] = matrix(d, d)
        tensors[p + "mlp.gate_proj.weight"] = matrix(ffn, d)
        tensors[p + "mlp.up_proj.weight"] = matrix(ffn, d)
        tensors[p + "mlp.down_proj.weight"] = matrix(d, ffn)
        tensors[p + "input_layernorm.weight"] = np.ones(d, np.float16)
        tensors[p + "post_attention_layernorm.weight"] = np.ones(d, np.float16)
    safetensors_numpy.save_file(tensors, str(directory / "model.safetensors"))
    return directory


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A model root with a slow-to-load checkpoint ("big") and stories260K ("stories")."""
    root = tmp_path_factory.mktemp("models")
    make_llama(root / "big")
    shutil.copytree(STORIES, root / "stories")
    return root


@pytest.fixture
def server(tmp_path, models):
    s = Server(tmp_path, "--model-root", models)
    yield s
    s.stop()


def load(pb, server, name, directory, timeout=120, dtype="float32"):
    return pb.grpc.LesionStub(server.channel).LoadModel(
        pb.service.LoadModelRequest(name=name, dir=str(directory), dtype=dtype), timeout=timeout
    )


def loaded_names(pb, server):
    return {
        m.name for m in pb.grpc.LesionStub(server.channel).ListModels(pb.service.ListModelsRequest(), timeout=10).models
    }


def timed_full_load(pb, server, models):
    """Seconds a load of "big" takes on this machine now (loaded once, then unloaded)."""
    start = time.monotonic()
    load(pb, server, "probe", models / "big")
    seconds = time.monotonic() - start
    pb.grpc.LesionStub(server.channel).UnloadModel(pb.service.UnloadModelRequest(name="probe"), timeout=30)
    assert seconds > 0.2, f"a load of the big model took only {seconds:.3f} s: make it bigger for this test"
    return seconds


# Regression: loads whose callers had timed out still completed, leaving models loaded that
# nobody wanted.
def test_a_load_past_its_deadline_is_abandoned_and_leaves_nothing_loaded(pb, server, models):
    full = timed_full_load(pb, server, models)
    with pytest.raises(grpc.RpcError) as e:
        load(pb, server, "late", models / "big", timeout=full / 5)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "late" not in loaded_names(pb, server)
    # Long after the load would have finished, had it gone on.
    time.sleep(full * 1.5)
    assert "late" not in loaded_names(pb, server), "the abandoned load completed and stayed loaded"
    # The name is free again, and nothing of the abandoned load is in the way.
    assert load(pb, server, "late", models / "stories").name == "late"


# Regression: loads ran one after the other on their device's executor, so every load waited for
# the one ahead of it (and a stuck one held up all the rest).
def test_loads_of_different_models_run_at_once(pb, server, models):
    full = timed_full_load(pb, server, models)
    finished = {}

    def slow():
        load(pb, server, "slow", models / "big")
        finished["slow"] = time.monotonic()

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(full / 5)  # "slow" is reading its tensors now
    load(pb, server, "quick", models / "stories")
    finished["quick"] = time.monotonic()
    thread.join(timeout=120)
    assert finished["quick"] < finished["slow"], "the second load waited for the first"
    assert {"slow", "quick"} <= loaded_names(pb, server)
    # Same name as a load in flight or done: AlreadyExists.
    with pytest.raises(grpc.RpcError) as e:
        load(pb, server, "slow", models / "stories")
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS


# Regression: a FIFO named model.safetensors made LoadModel wait forever in open(), and every later
# load queued behind it.
def test_a_fifo_in_a_model_directory_is_refused_at_once(pb, server, models, tmp_path):
    fifo_model = models / "fifo"
    fifo_model.mkdir()
    shutil.copy(models / "stories" / "config.json", fifo_model / "config.json")
    os.mkfifo(fifo_model / "model.safetensors")
    start = time.monotonic()
    try:
        with pytest.raises(grpc.RpcError) as e:
            load(pb, server, "fifo", fifo_model, timeout=20)
    finally:
        # Had the server opened the FIFO for reading, this releases it rather than hang the test.
        try:
            os.close(os.open(fifo_model / "model.safetensors", os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass  # no reader: the server never opened it
        shutil.rmtree(fifo_model)
    assert e.value.code() != grpc.StatusCode.DEADLINE_EXCEEDED, "LoadModel hung on the FIFO"
    assert "model.safetensors" in e.value.details(), e.value.details()
    assert time.monotonic() - start < 10
    assert "fifo" not in loaded_names(pb, server)
    assert load(pb, server, "after", models / "stories").name == "after"
