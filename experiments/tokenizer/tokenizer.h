// Tokenizers in C++ with no Python at run time: byte-level BPE (GPT-2, LLaMA 3, Qwen2) and
// SentencePiece BPE (LLaMA 2, llama2.c). LoadTokenizer picks the right one for a model directory.
//
//   ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tok, LoadTokenizer("models/stories260K"));
//   ASSIGN_OR_RETURN(std::vector<int32_t> ids, tok->Encode("Once upon a time"));
//   ASSIGN_OR_RETURN(std::string text, tok->Decode(ids));
//
// Exactness: byte-level BPE agrees id for id with OpenAI's tiktoken and Hugging Face `tokenizers`;
// SentencePiece BPE with Google's `sentencepiece` (tokenizer_test.cc checks both against ids those
// libraries recorded). Known gaps: a tokenizer.json NFC normalizer is accepted but not applied,
// so text in NFC encodes exactly and text whose NFC form differs from itself may not: decomposed
// (NFD) text such as "e\u0301", conjoining Hangul jamo (U+1100..U+11FF), and characters with a
// canonical singleton mapping such as U+212A KELVIN SIGN, U+2126 OHM SIGN, U+2000/U+2001 and the
// CJK compatibility ideographs U+F900..U+FAFF (check with unicodedata.is_normalized("NFC", s)).
// SentencePiece models need the identity normalizer.
//
// Thread-safety: a Tokenizer is immutable after creation and every method is thread-safe; Encode
// keeps its word cache per call. The loaders are thread-compatible (no shared state).
#ifndef LESION_EXPERIMENTS_TOKENIZER_TOKENIZER_H_
#define LESION_EXPERIMENTS_TOKENIZER_TOKENIZER_H_

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace lesion::experiments {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Text -> ids; never adds BOS/EOS. Added/special tokens of a tokenizer.json (e.g. "<|eot_id|>")
  // and GPT-2's "<|endoftext|>" are recognised in the text. InvalidArgument only for text that
  // cannot be encoded: text that is not valid UTF-8, or a character that a SentencePiece model
  // without byte fallback and without <unk> cannot represent.
  virtual absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text) const = 0;

  // Ids -> text, always valid UTF-8: bytes that do not form UTF-8 (ids that split a character)
  // become U+FFFD as the reference decoders do (byte-level: one per maximal invalid subpart, as
  // HF and tiktoken; SentencePiece: one per byte, as sentencepiece). Byte-level BPE keeps special
  // tokens' text; SentencePiece drops control tokens (<s>, </s>), renders <unk> as " \u2047 " and
  // strips the dummy-prefix space of the first piece (with remove_extra_whitespaces, of the
  // leading pieces that are only that space). InvalidArgument naming the id if one is out of
  // range.
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
// ["a", "b"] pairs, ignore_merges honoured), pre_tokenizer ByteLevel (use_regex: GPT-2's pattern;
// add_prefix_space) or a Sequence of Split (regex, behavior Isolated) and ByteLevel, as LLaMA 3
// and Qwen2 have; normalizer null or NFC (not applied: exact for NFC text only, see above);
// added_tokens matched whole before pre-tokenization, leftmost-longest, with their
// lstrip/rstrip/single_word flags. No BOS/EOS. InvalidArgument also for Sequences nested more
// than 64 deep and for ids implausibly large for the number of tokens.
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

}  // namespace lesion::experiments

#endif  // LESION_EXPERIMENTS_TOKENIZER_TOKENIZER_H_
