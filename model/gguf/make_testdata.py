#!/usr/bin/env python3
"""Writes the fixtures of gguf_test.cc with the reference Python implementation (gguf-py).

    .venv/bin/python model/gguf/make_testdata.py   # needs numpy and gguf==0.19.0

Outputs (deterministic; about 120 KB in all):
  testdata/types.gguf         one tensor of every type lesion dequantizes: from gguf.quants.quantize
                              where gguf-py implements it, and from random raw blocks (finite random
                              f16 scales) for every type; "<type>_nonfinite" tensors whose f16
                              scales are infinities, NaNs, zeros and subnormals; an IQ2_XXS tensor
                              (listable, not dequantizable by lesion); a 3-d F32 tensor; and
                              metadata keys of every value type, arrays of every kind included
  testdata/expected/NAME.f32  gguf.quants.dequantize of tensor NAME of types.gguf, as read back by
                              gguf.GGUFReader: raw little-endian float32
  testdata/quant_sizes.txt    gguf-py's type table: "NAME NUMBER BLOCK_ELEMENTS BLOCK_BYTES"
  testdata/half_hashes.txt    FNV-1a-64 of numpy's float32 bytes for all 65536 F16 and all 65536
                              BF16 bit patterns, in order
  testdata/v2.gguf            a GGUF version 2 file (a v3 file from GGUFWriter, version field
                              patched: v2 and v3 differ only in v3's big-endian support) with
                              general.alignment = 64
  testdata/split-0000{1,2}-of-00002.gguf
                              a 2-way split set written by GGUFWriter(split_max_tensors=2)
The C++ test hard-codes the metadata values and tensor names below; change both together.
"""

import importlib.metadata
import pathlib
import shutil
import struct

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as V
from gguf.constants import GGML_QUANT_SIZES

assert importlib.metadata.version("gguf") == "0.19.0", "the fixtures pin gguf-py 0.19.0"

HERE = pathlib.Path(__file__).resolve().parent
OUT = HERE / "testdata"

# Byte offsets of the f16 scale fields inside one block of each type (ggml's block layouts).
F16_FIELDS = {
    T.Q4_0: [0],
    T.Q4_1: [0, 2],
    T.Q5_0: [0],
    T.Q5_1: [0, 2],
    T.Q8_0: [0],
    T.Q2_K: [80, 82],
    T.Q3_K: [108],
    T.Q4_K: [0, 2],
    T.Q5_K: [0, 2],
    T.Q6_K: [208],
    T.IQ2_XXS: [0],
}
QUANTIZABLE = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.BF16]  # gguf-py has quantize_blocks
# Signalling NaN, -inf, quiet NaN, smallest subnormal, +inf, negative NaN with a payload, +0, -0,
# another signalling NaN, largest negative subnormal, largest finite.
NONFINITE_SCALES = np.array(
    [0x7C01, 0xFC00, 0x7E00, 0x0001, 0x7C00, 0xFE55, 0x0000, 0x8000, 0x7D00, 0x83FF, 0x7BFF], dtype=np.uint16
)

ROWS = 2  # every tensor is 2 rows of 256 elements: 512 elements, a few hundred bytes


def finite_halves(rng, n):
    """Random finite binary16 bit patterns of either sign, subnormals and zeros included."""
    return (rng.integers(0, 0x7C00, n) | (rng.integers(0, 2, n) << 15)).astype(np.uint16)


def raw_blocks(rng, qtype, scales, row_elements=256):
    """ROWS rows of random blocks of `qtype`; f16 field k of the blocks is scales(n_blocks, k)."""
    block, size = GGML_QUANT_SIZES[qtype]
    n_blocks = ROWS * row_elements // block
    blocks = rng.integers(0, 256, (n_blocks, size), dtype=np.uint8)
    for k, off in enumerate(F16_FIELDS[qtype]):
        blocks[:, off : off + 2] = scales(n_blocks, k).view(np.uint8).reshape(n_blocks, 2)
    return blocks.reshape(ROWS, -1)


def nonfinite_halves(n, k):
    """Every special value in turn (shifted for the second field of a block, so d and dmin differ)."""
    return np.roll(np.resize(NONFINITE_SCALES, n), 3 * k)


def source_values(rng):
    """Weights with a realistic spread plus a few outliers."""
    x = rng.standard_normal((ROWS, 256)).astype(np.float32) * np.float32(0.05)
    x[0, 7] = 3.5
    x[1, 100] = -2.25
    x[1, 200:232] = 0.0  # an all-zero block (d = 0)
    return x


def special_f32(rng):
    bits = rng.integers(0, 2**32, ROWS * 256, dtype=np.uint64).astype(np.uint32)
    bits[:12] = [
        0x7F800000,
        0xFF800000,
        0x7FC00000,
        0x7F800001,
        0xFFC12345,
        0x00000001,
        0x80000000,
        0x00000000,
        0x007FFFFF,
        0x7F7FFFFF,
        0x3F800000,
        0xBF800000,
    ]
    return bits.view(np.float32).reshape(ROWS, 256)


def special_halves(rng):
    h = rng.integers(0, 65536, ROWS * 256, dtype=np.uint32).astype(np.uint16)
    h[: len(NONFINITE_SCALES)] = NONFINITE_SCALES
    return h.reshape(ROWS, 256)


def add_metadata(w):
    w.add_uint8("test.uint8", 200)
    w.add_int8("test.int8", -100)
    w.add_uint16("test.uint16", 60000)
    w.add_int16("test.int16", -30000)
    w.add_uint32("test.uint32", 4000000000)
    w.add_int32("test.int32", -2000000000)
    w.add_float32("test.float32", 0.1)
    w.add_bool("test.bool", True)
    w.add_string("test.string", 'h\u00e9llo "w\u00f6rld"\n')
    w.add_uint64("test.uint64", 2**64 - 1)
    w.add_uint64("test.uint64_small", 12345)
    w.add_int64("test.int64", -(2**62))
    w.add_float64("test.float64", 0.1)
    w.add_array("test.array.strings", ["<unk>", "<s>", "h\u00e9llo", ""])
    w.add_key_value("test.array.int32", [1, -2, 3], V.ARRAY, sub_type=V.INT32)
    w.add_key_value("test.array.uint8", [1, 255], V.ARRAY, sub_type=V.UINT8)
    w.add_key_value("test.array.int64", [-(2**40), 7], V.ARRAY, sub_type=V.INT64)
    w.add_key_value("test.array.uint64", [0, 2**63, 5], V.ARRAY, sub_type=V.UINT64)
    w.add_array("test.array.float32", [0.5, -1.25, 3e-8])
    w.add_key_value("test.array.float64", [0.1, 1e300], V.ARRAY, sub_type=V.FLOAT64)
    w.add_array("test.array.bool", [True, False])
    w.add_key_value("test.array.nested", [[1, 2], [3]], V.ARRAY, sub_type=V.ARRAY)
    w.add_array("test.array.long", list(range(1000)))


def write_types(rng):
    path = OUT / "types.gguf"
    w = gguf.GGUFWriter(str(path), "lesion-test")
    add_metadata(w)
    x = source_values(rng)

    w.add_tensor("f32", special_f32(rng))
    w.add_tensor("f32_3d", (np.arange(24, dtype=np.float32) * np.float32(0.5)).reshape(2, 3, 4))
    w.add_tensor("f16", gguf.quants.quantize(x, T.F16))
    w.add_tensor("f16_raw", special_halves(rng).view(np.float16))
    for qtype in QUANTIZABLE:
        w.add_tensor(qtype.name.lower(), gguf.quants.quantize(x, qtype), raw_dtype=qtype)
    w.add_tensor("bf16_raw", special_halves(rng).view(np.uint8), raw_dtype=T.BF16)
    for qtype in [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]:
        w.add_tensor(
            f"{qtype.name.lower()}_raw", raw_blocks(rng, qtype, lambda n, k: finite_halves(rng, n)), raw_dtype=qtype
        )
        # K-quant rows of 1024 elements, so that 8 super-blocks show most of the specials.
        w.add_tensor(
            f"{qtype.name.lower()}_nonfinite",
            raw_blocks(rng, qtype, nonfinite_halves, row_elements=1024 if GGML_QUANT_SIZES[qtype][0] == 256 else 256),
            raw_dtype=qtype,
        )
    w.add_tensor("iq2_xxs", raw_blocks(rng, T.IQ2_XXS, lambda n, k: finite_halves(rng, n)), raw_dtype=T.IQ2_XXS)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    expected = OUT / "expected"
    shutil.rmtree(expected, ignore_errors=True)
    expected.mkdir()
    reader = gguf.GGUFReader(str(path))
    for t in reader.tensors:
        if t.tensor_type == T.IQ2_XXS:
            continue
        with np.errstate(all="ignore"):  # the nonfinite tensors produce NaNs on purpose
            values = gguf.quants.dequantize(t.data, t.tensor_type)
        assert values.dtype == np.float32 and values.size == t.n_elements, t.name
        (expected / f"{t.name}.f32").write_bytes(values.astype("<f4").tobytes())


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def write_half_hashes():
    all16 = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    f16 = gguf.quants.dequantize(all16.view(np.uint8), T.F16).astype("<f4").tobytes()
    bf16 = gguf.quants.dequantize(all16.view(np.uint8).reshape(1, -1), T.BF16).astype("<f4")
    (OUT / "half_hashes.txt").write_text(f"F16 {fnv1a64(f16):016x}\nBF16 {fnv1a64(bf16.tobytes()):016x}\n")


def write_quant_sizes():
    lines = [f"{t.name} {int(t)} {block} {size}" for t, (block, size) in GGML_QUANT_SIZES.items()]
    (OUT / "quant_sizes.txt").write_text("\n".join(lines) + "\n")


def write_v2():
    path = OUT / "v2.gguf"
    w = gguf.GGUFWriter(str(path), "lesion-test")
    w.add_custom_alignment(64)
    w.add_string("general.name", "version two")
    w.add_tensor("a", (np.arange(15, dtype=np.float32) * np.float32(0.25)).reshape(3, 5))
    w.add_tensor("b", np.full((2, 3), -1.5, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    data = bytearray(path.read_bytes())
    assert data[:4] == b"GGUF" and struct.unpack_from("<I", data, 4)[0] == 3
    struct.pack_into("<I", data, 4, 2)
    path.write_bytes(bytes(data))


def write_split():
    for old in OUT.glob("split-*.gguf"):
        old.unlink()
    w = gguf.GGUFWriter(str(OUT / "split.gguf"), "lesion-test", split_max_tensors=2)
    w.add_string("general.name", "split test")
    w.add_tensor("token_embd.weight", np.arange(8, dtype=np.float32).reshape(2, 4))
    w.add_tensor("blk.0.attn_q.weight", np.full((4, 4), 2.0, dtype=np.float32))
    w.add_tensor("output.weight", np.full((2, 4), -3.0, dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    names = sorted(p.name for p in OUT.glob("split-*.gguf"))
    assert names == ["split-00001-of-00002.gguf", "split-00002-of-00002.gguf"], names


def main():
    OUT.mkdir(exist_ok=True)
    rng = np.random.default_rng(20240521)
    write_types(rng)
    write_half_hashes()
    write_quant_sizes()
    write_v2()
    write_split()
    total = 0
    for path in sorted(OUT.rglob("*")):
        if path.is_file():
            total += path.stat().st_size
    print(f"{sum(1 for p in OUT.rglob('*') if p.is_file())} files, {total} bytes in {OUT}")


if __name__ == "__main__":
    main()
