"""Reference token ids for tokenizer_test.cc, from independent implementations:
OpenAI's tiktoken (GPT-2 files loaded offline) and Google's sentencepiece (a ModelProto built here
from llama2.c's tok512.bin with sentencepiece's own protobuf module, not with lesion's converter).
Usage: python make_tokenizer_fixtures.py  (from anywhere; writes tokenizer_fixtures.json beside it)"""
import json
import os
import struct

import sentencepiece as spm
import tiktoken
from sentencepiece import sentencepiece_model_pb2 as sp_pb2
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

TEXTS = [
    "Hello world",
    " leading space and trailing  ",
    "It's, they'll've, we'd; I'M LOUD",
    "numbers 1234567 3.14159 -42 1e10",
    "tabs\tand\nnewlines\n\n\n  indented\r\nwindows",
    "Ünïcödé, 日本語のテキスト, русский текст, עברית",
    "emoji 🙂🙃👩‍👩‍👧 and symbols ©®™ → ∑ ∞",
    "   \n  multiple    spaces     ",
    "a",
    "",
    "The super weight in LLaMA-7B is mlp.down_proj[3968, 7003] in layer 2.",
]


def gpt2():
    d = os.path.join(ROOT, "models", "gpt2-tokenizer")
    ranks = data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=os.path.join(d, "merges.txt"),
                                            encoder_json_file=os.path.join(d, "vocab.json"))
    enc = tiktoken.Encoding("gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                            special_tokens={"<|endoftext|>": 50256})
    with open(os.path.join(ROOT, "data", "wikitext-2", "wiki.test.raw"), encoding="utf-8") as f:
        wiki = enc.encode_ordinary(f.read())
    checksum = 0
    for i, t in enumerate(wiki):
        checksum = (checksum + (i + 1) * t) % (1 << 61)
    return {"cases": [{"text": t, "ids": enc.encode_ordinary(t)} for t in TEXTS],
            "wiki_test_raw": {"n_ids": len(wiki), "checksum": checksum, "first": wiki[:20], "last": wiki[-20:]}}


def stories():
    path = os.path.join(ROOT, "models", "stories260K", "llama2c", "tok512.bin")
    data = open(path, "rb").read()
    pos, model = 4, sp_pb2.ModelProto()
    while pos < len(data):
        score, n = struct.unpack_from("<fi", data, pos)
        piece = data[pos + 8: pos + 8 + n].decode("utf-8")
        pos += 8 + n
        p = model.pieces.add()
        i = len(model.pieces) - 1
        p.score = score
        if i == 0:
            p.piece, p.type = "<unk>", sp_pb2.ModelProto.SentencePiece.UNKNOWN
        elif i in (1, 2):
            p.piece, p.type = ("<s>" if i == 1 else "</s>"), sp_pb2.ModelProto.SentencePiece.CONTROL
        elif piece.startswith("<0x") and len(piece) == 6:
            p.piece, p.type = piece, sp_pb2.ModelProto.SentencePiece.BYTE
        else:
            p.piece = piece.replace(" ", "\u2581")
    model.trainer_spec.model_type = sp_pb2.TrainerSpec.BPE
    model.trainer_spec.vocab_size = len(model.pieces)
    model.trainer_spec.byte_fallback = True
    model.normalizer_spec.name = "identity"
    model.normalizer_spec.add_dummy_prefix = True
    model.normalizer_spec.remove_extra_whitespaces = False
    sp = spm.SentencePieceProcessor(model_proto=model.SerializeToString())
    story = open(os.path.join(ROOT, "data", "tinystories_sample.txt"), encoding="utf-8").read()
    return {"cases": [{"text": t, "ids": sp.encode(t), "decoded": sp.decode(sp.encode(t))} for t in TEXTS + [story]]}


if __name__ == "__main__":
    out = {"gpt2": gpt2(), "stories260K": stories()}
    with open(os.path.join(HERE, "tokenizer_fixtures.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
