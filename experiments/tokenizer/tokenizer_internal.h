// Internals shared by the tokenizers of this folder and LoadTokenizer. Not part of the API.
// Thread-compatible helpers; TokenizerBase's setter may only run before the tokenizer is shared.
#ifndef LESION_EXPERIMENTS_TOKENIZER_TOKENIZER_INTERNAL_H_
#define LESION_EXPERIMENTS_TOKENIZER_TOKENIZER_INTERNAL_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "absl/strings/string_view.h"
#include "experiments/tokenizer/tokenizer.h"

namespace lesion::experiments::tokenizer_internal {

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

// Length of the UTF-8 character at text[pos] if it is well-formed (shortest form, no surrogate,
// at most U+10FFFF), else 0.
size_t ValidUtf8Length(absl::string_view text, size_t pos);
// Byte offset of the first ill-formed UTF-8 sequence in `text`, or npos if there is none.
size_t FindInvalidUtf8(absl::string_view text);
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

}  // namespace lesion::experiments::tokenizer_internal

#endif  // LESION_EXPERIMENTS_TOKENIZER_TOKENIZER_INTERNAL_H_
