#include "common/error_text.h"

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace lesion {
namespace {

// The first `max` bytes of `s`, not ending inside a UTF-8 sequence.
absl::string_view Prefix(absl::string_view s, size_t max) {
  size_t n = max;
  // Back up over continuation bytes (10xxxxxx) to the lead byte of the cut character.
  while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;
  return s.substr(0, n);
}

}  // namespace

std::string ClipForError(absl::string_view s, size_t max) {
  if (s.size() <= max) return std::string(s);
  return absl::StrCat(Prefix(s, max), "...");
}

std::string QuoteForError(absl::string_view s, size_t max) {
  if (s.size() <= max) return absl::StrCat("\"", absl::Utf8SafeCEscape(s), "\"");
  return absl::StrCat("\"", absl::Utf8SafeCEscape(Prefix(s, max)), "...\" (", s.size(), " bytes)");
}

}  // namespace lesion
