#include "server/config.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <optional>
#include <regex>
#include <set>
#include <system_error>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/file_util.h"
#include "common/model_path.h"
#include "common/status_macros.h"

#ifndef LESION_SOURCE_DIR
#define LESION_SOURCE_DIR "."
#endif
#ifndef LESION_DEFAULT_DATA_DIR
#define LESION_DEFAULT_DATA_DIR "data"
#endif

namespace lesion::server {
namespace {

using Json = nlohmann::json;

absl::StatusOr<int64_t> ParsePositive(absl::string_view what, absl::string_view text) {
  int64_t value = 0;
  if (!absl::SimpleAtoi(text, &value)) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": '", text, "' is not an integer"));
  }
  if (value <= 0) return absl::InvalidArgumentError(absl::StrCat(what, ": ", value, " must be positive"));
  return value;
}

// Sizes where 0 means "none" (no cache, no limit, no grace).
absl::StatusOr<int64_t> ParseNonNegative(absl::string_view what, absl::string_view text) {
  int64_t value = 0;
  if (!absl::SimpleAtoi(text, &value)) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": '", text, "' is not an integer"));
  }
  if (value < 0) return absl::InvalidArgumentError(absl::StrCat(what, ": ", value, " must be 0 or more"));
  return value;
}

absl::StatusOr<bool> ParseBool(absl::string_view what, absl::string_view text) {
  if (text == "true" || text == "1" || text == "yes") return true;
  if (text == "false" || text == "0" || text == "no") return false;
  return absl::InvalidArgumentError(absl::StrCat(what, ": '", text, "' is not a boolean (true or false)"));
}

absl::StatusOr<ModelPreload> ParseModelFlag(absl::string_view text) {
  size_t eq = text.find('=');
  if (eq == absl::string_view::npos || eq == 0 || eq + 1 == text.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--model: '", text, "' is not NAME=REF (REF: a directory or org/name[@revision])"));
  }
  return ModelPreload{std::string(text.substr(0, eq)), std::string(text.substr(eq + 1)), "", ""};
}

// JSON helpers: type errors name the key.
absl::StatusOr<std::string> JsonString(const Json& j, absl::string_view key) {
  if (!j.is_string()) return absl::InvalidArgumentError(absl::StrCat("config key '", key, "' must be a string"));
  return j.get<std::string>();
}
absl::StatusOr<int64_t> JsonPositive(const Json& j, absl::string_view key) {
  if (!j.is_number_integer() || j.get<int64_t>() <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("config key '", key, "' must be a positive integer"));
  }
  return j.get<int64_t>();
}

absl::StatusOr<int64_t> JsonNonNegative(const Json& j, absl::string_view key) {
  if (!j.is_number_integer() || j.get<int64_t>() < 0) {
    return absl::InvalidArgumentError(absl::StrCat("config key '", key, "' must be an integer >= 0"));
  }
  return j.get<int64_t>();
}

absl::Status ApplyConfigFile(const std::string& path, ServerConfig& config) {
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  Json root = Json::parse(text, nullptr, /*allow_exceptions=*/false, /*ignore_comments=*/true);
  if (root.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(path, ": not valid JSON"));
  if (!root.is_object()) return absl::InvalidArgumentError(absl::StrCat(path, ": must be a JSON object"));
  for (const auto& item : root.items()) {
    // Named references, not structured bindings: the lambdas below capture them (clang 14).
    const std::string& key = item.key();
    const Json& value = item.value();
    absl::Status st = absl::OkStatus();
    auto str = [&](std::string& out) -> absl::Status {
      ASSIGN_OR_RETURN(out, JsonString(value, key));
      return absl::OkStatus();
    };
    auto num = [&](int64_t& out) -> absl::Status {
      ASSIGN_OR_RETURN(out, JsonPositive(value, key));
      return absl::OkStatus();
    };
    if (key == "listen") {
      st = str(config.listen);
    } else if (key == "database") {
      st = str(config.database);
    } else if (key == "tokens_file") {
      st = str(config.tokens_file);
    } else if (key == "tls_cert") {
      st = str(config.tls_cert);
    } else if (key == "tls_key") {
      st = str(config.tls_key);
    } else if (key == "data_dir") {
      st = str(config.data_dir);
    } else if (key == "metrics_address") {
      st = str(config.metrics_address);
    } else if (key == "log_format") {
      st = str(config.log_format);
    } else if (key == "device") {
      st = str(config.default_device);
    } else if (key == "dtype") {
      st = str(config.default_dtype);
    } else if (key == "max_queue_per_device") {
      st = num(config.max_queue_per_device);
    } else if (key == "max_capture_bytes") {
      st = num(config.max_capture_bytes);
    } else if (key == "max_tokens") {
      st = num(config.max_tokens);
    } else if (key == "max_sweep_variants") {
      st = num(config.max_sweep_variants);
    } else if (key == "max_pass_tokens") {
      st = num(config.max_pass_tokens);
    } else if (key == "max_user_bytes") {
      absl::StatusOr<int64_t> parsed = JsonNonNegative(value, key);
      if (parsed.ok()) config.max_user_bytes = *parsed;
      st = parsed.status();
    } else if (key == "read_connections") {
      st = num(config.read_connections);
    } else if (key == "max_list_bytes") {
      st = num(config.max_list_bytes);
    } else if (key == "baseline_cache_bytes" || key == "max_queued_per_user" || key == "shutdown_grace_seconds") {
      int64_t& out = key == "baseline_cache_bytes"  ? config.baseline_cache_bytes
                     : key == "max_queued_per_user" ? config.max_queued_per_user
                                                    : config.shutdown_grace_seconds;
      absl::StatusOr<int64_t> parsed = JsonNonNegative(value, key);
      if (parsed.ok()) out = *parsed;
      st = parsed.status();
    } else if (key == "tf32") {
      if (!value.is_boolean())
        st = absl::InvalidArgumentError("config key 'tf32' must be a boolean");
      else
        config.tf32 = value.get<bool>();
    } else if (key == "allow_anonymous_admin") {
      if (!value.is_boolean())
        st = absl::InvalidArgumentError("config key 'allow_anonymous_admin' must be a boolean");
      else
        config.allow_anonymous_admin = value.get<bool>();
    } else if (key == "allow_anonymous_remote") {
      if (!value.is_boolean())
        st = absl::InvalidArgumentError("config key 'allow_anonymous_remote' must be a boolean");
      else
        config.allow_anonymous_remote = value.get<bool>();
    } else if (key == "model_roots") {
      if (!value.is_array()) return absl::InvalidArgumentError("config key 'model_roots' must be an array of strings");
      for (const Json& root_dir : value) {
        ASSIGN_OR_RETURN(std::string dir, JsonString(root_dir, "model_roots[]"));
        config.model_roots.push_back(std::move(dir));
      }
    } else if (key == "models") {
      if (!value.is_array()) return absl::InvalidArgumentError("config key 'models' must be an array of objects");
      for (size_t i = 0; i < value.size(); ++i) {
        const Json& m = value[i];
        std::string where = absl::StrCat("models[", i, "]");
        if (!m.is_object())
          return absl::InvalidArgumentError(absl::StrCat("config key '", where, "' must be an object"));
        ModelPreload preload;
        for (const auto& [mkey, mvalue] : m.items()) {
          std::string full = absl::StrCat(where, ".", mkey);
          std::string* out = mkey == "name"     ? &preload.name
                             : mkey == "dir"    ? &preload.dir
                             : mkey == "dtype"  ? &preload.dtype
                             : mkey == "device" ? &preload.device
                                                : nullptr;
          if (out == nullptr) {
            return absl::InvalidArgumentError(
                absl::StrCat("unknown config key '", full, "' (name, dir, dtype, device)"));
          }
          ASSIGN_OR_RETURN(*out, JsonString(mvalue, full));
        }
        if (preload.name.empty() || preload.dir.empty()) {
          return absl::InvalidArgumentError(absl::StrCat("config key '", where, "' needs \"name\" and \"dir\""));
        }
        config.models.push_back(std::move(preload));
      }
    } else {
      return absl::InvalidArgumentError(absl::StrCat(path, ": unknown config key '", key, "'"));
    }
    RETURN_IF_ERROR(st);
  }
  return absl::OkStatus();
}

namespace fs = std::filesystem;

// Where `path` leads: every symbolic link resolved, "." and ".." applied, as the kernel would when
// opening it (realpath), except that a path that does not exist is resolved as far as it exists
// and the rest appended (`exists` false). Unlike std::filesystem::weakly_canonical, a dangling
// link is followed to its target too, so a missing path is placed inside or outside the roots
// exactly as an existing one would be. nullopt when a component cannot be examined (EACCES) or
// links loop.
std::optional<fs::path> Resolve(const fs::path& path, bool* exists = nullptr) {
  constexpr int kMaxLinks = 40;  // the kernel's limit (ELOOP)
  std::error_code ec;
  fs::path pending = fs::absolute(path, ec);
  if (ec) return std::nullopt;
  fs::path current = pending.root_path();
  int links = 0;
  for (auto it = std::next(pending.begin()); it != pending.end();) {
    const fs::path part = *it++;
    if (part.empty() || part == ".") continue;
    if (part == "..") {
      current = current.parent_path();  // `current` has no links left, so this is what ".." is
      continue;
    }
    const fs::path candidate = current / part;
    const fs::file_status status = fs::symlink_status(candidate, ec);
    if (status.type() == fs::file_type::not_found) {
      if (exists != nullptr) *exists = false;
      fs::path missing = candidate;
      for (; it != pending.end(); ++it) missing /= *it;
      return missing.lexically_normal();
    }
    if (ec) return std::nullopt;
    if (status.type() != fs::file_type::symlink) {
      current = candidate;
      continue;
    }
    if (++links > kMaxLinks) return std::nullopt;
    fs::path target = fs::read_symlink(candidate, ec);
    if (ec) return std::nullopt;
    fs::path rest = target.is_absolute() ? target : current / target;
    for (; it != pending.end(); ++it) rest /= *it;
    pending = rest;
    current = pending.root_path();
    it = std::next(pending.begin());
  }
  if (exists != nullptr) *exists = true;
  return current;
}

bool IsUnder(const fs::path& path, const fs::path& root) {
  auto [root_end, path_it] = std::mismatch(root.begin(), root.end(), path.begin(), path.end());
  return root_end == root.end();
}

// The model roots as they resolve; those that do not exist are left out.
std::vector<fs::path> ResolvedRoots(const ServerConfig& config) {
  std::vector<fs::path> roots;
  for (const std::string& root : config.model_roots) {
    bool exists = false;
    std::optional<fs::path> resolved = Resolve(root, &exists);
    if (resolved.has_value() && exists) roots.push_back(*std::move(resolved));
  }
  return roots;
}

bool UnderAnyRoot(const std::optional<fs::path>& path, const std::vector<fs::path>& roots) {
  return path.has_value() &&
         std::any_of(roots.begin(), roots.end(), [&](const fs::path& root) { return IsUnder(*path, root); });
}

// "NAME-00002-of-00003.gguf" -> {"NAME", "00003"}, the loader's naming of GGUF splits
// (model/gguf/gguf.cc).
std::optional<std::pair<std::string, std::string>> GgufSplitName(const std::string& file_name) {
  static const std::regex kSplit(R"((.*)-\d{5,9}-of-(\d{5,9})\.gguf)");
  std::smatch match;
  if (!std::regex_match(file_name, match, kSplit)) return std::nullopt;
  return std::make_pair(match[1].str(), match[2].str());
}

// The files the checkpoint loader may open for the model at `given` (resolved: `resolved`), named
// as the loader names them: for a directory, everything in it (config.json, tokenizer files,
// *.safetensors, *.gguf, ...) and the shards its safetensors index names, which may lie in
// subdirectories; for a GGUF file, its sibling splits.
absl::StatusOr<std::vector<fs::path>> FilesTheLoaderMayOpen(const fs::path& given, const fs::path& resolved) {
  std::vector<fs::path> files;
  std::error_code ec;
  const bool is_dir = fs::is_directory(resolved, ec);
  // The loader finds splits beside the path it is given, by that path's file name.
  const fs::path listed = is_dir ? resolved : given.has_parent_path() ? given.parent_path() : fs::path(".");
  // increment(ec), not ++, which throws on a read error.
  for (fs::directory_iterator it(listed, ec), end; !ec && it != end; it.increment(ec)) {
    const fs::path name = it->path().filename();
    if (is_dir) {
      files.push_back(given / name);
    } else if (name != given.filename() && GgufSplitName(name.string()).has_value() &&
               GgufSplitName(name.string()) == GgufSplitName(given.filename().string())) {
      files.push_back(given.parent_path() / name);
    }
  }
  // What could not be listed could not be checked.
  if (ec) return ErrnoToStatus(ec.value(), absl::StrCat("cannot list the model directory of '", given.string(), "'"));
  if (!is_dir) return files;
  // A malformed or unreadable index is the loader's to report; only its shard names matter here.
  absl::StatusOr<std::string> index = ReadFile(resolved / "model.safetensors.index.json");
  if (index.ok()) {
    const Json json = Json::parse(*index, nullptr, /*allow_exceptions=*/false);
    const auto weight_map = json.is_object() ? json.find("weight_map") : json.end();
    if (weight_map != json.end() && weight_map->is_object()) {
      for (const Json& shard : *weight_map) {
        if (shard.is_string() && !shard.get_ref<const std::string&>().empty()) {
          files.push_back(given / shard.get_ref<const std::string&>());
        }
      }
    }
  }
  return files;
}

}  // namespace

std::string Usage() {
  return R"(usage: lesiond [flags]
  --config FILE              JSON file with the keys below ('_' for '-'); flags override it
  --listen ADDR              host:port or unix:PATH (default 127.0.0.1:50051)
  --db PATH                  SQLite database (default ./lesion.db)
  --model NAME=REF           preload a model (repeatable); REF: a directory, a .gguf file, or
                             org/name[@revision] in the local Hugging Face cache ($HF_HUB_CACHE,
                             $HF_HOME/hub, ~/.cache/huggingface/hub; never downloaded);
                             default: the bundled stories260K
  --dtype D                  float32 | bfloat16 | float16 for the --model before it (before any
                             --model: every model's default)
  --device D                 cpu | cuda | cuda:N, likewise (before any --model: also LoadModel's default);
                             a list (cuda:0,cuda:1) or cuda:* loads a replica on each device
  --no-default-model         start without the bundled model when no --model is given
  --model-root DIR           LoadModel paths (cache references resolved) must lie under one
                             (repeatable)
  --tokens-file PATH         lines `TOKEN USER ROLE` (ROLE user|admin); required tokens then
  --allow-anonymous-admin[=true|false]
                             without a tokens file, callers are admins (default true)
  --allow-anonymous-remote[=true|false]
                             allow anonymous admins on an address other machines can reach
                             (0.0.0.0, a host name); refused by default: use --tokens-file
  --tls-cert PATH --tls-key PATH   serve TLS (PEM)
  --max-queue-per-device N   (default 64)
  --max-capture-bytes N      (default 268435456)
  --max-tokens N             (default 67108864)
  --max-sweep-variants N     variants of one sweep (default 65536)
  --max-pass-tokens N        tokens of one batched sweep pass, unless the spec sets
                             variants_per_pass (default 65536)
  --baseline-cache-bytes N   baseline passes held in memory, least recently used out first;
                             never captures (default 268435456; 0 holds none)
  --max-queued-per-user N    experiments one user may have queued, a sweep counting once
                             (default 0: only --max-queue-per-device bounds them)
  --max-user-bytes N         bytes one user's stored experiments may take (results, captures,
                             specs); at the limit Submit is refused until an admin deletes
                             experiments or drops captures (lesion rm / gc) (default 0: no limit)
  --read-connections N       database reads that run at once, beside the writer (default 4)
  --max-list-bytes N         bytes of one ListExperiments page; a page stops short of its limit
                             there and says where the next starts (default 67108864)
  --shutdown-grace-seconds N on SIGTERM/SIGINT, let running experiments finish for up to N
                             seconds before they are stopped and recorded as interrupted
                             (default 0)
  --tf32[=true|false]        float32 matrix products on TF32 tensor cores (about 1e-3 relative
                             error; recorded in results as run.tf32; default false)
  --data-dir DIR             named datasets (default $LESION_DATA_DIR or the source tree's data/)
  --metrics-address HOST:PORT  serve Prometheus metrics on http://HOST:PORT/metrics (no
                             authentication: keep it on 127.0.0.1 or a trusted network; port 0
                             picks a free one; default: no metrics endpoint)
  --log-format text|json     log lines on stderr as logfmt key=value (default) or JSON
  --help
)";
}

ModelPreload BundledModel() {
  return ModelPreload{"stories260K", std::string(LESION_SOURCE_DIR) + "/models/stories260K", "", ""};
}

absl::StatusOr<ServerConfig> ParseServerConfig(const std::vector<std::string>& args) {
  ServerConfig config;
  // Split "--flag=value" and pair each flag with its value first, so --config can be applied before
  // every other flag wherever it appears.
  struct Flag {
    std::string name;
    std::optional<std::string> value;
  };
  // Boolean flags: bare means true, and they also take =true / =false.
  static const std::set<std::string, std::less<>> kBoolean = {"--allow-anonymous-admin", "--allow-anonymous-remote",
                                                              "--tf32"};
  static const std::set<std::string, std::less<>> kNoValue = {
      "--help", "-h", "--no-default-model", "--allow-anonymous-admin", "--allow-anonymous-remote", "--tf32"};
  static const std::set<std::string, std::less<>> kWithValue = {"--config",
                                                                "--listen",
                                                                "--db",
                                                                "--database",
                                                                "--model",
                                                                "--dtype",
                                                                "--device",
                                                                "--model-root",
                                                                "--tokens-file",
                                                                "--tls-cert",
                                                                "--tls-key",
                                                                "--max-tokens",
                                                                "--data-dir",
                                                                "--max-queue-per-device",
                                                                "--max-capture-bytes",
                                                                "--max-sweep-variants",
                                                                "--max-pass-tokens",
                                                                "--baseline-cache-bytes",
                                                                "--max-queued-per-user",
                                                                "--shutdown-grace-seconds",
                                                                "--metrics-address",
                                                                "--log-format",
                                                                "--max-user-bytes",
                                                                "--read-connections",
                                                                "--max-list-bytes"};
  std::vector<Flag> flags;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (!absl::StartsWith(arg, "-")) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", arg, "' (see --help)"));
    }
    size_t eq = arg.find('=');
    const std::string name = arg.substr(0, eq);
    if (!kNoValue.contains(name) && !kWithValue.contains(name)) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag '", name, "' (see --help)"));
    }
    if (eq != std::string::npos) {
      flags.push_back({arg.substr(0, eq), arg.substr(eq + 1)});
    } else if (kNoValue.contains(arg)) {
      flags.push_back({arg, std::nullopt});
    } else {
      if (i + 1 >= args.size()) return absl::InvalidArgumentError(absl::StrCat(arg, " needs a value"));
      flags.push_back({arg, args[++i]});
    }
  }
  for (const Flag& flag : flags) {
    if (flag.name == "--config") RETURN_IF_ERROR(ApplyConfigFile(*flag.value, config));
  }

  bool no_default_model = false;
  bool cli_models = false, cli_roots = false;
  for (const Flag& flag : flags) {
    const std::string& name = flag.name;
    if (kNoValue.contains(name) && flag.value.has_value() && !kBoolean.contains(name)) {
      return absl::InvalidArgumentError(absl::StrCat(name, " takes no value"));
    }
    const std::string value = flag.value.value_or("");
    if (name == "--help" || name == "-h") {
      config.help = true;
    } else if (name == "--config") {
      // applied above
    } else if (name == "--listen") {
      config.listen = value;
    } else if (name == "--db" || name == "--database") {
      config.database = value;
    } else if (name == "--model") {
      if (!cli_models) config.models.clear();  // the command line's list replaces the file's
      cli_models = true;
      ASSIGN_OR_RETURN(ModelPreload preload, ParseModelFlag(value));
      config.models.push_back(std::move(preload));
    } else if (name == "--dtype") {
      (cli_models ? config.models.back().dtype : config.default_dtype) = value;
    } else if (name == "--device") {
      (cli_models ? config.models.back().device : config.default_device) = value;
    } else if (name == "--no-default-model") {
      no_default_model = true;
    } else if (name == "--model-root") {
      if (!cli_roots) config.model_roots.clear();
      cli_roots = true;
      config.model_roots.push_back(value);
    } else if (name == "--tokens-file") {
      config.tokens_file = value;
    } else if (name == "--allow-anonymous-admin") {
      if (flag.value.has_value()) {
        ASSIGN_OR_RETURN(config.allow_anonymous_admin, ParseBool(name, value));
      } else {
        config.allow_anonymous_admin = true;
      }
    } else if (name == "--allow-anonymous-remote") {
      if (flag.value.has_value()) {
        ASSIGN_OR_RETURN(config.allow_anonymous_remote, ParseBool(name, value));
      } else {
        config.allow_anonymous_remote = true;
      }
    } else if (name == "--tls-cert") {
      config.tls_cert = value;
    } else if (name == "--tls-key") {
      config.tls_key = value;
    } else if (name == "--max-queue-per-device") {
      ASSIGN_OR_RETURN(config.max_queue_per_device, ParsePositive(name, value));
    } else if (name == "--max-capture-bytes") {
      ASSIGN_OR_RETURN(config.max_capture_bytes, ParsePositive(name, value));
    } else if (name == "--max-tokens") {
      ASSIGN_OR_RETURN(config.max_tokens, ParsePositive(name, value));
    } else if (name == "--max-sweep-variants") {
      ASSIGN_OR_RETURN(config.max_sweep_variants, ParsePositive(name, value));
    } else if (name == "--max-pass-tokens") {
      ASSIGN_OR_RETURN(config.max_pass_tokens, ParsePositive(name, value));
    } else if (name == "--baseline-cache-bytes") {
      ASSIGN_OR_RETURN(config.baseline_cache_bytes, ParseNonNegative(name, value));
    } else if (name == "--max-queued-per-user") {
      ASSIGN_OR_RETURN(config.max_queued_per_user, ParseNonNegative(name, value));
    } else if (name == "--max-user-bytes") {
      ASSIGN_OR_RETURN(config.max_user_bytes, ParseNonNegative(name, value));
    } else if (name == "--read-connections") {
      ASSIGN_OR_RETURN(config.read_connections, ParsePositive(name, value));
    } else if (name == "--max-list-bytes") {
      ASSIGN_OR_RETURN(config.max_list_bytes, ParsePositive(name, value));
    } else if (name == "--shutdown-grace-seconds") {
      ASSIGN_OR_RETURN(config.shutdown_grace_seconds, ParseNonNegative(name, value));
    } else if (name == "--tf32") {
      if (flag.value.has_value()) {
        ASSIGN_OR_RETURN(config.tf32, ParseBool(name, value));
      } else {
        config.tf32 = true;
      }
    } else if (name == "--data-dir") {
      config.data_dir = value;
    } else if (name == "--metrics-address") {
      config.metrics_address = value;
    } else if (name == "--log-format") {
      config.log_format = value;
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag '", name, "' (see --help)"));
    }
    if (flag.value.has_value() && flag.value->empty() && !kBoolean.contains(name)) {
      return absl::InvalidArgumentError(absl::StrCat(name, " needs a non-empty value"));
    }
  }

  if (config.models.empty() && !no_default_model) config.models.push_back(BundledModel());
  std::set<std::string> names;
  for (ModelPreload& m : config.models) {
    if (!names.insert(m.name).second) {
      return absl::InvalidArgumentError(absl::StrCat("model name '", m.name, "' is preloaded twice"));
    }
    if (m.dtype.empty()) m.dtype = config.default_dtype;
  }
  // Each model's reference becomes the path the engine loads (and the one CheckModelDirAllowed
  // compares with): an existing path as given, org/name[@revision] from the Hugging Face cache.
  for (ModelPreload& m : config.models) {
    if (config.help) break;
    absl::StatusOr<std::filesystem::path> path = ResolveModelPath(m.dir);
    if (!path.ok()) {
      return absl::Status(path.status().code(),
                          absl::StrCat("preloaded model ", m.name, ": ", path.status().message()));
    }
    m.dir = path->string();
  }
  if (config.tls_cert.empty() != config.tls_key.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together: give both or neither");
  }
  if (config.listen.empty()) return absl::InvalidArgumentError("--listen: empty address");
  if (config.tokens_file.empty() && config.allow_anonymous_admin && !config.allow_anonymous_remote &&
      !IsLoopbackListenAddress(config.listen)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--listen ", config.listen,
                     " can be reached from other machines, and without --tokens-file every caller would be an "
                     "admin (load and unload models, cancel anyone's experiments). Give --tokens-file FILE, or "
                     "--allow-anonymous-admin=false (anonymous callers become plain users), or listen on "
                     "127.0.0.1:PORT or unix:PATH; --allow-anonymous-remote accepts the risk"));
  }
  if (config.log_format != "text" && config.log_format != "json") {
    return absl::InvalidArgumentError(absl::StrCat("--log-format: '", config.log_format, "' is not text or json"));
  }
  if (!config.metrics_address.empty()) {
    const size_t colon = config.metrics_address.rfind(':');
    int port = -1;
    if (colon == std::string::npos || colon == 0 ||
        !absl::SimpleAtoi(absl::string_view(config.metrics_address).substr(colon + 1), &port) || port < 0 ||
        port > 65535) {
      return absl::InvalidArgumentError(
          absl::StrCat("--metrics-address: '", config.metrics_address, "' is not HOST:PORT (e.g. 127.0.0.1:9464)"));
    }
  }
  if (config.data_dir.empty()) {
    const char* env = std::getenv("LESION_DATA_DIR");
    config.data_dir = env != nullptr && *env != '\0' ? env : LESION_DEFAULT_DATA_DIR;
  }
  return config;
}

bool IsLoopbackListenAddress(absl::string_view listen) {
  if (absl::StartsWith(listen, "unix:") || absl::StartsWith(listen, "unix-abstract:")) return true;
  const size_t colon = listen.rfind(':');
  if (colon == absl::string_view::npos) return false;
  std::string host(listen.substr(0, colon));
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  if (absl::EqualsIgnoreCase(host, "localhost")) return true;
  in_addr v4;
  if (inet_pton(AF_INET, host.c_str(), &v4) == 1) return (ntohl(v4.s_addr) >> 24) == 127;
  in6_addr v6;
  if (inet_pton(AF_INET6, host.c_str(), &v6) == 1) {
    return IN6_IS_ADDR_LOOPBACK(&v6) || (IN6_IS_ADDR_V4MAPPED(&v6) && v6.s6_addr[12] == 127);
  }
  return false;
}

absl::Status CheckModelDirAllowed(const ServerConfig& config, const std::string& dir) {
  bool exists = false;
  const std::optional<fs::path> path = Resolve(dir, &exists);
  if (path.has_value() && exists) {
    for (const ModelPreload& m : config.models) {
      if (Resolve(m.dir) == path) return absl::OkStatus();  // the operator chose it at start-up
    }
  }
  // One answer for every path outside the roots, naming it as given: whether it exists, or where
  // a link in it leads, is not for the caller to learn.
  const std::vector<fs::path> roots = ResolvedRoots(config);
  if (!UnderAnyRoot(path, roots)) {
    if (config.model_roots.empty()) {
      return absl::PermissionDeniedError(absl::StrCat("model directory '", dir,
                                                      "' is not allowed: the server has no model roots "
                                                      "(start lesiond with --model-root DIR)"));
    }
    return absl::PermissionDeniedError(absl::StrCat("model directory '", dir, "' is not under an allowed model root (",
                                                    absl::StrJoin(config.model_roots, ", "), ")"));
  }
  if (!exists) return absl::NotFoundError(absl::StrCat("model directory '", dir, "' does not exist"));
  // A link inside the model that leads out of the roots (config.json -> /etc/passwd) would have
  // the loader read that file.
  ASSIGN_OR_RETURN(const std::vector<fs::path> files, FilesTheLoaderMayOpen(dir, *path));
  for (const fs::path& file : files) {
    if (!UnderAnyRoot(Resolve(file), roots)) {
      return absl::PermissionDeniedError(absl::StrCat(
          "model file '", file.string(), "' leads outside the model roots (", absl::StrJoin(config.model_roots, ", "),
          "): LoadModel follows no symbolic link out of them; replace the link with the file"));
    }
  }
  return absl::OkStatus();
}

}  // namespace lesion::server
