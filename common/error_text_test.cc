#include "common/error_text.h"

#include <gtest/gtest.h>

#include <string>

namespace lesion {
namespace {

TEST(ClipForError, ShortTextIsUnchanged) {
  EXPECT_EQ(ClipForError("modle"), "modle");
  EXPECT_EQ(ClipForError(std::string(80, 'a')), std::string(80, 'a'));
  EXPECT_EQ(ClipForError(""), "");
}

TEST(ClipForError, LongTextIsCutWithAnEllipsis) {
  EXPECT_EQ(ClipForError(std::string(81, 'a')), std::string(80, 'a') + "...");
  EXPECT_EQ(ClipForError(std::string(10 << 20, 'x')).size(), 83u);
  EXPECT_EQ(ClipForError("abcdef", 3), "abc...");
}

TEST(ClipForError, NeverCutsInsideAUtf8Character) {
  // "é" is two bytes: a cut after byte 3 of "abé..." would split it.
  EXPECT_EQ(ClipForError("ab\xc3\xa9xyz", 3), "ab...");
  EXPECT_EQ(ClipForError("ab\xc3\xa9xyz", 4), "ab\xc3\xa9...");
}

TEST(QuoteForError, QuotesAndEscapes) {
  EXPECT_EQ(QuoteForError("gpt2"), "\"gpt2\"");
  EXPECT_EQ(QuoteForError("a\"b\n"), "\"a\\\"b\\n\"");
  EXPECT_EQ(QuoteForError("\xc3\xa9t\xc3\xa9"), "\"\xc3\xa9t\xc3\xa9\"");
}

TEST(QuoteForError, LongTextIsCutAndItsLengthSaid) {
  const std::string quoted = QuoteForError(std::string(10 << 20, 'n'));
  EXPECT_EQ(quoted, "\"" + std::string(80, 'n') + "...\" (10485760 bytes)");
  EXPECT_EQ(QuoteForError("abcdef", 2), "\"ab...\" (6 bytes)");
}

}  // namespace
}  // namespace lesion
