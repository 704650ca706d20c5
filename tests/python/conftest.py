"""pytest set-up for the `lesion` CLI against live Hugging Face transformers.

The binary is $LESION_CLI (default build/client/cpp/lesion). Without it every test that runs it is
skipped with that reason (modules mark themselves with `requires_cli`, and the `cli` fixture skips
too), so the suite still collects."""

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLI = Path(os.environ.get("LESION_CLI", ROOT / "build" / "client" / "cpp" / "lesion"))
CLI_MISSING = (
    None
    if CLI.is_file() and os.access(CLI, os.X_OK)
    else f"lesion CLI not built at {CLI} (build it, or set LESION_CLI)"
)

# `pytestmark = requires_cli` in a module skips all of it when the binary is missing.
requires_cli = pytest.mark.skipif(CLI_MISSING is not None, reason=CLI_MISSING or "")


def first_existing(*paths):
    return next((Path(p) for p in paths if Path(p).exists()), None)


GPT2_TOKENIZER = first_existing(ROOT / "models" / "gpt2-tokenizer")
WIKITEXT_TEST = first_existing(ROOT / "data" / "wikitext-2" / "wiki.test.raw")
STORIES = ROOT / "models" / "stories260K"
LESIOND = Path(os.environ.get("LESIOND", ROOT / "build" / "server" / "lesiond")).resolve()
requires_lesiond = pytest.mark.skipif(not LESIOND.is_file(), reason=f"lesiond not built at {LESIOND} (set LESIOND)")


@pytest.fixture(scope="module")
def single_torch_thread():
    """One torch thread for a module: the tiny models run fastest on one thread, and far faster than
    on two when the CPU is shared. Use with pytest.mark.usefixtures("single_torch_thread")."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def saved_checkpoints(root, make):
    """get(kind) -> the directory under `root` where make(kind) (a transformers model) was saved,
    saving it the first time only."""
    saved = {}

    def get(kind):
        if kind not in saved:
            make(kind).save_pretrained(root / kind)
            saved[kind] = root / kind
        return saved[kind]

    return get


def load_error(cli, tmp_path, model):
    """The stderr of a `lesion dump` of `model` that must fail (to load): the error a user sees."""
    (tmp_path / "ids.json").write_text("[1, 2, 3]")
    out = tmp_path / "x.safetensors"
    proc = cli(
        "dump", "--model", model, "--ids-json", tmp_path / "ids.json", "--sites", "logits", "--out", out, check=False
    )
    assert proc.returncode != 0, f"lesion dump of {model} succeeded"
    return proc.stderr


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LesiondProcess:
    """A lesiond on a free loopback port, started with `flags` (and `env`), ready once it prints its
    listening line; `channel` is a gRPC channel to it. stop() ends it with SIGTERM, kill() simulates
    a crash. Its stderr goes to `log_path` in tmp_path."""

    def __init__(self, tmp_path, *flags, db=None, env=None):
        import grpc

        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.db = db or tmp_path / "lesion.db"
        self.log_path = tmp_path / f"lesiond-{self.port}.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [str(LESIOND), "--listen", self.address, "--db", str(self.db), *map(str, flags)],
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=env,
        )
        deadline = time.time() + 60
        line = ""
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if "listening on" in line or self.proc.poll() is not None:
                break
        if "listening on" not in line:
            self.stop()
            raise AssertionError(f"lesiond did not start: {line!r}; log: {self.log_path.read_text()}")
        self.channel = grpc.insecure_channel(self.address, options=[("grpc.max_receive_message_length", 1 << 29)])

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()

    def kill(self):
        self.proc.kill()
        self.proc.wait()
        self.log.close()


@pytest.fixture(scope="session")
def cli():
    """cli(*args, check=True, stdin=None) -> CompletedProcess; with check, a non-zero exit fails the
    test with lesion's stderr."""
    if CLI_MISSING:
        pytest.skip(CLI_MISSING)

    def run(*args, check=True, stdin=None):
        proc = subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True, input=stdin, timeout=600)
        if check and proc.returncode != 0:
            raise AssertionError(f"lesion {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    return run


@pytest.fixture
def write_ids(tmp_path):
    """write_ids(ids, name) -> path of a JSON file holding `ids` (a list, or a list of lists)."""

    def write(ids, name="ids.json"):
        path = tmp_path / name
        path.write_text(json.dumps(ids))
        return path

    return write


@pytest.fixture
def gpt2_tokenizer_files():
    """copy(dir) puts the GPT-2 vocab.json + merges.txt into dir."""
    if GPT2_TOKENIZER is None:
        pytest.skip("no GPT-2 tokenizer files (models/gpt2-tokenizer or the shared copy)")

    def copy(directory):
        directory.mkdir(parents=True, exist_ok=True)
        for f in ("vocab.json", "merges.txt"):
            shutil.copy(GPT2_TOKENIZER / f, directory / f)
        return directory

    return copy


def run_spec(cli, tmp_path, model_dir, spec, check=True):
    """The lesion.v1.ExperimentResult (proto3 JSON) of `spec`; with check=False the process."""
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    proc = cli("run", "--local", "--model", model_dir, "--spec", path, "--json", check=check)
    return proc if not check else json.loads(proc.stdout)


def metric(result, name):
    """The entry of result["metrics"] called `name` (exactly one)."""
    found = [m for m in result["metrics"] if m["name"] == name]
    assert len(found) == 1, f"metric {name!r}: {len(found)} entries in {[m['name'] for m in result['metrics']]}"
    return found[0]


@pytest.fixture(scope="session")
def pb():
    """The lesion.v1 modules (experiment, result, service, grpc): the stubs the `lesion` package
    generated from proto/ at install time. Skips the test when the package is not installed."""
    pytest.importorskip("lesion._proto", reason="the lesion Python package (client/python) is not installed")
    from lesion._proto import experiment_pb2, result_pb2, service_pb2, service_pb2_grpc

    class Modules:
        pass

    m = Modules()
    m.experiment, m.result, m.service, m.grpc = experiment_pb2, result_pb2, service_pb2, service_pb2_grpc
    return m
