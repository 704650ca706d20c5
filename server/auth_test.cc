#include "server/auth.h"

#include <gtest/gtest.h>

namespace lesion::server {
namespace {

constexpr char kTokens[] = R"(# lab tokens
tok-alice alice user

tok-root   root	admin
)";

TEST(Authenticator, ParsesTokensFileWithCommentsAndBlankLines) {
  absl::StatusOr<Authenticator> auth = Authenticator::FromTokensText(kTokens, "tokens");
  ASSERT_TRUE(auth.ok()) << auth.status();
  EXPECT_TRUE(auth->has_tokens());
  absl::StatusOr<Principal> alice = auth->Authenticate("Bearer tok-alice", std::nullopt);
  ASSERT_TRUE(alice.ok()) << alice.status();
  EXPECT_EQ(alice->user, "alice");
  EXPECT_EQ(alice->role, Role::kUser);
  absl::StatusOr<Principal> root = auth->Authenticate("Bearer tok-root", "someone-else");
  ASSERT_TRUE(root.ok());
  EXPECT_EQ(root->user, "root");  // x-lesion-user is ignored with tokens
  EXPECT_TRUE(root->is_admin());
}

TEST(Authenticator, MissingMalformedOrUnknownTokenIsUnauthenticated) {
  Authenticator auth = *Authenticator::FromTokensText(kTokens, "tokens");
  absl::Status missing = auth.Authenticate(std::nullopt, std::nullopt).status();
  EXPECT_EQ(missing.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_NE(missing.message().find("authorization"), absl::string_view::npos) << missing;
  EXPECT_EQ(auth.Authenticate("tok-alice", std::nullopt).status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(auth.Authenticate("Bearer ", std::nullopt).status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(auth.Authenticate("Bearer nope", std::nullopt).status().code(), absl::StatusCode::kUnauthenticated);
}

TEST(Authenticator, BadLinesNameFileAndLine) {
  absl::Status role = Authenticator::FromTokensText("# c\nt1 bob superuser\n", "/etc/tokens").status();
  EXPECT_EQ(role.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(role.message().find("/etc/tokens:2"), absl::string_view::npos) << role;
  EXPECT_NE(role.message().find("superuser"), absl::string_view::npos) << role;
  absl::Status fields = Authenticator::FromTokensText("t1 bob\n", "f").status();
  EXPECT_EQ(fields.code(), absl::StatusCode::kInvalidArgument);
  absl::Status twice = Authenticator::FromTokensText("t1 bob user\nt1 eve user\n", "f").status();
  EXPECT_EQ(twice.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(twice.message().find("f:2"), absl::string_view::npos) << twice;
}

TEST(Authenticator, MissingTokensFileIsNotFound) {
  EXPECT_EQ(Authenticator::FromTokensFile("/nonexistent/lesion-tokens").status().code(), absl::StatusCode::kNotFound);
}

TEST(Authenticator, AnonymousModeTakesUserFromMetadata) {
  Authenticator admin = Authenticator::Anonymous(true);
  EXPECT_FALSE(admin.has_tokens());
  absl::StatusOr<Principal> p = admin.Authenticate(std::nullopt, std::nullopt);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->user, "anonymous");
  EXPECT_TRUE(p->is_admin());
  EXPECT_EQ(admin.Authenticate("Bearer whatever", "carol")->user, "carol");

  Authenticator users = Authenticator::Anonymous(false);
  EXPECT_EQ(users.Authenticate(std::nullopt, "dave")->role, Role::kUser);
}

}  // namespace
}  // namespace lesion::server
