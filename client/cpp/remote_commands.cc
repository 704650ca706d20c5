#include "client/cpp/remote_commands.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "client/cpp/remote_client.h"
#include "client/cpp/result_format_proto.h"
#include "common/file_util.h"
#include "common/status_codes.h"
#include "common/status_macros.h"
#include "google/protobuf/util/json_util.h"

namespace lesion::cli {
namespace {

namespace v1 = ::lesion::v1;
using client::RemoteClient;
using client::RemoteOptions;

constexpr char kDefaultServer[] = "127.0.0.1:50051";
constexpr absl::Duration kDefaultTimeout = absl::Seconds(60);
constexpr absl::Duration kDefaultWait = absl::Hours(24);

std::string FromEnv(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? "" : v;
}

// The connection flags, read (so marked used) before CheckAllUsed.
struct Connection {
  RemoteOptions options;
  absl::Duration wait = kDefaultWait;  // run / watch: how long to wait for the final state
};

absl::StatusOr<Connection> ReadConnectionFlags(Args& args) {
  Connection c;
  c.options.address = args.Get("server").value_or(FromEnv("LESION_SERVER"));
  if (c.options.address.empty()) c.options.address = kDefaultServer;
  c.options.token = args.Get("token").value_or(FromEnv("LESION_TOKEN"));
  c.options.user = args.Get("user").value_or(FromEnv("LESION_USER"));
  // TLS: --tls trusts the system's root certificates; --tls-ca FILE (else $LESION_TLS_CA) trusts
  // the PEM certificates in FILE instead (a lab's CA, or the server's self-signed certificate).
  c.options.tls = args.Flag("tls");
  if (std::string ca = args.Get("tls-ca").value_or(FromEnv("LESION_TLS_CA")); !ca.empty()) {
    absl::StatusOr<std::string> pem = ReadFile(ca);
    if (!pem.ok()) return absl::Status(pem.status().code(), absl::StrCat("--tls-ca: ", pem.status().message()));
    c.options.tls = true;
    c.options.tls_root_certs = *std::move(pem);
  }
  c.options.timeout = kDefaultTimeout;
  if (std::optional<std::string> t = args.Get("timeout"); t.has_value()) {
    double seconds = 0;
    if (!absl::SimpleAtod(*t, &seconds) || !(seconds > 0)) {
      return absl::InvalidArgumentError(
          absl::StrCat("flag --timeout must be a positive number of seconds, got \"", *t, "\""));
    }
    c.options.timeout = absl::Seconds(seconds);
    c.wait = c.options.timeout;
  }
  c.options.connect_timeout = std::min(c.options.timeout, absl::Seconds(10));
  return c;
}

absl::StatusOr<std::unique_ptr<RemoteClient>> Connect(const Connection& c) { return RemoteClient::Connect(c.options); }

// Exactly one positional argument, named `what` in the error.
absl::StatusOr<std::string> OnePositional(const Args& args, const char* what) {
  if (args.positional().size() != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("expected one ", what, ", got ", args.positional().size(), " positional argument(s)"));
  }
  return args.positional()[0];
}

std::string ToJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.add_whitespace = true;
  options.always_print_primitive_fields = true;
  std::string out;
  (void)google::protobuf::util::MessageToJsonString(message, &out, options);
  return out;
}

std::string StatusName(v1::ExperimentStatus status) { return absl::AsciiStrToLower(v1::ExperimentStatus_Name(status)); }

std::string FormatTime(int64_t unix_micros) {
  if (unix_micros == 0) return "";
  return absl::FormatTime("%Y-%m-%d %H:%M:%S", absl::FromUnixMicros(unix_micros), absl::LocalTimeZone());
}

std::optional<double> PerplexityDeltaPct(const v1::Experiment& e) {
  for (const v1::Metric& m : e.result().metrics()) {
    if (m.name() == "perplexity") return m.delta_pct();
  }
  return std::nullopt;
}

// RFC 4180 quoting, only where needed.
std::string Csv(const std::string& field) {
  if (field.find_first_of(",\"\n\r") == std::string::npos) return field;
  std::string out = "\"";
  for (char c : field) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

// Reads the spec file's JSON form into the proto the server takes; --model overrides spec.model.
absl::StatusOr<v1::ExperimentSpec> ReadSpec(const std::string& path, const std::optional<std::string>& model) {
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  v1::ExperimentSpec spec;
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;
  options.case_insensitive_enum_parsing = true;
  auto parsed = google::protobuf::util::JsonStringToMessage(text, &spec, options);
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": experiment spec is not valid: ", std::string(parsed.message())));
  }
  if (model.has_value()) spec.set_model(*model);
  return spec;
}

// The live progress of one experiment on stderr: one line rewritten with \r on a terminal, else a
// line at each state change and each quarter of the passes.
class Progress {
 public:
  Progress() : tty_(isatty(fileno(stderr)) != 0) {}

  void Update(const v1::Experiment& e) {
    const bool final = e.status() == v1::DONE || e.status() == v1::FAILED || e.status() == v1::CANCELLED ||
                       e.status() == v1::INTERRUPTED;
    std::string line;
    if (e.status() == v1::QUEUED) {
      line = absl::StrFormat("%s queued (position %d)", e.id(), e.queue_position());
    } else if (e.passes_planned() == 0 && !final) {
      line = absl::StrFormat("%s %s", e.id(), StatusName(e.status()));
    } else {
      const int64_t planned = e.passes_planned();
      const int64_t done = final && e.status() == v1::DONE && planned > 0 ? planned : e.passes_done();
      const double fraction = planned > 0 ? std::clamp(static_cast<double>(done) / planned, 0.0, 1.0) : 0.0;
      constexpr int kWidth = 30;
      const int filled = static_cast<int>(fraction * kWidth);
      line = absl::StrFormat("%s [%s%s] %d/%d passes %3.0f%% %s", e.id(), std::string(filled, '#'),
                             std::string(kWidth - filled, '-'), done, planned, 100 * fraction, StatusName(e.status()));
      const int quarter = static_cast<int>(fraction * 4);
      if (!tty_ && !final && e.status() == last_status_ && quarter == last_quarter_) return;
      last_quarter_ = quarter;
    }
    if (!tty_ && e.status() == last_status_ && e.status() == v1::QUEUED) return;
    last_status_ = e.status();
    if (tty_) {
      const size_t pad = last_width_ > line.size() ? last_width_ - line.size() : 0;
      std::fprintf(stderr, "\r%s%s", line.c_str(), std::string(pad, ' ').c_str());
      last_width_ = line.size();
      if (final) std::fputc('\n', stderr);
    } else {
      std::fprintf(stderr, "%s\n", line.c_str());
    }
    std::fflush(stderr);
  }

  // Ends a half-written terminal line (an error mid-watch).
  void Finish() {
    if (tty_ && last_width_ > 0 && last_status_ != v1::DONE && last_status_ != v1::FAILED &&
        last_status_ != v1::CANCELLED && last_status_ != v1::INTERRUPTED) {
      std::fputc('\n', stderr);
    }
  }

 private:
  const bool tty_;
  v1::ExperimentStatus last_status_ = v1::EXPERIMENT_STATUS_UNSPECIFIED;
  int last_quarter_ = -1;
  size_t last_width_ = 0;
};

// An experiment that ended other than done, as the status the command exits with.
absl::Status FinalStatus(const v1::Experiment& e) {
  switch (e.status()) {
    case v1::DONE:
      return absl::OkStatus();
    case v1::FAILED: {
      // The failure's own code when the server gives it.
      const absl::StatusCode code = StatusCodeFromName(e.error_code()).value_or(absl::StatusCode::kInternal);
      return absl::Status(code, absl::StrCat("experiment ", e.id(), " failed: ", e.error()));
    }
    case v1::CANCELLED:
      return absl::CancelledError(absl::StrCat("experiment ", e.id(), " was cancelled"));
    case v1::INTERRUPTED:
      return absl::AbortedError(absl::StrCat("experiment ", e.id(),
                                             " was interrupted (the server stopped); `lesion` cannot resume it, "
                                             "resubmit it"));
    default:
      return absl::InternalError(absl::StrCat("experiment ", e.id(), " ended in state ", StatusName(e.status())));
  }
}

// Follows `id` with the progress bar until it is final, then prints the result (or the record as
// JSON). When the wait's deadline passes and `cancel_on_deadline`, cancels the experiment.
absl::Status FollowAndPrint(RemoteClient& client, const std::string& id, const Connection& c, bool json,
                            bool cancel_on_deadline) {
  Progress progress;
  absl::StatusOr<v1::Experiment> final = client.Watch(
      id, [&](const v1::Experiment& e) { progress.Update(e); }, c.wait);
  progress.Finish();
  if (!final.ok()) {
    if (absl::IsDeadlineExceeded(final.status())) {
      std::string what = "still running on the server";
      if (cancel_on_deadline) {
        absl::StatusOr<v1::Experiment> cancelled = client.Cancel(id);
        what = cancelled.ok() ? "cancelled" : absl::StrCat("not cancelled: ", cancelled.status().message());
      }
      return absl::DeadlineExceededError(
          absl::StrCat("experiment ", id, " did not finish within ", absl::FormatDuration(c.wait), " (", what, ")"));
    }
    return final.status();
  }
  if (json) {
    std::cout << ToJson(*final) << "\n";
    return FinalStatus(*final);
  }
  RETURN_IF_ERROR(FinalStatus(*final));
  std::cout << RenderResult(final->result(), final->spec(), /*json=*/false);
  return absl::OkStatus();
}

absl::StatusOr<v1::ExperimentSpec> SpecFromArgs(Args& args) {
  const std::optional<std::string> model = args.Get("model");
  std::optional<std::string> path = args.Get("spec");
  if (!path.has_value()) {
    ASSIGN_OR_RETURN(std::string p, OnePositional(args, "spec file (SPEC.json)"));
    path = p;
  } else if (!args.positional().empty()) {
    return absl::InvalidArgumentError("give the spec either as --spec FILE or as SPEC.json, not both");
  }
  return ReadSpec(*path, model);
}

}  // namespace

bool IsRemoteUserError(const absl::Status& status) {
  return absl::IsInvalidArgument(status) || absl::IsNotFound(status);
}

absl::Status RunModels(Args& args) {
  const bool json = args.Flag("json"), csv = args.Flag("csv");
  ASSIGN_OR_RETURN(Connection c, ReadConnectionFlags(args));
  RETURN_IF_ERROR(args.CheckAllUsed());
  if (json && csv) return absl::InvalidArgumentError("--json and --csv exclude each other");
  if (!args.positional().empty()) return absl::InvalidArgumentError("lesion models takes no arguments");
  ASSIGN_OR_RETURN(std::unique_ptr<RemoteClient> client, Connect(c));
  ASSIGN_OR_RETURN(v1::ListModelsResponse models, client->ListModels());
  if (json) {
    std::cout << ToJson(models) << "\n";
    return absl::OkStatus();
  }
  if (csv) {
    std::cout << "name,architecture,n_layers,n_heads,n_kv_heads,d_model,vocab_size,n_params,dtype,device,"
                 "weight_bytes,dir\n";
    for (const v1::ModelInfo& m : models.models()) {
      std::cout << absl::StrJoin({Csv(m.name()), Csv(m.architecture()), absl::StrCat(m.n_layers()),
                                  absl::StrCat(m.n_heads()), absl::StrCat(m.n_kv_heads()), absl::StrCat(m.d_model()),
                                  absl::StrCat(m.vocab_size()), absl::StrCat(m.n_params()), Csv(m.dtype()),
                                  Csv(m.device()), absl::StrCat(m.weight_bytes()), Csv(m.dir())},
                                 ",")
                << "\n";
    }
    return absl::OkStatus();
  }
  std::cout << absl::StrFormat("%-20s %-12s %6s %6s %8s %-9s %-8s %10s\n", "name", "architecture", "layers", "heads",
                               "d_model", "dtype", "device", "memory MB");
  for (const v1::ModelInfo& m : models.models()) {
    std::cout << absl::StrFormat("%-20s %-12s %6d %6d %8d %-9s %-8s %10.1f\n", m.name(), m.architecture(), m.n_layers(),
                                 m.n_heads(), m.d_model(), m.dtype(), m.device(), m.weight_bytes() / (1024.0 * 1024.0));
  }
  return absl::OkStatus();
}

absl::Status RunRemoteExperiment(Args& args) {
  const bool json = args.Flag("json");
  ASSIGN_OR_RETURN(Connection c, ReadConnectionFlags(args));
  absl::StatusOr<v1::ExperimentSpec> spec = SpecFromArgs(args);
  RETURN_IF_ERROR(args.CheckAllUsed());
  if (!spec.ok()) return spec.status();
  ASSIGN_OR_RETURN(std::unique_ptr<RemoteClient> client, Connect(c));
  ASSIGN_OR_RETURN(v1::Experiment queued, client->Submit(*spec));
  return FollowAndPrint(*client, queued.id(), c, json, /*cancel_on_deadline=*/true);
}

absl::Status RunSubmit(Args& args) {
  const bool json = args.Flag("json");
  ASSIGN_OR_RETURN(Connection c, ReadConnectionFlags(args));
  absl::StatusOr<v1::ExperimentSpec> spec = SpecFromArgs(args);
  RETURN_IF_ERROR(args.CheckAllUsed());
  if (!spec.ok()) return spec.status();
  ASSIGN_OR_RETURN(std::unique_ptr<RemoteClient> client, Connect(c));
  ASSIGN_OR_RETURN(v1::Experiment queued, client->Submit(*spec));
  if (json) {
    std::cout << ToJson(queued) << "\n";
  } else {
    std::cout << queued.id() << "\n";
  }
  return absl::OkStatus();
}

absl::Status RunWatch(Args& args) {
  const bool json = args.Flag("json");
  ASSIGN_OR_RETURN(Connection c, ReadConnectionFlags(args));
  RETURN_IF_ERROR(args.CheckAllUsed());
  ASSIGN_OR_RETURN(std::string id, OnePositional(args, "experiment id"));
  ASSIGN_OR_RETURN(std::unique_ptr<RemoteClient> client, Connect(c));
  return FollowAndPrint(*client, id, c, json, /*cancel_on_deadline=*/false);
}

absl::Status RunShow(Args& args) {
  const bool json = args.Flag("json");
  ASSIGN_OR_RETURN(Connection c, ReadConnectionFlags(args));
  RETURN_IF_ERROR(args.CheckAllUsed());
  ASSIGN_OR_RETURN(std::string id, OnePositional(args, "experiment id"));
  ASSIGN_OR_RETURN(std::unique_ptr<RemoteClient> client, Connect(c));
  ASSIGN_OR_RETURN(v1::Experiment e, client->Get(id, /*include_captures=*/json));
  if (json) {
    std::cout << ToJson(e) << "\n";
    return absl::OkStatus();
  }
  std::cout << absl::StrFormat("%s  %s  user %s  model %s  created %s\n", e.id(), StatusName(e.status()), e.user(),
                               e.model(), FormatTime(e.created_unix_micros()));
  if (!e.tags().empty()) std::cout << "tags: " << absl::StrJoin(e.tags(), ", ") << "\n";
  switch (e.status()) {
    case v1::QUEUED:
      std::cout << absl::StrFormat("queued: %d experiment(s) ahead\n", e.queue_position());
      break;
    case v1::RUNNING:
      std::cout << absl::StrFormat("running: %d/%d passes\n", e.passes_done(), e.passes_planned());
      break;
    case v1::FAILED:
      std::cout << "failed: " << e.error() << "\n";
      break;
    case v1::DONE:
      std::cout << RenderResult(e.result(), e.spec(), /*json=*/false);
      break;
    default:
      break;
  }
  return absl::OkStatus();
}

absl::Status RunCancel(Args& args) {
  const bool json = args.Flag("json");
  ASSIGN_OR_RETURN(Connection c, ReadConnectionFlags(args));
  RETURN_IF_ERROR(args.CheckAllUsed());
  ASSIGN_OR_RETURN(std::string id, OnePositional(args, "experiment id"));
  ASSIGN_OR_RETURN(std::unique_ptr<RemoteClient> client, Connect(c));
  ASSIGN_OR_RETURN(v1::Experiment e, client->Cancel(id));
  if (json) {
    std::cout << ToJson(e) << "\n";
  } else {
    std::cout << e.id() << " " << StatusName(e.status()) << "\n";
  }
  return absl::OkStatus();
}

namespace {

// "1.5 MB": sizes for people.
std::string Bytes(int64_t bytes) {
  constexpr const char* kUnits[] = {"B", "KB", "MB", "GB", "TB"};
  double value = static_cast<double>(bytes);
  size_t unit = 0;
  while (value >= 1024 && unit + 1 < std::size(kUnits)) {
    value /= 1024;
    ++unit;
  }
  return unit == 0 ? absl::StrCat(bytes, " B") : absl::StrFormat("%.1f %s", value, kUnits[unit]);
}

}  // namespace

absl::Status RunStatus(Args& args) {
  const bool json = args.Flag("json");
  ASSIGN_OR_RETURN(Connection c, ReadConnectionFlags(args));
  RETURN_IF_ERROR(args.CheckAllUsed());
  if (!args.positional().empty()) return absl::InvalidArgumentError("lesion status takes no arguments");
  ASSIGN_OR_RETURN(std::unique_ptr<RemoteClient> client, Connect(c));
  ASSIGN_OR_RETURN(v1::ServerStatus s, client->Status());
  if (json) {
    std::cout << ToJson(s) << "\n";
    return absl::OkStatus();
  }
  std::cout << absl::StrFormat(
      "lesiond %s at %s, up %s (since %s)\n", s.version(), c.options.address,
      absl::FormatDuration(absl::Trunc(absl::Seconds(s.uptime_seconds()), absl::Seconds(1))),
      absl::FormatTime("%Y-%m-%d %H:%M:%S %Z", absl::FromUnixMicros(s.started_unix_micros()), absl::LocalTimeZone()));
  std::cout << "\nmodels: " << s.models_size() << "\n";
  for (const v1::ModelInfo& m : s.models()) {
    std::cout << absl::StrFormat("  %-20s %-12s %-9s %-12s %10s\n", m.name(), m.architecture(), m.dtype(), m.device(),
                                 Bytes(m.weight_bytes()));
  }
  std::cout << "\n"
            << absl::StrFormat("  %-10s %7s  %-24s %12s %12s\n", "device", "queued", "running", "allocated",
                               "reserved");
  for (const v1::DeviceStatus& d : s.devices()) {
    const bool tracked = absl::StartsWith(d.device(), "cuda");  // the CPU's memory is not tracked
    std::cout << absl::StrFormat(
        "  %-10s %7d  %-24s %12s %12s\n", d.device(), d.queued(), d.running_id().empty() ? "-" : d.running_id(),
        tracked ? Bytes(d.memory_allocated_bytes()) : "-", tracked ? Bytes(d.memory_reserved_bytes()) : "-");
  }
  if (s.devices().empty()) std::cout << "  (no device used yet)\n";
  std::vector<std::string> states;
  for (const char* state : {"queued", "running", "done", "failed", "cancelled", "interrupted"}) {
    auto it = s.experiments().find(state);
    states.push_back(absl::StrCat(state, " ", it == s.experiments().end() ? 0 : it->second));
  }
  std::cout << "\nexperiments: " << absl::StrJoin(states, ", ") << "\n";
  std::cout << "baseline cache: " << Bytes(s.baseline_cache_bytes()) << " in " << s.baseline_cache_entries()
            << " entries (bound " << Bytes(s.baseline_cache_max_bytes()) << ")\n";
  std::cout << "database: " << Bytes(s.database_bytes()) << " (+ " << Bytes(s.database_wal_bytes())
            << " write-ahead log)\n";
  return absl::OkStatus();
}

absl::Status RunList(Args& args) {
  const bool json = args.Flag("json"), csv = args.Flag("csv");
  v1::ListExperimentsRequest request;
  request.set_where(args.Get("where").value_or(""));
  request.set_order_by(args.Get("order-by").value_or(""));
  ASSIGN_OR_RETURN(std::optional<int64_t> limit, args.GetInt("limit"));
  ASSIGN_OR_RETURN(std::optional<int64_t> offset, args.GetInt("offset"));
  ASSIGN_OR_RETURN(Connection c, ReadConnectionFlags(args));
  RETURN_IF_ERROR(args.CheckAllUsed());
  if (json && csv) return absl::InvalidArgumentError("--json and --csv exclude each other");
  if (!args.positional().empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("lesion ls takes no arguments (a query goes in --where), got \"", args.positional()[0], "\""));
  }
  if (limit.has_value() && (*limit < 0 || *limit > 10000)) {
    return absl::InvalidArgumentError(absl::StrCat("--limit must be in [0, 10000], got ", *limit));
  }
  if (offset.has_value() && (*offset < 0 || *offset > INT32_MAX)) {
    return absl::InvalidArgumentError(absl::StrCat("--offset must be non-negative, got ", *offset));
  }
  request.set_limit(static_cast<int32_t>(limit.value_or(0)));
  request.set_offset(static_cast<int32_t>(offset.value_or(0)));
  request.set_include_results(!json);  // the table's perplexity delta; --json gets the records as stored
  ASSIGN_OR_RETURN(std::unique_ptr<RemoteClient> client, Connect(c));
  ASSIGN_OR_RETURN(v1::ListExperimentsResponse list, client->List(request));
  if (json) {
    std::cout << ToJson(list) << "\n";
  } else if (csv) {
    std::cout << "id,user,name,model,status,created,ppl_delta_pct\n";
    for (const v1::Experiment& e : list.experiments()) {
      const std::optional<double> delta = PerplexityDeltaPct(e);
      std::cout << absl::StrJoin({Csv(e.id()), Csv(e.user()), Csv(e.name()), Csv(e.model()), StatusName(e.status()),
                                  FormatTime(e.created_unix_micros()),
                                  delta.has_value() ? absl::StrFormat("%.6g", *delta) : std::string()},
                                 ",")
                << "\n";
    }
  } else {
    std::cout << absl::StrFormat("%-16s %-12s %-24s %-14s %-11s %-19s %10s\n", "id", "user", "name", "model", "status",
                                 "created", "ppl delta");
    for (const v1::Experiment& e : list.experiments()) {
      const std::optional<double> delta = PerplexityDeltaPct(e);
      std::cout << absl::StrFormat("%-16s %-12s %-24s %-14s %-11s %-19s %10s\n", e.id(), e.user(),
                                   e.name().empty() ? "-" : e.name(), e.model(), StatusName(e.status()),
                                   FormatTime(e.created_unix_micros()),
                                   delta.has_value() ? absl::StrFormat("%+.2f%%", *delta) : std::string("-"));
    }
  }
  std::cerr << absl::StrFormat("%d of %d matching experiment(s)\n", list.experiments_size(), list.total());
  return absl::OkStatus();
}

namespace {

// lesion rm / lesion gc: one retention call, its counts on stdout.
absl::Status RunRetention(Args& args, bool captures_only) {
  const absl::string_view command = captures_only ? "gc" : "rm";
  const bool json = args.Flag("json");
  v1::RetentionRequest request;
  request.set_dry_run(args.Flag("dry-run"));
  request.set_where(args.Get("where").value_or(""));
  ASSIGN_OR_RETURN(Connection c, ReadConnectionFlags(args));
  RETURN_IF_ERROR(args.CheckAllUsed());
  if (!args.positional().empty()) {
    return absl::InvalidArgumentError(absl::StrCat("lesion ", command, " takes no arguments: select with --where"));
  }
  if (request.where().empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("lesion ", command, " needs --where QUERY (--where 'created >= 0' selects every experiment)"));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<RemoteClient> client, Connect(c));
  ASSIGN_OR_RETURN(v1::RetentionResponse r,
                   captures_only ? client->DropCaptures(request) : client->DeleteExperiments(request));
  if (json) {
    std::cout << ToJson(r) << "\n";
    return absl::OkStatus();
  }
  const std::string verb = request.dry_run() ? (captures_only ? "would drop the captures of" : "would delete")
                                             : (captures_only ? "dropped the captures of" : "deleted");
  std::cout << absl::StrFormat("%s %d experiment(s), %s", verb, r.experiments(), Bytes(r.bytes()));
  if (r.file_bytes_reclaimed() > 0)
    std::cout << absl::StrFormat(" (database file %s smaller)", Bytes(r.file_bytes_reclaimed()));
  std::cout << "\n";
  if (r.skipped_active() > 0) {
    std::cout << absl::StrFormat("skipped %d queued or running experiment(s)\n", r.skipped_active());
  }
  if (r.skipped_variants() > 0) {
    std::cout << absl::StrFormat("skipped %d sweep variant(s) whose sweep did not match (they go with it)\n",
                                 r.skipped_variants());
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status RunRemove(Args& args) { return RunRetention(args, /*captures_only=*/false); }
absl::Status RunGc(Args& args) { return RunRetention(args, /*captures_only=*/true); }

}  // namespace lesion::cli
