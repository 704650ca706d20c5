// ServerConfig: how lesiond runs, from command-line flags and/or a JSON file (`--config FILE`, the
// same keys as the flags with '_' for '-'; flags given on the command line override the file).
//
//   lesiond                                     # the bundled stories260K on CPU, ./lesion.db
//   lesiond --listen 0.0.0.0:50051 --db /var/lib/lesion/lesion.db
//           --model gpt2=/models/gpt2 --dtype bfloat16 --device cuda:0
//           --model-root /models --tokens-file /etc/lesion/tokens
//
// Flags (JSON key in parentheses):
//   --listen ADDR (listen)              host:port or unix:PATH; default 127.0.0.1:50051
//   --db PATH (database)                the SQLite file; default ./lesion.db
//   --model NAME=REF (models)           preload, repeatable; JSON: [{"name","dir","dtype","device"}];
//                                       REF (or "dir"): a directory, a .gguf file, or
//                                       org/name[@revision][/FILE] in the local Hugging Face cache
//                                       (common/model_path.h; never downloaded)
//   --dtype D, --device D               after a --model: that model's; before any --model: the
//                                       defaults of every model (--device also the default device of
//                                       LoadModel requests)
//   --no-default-model                  start without the bundled model when no --model is given
//   --model-root DIR (model_roots)      LoadModel paths must lie under one (after resolving cache
//                                       references, symlinks and ..), repeatable; preloaded dirs
//                                       are allowed
//   --tokens-file PATH (tokens_file)    token auth, see server/auth.h
//   --allow-anonymous-admin[=BOOL] (allow_anonymous_admin)  without a tokens file, callers are
//                                       admins; default true without a tokens file
//   --allow-anonymous-remote[=BOOL] (allow_anonymous_remote)  accept anonymous admins on an address
//                                       other machines can reach (refused otherwise); default false
//   --tls-cert PATH, --tls-key PATH (tls_cert, tls_key)  PEM; both or neither
//   --max-queue-per-device N (max_queue_per_device), --max-capture-bytes N (max_capture_bytes),
//   --max-tokens N (max_tokens), --max-sweep-variants N (max_sweep_variants),
//   --max-pass-tokens N (max_pass_tokens)  limits (a sweep's variants; tokens of one batched pass)
//   --baseline-cache-bytes N (baseline_cache_bytes)  bytes of baseline passes held in memory
//   --max-queued-per-user N (max_queued_per_user)    experiments one user may have queued
//   --max-user-bytes N (max_user_bytes)  stored bytes of one user's experiments; 0: no limit
//   --read-connections N (read_connections)  concurrent database reads (default 4)
//   --max-list-bytes N (max_list_bytes)  bytes of one ListExperiments page (default 64 MiB)
//   --shutdown-grace-seconds N (shutdown_grace_seconds)  running experiments may finish first
//   --tf32[=BOOL] (tf32)                float32 matrix products on TF32 tensor cores (faster, about
//                                       1e-3 relative error; recorded in every result's run info)
//   --data-dir DIR (data_dir)           named datasets; default $LESION_DATA_DIR, else the source
//                                       tree's data/
//   --metrics-address HOST:PORT (metrics_address)  serve Prometheus metrics on GET /metrics there
//                                       (unauthenticated; default: none)
//   --log-format text|json (log_format) stderr log lines as logfmt (default) or JSON (server/log.h)
// Thread-compatible value types and free functions.
#ifndef LESION_SERVER_CONFIG_H_
#define LESION_SERVER_CONFIG_H_

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lesion::server {

struct ModelPreload {
  std::string name;
  std::string dir;     // after ParseServerConfig: the resolved path (ResolveModelPath)
  std::string dtype;   // "" = the checkpoint's
  std::string device;  // "" = the default device
};

struct ServerConfig {
  std::string listen = "127.0.0.1:50051";
  std::string database = "lesion.db";
  std::vector<ModelPreload> models;
  std::vector<std::string> model_roots;
  std::string tokens_file;
  bool allow_anonymous_admin = true;
  bool allow_anonymous_remote = false;
  std::string tls_cert, tls_key;
  int64_t max_queue_per_device = 64;
  int64_t max_capture_bytes = int64_t{256} << 20;
  int64_t max_tokens = int64_t{64} << 20;
  int64_t max_sweep_variants = 65536;
  int64_t max_pass_tokens = 65536;
  int64_t baseline_cache_bytes = int64_t{256} << 20;  // 0: none held
  int64_t max_queued_per_user = 0;                    // 0: no per-user limit
  int64_t max_user_bytes = 0;                         // 0: no per-user limit
  int64_t read_connections = 4;
  int64_t max_list_bytes = int64_t{64} << 20;
  int64_t shutdown_grace_seconds = 0;
  bool tf32 = false;
  std::string data_dir;
  std::string metrics_address;      // "" = no /metrics endpoint
  std::string log_format = "text";  // "text" | "json"
  std::string default_device = "cpu";
  std::string default_dtype;
  bool help = false;  // --help: print Usage() and exit 0
};

// The help text.
std::string Usage();

// The bundled model, preloaded when no model is configured.
ModelPreload BundledModel();

// Parses `args` (without the program name). InvalidArgument naming the flag or key and the value
// ("--max-tokens: 'abc' is not an integer"); NotFound / InvalidArgument for an unreadable or
// malformed --config file. Reads LESION_DATA_DIR for the default data dir. Each model's `dir` is
// resolved with ResolveModelPath (common/model_path.h; reads HF_HUB_CACHE / HF_HOME): a reference
// that is not in the Hugging Face cache is its error (NotFound, InvalidArgument,
// FailedPrecondition), the message naming the model. Not done with --help. InvalidArgument, saying
// what to do, for anonymous admins (no tokens file, allow_anonymous_admin) on a listen address
// that is not loopback or a unix socket, unless allow_anonymous_remote.
absl::StatusOr<ServerConfig> ParseServerConfig(const std::vector<std::string>& args);

// Whether clients on other machines cannot reach `listen`: unix:PATH, localhost, 127.0.0.0/8, ::1
// (also as [::1] or ::ffff:127.x). Anything else (0.0.0.0, [::], a host name, an interface's
// address) counts as reachable.
bool IsLoopbackListenAddress(absl::string_view listen);

// Whether LoadModel may read `dir` (a path: resolve cache references with ResolveModelPath first).
// It may when `dir` is a preloaded model's (the same path after resolving links), or when
//   - `dir` resolves (symbolic links, "." and ".." followed) to a path under a model root, and
//   - no file the loader may open there leads out of the roots through a symbolic link: every
//     entry of the directory and every shard its model.safetensors.index.json names (for a GGUF
//     file, its sibling splits).
// PermissionDenied, naming `dir` as given and the roots, for a path outside the roots, with the
// same message whether it exists or not; PermissionDenied naming the file for a file that leads
// out; NotFound for a missing path under a root. The check is made before the loader runs: a link
// swapped in afterwards is not caught.
absl::Status CheckModelDirAllowed(const ServerConfig& config, const std::string& dir);

}  // namespace lesion::server

#endif  // LESION_SERVER_CONFIG_H_
