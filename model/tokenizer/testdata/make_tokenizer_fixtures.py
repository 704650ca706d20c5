"""Reference token ids for tokenizer_test.cc, from independent implementations, all offline:

  * OpenAI's tiktoken with the GPT-2 files of models/gpt2-tokenizer (loaded as that folder's
    SOURCE.txt describes), cross-checked against Hugging Face `tokenizers` on the same files;
  * Hugging Face `tokenizers`: three small byte-level BPE tokenizers trained here and saved as
    tokenizer.json (LLaMA 3 style Split + ByteLevel with ignore_merges, special tokens and a
    single_word added token, Qwen2 style with an NFC normalizer, RoBERTa style ByteLevel with
    add_prefix_space and lstrip/rstrip tokens); the files themselves are fixtures;
  * Google's sentencepiece on a ModelProto built here from llama2.c's tok512.bin with
    sentencepiece's own protobuf module (not with lesion's converter), cross-checked against the
    bundled models/stories260K/tokenizer.model and against a Python transcription of llama2.c's
    run.c `encode`;
  * Hugging Face `tokenizers` on a byte-level vocabulary that lacks the tokens of some bytes, as
    SmolLM2's does (missing_bytes_tokenizer.json, written here), with unk_token / fuse_unk /
    byte_fallback variants and a repeated merge.

Usage: python make_tokenizer_fixtures.py  (from anywhere; rewrites the files beside it)
Needs: tiktoken, tokenizers, sentencepiece, protobuf."""

import json
import os
import re
import struct

import sentencepiece as spm
import tiktoken
from sentencepiece import sentencepiece_model_pb2 as sp_pb2
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
GREEDY = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park."

TEXTS = [
    "Hello world",
    " leading space and trailing  ",
    "It's, they'll've, we'd; I'M LOUD",
    "don't DON'T I'm You're shouldn't've 'S 'LL o'clock rock'n'roll",
    "numbers 1234567 3.14159 -42 1e10",
    "2024-11-22 12:34:56.789 $1,000,000.00 \u00bd \u00b2 \u0663\u0664 \uff11\uff12",
    "tabs\tand\nnewlines\n\n\n  indented\r\nwindows",
    "\u00dcn\u00efc\u00f6d\u00e9, \u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8, "
    "\u0440\u0443\u0441\u0441\u043a\u0438\u0439 \u0442\u0435\u043a\u0441\u0442, \u05e2\u05d1\u05e8\u05d9\u05ea",
    "emoji \U0001f642\U0001f643\U0001f469\u200d\U0001f469\u200d\U0001f467 and symbols "
    "\u00a9\u00ae\u2122 \u2192 \u2211 \u221e",
    "flags \U0001f1fa\U0001f1f8 skin \U0001f44d\U0001f3fd math \U0001d518\U0001d52b\U0001d526 old \U00010330\U00010331",
    "whitespace:\u00a0nbsp \u3000ideo \u2028ls \u0085nel \u180emvs \u200bzwsp \x0bvt \x0cff \x1cfs",
    "   \n  multiple    spaces     ",
    "def f(x):\n\treturn x**2  # comment\n\n\nclass A:  \n    pass\n",
    "<|endoftext <|endoftext| endoftext|> < | endoftext | >",
    "\u2581already escaped \u2581\u2581 spaces",
    " ",
    "  ",
    "\n",
    " \t \n ",
    "a",
    "",
    "The super weight in LLaMA-7B is mlp.down_proj[3968, 7003] in layer 2.",
    GREEDY,
    "supercalifragilisticexpialidocious" * 30,
    " ".join(["antidisestablishmentarianism" * 3] * 3),
]


def checksum(ids):
    """sum over i of (i + 1) * ids[i], mod 2^61 (tokenizer_test.cc computes the same)."""
    total = 0
    for i, t in enumerate(ids):
        total = (total + (i + 1) * t) % (1 << 61)
    return total


def gpt2():
    d = os.path.join(ROOT, "models", "gpt2-tokenizer")
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=os.path.join(d, "merges.txt"), encoder_json_file=os.path.join(d, "vocab.json")
    )
    enc = tiktoken.Encoding(
        "gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256}
    )
    hf = Tokenizer(models.BPE.from_file(os.path.join(d, "vocab.json"), os.path.join(d, "merges.txt")))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    with open(os.path.join(ROOT, "data", "wikitext-2", "wiki.test.raw"), encoding="utf-8") as f:
        wiki_text = f.read()
    wiki = enc.encode_ordinary(wiki_text)
    assert hf.encode(wiki_text).ids == wiki, "tiktoken and tokenizers disagree on wiki.test.raw"
    cases = []
    for t in TEXTS:
        ids = enc.encode_ordinary(t)
        assert hf.encode(t).ids == ids, f"tiktoken and tokenizers disagree on {t!r}"
        cases.append({"text": t, "ids": ids})
    # Decoding ids that split UTF-8 characters: both references replace invalid sequences with
    # U+FFFD, one per maximal invalid subpart.
    parts = enc.encode_ordinary("\u65e5\u672c\u8a9e \U0001f642 \u00e9!")
    decode_cases = []
    for ids in [parts[:1], parts[:2], parts[1:3], parts[-3:], [parts[0], 11, parts[1]], [50256, parts[0]]]:
        text = enc.decode(ids, errors="replace")
        assert hf.decode(ids, skip_special_tokens=False) == text, ids
        decode_cases.append({"ids": ids, "text": text})
    return {
        "cases": cases,
        "decode_cases": decode_cases,
        "wiki_test_raw": {"n_ids": len(wiki), "checksum": checksum(wiki), "first": wiki[:20], "last": wiki[-20:]},
    }


def training_corpus():
    with open(os.path.join(ROOT, "data", "wikitext-2", "wiki.test.raw"), encoding="utf-8") as f:
        text = f.read(200_000)
    with open(os.path.join(ROOT, "data", "tinystories_sample.txt"), encoding="utf-8") as f:
        text += f.read()
    return text.splitlines(keepends=True) + TEXTS


def hf_tokenizers():
    """Trains three small byte-level BPE tokenizers, saves their tokenizer.json, records ids."""
    out = []
    configs = [
        (
            "llama3_style_tokenizer.json",
            dict(
                model=models.BPE(ignore_merges=True),
                normalizer=None,
                pre=pre_tokenizers.Sequence(
                    [
                        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
                        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
                    ]
                ),
                special=["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|reserved_special_token_0|>"],
                extra=[
                    AddedToken("<|eot|>", special=True, normalized=False),
                    AddedToken("hello", single_word=True, special=False, normalized=True),
                ],
            ),
        ),
        (
            "qwen2_style_tokenizer.json",
            dict(
                model=models.BPE(),
                normalizer=normalizers.NFC(),
                pre=pre_tokenizers.Sequence(
                    [
                        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
                        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
                    ]
                ),
                special=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                extra=[],
            ),
        ),
        (
            "roberta_style_tokenizer.json",
            dict(
                model=models.BPE(),
                normalizer=None,
                pre=pre_tokenizers.ByteLevel(add_prefix_space=True),
                special=["<s>", "<pad>", "</s>", "<unk>"],
                extra=[
                    AddedToken("<mask>", lstrip=True, rstrip=False, special=True, normalized=False),
                    AddedToken("[SEP]", lstrip=False, rstrip=True, special=True, normalized=False),
                ],
            ),
        ),
    ]
    texts = TEXTS + [
        "<|begin_of_text|>Hello<|eot_id|>\n<|eot_id|><|eot|>x<|eot_id",
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
        "<s>Hello <mask> world</s>  <mask>  [SEP]  tail <unk>",
        "I saw a <mask>.[SEP]x",
        "hello world, sayhello hello! hello_there (hello) hello\u00e9 \u00e9hello <|eot|>hello",
        # single_word uses Rust regex's \w: marks are word characters, U+00B2 is not.
        "\u0301hello \u00b2hello \u216bhello \u01c5hello \u200dhello \u0663hello hello\u00b2",
    ]
    for name, cfg in configs:
        tok = Tokenizer(cfg["model"])
        if cfg["normalizer"] is not None:
            tok.normalizer = cfg["normalizer"]
        tok.pre_tokenizer = cfg["pre"]
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=1000,
            show_progress=False,
            special_tokens=cfg["special"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        tok.train_from_iterator(training_corpus(), trainer)
        if cfg["extra"]:
            tok.add_special_tokens(cfg["extra"])
        path = os.path.join(HERE, name)
        tok.save(path, pretty=False)
        tok = Tokenizer.from_file(path)  # record what the saved file does
        cases = []
        for t in texts:
            ids = tok.encode(t, add_special_tokens=False).ids
            cases.append({"text": t, "ids": ids, "decoded": tok.decode(ids, skip_special_tokens=False)})
        out.append({"file": name, "cases": cases})
    return out


def read_tok512():
    path = os.path.join(ROOT, "models", "stories260K", "llama2c", "tok512.bin")
    data = open(path, "rb").read()
    pos, vocab = 4, []
    while pos < len(data):
        score, n = struct.unpack_from("<fi", data, pos)
        vocab.append((data[pos + 8 : pos + 8 + n], score))
        pos += 8 + n
    return vocab


def llama2c_encode(vocab, text):
    """run.c's encode(): dummy prefix, per-character lookup with byte fallback (+3), then merge the
    highest-scoring adjacent pair (leftmost on ties) while one exists."""
    lookup = {piece: i for i, (piece, _) in enumerate(vocab)}
    data = text.encode("utf-8")
    tokens = [lookup[b" "]] if data else []
    i = 0
    while i < len(data):
        n = 1
        while i + n < len(data) and (data[i + n] & 0xC0) == 0x80 and n < 4:
            n += 1
        ch = data[i : i + n]
        tokens += [lookup[ch]] if ch in lookup else [b + 3 for b in ch]
        i += n
    while True:
        best = None
        for j in range(len(tokens) - 1):
            merged = lookup.get(vocab[tokens[j]][0] + vocab[tokens[j + 1]][0], -1)
            if merged != -1 and (best is None or vocab[merged][1] > best[0]):
                best = (vocab[merged][1], merged, j)
        if best is None:
            return tokens
        tokens[best[2] : best[2] + 2] = [best[1]]


def stories():
    vocab = read_tok512()
    model = sp_pb2.ModelProto()
    for i, (raw, score) in enumerate(vocab):
        piece = raw.decode("utf-8")
        p = model.pieces.add()
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
    bundled = spm.SentencePieceProcessor(model_file=os.path.join(ROOT, "models", "stories260K", "tokenizer.model"))
    story = open(os.path.join(ROOT, "data", "tinystories_sample.txt"), encoding="utf-8").read()
    cases, llama2c_differs = [], []
    for t in TEXTS + [story]:
        ids = sp.encode(t)
        assert bundled.encode(t) == ids, f"models/stories260K/tokenizer.model disagrees on {t!r}"
        if "\u2581" not in t and llama2c_encode(vocab, t) != ids:
            llama2c_differs.append(t)
        cases.append({"text": t, "ids": ids, "decoded": sp.decode(ids)})
    assert not llama2c_differs, f"llama2.c's encode disagrees with sentencepiece on {llama2c_differs!r}"
    hello = sp.encode("Hello world")
    decode_cases = []
    for ids in [
        [1] + hello,
        [1, 2],
        [0] + hello,
        [1, 0] + hello,
        hello[1:],
        [3 + 0x20] + hello,
        [3 + 0xE6, 3 + 0x97],
        [3 + 0xE6, 3 + 0x97, 3 + 0xA5],
        [3 + 0xE6, 1, 3 + 0x97, 3 + 0xA5],
        [3 + 0x80, 3 + 0x41],
        [3 + 0xF0, 3 + 0x9F, 3 + 0x98],
        [3 + 0xC0, 3 + 0xAF],
        [3 + 0xED, 3 + 0xA0, 3 + 0x80],
        [1, 3 + 0x20, 0],
        [0],
        [3 + 0x20],
        [2] + hello + [2],
    ]:
        decode_cases.append({"ids": ids, "text": sp.decode(ids)})
    with open(os.path.join(ROOT, "data", "wikitext-2", "wiki.test.raw"), encoding="utf-8") as f:
        wiki = sp.encode(f.read())

    # A variant with user-defined pieces (matched whole, never merged) and a piece with U+2581
    # inside, which makes lesion encode the text as a whole instead of word by word.
    for piece, kind in [("Lily", "USER_DEFINED"), ("<sep>", "USER_DEFINED"), ("zq\u2581zq", "NORMAL")]:
        p = model.pieces.add()
        p.piece, p.score, p.type = piece, -1000.0, getattr(sp_pb2.ModelProto.SentencePiece, kind)
    model.trainer_spec.vocab_size = len(model.pieces)
    variant_file = "stories260K_user_defined.model"
    with open(os.path.join(HERE, variant_file), "wb") as f:
        f.write(model.SerializeToString())
    variant = spm.SentencePieceProcessor(model_file=os.path.join(HERE, variant_file))
    variant_cases = [
        {"text": t, "ids": variant.encode(t), "decoded": variant.decode(variant.encode(t))}
        for t in TEXTS + ["Lily's friend Lilyanne<sep>x <sep> zq zq Lily"]
    ]
    return {
        "cases": cases,
        "decode_cases": decode_cases,
        "wiki_test_raw": {"n_ids": len(wiki), "checksum": checksum(wiki), "first": wiki[:20], "last": wiki[-20:]},
        "user_defined": {"file": variant_file, "cases": variant_cases},
    }


def regressions():
    """Cases for fixed bugs: SentencePiece normalizer variants of stories260K (written beside this
    script) and tokenizer.json variants, each an edit of a file above that tokenizer_test.cc
    applies the same way (pre_tokenizer replaced, added_tokens appended)."""
    bundled = os.path.join(ROOT, "models", "stories260K", "tokenizer.model")
    sp_variants = []

    def no_byte_fallback(m):
        m.trainer_spec.byte_fallback = False
        for p in m.pieces:
            if p.type == sp_pb2.ModelProto.SentencePiece.BYTE:
                p.type = sp_pb2.ModelProto.SentencePiece.UNUSED

    sp_texts = [
        "a b",
        "\u00e9 b",
        "ab",
        "a",
        "\u65e5 b",
        " a b",
        "a  b",
        "a\u2581",
        "\u2581a",
        "\u2581",
        " \u2581",
        "a\u2581\u2581b",
        "a \u2581 b",
        "a  \u2581",
        "\u2581 a",
        "x ",
        " x",
        "  x  y  ",
        "\u2581\u2581x",
        "a\t b",
        "\u65e5\u672c",
        "a\u65e5\u672cb\u65e5\u672c \u65e5\u672c",
        "\u65e5 \u65e5",
        "\U0001f642\U0001f642\t\u65e5x",
        GREEDY,
    ]
    for name, edit in [
        ("stories260K_no_dummy_prefix.model", lambda m: setattr(m.normalizer_spec, "add_dummy_prefix", False)),
        ("stories260K_no_byte_fallback.model", no_byte_fallback),
        (
            "stories260K_remove_extra_whitespaces.model",
            lambda m: setattr(m.normalizer_spec, "remove_extra_whitespaces", True),
        ),
    ]:
        m = sp_pb2.ModelProto()
        with open(bundled, "rb") as f:
            m.ParseFromString(f.read())
        edit(m)
        with open(os.path.join(HERE, name), "wb") as f:
            f.write(m.SerializeToString())
        sp = spm.SentencePieceProcessor(model_file=os.path.join(HERE, name))
        sp_variants.append(
            {
                "file": name,
                "cases": [{"text": t, "ids": sp.encode(t), "decoded": sp.decode(sp.encode(t))} for t in sp_texts],
            }
        )

    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    hf_variants = []
    for base, patch, texts, decode_ids in [
        # Split regexes that match empty at the end of the text.
        (
            "llama3_style_tokenizer.json",
            {
                "pre_tokenizer": {
                    "type": "Sequence",
                    "pretokenizers": [
                        {"type": "Split", "pattern": {"Regex": "\\b"}, "behavior": "Isolated", "invert": False},
                        byte_level,
                    ],
                }
            },
            ["hello world", "a", "a b.", "x!", "", " ", "\u00e9t\u00e9 2024"],
            [],
        ),
        (
            "llama3_style_tokenizer.json",
            {
                "pre_tokenizer": {
                    "type": "Sequence",
                    "pretokenizers": [
                        {"type": "Split", "pattern": {"Regex": "$"}, "behavior": "Isolated", "invert": False},
                        byte_level,
                    ],
                }
            },
            ["hello world", "a", "line\nline\n"],
            [],
        ),
        # Added tokens mixing characters of the byte map (U+00E9, U+0100) with others.
        (
            "roberta_style_tokenizer.json",
            {
                "extra_added_tokens": [
                    {
                        "id": 1002,
                        "content": "<|\u00e9\u4e2d|>",
                        "single_word": False,
                        "lstrip": False,
                        "rstrip": False,
                        "normalized": False,
                        "special": True,
                    },
                    {
                        "id": 1003,
                        "content": "\u0100\u2603",
                        "single_word": False,
                        "lstrip": False,
                        "rstrip": False,
                        "normalized": False,
                        "special": False,
                    },
                    {
                        "id": 1004,
                        "content": "<|\u00e9\u0100|>",
                        "single_word": False,
                        "lstrip": False,
                        "rstrip": False,
                        "normalized": False,
                        "special": True,
                    },
                ]
            },
            ["x<|\u00e9\u4e2d|>y \u0100\u2603 <|\u00e9\u0100|>"],
            [[1002], [1003], [1004], [1002, 1003, 1004]],
        ),
    ]:
        with open(os.path.join(HERE, base), encoding="utf-8") as f:
            j = json.load(f)
        if "pre_tokenizer" in patch:
            j["pre_tokenizer"] = patch["pre_tokenizer"]
        j["added_tokens"] += patch.get("extra_added_tokens", [])
        tok = Tokenizer.from_str(json.dumps(j))
        cases = []
        for t in texts:
            ids = tok.encode(t, add_special_tokens=False).ids
            cases.append({"text": t, "ids": ids, "decoded": tok.decode(ids, skip_special_tokens=False)})
        decode_cases = [{"ids": ids, "text": tok.decode(ids, skip_special_tokens=False)} for ids in decode_ids]
        hf_variants.append(dict(base=base, **patch, cases=cases, decode_cases=decode_cases))
    return {"sentencepiece": sp_variants, "hf_tokenizers": hf_variants}


# The bytes whose byte-level tokens SmolLM2's vocabulary lacks.
SMOLLM2_MISSING_BYTES = [4, 6, 19, 20, 22, 29, 192, 193, 241, 242] + list(range(245, 256))


def bytes_to_unicode():
    """GPT-2's byte -> character map."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    out, extra = {}, 0
    for b in range(256):
        if b in printable:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


def missing_bytes():
    """The qwen2-style tokenizer without the tokens of SMOLLM2_MISSING_BYTES (and the merges using
    them), plus "<unk>" and the byte-fallback tokens of bytes 4 and 6 (not 29) in the vocabulary,
    saved by `tokenizers` as missing_bytes_tokenizer.json; variants patch its model as
    tokenizer_test.cc does (keys of "model" replaced; "repeat_first_merge" appends merge 0 again)."""
    spelled = bytes_to_unicode()
    missing = {spelled[b] for b in SMOLLM2_MISSING_BYTES}
    with open(os.path.join(HERE, "qwen2_style_tokenizer.json"), encoding="utf-8") as f:
        base = json.load(f)
    special = [a["content"] for a in base["added_tokens"]]
    old = sorted(base["model"]["vocab"].items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in old if t not in missing and t not in special]
    # Byte fallback of a missing byte looks up the UTF-8 bytes of its byte-level character:
    # byte 4 is U+0104 (C4 84), byte 6 U+0106 (C4 86), byte 29 U+011D (C4 9D, left out).
    tokens += ["<unk>", "<0xC4>", "<0x84>", "<0x86>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in base["model"]["merges"]]
    merges = [(a, b) for a, b in merges if a in vocab and b in vocab and a + b in vocab]
    assert not any(spelled[b] in vocab for b in SMOLLM2_MISSING_BYTES)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(special)
    name = "missing_bytes_tokenizer.json"
    path = os.path.join(HERE, name)
    tok.save(path, pretty=False)
    texts = TEXTS + [
        "!\x04!",
        "..\x04.",
        "\x04",
        "a\x04",
        "==\x1d==",
        "\x04\x06",
        "x\x04\x06y",
        "\x1d\x04\x1d",
        "\x1d\x1d",
        "a\x13\x14\x16b",
        "\U00050000 \U00040000x \U000a0000",
        "hello\x04world",
        "\x04hello",
        " \x04 ",
        "The cat\x06s hat",
        "\x1d",
        "<|endoftext|>\x04<|im_start|>",
        "\x04\x04\x04 \x06\x06",
        "th\x04e c\x06at in\x1dg",
        "hel\x04lo wor\x1dld, the\x06re",
    ]
    variants = []
    for patch in [
        {},
        {"unk_token": "<unk>", "fuse_unk": False},
        {"unk_token": "<unk>", "fuse_unk": True},
        {"byte_fallback": True},
        {"byte_fallback": True, "unk_token": "<unk>", "fuse_unk": True},
        {"repeat_first_merge": True},
    ]:
        with open(path, encoding="utf-8") as f:
            j = json.load(f)
        if patch.get("repeat_first_merge"):
            j["model"]["merges"].append(j["model"]["merges"][0])
        j["model"].update({k: v for k, v in patch.items() if k != "repeat_first_merge"})
        t = Tokenizer.from_str(json.dumps(j))
        cases = []
        for text in texts:
            ids = t.encode(text, add_special_tokens=False).ids
            cases.append({"text": text, "ids": ids, "decoded": t.decode(ids, skip_special_tokens=False)})
        variants.append({"patch": patch, "cases": cases})
    return {"file": name, "variants": variants}


def check_proto_field_numbers():
    """lesion's proto/sentencepiece/sentencepiece_model.proto must use upstream's field numbers."""
    text = open(os.path.join(ROOT, "proto", "sentencepiece", "sentencepiece_model.proto")).read()
    upstream = {
        m.DESCRIPTOR.name: {f.name: f.number for f in m.DESCRIPTOR.fields}
        for m in [sp_pb2.ModelProto, sp_pb2.ModelProto.SentencePiece, sp_pb2.TrainerSpec, sp_pb2.NormalizerSpec]
    }
    ours = re.findall(r"(?:optional|repeated)\s+\S+\s+(\w+)\s*=\s*(\d+)", text)
    assert ours, "no fields found"
    for name, number in ours:
        matches = [m for m, fields in upstream.items() if fields.get(name) == int(number)]
        assert matches, f"field {name} = {number} does not match upstream sentencepiece_model.proto"


if __name__ == "__main__":
    check_proto_field_numbers()
    out = {
        "gpt2": gpt2(),
        "hf_tokenizers": hf_tokenizers(),
        "stories260K": stories(),
        "regressions": regressions(),
        "missing_bytes": missing_bytes(),
    }
    with open(os.path.join(HERE, "tokenizer_fixtures.json"), "w", encoding="utf-8") as f:
        text = json.dumps(out, ensure_ascii=False, indent=1)
        # One line per id list keeps the file short and its diffs readable. Only multi-line lists
        # are JSON structure (a newline inside a JSON string is escaped).
        f.write(re.sub(r"\[\n(\s*-?\d+,\n)*\s*-?\d+\n\s*\]", lambda m: "".join(m.group(0).split()), text) + "\n")
