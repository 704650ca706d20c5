#include "client/cpp/cli_args.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace lesion::cli {

absl::StatusOr<Args> Args::Parse(int argc, char** argv, int first, const std::set<std::string>& boolean_flags) {
  Args args;
  for (int i = first; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--", 0) != 0 || a == "--") {
      args.positional_.push_back(a);
      continue;
    }
    std::string name = a.substr(2), value;
    if (auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    } else if (boolean_flags.count(name) > 0) {
      value = "true";
    } else {
      if (i + 1 >= argc) {
        return absl::InvalidArgumentError(absl::StrCat("flag --", name, " needs a value"));
      }
      value = argv[++i];
    }
    if (args.values_.count(name) > 0) {
      return absl::InvalidArgumentError(absl::StrCat("flag --", name, " given twice"));
    }
    args.values_[name] = value;
  }
  return args;
}

std::optional<std::string> Args::Get(const std::string& name) {
  used_.insert(name);
  auto it = values_.find(name);
  if (it == values_.end()) return std::nullopt;
  return it->second;
}

absl::StatusOr<std::string> Args::Require(const std::string& name) {
  std::optional<std::string> v = Get(name);
  if (!v.has_value()) return absl::InvalidArgumentError(absl::StrCat("missing required flag --", name));
  return *v;
}

absl::StatusOr<std::optional<int64_t>> Args::GetInt(const std::string& name) {
  std::optional<std::string> v = Get(name);
  if (!v.has_value()) return std::optional<int64_t>();
  int64_t n = 0;
  if (!absl::SimpleAtoi(*v, &n)) {
    return absl::InvalidArgumentError(absl::StrCat("flag --", name, " must be an integer, got \"", *v, "\""));
  }
  return std::optional<int64_t>(n);
}

bool Args::Flag(const std::string& name) {
  std::optional<std::string> v = Get(name);
  return v.has_value() && *v != "false" && *v != "0";
}

absl::Status Args::CheckAllUsed() const {
  std::vector<std::string> unknown;
  for (const auto& [name, value] : values_) {
    if (used_.count(name) == 0) unknown.push_back("--" + name);
  }
  if (unknown.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("unknown flag(s) for this command: ", absl::StrJoin(unknown, ", ")));
}

}  // namespace lesion::cli
