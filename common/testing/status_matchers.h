// GoogleTest assertions and matchers for absl::Status and absl::StatusOr<T>:
//
//   ASSERT_OK(store.Insert(record));            // on failure prints the status
//   ASSERT_OK_AND_ASSIGN(Config config, ParseConfig(text));
//   EXPECT_THAT(ParseConfig("{"), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("JSON")));
//
// They take absl::Status, absl::StatusOr<T> and grpc::Status alike. Test-only (links gmock).
// Thread-compatible, like the matchers of gmock.
#ifndef LESION_COMMON_TESTING_STATUS_MATCHERS_H_
#define LESION_COMMON_TESTING_STATUS_MATCHERS_H_

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <ostream>
#include <string>
#include <type_traits>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace lesion::matchers {

inline const absl::Status& StatusOf(const absl::Status& status) { return status; }
template <typename T>
const absl::Status& StatusOf(const absl::StatusOr<T>& status_or) {
  return status_or.status();
}
// grpc::Status (anything with error_code() and error_message()), code for code, without making
// the matchers depend on gRPC.
template <typename GrpcStatus, typename = decltype(std::declval<const GrpcStatus&>().error_message())>
absl::Status StatusOf(const GrpcStatus& status) {
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

// Matches an OK Status or a StatusOr holding a value.
MATCHER(IsOk, negation ? "is not OK" : "is OK") {
  const absl::Status& status = ::lesion::matchers::StatusOf(arg);
  if (!status.ok()) *result_listener << "whose status is " << status;
  return status.ok();
}

// Matches a Status (or a StatusOr's status) whose code is `code` and whose message matches
// `message` (any string matcher; any message when omitted).
MATCHER_P2(StatusIsMatcher, code, message,
           std::string("has code ") + absl::StatusCodeToString(code) + " and a message that " +
               ::testing::DescribeMatcher<std::string>(message, negation)) {
  const absl::Status& status = ::lesion::matchers::StatusOf(arg);
  *result_listener << "whose status is " << status;
  return status.code() == code && ::testing::ExplainMatchResult(::testing::Matcher<std::string>(message),
                                                                std::string(status.message()), result_listener);
}

template <typename MessageMatcher>
auto StatusIs(absl::StatusCode code, MessageMatcher message) {
  return StatusIsMatcher(code, ::testing::Matcher<std::string>(std::move(message)));
}
inline auto StatusIs(absl::StatusCode code) { return StatusIs(code, ::testing::_); }

}  // namespace lesion::matchers

#define ASSERT_OK(expr) ASSERT_THAT((expr), ::lesion::matchers::IsOk())
#define EXPECT_OK(expr) EXPECT_THAT((expr), ::lesion::matchers::IsOk())

// ASSERT_OK_AND_ASSIGN(lhs, expr): asserts that the StatusOr `expr` holds a value and moves it into
// `lhs` (a declaration or an lvalue).
#define ASSERT_OK_AND_ASSIGN(lhs, expr) \
  LESION_TESTING_ASSERT_OK_AND_ASSIGN_IMPL(LESION_TESTING_CONCAT(status_or_, __LINE__), lhs, expr)
#define LESION_TESTING_ASSERT_OK_AND_ASSIGN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                             \
  ASSERT_OK(tmp);                                                \
  lhs = std::move(tmp).value()
#define LESION_TESTING_CONCAT(a, b) LESION_TESTING_CONCAT_INNER(a, b)
#define LESION_TESTING_CONCAT_INNER(a, b) a##b

#endif  // LESION_COMMON_TESTING_STATUS_MATCHERS_H_
