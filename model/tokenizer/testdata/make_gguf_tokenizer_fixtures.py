"""Reference ids for LoadGgufTokenizer (tokenizer_test.cc): small GGUF files written here with the
`gguf` package, loaded with Hugging Face transformers' AutoTokenizer.from_pretrained(dir,
gguf_file=...), their ids recorded for encode(text, add_special_tokens=False) and decode(ids,
skip_special_tokens=False).

  * "gpt2" models from GPT-2's vocab.json / merges.txt (models/gpt2-tokenizer, not copied: the
    test reads them too) with pre "gpt-2", "llama-bpe" and "qwen2", tokens appended or changed
    per variant (control, user-defined, spelled outside the byte alphabet, a duplicate), and one
    variant without merges (derived from scores);
  * "llama" models from models/stories260K/tokenizer.model (tokens, scores, types, stored in the
    fixture), with user-defined tokens, merges given in the file, tied scores, no <s>/</s>, and a
    missing byte token.

The GGUF files live in a temporary directory; the fixture holds everything the test needs to
build the same GgufTokenizerMetadata.

Usage: python make_gguf_tokenizer_fixtures.py  (rewrites gguf_tokenizer_fixtures.json beside it)
Needs: transformers 5.x, tokenizers, gguf, sentencepiece (for its protobuf module)."""

import json
import os
import re
import sys
import tempfile

import gguf
import transformers
from sentencepiece import sentencepiece_model_pb2 as sp_pb2
from transformers import AutoTokenizer
from transformers.tokenization_utils_base import generate_merges

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, HERE)
from make_tokenizer_fixtures import GREEDY, TEXTS, checksum  # noqa: E402

EXTRA_TEXTS = [
    " hi",
    "  hi",
    "hi  ",
    "   ",
    "\n\nhi\n",
    "\t\tx",
    " \n ",
    "x\n\n\n  y",
    "hi\r\nthere",
    "<s>",
    "</s>",
    "<unk>",
    "<s>hi",
    " <s> hi",
    "hi<s>there",
    "a</s>b</s>",
    "<s><s>",
    "<|endoftext|>",
    "a<|endoftext|>b",
    "<|endoftext|><|endoftext|> x",
    "<|im_start|>user\nhi<|im_end|>\n",
    "<think>x</think> <think>",
    "<|fim prefix|>x",
    "<my tok> y",
    "hello world hello  world",
    "Lily x",
    "xLily",
    " Lily",
    "<sep> x<sep>",
    "zq zq",
    "\u2581hi",
    "a\u2581b",
    "\u2581 x",
    "\x00\x01\x1f\x7f",
    "a\x04b",
    "12345678901 3.14",
    "!!!???... --- ===",
    "na\u00efve caf\u00e9 \u00e9t\u00e9",
    "\u65e5\u672c\u8a9e",
    "a\u65e5b",
    "\U0001f642\U0001f44d\U0001f3fd",
    "\u0645\u0631\u062d\u0628\u0627",
    "the the The THE",
    "It's I'M we'll",
    "don't",
    "\u00a0nbsp\u3000x",
]


def gpt2_tokens():
    with open(os.path.join(ROOT, "models", "gpt2-tokenizer", "vocab.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    with open(os.path.join(ROOT, "models", "gpt2-tokenizer", "merges.txt"), encoding="utf-8") as f:
        merges = [line for line in f.read().split("\n")[1:] if line]
    return tokens, merges


def stories_metadata():
    m = sp_pb2.ModelProto()
    with open(os.path.join(ROOT, "models", "stories260K", "tokenizer.model"), "rb") as f:
        m.ParseFromString(f.read())
    return [p.piece for p in m.pieces], [p.score for p in m.pieces], [int(p.type) for p in m.pieces]


def write_gguf(path, md):
    w = gguf.GGUFWriter(path, md["architecture"])
    # The model shape transformers reads to pick the tokenizer class; no tensors.
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_block_count(1)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_layer_norm_eps(1e-5)
    w.add_tokenizer_model(md["model"])
    if md.get("pre"):
        w.add_tokenizer_pre(md["pre"])
    w.add_token_list(md["tokens"])
    if md.get("token_types"):
        w.add_token_types(md["token_types"])
    if md.get("scores"):
        w.add_token_scores(md["scores"])
    if md.get("merges"):
        w.add_token_merges(md["merges"])
    for key, add in [
        ("bos_id", w.add_bos_token_id),
        ("eos_id", w.add_eos_token_id),
        ("unk_id", w.add_unk_token_id),
        ("pad_id", w.add_pad_token_id),
    ]:
        if md.get(key) is not None:
            add(md[key])
    if md.get("add_space_prefix") is not None:
        w.add_add_space_prefix(md["add_space_prefix"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def apply_edits(base_tokens, base_types, base_scores, edits):
    """The variant's tokens, types and scores: `set` replaces [id, token, type], `append` adds
    [token, type, score]. tokenizer_test.cc applies the same edits."""
    tokens, types = list(base_tokens), list(base_types)
    scores = list(base_scores) if base_scores is not None else None
    for i, token, token_type in edits.get("set", []):
        tokens[i], types[i] = token, token_type
    for token, token_type, score in edits.get("append", []):
        tokens.append(token)
        types.append(token_type)
        if scores is not None:
            scores.append(score)
    return tokens, types, scores


def record(tmp, name, md, texts, decode_ids, wiki_text):
    path = os.path.join(tmp, name + ".gguf")
    write_gguf(path, md)
    tok = AutoTokenizer.from_pretrained(tmp, gguf_file=name + ".gguf")
    cases = []
    for t in texts:
        ids = tok.encode(t, add_special_tokens=False)
        cases.append({"text": t, "ids": ids, "decoded": tok.decode(ids, skip_special_tokens=False)})
    decode_cases = [{"ids": ids, "text": tok.decode(ids, skip_special_tokens=False)} for ids in decode_ids]
    backend = json.loads(tok.backend_tokenizer.to_str())
    # One more than the largest id (len(tok) counts tokens, which is less where two are spelled alike).
    id_bound = max(list(backend["model"]["vocab"].values()) + [a["id"] for a in backend["added_tokens"]]) + 1
    out = {
        "cases": cases,
        "decode_cases": decode_cases,
        "id_bound": id_bound,
        "added_tokens": [[a["content"], a["id"]] for a in backend["added_tokens"]],
    }
    if wiki_text is not None:
        ids = tok.encode(wiki_text, add_special_tokens=False)
        decoded = tok.decode(ids, skip_special_tokens=False).encode("utf-8")
        out["wiki_test_raw"] = {
            "n_ids": len(ids),
            "checksum": checksum(ids),
            "first": ids[:20],
            "last": ids[-20:],
            "decoded_bytes": len(decoded),
            "decoded_checksum": checksum(decoded),
        }
    print(f"{name}: {len(cases)} cases, class {type(tok).__name__}", file=sys.stderr)
    return out


def main():
    with open(os.path.join(ROOT, "data", "wikitext-2", "wiki.test.raw"), encoding="utf-8") as f:
        wiki = f.read()
    texts = TEXTS + EXTRA_TEXTS + [GREEDY]
    gpt2, gpt2_merges = gpt2_tokens()
    gpt2_types = [1] * len(gpt2)
    gpt2_types[50256] = 3
    sp_tokens, sp_scores, sp_types = stories_metadata()
    generated = generate_merges({t: i for i, t in enumerate(sp_tokens)}, dict(zip(sp_tokens, sp_scores, strict=True)))
    tied_scores = [float(round(s / 25) * 25) for s in sp_scores]

    gpt2_variants = [
        # name, architecture, pre, edits, ids, merges from the file, wiki
        (
            "gpt2",
            "gpt2",
            "gpt-2",
            {
                "append": [
                    ["<think>", 4, 0],
                    ["</think>", 4, 0],
                    ["<|im_start|>", 3, 0],
                    ["<|im_end|>", 3, 0],
                    ["<|fim prefix|>", 3, 0],
                    ["hello world", 1, 0],
                    ["<my tok>", 4, 0],
                    ["\u0120the", 1, 0],
                ]
            },
            {"bos_id": 50256, "eos_id": 50256, "pad_id": 50260},
            True,
            True,
        ),
        ("llama-bpe", "llama", "llama-bpe", {}, {"bos_id": 50256, "eos_id": 50256, "unk_id": 50256}, True, True),
        (
            "qwen2",
            "qwen2",
            "qwen2",
            {"append": [["<|im_start|>", 3, 0], ["<|im_end|>", 3, 0]], "set": [[50256, "<|end_of_text|>", 3]]},
            {"eos_id": 50258},
            True,
            True,
        ),
        # No merges: transformers derives them from the scores (here -id).
        ("gpt2-scores", "gpt2", "", {}, {"eos_id": 50256}, False, False),
    ]
    llama_variants = [
        ("stories", "llama", {}, {"bos_id": 1, "eos_id": 2, "unk_id": 0, "add_space_prefix": True}, None, True),
        (
            "stories-user-defined",
            "llama",
            {
                "append": [
                    ["Lily", 4, -1000.0],
                    ["<sep>", 4, -1000.0],
                    ["<|im_start|>", 3, 0.0],
                    ["zq\u2581zq", 1, -1000.0],
                    ["<sp ace>", 4, -1000.0],
                ]
            },
            {"bos_id": 1, "eos_id": 2, "unk_id": 0, "pad_id": 0, "add_space_prefix": False},
            "reversed",
            False,
        ),
        ("stories-tied-scores", "llama", {"scores": "tied"}, {"bos_id": 1, "eos_id": 2}, None, True),
        # No <s> / </s> (LlamaTokenizer adds its own after the vocabulary) and no <0xE6>: "\u65e5"
        # has no byte fallback and is dropped.
        (
            "stories-renamed",
            "llama",
            {"set": [[1, "<bos>", 3], [2, "<eos>", 3], [3 + 0xE6, "<0xE6x>", 6]]},
            {"bos_id": 1, "eos_id": 2},
            None,
            False,
        ),
    ]

    out = {
        "transformers": transformers.__version__,
        "gpt2": [],
        "llama": [],
        "stories260K": {"tokens": sp_tokens, "scores": sp_scores, "token_types": sp_types},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, arch, pre, edits, ids, with_merges, with_wiki in gpt2_variants:
            tokens, types, _ = apply_edits(gpt2, gpt2_types, None, edits)
            md = {"architecture": arch, "model": "gpt2", "pre": pre, "tokens": tokens, "token_types": types, **ids}
            if with_merges:
                md["merges"] = gpt2_merges
            else:
                md["scores"] = [-float(i) for i in range(len(tokens))]
            n = len(tokens)
            decode_ids = [[50256, 64], [n - 1], [n - 2, n - 1, 64], [19526, 254], [163, 246, 118, 12, 198]]
            entry = record(tmp, name, md, texts, decode_ids, wiki if with_wiki else None)
            entry.update(
                {
                    "name": name,
                    "architecture": arch,
                    "pre": pre,
                    "edits": edits,
                    "ids": ids,
                    "merges": "file" if with_merges else "scores=-id",
                }
            )
            out["gpt2"].append(entry)
        for name, arch, edits, ids, merges, with_wiki in llama_variants:
            scores = tied_scores if edits.get("scores") == "tied" else sp_scores
            tokens, types, scores = apply_edits(sp_tokens, sp_types, scores, edits)
            md = {
                "architecture": arch,
                "model": "llama",
                "tokens": tokens,
                "token_types": types,
                "scores": scores,
                **ids,
            }
            if merges == "reversed":
                md["merges"] = [f"{a} {b}" for a, b in reversed(generated)]
            decode_ids = [
                [1, 270, 417],
                [270, 417, 1, 270, 417],
                [410, 410, 270],
                [0, 410, 270],
                [233, 154],
                [233, 154, 168],
                [68, 233, 154, 69],
                [68, 233, 270],
                [2, 270],
                [270, 68],
                [len(tokens) - 1],
                [3 + 0x20, 270],
                [410],
                [],
            ]
            entry = record(tmp, name, md, texts, decode_ids, wiki if with_wiki else None)
            entry.update(
                {"name": name, "architecture": arch, "edits": edits, "ids": ids, "merges": md.get("merges", [])}
            )
            if edits.get("scores") == "tied":
                entry["scores"] = tied_scores
            out["llama"].append(entry)
    with open(os.path.join(HERE, "gguf_tokenizer_fixtures.json"), "w", encoding="utf-8") as f:
        text = json.dumps(out, ensure_ascii=False, indent=1)
        f.write(
            re.sub(r"\[\n(\s*-?[\d.e+-]+,\n)*\s*-?[\d.e+-]+\n\s*\]", lambda m: "".join(m.group(0).split()), text) + "\n"
        )


if __name__ == "__main__":
    main()
