#include "server/auth.h"

#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/file_util.h"
#include "common/status_macros.h"

namespace lesion::server {

Authenticator Authenticator::Anonymous(bool anonymous_admin) {
  Authenticator auth;
  auth.anonymous_admin_ = anonymous_admin;
  return auth;
}

absl::StatusOr<Authenticator> Authenticator::FromTokensFile(const std::filesystem::path& path) {
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  return FromTokensText(text, path.string());
}

absl::StatusOr<Authenticator> Authenticator::FromTokensText(absl::string_view text, absl::string_view source) {
  Authenticator auth;
  auth.tokens_.emplace();
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line.front() == '#') continue;
    std::vector<absl::string_view> fields = absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (fields.size() != 3) {
      return absl::InvalidArgumentError(absl::StrCat(source, ":", line_no, ": expected `TOKEN USER ROLE`, got ",
                                                     fields.size(), " field(s)"));
    }
    Principal principal{std::string(fields[1]), Role::kUser};
    if (fields[2] == "admin") {
      principal.role = Role::kAdmin;
    } else if (fields[2] != "user") {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ":", line_no, ": unknown role '", fields[2], "' (user or admin)"));
    }
    if (!auth.tokens_->emplace(std::string(fields[0]), std::move(principal)).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ":", line_no, ": token of user '", fields[1], "' is given twice"));
    }
  }
  return auth;
}

absl::StatusOr<Principal> Authenticator::Authenticate(std::optional<absl::string_view> authorization,
                                                      std::optional<absl::string_view> x_lesion_user) const {
  if (!tokens_.has_value()) {
    std::string user = x_lesion_user.has_value() && !x_lesion_user->empty() ? std::string(*x_lesion_user)
                                                                           : std::string("anonymous");
    return Principal{std::move(user), anonymous_admin_ ? Role::kAdmin : Role::kUser};
  }
  if (!authorization.has_value()) {
    return absl::UnauthenticatedError(
        "missing metadata 'authorization: Bearer TOKEN': this server requires a token from its tokens file");
  }
  absl::string_view value = absl::StripAsciiWhitespace(*authorization);
  constexpr absl::string_view kBearer = "Bearer ";
  if (!absl::StartsWithIgnoreCase(value, kBearer)) {
    return absl::UnauthenticatedError("metadata 'authorization' must read 'Bearer TOKEN'");
  }
  absl::string_view token = absl::StripAsciiWhitespace(value.substr(kBearer.size()));
  if (token.empty()) return absl::UnauthenticatedError("metadata 'authorization: Bearer' has no token");
  auto it = tokens_->find(token);
  if (it == tokens_->end()) return absl::UnauthenticatedError("unknown token in metadata 'authorization'");
  return it->second;
}

}  // namespace lesion::server
