"""Bad inputs: a non-zero exit, a message on stderr naming the problem, and no output file."""

import json
import struct

import pytest

from conftest import requires_cli
from hf_reference import make_model

pytestmark = requires_cli


@pytest.fixture
def model_dir(tmp_path):
    make_model("gpt2", seed=2).save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def fails(proc, *needles):
    assert proc.returncode != 0, f"exit 0; stdout:\n{proc.stdout[:2000]}"
    assert proc.stderr.strip(), "no message on stderr"
    for needle in needles:
        assert needle in proc.stderr, f"{needle!r} not named in stderr:\n{proc.stderr}"


def dump(cli, model, tmp_path, ids_file, sites="logits"):
    out = tmp_path / "out.safetensors"
    proc = cli("dump", "--model", model, "--ids-json", ids_file, "--sites", sites, "--out", out, check=False)
    if proc.returncode != 0:
        assert not out.exists(), "a failed dump left an output file"
    return proc


@pytest.mark.parametrize("command", ["inspect", "dump", "perplexity", "tokenize"])
def test_missing_model_dir(cli, tmp_path, write_ids, command):
    args = {
        "inspect": [],
        "tokenize": ["--text", "hi"],
        "dump": ["--ids-json", write_ids([1, 2, 3]), "--sites", "logits", "--out", tmp_path / "o.safetensors"],
        "perplexity": ["--ids-json", write_ids([1, 2, 3]), "--seq-len", 2],
    }[command]
    fails(cli(command, "--model", tmp_path / "no_such_model", *args, check=False), "no_such_model")


def test_missing_config(cli, tmp_path, write_ids, model_dir):
    (model_dir / "config.json").unlink()
    fails(dump(cli, model_dir, tmp_path, write_ids([1, 2])), "config.json")


@pytest.mark.parametrize("how", ["tail", "header", "header_length"])
def test_truncated_safetensors(cli, tmp_path, write_ids, model_dir, how):
    weights = model_dir / "model.safetensors"
    data = weights.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    cut = {"tail": data[:-64], "header": data[: 8 + n // 2], "header_length": data[:5]}[how]
    weights.write_bytes(cut)
    fails(cli("inspect", "--model", model_dir, check=False), "model.safetensors")
    fails(dump(cli, model_dir, tmp_path, write_ids([1, 2])), "model.safetensors")


def test_truncated_shard(cli, tmp_path, write_ids):
    make_model("llama_gqa", seed=3).save_pretrained(tmp_path / "m", max_shard_size="60KB")
    shard = sorted((tmp_path / "m").glob("model-*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[:-16])
    fails(dump(cli, tmp_path / "m", tmp_path, write_ids([1, 2])), shard.name)


def test_unknown_architecture(cli, tmp_path, write_ids, model_dir):
    config = json.loads((model_dir / "config.json").read_text())
    config["architectures"] = ["FalconForCausalLM"]
    config["model_type"] = "falcon"
    (model_dir / "config.json").write_text(json.dumps(config))
    fails(cli("inspect", "--model", model_dir, check=False), "FalconForCausalLM")
    fails(dump(cli, model_dir, tmp_path, write_ids([1, 2])), "FalconForCausalLM")


@pytest.mark.parametrize(
    "site, needles",
    [
        ("blocks.0.attn_q", ["attn_q"]),
        ("blocks.*.attn_q", ["attn_q"]),
        ("resid_pre", ["resid_pre"]),
        ("logits,blocks.0.mlp_out,blocks.0.mlpout", ["mlpout"]),
        ("blocks.7.resid_post", ["7"]),  # the model has layers 0 and 1
        ("blocks.2.attn_pattern", ["2"]),
        ("blocks.-1.attn_z", ["-1"]),
    ],
)
def test_bad_site(cli, tmp_path, write_ids, model_dir, site, needles):
    proc = dump(cli, model_dir, tmp_path, write_ids([1, 2, 3]), site)
    fails(proc, *needles)
    if needles[0].lstrip("-").isdigit():
        assert "layer" in proc.stderr.lower(), proc.stderr


def test_bad_ids(cli, tmp_path, write_ids, model_dir):
    fails(dump(cli, model_dir, tmp_path, write_ids([1, 500], "big.json")), "500")  # vocab is 97
    fails(dump(cli, model_dir, tmp_path, write_ids([[1, 2, 3], [4, 5]], "ragged.json")))
    (tmp_path / "broken.json").write_text("[1, 2,")
    fails(dump(cli, model_dir, tmp_path, tmp_path / "broken.json"), "broken.json")


def test_bad_flags(cli, tmp_path, write_ids, model_dir):
    fails(cli("inspect", "--model", model_dir, "--jsn", check=False), "--jsn")
    fails(
        cli("perplexity", "--model", model_dir, "--ids-json", write_ids([1, 2, 3]), "--seq-len", 1, check=False), "seq"
    )
    out = tmp_path / "o.safetensors"
    fails(
        cli(
            "dump",
            "--model",
            model_dir,
            "--ids-json",
            write_ids([1, 2]),
            "--sites",
            "logits",
            "--out",
            out,
            "--dtype",
            "float8",
            check=False,
        ),
        "float8",
    )
