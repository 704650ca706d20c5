// Tokenizers in C++ with no Python at run time: byte-level BPE (GPT-2, LLaMA 3, Qwen2) and
// SentencePiece BPE (LLaMA 2, llama2.c). LoadTokenizer picks the right one for a model directory;
// LoadGgufTokenizer builds one from a GGUF file's metadata.
//
//   ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tok, LoadTokenizer("models/stories260K"));
//   ASSIGN_OR_RETURN(std::vector<int32_t> ids, tok->Encode("Once upon a time"));
//   ASSIGN_OR_RETURN(std::string text, tok->Decode(ids));
//
// Exactness: byte-level BPE agrees id for id with OpenAI's tiktoken and Hugging Face `tokenizers`;
// SentencePiece BPE with Google's `sentencepiece`; GGUF tokenizers with HF transformers' tokenizer
// for the GGUF file (tokenizer_test.cc checks all three against ids those libraries recorded).
// Known gaps: a tokenizer.json NFC normalizer is accepted but not applied, so text in NFC
// encodes exactly and text whose NFC form differs from itself may not: decomposed
// (NFD) text such as "e\u0301", conjoining Hangul jamo (U+1100..U+11FF), and characters with a
// canonical singleton mapping such as U+212A KELVIN SIGN, U+2126 OHM SIGN, U+2000/U+2001 and the
// CJK compatibility ideographs U+F900..U+FAFF (check with unicodedata.is_normalized("NFC", s)).
// SentencePiece models need the identity normalizer.
//
// Thread-safety: a Tokenizer is immutable after creation and every method is thread-safe; Encode
// keeps its word cache per call. The loaders are thread-compatible (no shared state).
#ifndef LESION_MODEL_TOKENIZER_TOKENIZER_H_
#define LESION_MODEL_TOKENIZER_TOKENIZER_H_

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace lesion::model {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Text -> ids; never adds BOS/EOS. Added/special tokens of a tokenizer.json (e.g. "<|eot_id|>"),
  // GPT-2's "<|endoftext|>" and a GGUF file's control and user-defined tokens are recognised in
  // the text. InvalidArgument only for text that
  // cannot be encoded: text that is not valid UTF-8, or a character that a SentencePiece model
  // without byte fallback and without <unk> cannot represent.
  virtual absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text) const = 0;

  // Ids -> text, always valid UTF-8: bytes that do not form UTF-8 (ids that split a character)
  // become U+FFFD as the reference decoders do (byte-level: one per maximal invalid subpart, as
  // HF and tiktoken; SentencePiece: one per byte, as sentencepiece). Byte-level BPE keeps special
  // tokens' text; SentencePiece drops control tokens (<s>, </s>), renders <unk> as " \u2047 " and
  // strips the dummy-prefix space of the first piece (with remove_extra_whitespaces, of the
  // leading pieces that are only that space); a "llama" GGUF tokenizer decodes as HF does (see
  // LoadGgufTokenizer). InvalidArgument naming the id if one is out of range.
  virtual absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids) const = 0;

  // One more than the largest id (added tokens included).
  virtual int32_t vocab_size() const = 0;
  virtual std::optional<int32_t> bos_id() const = 0;
  virtual std::optional<int32_t> eos_id() const = 0;
  virtual std::string_view kind() const = 0;  // "byte_level_bpe" | "sentencepiece_bpe"
};

// Finds and loads the tokenizer of a model directory, trying in order: tokenizer.json (BPE model
// with a ByteLevel pre-tokenizer), vocab.json + merges.txt, tokenizer.model (SentencePiece
// protobuf), tokenizer.bin (llama2.c format). A tokenizer.json that is not byte-level BPE (LLaMA 2
// ships a SentencePiece-style one) gives way to a tokenizer.model beside it. bos_token_id /
// eos_token_id of config.json (the first one where it is a list) override the tokenizer's own;
// config.json's vocab_size bounds the records read from tokenizer.bin.
// NotFound if the directory holds none of these files; InvalidArgument (unsupported or
// inconsistent content, including config ids out of range) or DataLoss (unreadable binary data)
// naming the file for malformed ones.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::filesystem::path& model_dir);

// The individual loaders. Errors as for LoadTokenizer: NotFound for a missing file, otherwise
// InvalidArgument / DataLoss naming the file.

// Byte-level BPE from GPT-2's vocab.json + merges.txt ("#version" header optional). A
// "<|endoftext|>" entry of the vocabulary is matched as a special token. No BOS/EOS.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadByteLevelBpe(const std::filesystem::path& vocab_json,
                                                            const std::filesystem::path& merges_txt);
// Byte-level BPE from a Hugging Face tokenizer.json: model.type "BPE" (merges as "a b" strings or
// ["a", "b"] pairs, a repeated pair taking its last rank, ignore_merges honoured; a vocabulary may
// lack the tokens of some bytes, as SmolLM2's does: as in HF, such a byte becomes
// model.unk_token if set (a run of them one token with fuse_unk), or its "<0xNN>" tokens with
// byte_fallback, or else is dropped, its neighbours then merging as if adjacent), pre_tokenizer
// ByteLevel (use_regex: GPT-2's pattern; add_prefix_space) or a Sequence of Split (regex,
// behavior Isolated) and ByteLevel, as LLaMA 3 and Qwen2 have; normalizer null or NFC (not applied: exact for NFC text
// only, see above); added_tokens matched whole before pre-tokenization, leftmost-longest, with their
// lstrip/rstrip/single_word flags. No BOS/EOS. InvalidArgument also for Sequences nested more
// than 64 deep, for ids implausibly large for the number of tokens, and for an unk_token that is
// not in the vocabulary when a byte lacks its token.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizerJson(const std::filesystem::path& path);
// SentencePiece BPE from a serialized ModelProto (tokenizer.model): identity normalizer,
// add_dummy_prefix, remove_extra_whitespaces, escape_whitespaces, byte_fallback, user-defined
// pieces. InvalidArgument for other model types (unigram, ...) and normalizers.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadSentencePieceModel(const std::filesystem::path& path);
// SentencePiece BPE from llama2.c's tokenizer.bin (int32 max_token_length, then records {float32
// score, int32 length, bytes}; ids 0/1/2 are <unk>/<s>/</s>, then <0x00>..<0xFF>). `vocab_size`
// (from the model's config) is the number of records to read; without it records are read to the
// end of the file. DataLoss for a truncated file.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadLlama2cTokenizer(const std::filesystem::path& path,
                                                                std::optional<int32_t> vocab_size);

// A serialized SentencePiece ModelProto equivalent to a llama2.c tokenizer.bin (all records):
// BPE model type, byte_fallback, add_dummy_prefix, identity normalizer, "\u2581" for spaces,
// <unk> (UNKNOWN) / <s>, </s> (CONTROL) at ids 0/1/2, <0xNN> pieces of type BYTE, llama2.c's
// scores. A converter writes it as tokenizer.model, which Python's `sentencepiece` and HF's
// LlamaTokenizer load and which encodes like llama2.c. Errors as LoadLlama2cTokenizer.
absl::StatusOr<std::string> Llama2cTokenizerBinToModelProto(const std::filesystem::path& path);

// The tokenizer part of a GGUF file's metadata (llama.cpp's tokenizer.ggml.* keys).
struct GgufTokenizerMetadata {
  std::string architecture;         // general.architecture ("llama", "qwen2", "gpt2", ...)
  std::string model;                // tokenizer.ggml.model: "gpt2" (byte-level BPE) or "llama" (SentencePiece)
  std::string pre;                  // tokenizer.ggml.pre ("" if absent)
  std::vector<std::string> tokens;  // tokenizer.ggml.tokens
  std::vector<float> scores;        // tokenizer.ggml.scores (may be empty)
  // tokenizer.ggml.token_type (may be empty): 1 normal, 2 unknown, 3 control, 4 user-defined,
  // 5 unused, 6 byte.
  std::vector<int32_t> token_types;
  std::vector<std::string> merges;  // tokenizer.ggml.merges "a b" (may be empty)
  std::optional<int32_t> bos_id, eos_id, unk_id, pad_id;
  std::optional<bool> add_bos, add_eos, add_space_prefix;
};

// The tokenizer Hugging Face transformers (5.x) builds for `AutoTokenizer.from_pretrained(dir,
// gguf_file=...)` (integrations/gguf/gguf_tokenizer_mapping.py and the tokenizer classes it
// hands off to), id for id (Encode is its encode(text, add_special_tokens=False)) and decode for
// decode (skip_special_tokens=False). `source` names the file in messages. bos_id()/eos_id() are
// the metadata's; add_bos/add_eos are not applied (Encode never adds BOS/EOS).
//   * model "gpt2": byte-level BPE over the tokens, each spelled in GPT-2's byte alphabet if it
//     is not already; merges from the file or, without them, derived from the scores as
//     transformers' generate_merges does; the Split regex transformers keys by `pre` (llama3,
//     llama-bpe, qwen2, qwen35, tekken, gpt-4o and the others of its table) before a ByteLevel
//     pre-tokenizer, and for any other `pre` (none, "gpt-2", "smollm", ...) GPT-2's plain
//     ByteLevel. Bytes without a token are dropped, as LoadTokenizerJson does. kind()
//     "byte_level_bpe".
//   * model "llama": HF's LlamaTokenizer over the tokens as spelled, which is BPE as HF
//     `tokenizers` runs it with a Metaspace pre-tokenizer, not as sentencepiece does (so not
//     LoadSentencePieceModel's tokenizer on the same vocabulary): U+2581 is prepended only to text
//     that does not start with a space and only before the first added token ("  hi" is
//     "\u2581\u2581hi", sentencepiece's "\u2581\u2581\u2581hi"; "<s>hi" is <s>, "hi");
//     add_space_prefix is ignored as transformers ignores it; merges (from the file, or from the
//     scores by generate_merges) apply by rank, so merges of equal score are ordered by the
//     lengths of their parts, not by position as in sentencepiece; a character with no token
//     becomes its <0xNN> byte tokens and is dropped if one of those is missing (never <unk>:
//     transformers gives the model no unk_token); Decode keeps control tokens' text ("<s>"),
//     shows <unk> as "<unk>", turns a run of byte tokens that is not UTF-8 into one U+FFFD per
//     byte, and strips one leading space of the whole text. kind() "sentencepiece_bpe".
//   * both: matched whole in the text before pre-tokenization, leftmost-longest, are the default
//     special tokens of the transformers class ("gpt2": "<|endoftext|>"; "llama": "<s>", "</s>",
//     "<unk>"), which get the next free ids if the vocabulary lacks them, the tokens of type
//     control (3; for "gpt2" only those spelled in the byte alphabet) and user-defined (4), and
//     the tokens that bos/eos/unk/pad ids name. Of tokens spelled alike, the last one's id is the
//     token's (vocab_size() still counts every id).
// InvalidArgument naming `source` for unsupported models ("bert", "rwkv", ...), a "llama" model
// with a byte-level `pre`, and inconsistent data: no tokens, scores or token types whose count
// differs from the tokens', ids out of range, NaN scores, tokens that are not UTF-8, merges that
// are not "a b" of tokens, neither merges nor scores. Unimplemented naming the architecture and
// model for those whose transformers builder differs: "llama" models of architecture gemma,
// gemma2, gemma3 or phi3, and models "t5" and "gemma4".
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadGgufTokenizer(const GgufTokenizerMetadata& metadata,
                                                             absl::string_view source);

}  // namespace lesion::model

#endif  // LESION_MODEL_TOKENIZER_TOKENIZER_H_
