"""`lesion tokenize` against tiktoken's GPT-2 encoding built from the same vocab.json / merges.txt."""

import json

import pytest
from transformers import GPT2Config, GPT2LMHeadModel

from conftest import WIKITEXT_TEST, requires_cli
from hf_reference import gpt2_encoding

pytestmark = requires_cli
tiktoken = pytest.importorskip("tiktoken")

SAMPLES = [
    "Hello world",
    " = Robert Boulter = \n \n Robert Boulter is an English film actor .",
    "It's 1,234.5 ml -- isn't it? I'll've   spaces\t\ttabs\n\n\nnewlines",
    "Ünïcödé → 漢字 😀 \u00a0nbsp",
    "",
]


@pytest.fixture
def gpt2_dir(tmp_path, gpt2_tokenizer_files):
    """A model dir with the GPT-2 tokenizer files and a config (bos_token_id 50256)."""
    model = GPT2LMHeadModel(GPT2Config(n_embd=8, n_layer=1, n_head=2, n_positions=32))
    model.save_pretrained(tmp_path / "gpt2")
    return gpt2_tokenizer_files(tmp_path / "gpt2")


def test_wikitext2_test_matches_tiktoken(cli, gpt2_dir):
    if WIKITEXT_TEST is None:
        pytest.skip("data/wikitext-2/wiki.test.raw is not in the repo")
    text = WIKITEXT_TEST.read_text(encoding="utf-8")
    ref = gpt2_encoding(gpt2_dir).encode_ordinary(text)
    ours = json.loads(cli("tokenize", "--model", gpt2_dir, stdin=text).stdout)  # stdin: no --text
    assert len(ref) == 286221
    assert len(ours) == len(ref), f"{len(ours)} ids, tiktoken {len(ref)}"
    first = next((i for i, (a, b) in enumerate(zip(ours, ref, strict=True)) if a != b), None)
    assert first is None, (
        f"first difference at id {first}: lesion {ours[first : first + 8]} tiktoken {ref[first : first + 8]}"
    )


@pytest.mark.parametrize("text", SAMPLES)
def test_text_and_stdin_match_tiktoken(cli, gpt2_dir, text):
    ref = gpt2_encoding(gpt2_dir).encode_ordinary(text)
    assert json.loads(cli("tokenize", "--model", gpt2_dir, "--text", text).stdout) == ref
    assert json.loads(cli("tokenize", "--model", gpt2_dir, stdin=text).stdout) == ref


def test_special_token_text_is_the_special_token(cli, gpt2_dir):
    """As with HF's GPT-2 tokenizer (and tiktoken with allowed_special="all"), the literal text
    <|endoftext|> encodes to id 50256."""
    text = "<|endoftext|> is a special token"
    ref = gpt2_encoding(gpt2_dir).encode(text, allowed_special="all")
    assert ref[0] == 50256
    assert json.loads(cli("tokenize", "--model", gpt2_dir, "--text", text).stdout) == ref


def test_add_bos_prepends_the_configs_bos(cli, gpt2_dir):
    ref = gpt2_encoding(gpt2_dir).encode_ordinary("Hello world")
    assert ref == [15496, 995]
    got = json.loads(cli("tokenize", "--model", gpt2_dir, "--text", "Hello world", "--add-bos").stdout)
    assert got == [50256] + ref
