#include "server/auth.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/testing/scoped_test_dir.h"
#include "common/testing/status_matchers.h"

namespace lesion::server {
namespace {

using ::lesion::matchers::StatusIs;

constexpr char kTokens[] = R"(# lab tokens
tok-alice alice user

tok-root   root	admin
)";

TEST(Authenticator, ParsesTokensFileWithCommentsAndBlankLines) {
  absl::StatusOr<Authenticator> auth = Authenticator::FromTokensText(kTokens, "tokens");
  ASSERT_OK(auth);
  EXPECT_TRUE(auth->has_tokens());
  absl::StatusOr<Principal> alice = auth->Authenticate("Bearer tok-alice", std::nullopt);
  ASSERT_OK(alice);
  EXPECT_EQ(alice->user, "alice");
  EXPECT_EQ(alice->role, Role::kUser);
  absl::StatusOr<Principal> root = auth->Authenticate("Bearer tok-root", "someone-else");
  ASSERT_OK(root);
  EXPECT_EQ(root->user, "root");  // x-lesion-user is ignored with tokens
  EXPECT_TRUE(root->is_admin());
}

TEST(Authenticator, MissingMalformedOrUnknownTokenIsUnauthenticated) {
  Authenticator auth = *Authenticator::FromTokensText(kTokens, "tokens");
  absl::Status missing = auth.Authenticate(std::nullopt, std::nullopt).status();
  EXPECT_THAT(missing, StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_NE(missing.message().find("authorization"), absl::string_view::npos) << missing;
  EXPECT_EQ(auth.Authenticate("tok-alice", std::nullopt).status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(auth.Authenticate("Bearer ", std::nullopt).status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(auth.Authenticate("Bearer nope", std::nullopt).status().code(), absl::StatusCode::kUnauthenticated);
}

TEST(Authenticator, BadLinesNameFileAndLine) {
  absl::Status role = Authenticator::FromTokensText("# c\nt1 bob superuser\n", "/etc/tokens").status();
  EXPECT_THAT(role, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_NE(role.message().find("/etc/tokens:2"), absl::string_view::npos) << role;
  EXPECT_NE(role.message().find("superuser"), absl::string_view::npos) << role;
  absl::Status fields = Authenticator::FromTokensText("t1 bob\n", "f").status();
  EXPECT_THAT(fields, StatusIs(absl::StatusCode::kInvalidArgument));
  absl::Status twice = Authenticator::FromTokensText("t1 bob user\nt1 eve user\n", "f").status();
  EXPECT_THAT(twice, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_NE(twice.message().find("f:2"), absl::string_view::npos) << twice;
}

TEST(Authenticator, MissingTokensFileIsNotFound) {
  EXPECT_EQ(Authenticator::FromTokensFile("/nonexistent/lesion-tokens").status().code(), absl::StatusCode::kNotFound);
}

TEST(Authenticator, EveryTokenMatchesItsOwnUserAndNearMissesDoNot) {
  Authenticator auth = *Authenticator::FromTokensText("tok-a a user\ntok-b b admin\ntok-c c user\n", "f");
  for (const char* user : {"a", "b", "c"}) {
    absl::StatusOr<Principal> p = auth.Authenticate(absl::StrCat("Bearer tok-", user), std::nullopt);
    ASSERT_OK(p) << user << ": " << p.status();
    EXPECT_EQ(p->user, user);
  }
  EXPECT_TRUE(auth.Authenticate("Bearer tok-b", std::nullopt)->is_admin());
  // A prefix, an extension and a one-character change of a valid token are all unknown.
  for (const char* near : {"Bearer tok-", "Bearer tok-bb", "Bearer tok-d", "Bearer TOK-B"}) {
    EXPECT_EQ(auth.Authenticate(near, std::nullopt).status().code(), absl::StatusCode::kUnauthenticated) << near;
  }
}

// The time a check takes must not depend on how much of a token a guess gets right. With an
// early-exit compare, a 1 MiB guess that differs from the token only in its last byte costs a
// 1 MiB memcmp, and one that differs in the first byte costs nothing; comparing digests costs the
// same hash either way. Medians of interleaved runs, and a loose bound, keep this robust on a busy
// machine while an early-exit compare misses it by a wide margin.
TEST(Authenticator, CheckTimeDoesNotDependOnHowMuchOfTheTokenIsRight) {
  const std::string token(1 << 20, 'k');
  Authenticator auth = *Authenticator::FromTokensText(absl::StrCat(token, " alice user\n"), "f");
  std::string wrong_first = absl::StrCat("Bearer ", token), wrong_last = wrong_first;
  wrong_first[7] = 'x';
  wrong_last.back() = 'x';
  auto time_one = [&](const std::string& header) {
    const auto start = std::chrono::steady_clock::now();
    EXPECT_FALSE(auth.Authenticate(header, std::nullopt).ok());
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  std::vector<double> first_times, last_times;
  for (int i = 0; i < 15; ++i) {
    first_times.push_back(time_one(wrong_first));
    last_times.push_back(time_one(wrong_last));
  }
  auto median = [](std::vector<double> v) {
    std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
    return v[v.size() / 2];
  };
  const double first = median(first_times), last = median(last_times);
  EXPECT_LT(last, 2 * first) << "wrong last byte " << last * 1e6 << " us, wrong first byte " << first * 1e6 << " us";
  EXPECT_LT(first, 2 * last) << "wrong last byte " << last * 1e6 << " us, wrong first byte " << first * 1e6 << " us";
}

TEST(Authenticator, TokensFileThatOthersCanWriteIsRefusedWithTheFix) {
  ScopedTestDir dir("lesion_auth");
  const std::filesystem::path path = dir.path() / "tokens";
  std::ofstream(path) << kTokens;
  for (mode_t mode : {0600, 0640, 0644, 0400}) {
    ASSERT_EQ(::chmod(path.c_str(), mode), 0);
    absl::StatusOr<Authenticator> auth = Authenticator::FromTokensFile(path);
    ASSERT_OK(auth) << std::oct << mode << ": " << auth.status();
    EXPECT_EQ(auth->Authenticate("Bearer tok-root", std::nullopt)->user, "root");
  }
  for (mode_t mode : {0666, 0662, 0620, 0660}) {
    ASSERT_EQ(::chmod(path.c_str(), mode), 0);
    absl::Status st = Authenticator::FromTokensFile(path).status();
    EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << std::oct << mode << ": " << st;
    char mode_text[8];
    std::snprintf(mode_text, sizeof(mode_text), "%04o", static_cast<unsigned>(mode));
    EXPECT_NE(st.message().find(absl::StrCat("mode ", mode_text)), absl::string_view::npos) << st;
    EXPECT_NE(st.message().find(absl::StrCat("chmod 600 ", path.string())), absl::string_view::npos) << st;
  }
}

TEST(Authenticator, AnonymousModeTakesUserFromMetadata) {
  Authenticator admin = Authenticator::Anonymous(true);
  EXPECT_FALSE(admin.has_tokens());
  absl::StatusOr<Principal> p = admin.Authenticate(std::nullopt, std::nullopt);
  ASSERT_OK(p);
  EXPECT_EQ(p->user, "anonymous");
  EXPECT_TRUE(p->is_admin());
  EXPECT_EQ(admin.Authenticate("Bearer whatever", "carol")->user, "carol");

  Authenticator users = Authenticator::Anonymous(false);
  EXPECT_EQ(users.Authenticate(std::nullopt, "dave")->role, Role::kUser);
}

}  // namespace
}  // namespace lesion::server
