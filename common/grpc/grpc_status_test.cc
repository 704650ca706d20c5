#include "common/grpc/grpc_status.h"

#include <gtest/gtest.h>

#include <string>

#include "common/testing/status_matchers.h"

namespace lesion {
namespace {

TEST(StatusMapping, EveryCodeMapsToTheSameGrpcCodeAndBack) {
  for (int code = 1; code <= 16; ++code) {
    absl::Status status(static_cast<absl::StatusCode>(code), "layer 14 out of range");
    grpc::Status grpc_status = ToGrpcStatus(status);
    EXPECT_EQ(static_cast<int>(grpc_status.error_code()), code);
    EXPECT_EQ(grpc_status.error_message(), "layer 14 out of range");
    EXPECT_EQ(FromGrpcStatus(grpc_status), status);
  }
}

TEST(StatusMapping, OkIsOk) {
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
  EXPECT_TRUE(FromGrpcStatus(grpc::Status::OK).ok());
}

TEST(StatusMapping, SpecificCodesByName) {
  EXPECT_EQ(ToGrpcStatus(absl::NotFoundError("x")).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(ToGrpcStatus(absl::ResourceExhaustedError("x")).error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(ToGrpcStatus(absl::UnauthenticatedError("x")).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(ToGrpcStatus(absl::FailedPreconditionError("x")).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
}

// Regression: a 1 MB model name echoed in an error reached the client as RESOURCE_EXHAUSTED "Stream
// removed" (gRPC refuses trailing metadata over 16 KiB) instead of the real error.
TEST(StatusMapping, LongMessagesAreCutAndSaySo) {
  const std::string long_message = "no model named \"" + std::string(1 << 20, 'n') + "\" is loaded";
  grpc::Status cut = ToGrpcStatus(absl::NotFoundError(long_message));
  EXPECT_EQ(cut.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_LE(cut.error_message().size(), kMaxStatusMessageBytes);
  EXPECT_EQ(cut.error_message().rfind("no model named \"nnn", 0), 0u) << cut.error_message().substr(0, 80);
  EXPECT_NE(cut.error_message().find("... [message cut from " + std::to_string(long_message.size()) + " bytes]"),
            std::string::npos)
      << cut.error_message().substr(cut.error_message().size() - 80);

  // Cut between characters, never inside one: two-byte "é" from the first byte on.
  std::string accents;
  for (int i = 0; i < 3000; ++i) accents += "\xc3\xa9";
  const std::string message = ToGrpcStatus(absl::InvalidArgumentError(accents)).error_message();
  EXPECT_LE(message.size(), kMaxStatusMessageBytes);
  const size_t dots = message.find("...");
  ASSERT_NE(dots, std::string::npos);
  EXPECT_EQ(dots % 2, 0u) << "cut inside a character at byte " << dots;

  // At the limit: kept as it is.
  const std::string fits(kMaxStatusMessageBytes, 'x');
  EXPECT_EQ(ToGrpcStatus(absl::InternalError(fits)).error_message(), fits);
}

}  // namespace
}  // namespace lesion
