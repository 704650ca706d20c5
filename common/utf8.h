// UTF-8 validation shared by the file readers (safetensors, GGUF) and the tokenizers. Well-formed
// means Table 3-7 of the Unicode standard: shortest form, no surrogates, nothing above U+10FFFF.
// Thread-safe (no state).
#ifndef LESION_COMMON_UTF8_H_
#define LESION_COMMON_UTF8_H_

#include <cstddef>

#include "absl/strings/string_view.h"

namespace lesion {

// Length (1-4) of the character at text[pos] if it is well-formed and complete, else 0.
// `pos` must be < text.size().
size_t ValidUtf8Length(absl::string_view text, size_t pos);

// Number of bytes at text[pos] that begin a well-formed sequence (the whole character when it is
// complete, fewer for a truncated one: the "maximal subpart" of Unicode's U+FFFD practice); sets
// `complete`. 0 when text[pos] cannot start a character.
size_t WellFormedUtf8Prefix(absl::string_view text, size_t pos, bool& complete);

// Byte offset of the first ill-formed sequence in `text`, or absl::string_view::npos.
size_t FindInvalidUtf8(absl::string_view text);

inline bool IsValidUtf8(absl::string_view text) { return FindInvalidUtf8(text) == absl::string_view::npos; }

}  // namespace lesion

#endif  // LESION_COMMON_UTF8_H_
