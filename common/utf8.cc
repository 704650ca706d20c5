#include "common/utf8.h"

namespace lesion {
namespace {

struct LeadByte {
  size_t length;                       // 0: cannot start a character
  unsigned char second_lo, second_hi;  // allowed range of the second byte
};

// Table 3-7 of the Unicode standard (well-formed UTF-8 byte sequences).
LeadByte Lead(unsigned char c) {
  if (c < 0x80) return {1, 0, 0};
  if (c >= 0xC2 && c <= 0xDF) return {2, 0x80, 0xBF};
  if (c == 0xE0) return {3, 0xA0, 0xBF};
  if (c == 0xED) return {3, 0x80, 0x9F};
  if (c >= 0xE1 && c <= 0xEF) return {3, 0x80, 0xBF};
  if (c == 0xF0) return {4, 0x90, 0xBF};
  if (c >= 0xF1 && c <= 0xF3) return {4, 0x80, 0xBF};
  if (c == 0xF4) return {4, 0x80, 0x8F};
  return {0, 0, 0};
}

}  // namespace

size_t WellFormedUtf8Prefix(absl::string_view text, size_t pos, bool& complete) {
  const LeadByte lead = Lead(static_cast<unsigned char>(text[pos]));
  complete = false;
  if (lead.length == 0) return 0;
  if (lead.length == 1) {
    complete = true;
    return 1;
  }
  size_t n = 1;
  while (n < lead.length && pos + n < text.size()) {
    const unsigned char c = text[pos + n];
    const bool ok = n == 1 ? (c >= lead.second_lo && c <= lead.second_hi) : (c >= 0x80 && c <= 0xBF);
    if (!ok) break;
    ++n;
  }
  complete = n == lead.length;
  return n;
}

size_t ValidUtf8Length(absl::string_view text, size_t pos) {
  bool complete = false;
  const size_t n = WellFormedUtf8Prefix(text, pos, complete);
  return complete ? n : 0;
}

size_t FindInvalidUtf8(absl::string_view text) {
  size_t pos = 0;
  while (pos < text.size()) {
    if (static_cast<unsigned char>(text[pos]) < 0x80) {
      ++pos;
      continue;
    }
    const size_t len = ValidUtf8Length(text, pos);
    if (len == 0) return pos;
    pos += len;
  }
  return absl::string_view::npos;
}

}  // namespace lesion
