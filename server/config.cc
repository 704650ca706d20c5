#include "server/config.h"

#include <algorithm>
#include <cstdlib>
#include <optional>
#include <set>
#include <system_error>
#include <utility>

#include <nlohmann/json.hpp>

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

absl::StatusOr<bool> ParseBool(absl::string_view what, absl::string_view text) {
  if (text == "true" || text == "1" || text == "yes") return true;
  if (text == "false" || text == "0" || text == "no") return false;
  return absl::InvalidArgumentError(absl::StrCat(what, ": '", text, "' is not a boolean (true or false)"));
}

absl::StatusOr<ModelPreload> ParseModelFlag(absl::string_view text) {
  size_t eq = text.find('=');
  if (eq == absl::string_view::npos || eq == 0 || eq + 1 == text.size()) {
    return absl::InvalidArgumentError(absl::StrCat("--model: '", text, "' is not NAME=REF (REF: a directory or org/name[@revision])"));
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

absl::Status ApplyConfigFile(const std::string& path, ServerConfig& config) {
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  Json root = Json::parse(text, nullptr, /*allow_exceptions=*/false, /*ignore_comments=*/true);
  if (root.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(path, ": not valid JSON"));
  if (!root.is_object()) return absl::InvalidArgumentError(absl::StrCat(path, ": must be a JSON object"));
  for (const auto& [key, value] : root.items()) {
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
    } else if (key == "tf32") {
      if (!value.is_boolean()) st = absl::InvalidArgumentError("config key 'tf32' must be a boolean");
      else config.tf32 = value.get<bool>();
    } else if (key == "allow_anonymous_admin") {
      if (!value.is_boolean()) st = absl::InvalidArgumentError("config key 'allow_anonymous_admin' must be a boolean");
      else config.allow_anonymous_admin = value.get<bool>();
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
        if (!m.is_object()) return absl::InvalidArgumentError(absl::StrCat("config key '", where, "' must be an object"));
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

std::optional<std::filesystem::path> Canonical(const std::string& dir) {
  std::error_code ec;
  std::filesystem::path p = std::filesystem::canonical(dir, ec);
  if (ec) return std::nullopt;
  return p;
}

bool IsUnder(const std::filesystem::path& path, const std::filesystem::path& root) {
  auto [root_end, path_it] = std::mismatch(root.begin(), root.end(), path.begin(), path.end());
  return root_end == root.end();
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
  --tls-cert PATH --tls-key PATH   serve TLS (PEM)
  --max-queue-per-device N   (default 64)
  --max-capture-bytes N      (default 268435456)
  --max-tokens N             (default 67108864)
  --max-sweep-variants N     variants of one sweep (default 65536)
  --max-pass-tokens N        tokens of one batched sweep pass, unless the spec sets
                             variants_per_pass (default 65536)
  --tf32[=true|false]        float32 matrix products on TF32 tensor cores (about 1e-3 relative
                             error; recorded in results as run.tf32; default false)
  --data-dir DIR             named datasets (default $LESION_DATA_DIR or the source tree's data/)
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
  static const std::set<std::string, std::less<>> kNoValue = {"--help", "-h", "--no-default-model",
                                                              "--allow-anonymous-admin", "--tf32"};
  static const std::set<std::string, std::less<>> kWithValue = {
      "--config",     "--listen",      "--db",          "--database",           "--model",
      "--dtype",      "--device",      "--model-root",  "--tokens-file",        "--tls-cert",
      "--tls-key",    "--max-tokens",  "--data-dir",    "--max-queue-per-device", "--max-capture-bytes",
      "--max-sweep-variants", "--max-pass-tokens"};
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
    if (kNoValue.contains(name) && flag.value.has_value() && name != "--allow-anonymous-admin" && name != "--tf32") {
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
    } else if (name == "--tf32") {
      if (flag.value.has_value()) {
        ASSIGN_OR_RETURN(config.tf32, ParseBool(name, value));
      } else {
        config.tf32 = true;
      }
    } else if (name == "--data-dir") {
      config.data_dir = value;
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag '", name, "' (see --help)"));
    }
    if (flag.value.has_value() && flag.value->empty() && name != "--allow-anonymous-admin" && name != "--tf32") {
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
  if (config.data_dir.empty()) {
    const char* env = std::getenv("LESION_DATA_DIR");
    config.data_dir = env != nullptr && *env != '\0' ? env : LESION_DEFAULT_DATA_DIR;
  }
  return config;
}

absl::Status CheckModelDirAllowed(const ServerConfig& config, const std::string& dir) {
  std::optional<std::filesystem::path> path = Canonical(dir);
  if (!path.has_value()) return absl::NotFoundError(absl::StrCat("model directory '", dir, "' does not exist"));
  for (const ModelPreload& m : config.models) {
    std::optional<std::filesystem::path> preloaded = Canonical(m.dir);
    if (preloaded.has_value() && *preloaded == *path) return absl::OkStatus();
  }
  for (const std::string& root : config.model_roots) {
    std::optional<std::filesystem::path> canonical_root = Canonical(root);
    if (canonical_root.has_value() && IsUnder(*path, *canonical_root)) return absl::OkStatus();
  }
  if (config.model_roots.empty()) {
    return absl::PermissionDeniedError(absl::StrCat("model directory '", dir,
                                                    "' is not allowed: the server has no model roots "
                                                    "(start lesiond with --model-root DIR)"));
  }
  return absl::PermissionDeniedError(absl::StrCat("model directory '", path->string(),
                                                  "' is not under an allowed model root (",
                                                  absl::StrJoin(config.model_roots, ", "), ")"));
}

}  // namespace lesion::server
