#include "server/auth.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <sys/stat.h>

#include <cerrno>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/file_util.h"
#include "common/status_macros.h"

namespace lesion::server {
namespace {

std::array<uint8_t, 32> Sha256(absl::string_view text) {
  std::array<uint8_t, 32> digest;
  static_assert(SHA256_DIGEST_LENGTH == 32);
  SHA256(reinterpret_cast<const unsigned char*>(text.data()), text.size(), digest.data());
  return digest;
}

}  // namespace

Authenticator Authenticator::Anonymous(bool anonymous_admin) {
  Authenticator auth;
  auth.anonymous_admin_ = anonymous_admin;
  return auth;
}

absl::StatusOr<Authenticator> Authenticator::FromTokensFile(const std::filesystem::path& path) {
  ASSIGN_OR_RETURN(OpenedFile file, OpenRegularFile(path, "tokens file"));
  struct stat info;
  if (::fstat(file.fd.get(), &info) != 0) {
    const int err = errno;
    return ErrnoToStatus(err, absl::StrCat("cannot stat tokens file ", path.string()));
  }
  // Whoever can write the file can give themselves an admin token.
  if ((info.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
    return absl::FailedPreconditionError(
        absl::StrFormat("tokens file %s has mode %04o: %s can write it, so could make themselves an admin; "
                        "run `chmod 600 %s` (or 640 to let its group read it)",
                        path.string(), info.st_mode & 07777, (info.st_mode & S_IWOTH) != 0 ? "every user" : "its group",
                        path.string()));
  }
  ASSIGN_OR_RETURN(std::string text, ReadToEnd(file.fd.get(), path));
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
      return absl::InvalidArgumentError(
          absl::StrCat(source, ":", line_no, ": expected `TOKEN USER ROLE`, got ", fields.size(), " field(s)"));
    }
    Principal principal{std::string(fields[1]), Role::kUser};
    if (fields[2] == "admin") {
      principal.role = Role::kAdmin;
    } else if (fields[2] != "user") {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ":", line_no, ": unknown role '", fields[2], "' (user or admin)"));
    }
    const Digest digest = Sha256(fields[0]);
    for (const TokenEntry& entry : *auth.tokens_) {
      if (entry.digest == digest) {
        return absl::InvalidArgumentError(
            absl::StrCat(source, ":", line_no, ": token of user '", fields[1], "' is given twice"));
      }
    }
    auth.tokens_->push_back(TokenEntry{digest, std::move(principal)});
  }
  return auth;
}

absl::StatusOr<Principal> Authenticator::Authenticate(std::optional<absl::string_view> authorization,
                                                      std::optional<absl::string_view> x_lesion_user) const {
  if (!tokens_.has_value()) {
    std::string user =
        x_lesion_user.has_value() && !x_lesion_user->empty() ? std::string(*x_lesion_user) : std::string("anonymous");
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
  // Digests have one length whatever the token's, and every entry is compared in full (no early
  // exit, no branch on the outcome inside the loop), so timing reveals neither a token's prefix nor
  // which entry matched.
  const Digest digest = Sha256(token);
  const TokenEntry* match = nullptr;
  for (const TokenEntry& entry : *tokens_) {
    const bool equal = CRYPTO_memcmp(entry.digest.data(), digest.data(), digest.size()) == 0;
    match = equal ? &entry : match;
  }
  if (match == nullptr) return absl::UnauthenticatedError("unknown token in metadata 'authorization'");
  return match->principal;
}

}  // namespace lesion::server
