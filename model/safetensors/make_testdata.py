#!/usr/bin/env python3
"""Writes the fixtures of safetensors_test.cc with the reference Python implementation.

    python model/safetensors/make_testdata.py   # needs torch, safetensors, huggingface_hub

Outputs (all a few hundred bytes, deterministic):
  testdata/python_dtypes.safetensors   one tensor of every dtype lesion supports, with values whose
                                       bit patterns the test checks, plus a 0-d and an empty tensor
  testdata/sharded/                    a Hugging Face sharded checkpoint (huggingface_hub's layout):
                                       model.safetensors.index.json, model-0000{1,2}-of-00002
The C++ test hard-codes the values below; change both together.
"""

import json
import os
import pathlib
import shutil

import torch
from huggingface_hub import save_torch_state_dict
from safetensors.torch import save_file

HERE = pathlib.Path(__file__).resolve().parent
OUT = HERE / "testdata"


def dtype_tensors():
    return {
        "f64": torch.tensor([[1.5, -2.0, 3.25], [0.0, 1e10, -1e-3]], dtype=torch.float64),
        "f32": (torch.arange(12, dtype=torch.float32) * 0.5 - 1.0).reshape(3, 4),
        "f16": torch.tensor([1.0, -2.0, 0.5, 65504.0], dtype=torch.float16),
        "bf16": torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.bfloat16),
        "i64": torch.tensor([-(2**40), 0, 2**62], dtype=torch.int64),
        "i32": torch.tensor([[-1, 2], [3, -4]], dtype=torch.int32),
        "i16": torch.tensor([-32768, 32767], dtype=torch.int16),
        "i8": torch.tensor([-128, 127, 0], dtype=torch.int8),
        "u8": torch.tensor([0, 255, 7], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "f8_e4m3": torch.tensor([1.0, -2.0, 0.5, 448.0]).to(torch.float8_e4m3fn),
        "f8_e5m2": torch.tensor([1.0, -2.0, 0.5, 57344.0]).to(torch.float8_e5m2),
        "scalar": torch.tensor(42.0, dtype=torch.float32),
        "empty": torch.zeros(0, 3, dtype=torch.float32),
    }


def sharded_state_dict():
    # Names as in a transformers checkpoint; 48-byte tensors so that a 100-byte shard limit splits
    # them over two shards.
    return {
        "model.embed_tokens.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4),
        "model.layers.0.mlp.weight": torch.full((12,), 2.0),
        "model.layers.1.mlp.weight": torch.full((3, 4), -1.0),
        "model.norm.weight": torch.ones(4),
    }


def main():
    OUT.mkdir(exist_ok=True)
    # One metadata key only: the Python writer serialises __metadata__ from a HashMap, so with two
    # keys the bytes would change from run to run. The test relies on byte-exact output.
    save_file(dtype_tensors(), str(OUT / "python_dtypes.safetensors"), metadata={"format": "pt"})

    sharded = OUT / "sharded"
    shutil.rmtree(sharded, ignore_errors=True)
    sharded.mkdir()
    save_torch_state_dict(sharded_state_dict(), sharded, max_shard_size=100)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 2, index
    for path in sorted(OUT.rglob("*")):
        if path.is_file():
            print(f"{os.path.relpath(path, HERE)}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
