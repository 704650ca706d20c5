// Internals shared by the tokenizers of this folder and LoadTokenizer. Not part of the API.
// Thread-compatible helpers; TokenizerBase's setter may only run before the tokenizer is shared.
#ifndef LESION_MODEL_TOKENIZER_TOKENIZER_INTERNAL_H_
#define LESION_MODEL_TOKENIZER_TOKENIZER_INTERNAL_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/utf8.h"
#include "model/tokenizer/tokenizer.h"

namespace lesion::model::tokenizer_internal {

// Base of every Tokenizer the loaders of this folder create (LoadTokenizer relies on it). Holds
// BOS/EOS, which LoadTokenizer replaces with config.json's before returning the tokenizer; they
// are never written afterwards, so reading them is thread-safe.
class TokenizerBase : public Tokenizer {
 public:
  std::optional<int32_t> bos_id() const final { return bos_; }
  std::optional<int32_t> eos_id() const final { return eos_; }
  void SetSpecialIds(std::optional<int32_t> bos, std::optional<int32_t> eos) {
    bos_ = bos;
    eos_ = eos;
  }

 private:
  std::optional<int32_t> bos_, eos_;
};

// UTF-8 validation (common/utf8.h).
using ::lesion::FindInvalidUtf8;
using ::lesion::ValidUtf8Length;
// The code point of the well-formed character of `len` bytes at text[pos].
char32_t DecodeUtf8(absl::string_view text, size_t pos, size_t len);
void AppendUtf8(char32_t cp, std::string& out);

enum class Utf8Repair {
  kPerByte,         // each byte of an ill-formed sequence -> U+FFFD (sentencepiece)
  kMaximalSubpart,  // each maximal ill-formed subpart -> U+FFFD (Unicode's recommendation;
                    // Rust's from_utf8_lossy in HF tokenizers, Python's errors="replace")
};
// `bytes` with every ill-formed sequence replaced by U+FFFD.
std::string RepairUtf8(absl::string_view bytes, Utf8Repair mode);

// Unicode White_Space (what \s matches in Rust's regex crate, Oniguruma and Python's regex).
bool IsUnicodeWhiteSpace(char32_t cp);

// ---------------------------------------------------------------------------------------------
// BPE as Hugging Face `tokenizers` runs it (byte_level_bpe.cc), shared by LoadByteLevelBpe,
// LoadTokenizerJson and LoadGgufTokenizer.

// GPT-2's pre-tokenizer regex (what a ByteLevel pre-tokenizer with use_regex splits with).
extern const char kGpt2SplitPattern[];

// `bytes` spelled in GPT-2's byte-level alphabet (bytes_to_unicode: printable bytes stand for
// themselves, the others for U+0100 on).
std::string ByteLevelSpelling(absl::string_view bytes);
// Whether every character of `token` is one of the 256 characters of that alphabet (true for "").
bool IsInByteLevelAlphabet(absl::string_view token);

// A token matched whole in the text before pre-tokenization (tokenizer.json's added_tokens).
struct AddedToken {
  std::string content;
  int32_t id = 0;
  bool single_word = false, lstrip = false, rstrip = false, normalized = false;
};

// One stage of a byte-level pre-tokenizer: optionally prefix a space (ByteLevel
// add_prefix_space), then optionally split with a regex (Split behavior Isolated).
struct PreTokenizerStage {
  bool add_prefix_space = false;
  std::string pattern;  // empty: no split
};

// What a BPE tokenizer consists of, in the terms of HF `tokenizers`.
struct HfBpeSpec {
  enum class PreTokenizer {
    // ByteLevel: `stages` split the text, every byte becomes its byte-level character; decoder
    // ByteLevel. kind() "byte_level_bpe".
    kByteLevel,
    // Metaspace as HF's LlamaTokenizer sets it up (replacement U+2581, prepend_scheme "first",
    // split false): spaces become U+2581, and U+2581 is prepended to the text before the first
    // added token unless it starts with one; each stretch between added tokens is one word of
    // Unicode characters. Decoder Replace(U+2581, " "), ByteFallback, Fuse, then Strip of one
    // leading space if `strip_decoded_space`. kind() "sentencepiece_bpe".
    kMetaspace,
  };
  PreTokenizer pre_tokenizer = PreTokenizer::kByteLevel;
  absl::flat_hash_map<std::string, int32_t> vocab;          // spelled token -> id
  std::vector<std::pair<std::string, std::string>> merges;  // in rank order; a repeated pair takes its last rank
  std::vector<AddedToken> added;
  std::vector<PreTokenizerStage> stages = {{false, kGpt2SplitPattern}};  // kByteLevel only
  bool strip_decoded_space = true;                                       // kMetaspace only
  bool ignore_merges = false;  // a word that is in the vocabulary is one token (LLaMA 3)
  // A character (kByteLevel: a byte) without a token becomes its bytes' tokens "<0xNN>" if
  // byte_fallback and all exist, else `unk_token` (a run of them one token if fuse_unk), else it
  // is dropped and its neighbours may merge.
  bool byte_fallback = false;
  std::optional<std::string> unk_token;
  bool fuse_unk = false;
  std::optional<int32_t> bos, eos;
  std::string source;  // file name(s), for messages
};

// The tokenizer of `spec`. InvalidArgument naming spec.source for merges of tokens that are not
// in the vocabulary, regexes that do not compile, ids implausibly large for the number of tokens,
// and an unk_token outside the vocabulary when a character could need it.
absl::StatusOr<std::unique_ptr<Tokenizer>> CreateHfBpe(HfBpeSpec spec);

}  // namespace lesion::model::tokenizer_internal

#endif  // LESION_MODEL_TOKENIZER_TOKENIZER_INTERNAL_H_
