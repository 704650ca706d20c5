#include "common/status_codes.h"

#include <gtest/gtest.h>

namespace lesion {
namespace {

TEST(StatusCodeFromName, ReadsWhatStatusCodeToStringWrites) {
  for (int c = 1; c <= 16; ++c) {
    const auto code = static_cast<absl::StatusCode>(c);
    EXPECT_EQ(StatusCodeFromName(absl::StatusCodeToString(code)), code);
  }
  EXPECT_EQ(StatusCodeFromName("OK"), std::nullopt) << "not a failure's code";
  EXPECT_EQ(StatusCodeFromName("resource_exhausted"), std::nullopt);
  EXPECT_EQ(StatusCodeFromName(""), std::nullopt);
}

}  // namespace
}  // namespace lesion
