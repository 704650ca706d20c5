// A small command-line parser for the `lesion` CLI: `--name value`, `--name=value` and boolean
// `--flag`, plus positional arguments. Every flag a command reads is declared by reading it; any
// flag left unread is reported as unknown, so typos never pass silently.
// Thread-compatible.
#ifndef LESION_CLIENT_CPP_CLI_ARGS_H_
#define LESION_CLIENT_CPP_CLI_ARGS_H_

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace lesion::cli {

class Args {
 public:
  // Parses argv[first..argc). `boolean_flags` never take a value.
  static absl::StatusOr<Args> Parse(int argc, char** argv, int first, const std::set<std::string>& boolean_flags);

  std::optional<std::string> Get(const std::string& name);
  absl::StatusOr<std::string> Require(const std::string& name);
  absl::StatusOr<std::optional<int64_t>> GetInt(const std::string& name);
  bool Flag(const std::string& name);
  const std::vector<std::string>& positional() const { return positional_; }
  // InvalidArgument naming any flag no command read.
  absl::Status CheckAllUsed() const;

 private:
  std::map<std::string, std::string> values_;
  std::set<std::string> used_;
  std::vector<std::string> positional_;
};

}  // namespace lesion::cli

#endif  // LESION_CLIENT_CPP_CLI_ARGS_H_
