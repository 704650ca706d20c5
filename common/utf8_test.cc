#include "common/utf8.h"

#include <string>

#include "gtest/gtest.h"

namespace lesion {
namespace {

TEST(Utf8Test, AcceptsWellFormedText) {
  EXPECT_TRUE(IsValidUtf8(""));
  EXPECT_TRUE(IsValidUtf8("plain ascii"));
  EXPECT_TRUE(IsValidUtf8("caf\xC3\xA9 \xE4\xB8\xAD \xF0\x9F\x98\x80"));  // 2, 3 and 4 bytes
  EXPECT_EQ(ValidUtf8Length("\xF0\x9F\x98\x80", 0), 4u);
}

TEST(Utf8Test, RefusesOverlongSurrogatesAndTruncation) {
  EXPECT_EQ(FindInvalidUtf8("ok\xC0\x80"), 2u);        // overlong NUL
  EXPECT_EQ(FindInvalidUtf8("\xED\xA0\x80"), 0u);      // a surrogate
  EXPECT_EQ(FindInvalidUtf8("\xF4\x90\x80\x80"), 0u);  // above U+10FFFF
  EXPECT_EQ(FindInvalidUtf8("ab\xE4\xB8"), 2u);        // truncated
  bool complete = true;
  EXPECT_EQ(WellFormedUtf8Prefix("\xE4\xB8", 0, complete), 2u);
  EXPECT_FALSE(complete);
}

}  // namespace
}  // namespace lesion
