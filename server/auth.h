// Who is calling: the user name and role of an RPC, from its metadata.
//
// Two modes:
//   - With a tokens file (a shared lab server): every call carries "authorization: Bearer TOKEN";
//     the file maps each token to a user and a role. A call without the header, with a malformed
//     one or with an unknown token is UNAUTHENTICATED.
//   - Without a tokens file (a laptop): nobody is checked. The user is whatever the call's
//     "x-lesion-user" metadata says ("anonymous" when absent), with the role admin only when the
//     server runs with --allow-anonymous-admin (the default without a tokens file), else user.
//
// Tokens file: one token a line, `TOKEN USER ROLE` separated by blanks, ROLE `user` or `admin`;
// blank lines and lines starting with '#' are ignored. A token given twice is an error. The file
// must not be writable by group or others (whoever can write it can make themselves an admin).
// Only the tokens' SHA-256 digests are kept, and a presented token is checked against every one of
// them with a constant-time compare, so the time a check takes says nothing about the tokens.
//
// Users see everyone's experiments (it is a lab) but cancel only their own; loading and unloading
// models is admin-only (the service enforces both, using Principal).
// Thread-safety: immutable after construction; Authenticate may be called from any thread.
#ifndef LESION_SERVER_AUTH_H_
#define LESION_SERVER_AUTH_H_

#include <array>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lesion::server {

enum class Role { kUser, kAdmin };

struct Principal {
  std::string user;
  Role role = Role::kUser;
  bool is_admin() const { return role == Role::kAdmin; }
};

class Authenticator {
 public:
  // No tokens: anonymous mode.
  static Authenticator Anonymous(bool anonymous_admin);
  // InvalidArgument naming the file and line for a malformed line, an unknown role or a repeated
  // token; NotFound / PermissionDenied if the file cannot be read; FailedPrecondition, naming its
  // mode and the chmod that fixes it, if group or others may write it.
  static absl::StatusOr<Authenticator> FromTokensFile(const std::filesystem::path& path);
  // The same from the file's text; `source` names it in messages.
  static absl::StatusOr<Authenticator> FromTokensText(absl::string_view text, absl::string_view source);

  // `authorization` and `x_lesion_user` are the metadata values, nullopt when absent.
  absl::StatusOr<Principal> Authenticate(std::optional<absl::string_view> authorization,
                                         std::optional<absl::string_view> x_lesion_user) const;

  bool has_tokens() const { return tokens_.has_value(); }

 private:
  using Digest = std::array<uint8_t, 32>;  // SHA-256
  struct TokenEntry {
    Digest digest;
    Principal principal;
  };

  Authenticator() = default;
  std::optional<std::vector<TokenEntry>> tokens_;  // nullopt: anonymous mode
  bool anonymous_admin_ = false;
};

}  // namespace lesion::server

#endif  // LESION_SERVER_AUTH_H_
