#include "experiments/tokenizer/tokenizer_internal.h"

namespace lesion::experiments::tokenizer_internal {
namespace {

constexpr char kReplacement[] = "\xEF\xBF\xBD";  // U+FFFD

struct LeadByte {
  size_t length;                // 0: cannot start a character
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

// Number of bytes at text[pos] that begin a well-formed sequence (the whole character when it is
// complete); sets `complete`.
size_t WellFormedPrefix(absl::string_view text, size_t pos, bool& complete) {
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

}  // namespace

size_t ValidUtf8Length(absl::string_view text, size_t pos) {
  bool complete = false;
  const size_t n = WellFormedPrefix(text, pos, complete);
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

char32_t DecodeUtf8(absl::string_view text, size_t pos, size_t len) {
  const auto b = [&](size_t i) { return static_cast<char32_t>(static_cast<unsigned char>(text[pos + i])); };
  switch (len) {
    case 1:
      return b(0);
    case 2:
      return ((b(0) & 0x1F) << 6) | (b(1) & 0x3F);
    case 3:
      return ((b(0) & 0x0F) << 12) | ((b(1) & 0x3F) << 6) | (b(2) & 0x3F);
    default:
      return ((b(0) & 0x07) << 18) | ((b(1) & 0x3F) << 12) | ((b(2) & 0x3F) << 6) | (b(3) & 0x3F);
  }
}

void AppendUtf8(char32_t cp, std::string& out) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

std::string RepairUtf8(absl::string_view bytes, Utf8Repair mode) {
  if (FindInvalidUtf8(bytes) == absl::string_view::npos) return std::string(bytes);
  std::string out;
  out.reserve(bytes.size() + 8);
  size_t pos = 0;
  while (pos < bytes.size()) {
    bool complete = false;
    const size_t n = WellFormedPrefix(bytes, pos, complete);
    if (complete) {
      out.append(bytes.data() + pos, n);
      pos += n;
      continue;
    }
    out += kReplacement;
    pos += mode == Utf8Repair::kPerByte || n == 0 ? 1 : n;
  }
  return out;
}

bool IsUnicodeWhiteSpace(char32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
         cp == 0x205F || cp == 0x3000;
}

}  // namespace lesion::experiments::tokenizer_internal
