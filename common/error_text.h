// User input quoted in error messages at a bounded length: a query, a name or a file's contents may
// be megabytes long, and an error should say what was wrong, not echo it. Thread-safe, stateless.
#ifndef LESION_COMMON_ERROR_TEXT_H_
#define LESION_COMMON_ERROR_TEXT_H_

#include <cstddef>
#include <string>

#include "absl/strings/string_view.h"

namespace lesion {

// The characters of `s` that an error message quotes by default.
inline constexpr size_t kMaxQuotedChars = 80;

// `s` if it has at most `max` bytes; else its first `max` bytes (cut back to a UTF-8 character
// boundary) followed by "...". Nothing is escaped: for text that the caller quotes itself
// ("unknown field '" + ClipForError(name) + "'").
std::string ClipForError(absl::string_view s, size_t max = kMaxQuotedChars);

// `s` in double quotes with C escapes (\n, \", \\, \x01; UTF-8 kept as is), cut like ClipForError;
// a cut string is followed by its length: "abc..." (10485760 bytes).
std::string QuoteForError(absl::string_view s, size_t max = kMaxQuotedChars);

}  // namespace lesion

#endif  // LESION_COMMON_ERROR_TEXT_H_
