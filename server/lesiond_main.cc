// lesiond: the lesion experiment server. See server/config.h for its flags, server/service.h for
// the API and server/tracker.h for how experiments are kept.
//
// Start-up: config -> auth -> engine -> tracker (opens the database, marks what a crash left
// queued or running interrupted) -> preload models (waits; exit 1 naming the model if one fails)
// -> serve, printing "lesiond listening on ADDRESS" on stdout once it accepts calls (and
// /metrics with --metrics-address). Everything else is a structured log line on stderr
// (server/log.h, --log-format). SIGINT / SIGTERM: stop
// taking experiments; with --shutdown-grace-seconds, interrupt the queued ones and let running ones
// finish within the grace period; stop the engine, record what is left queued or running as
// interrupted, stop the server within 5 s, drain the store writer, exit 0. Exit 2 for bad flags, 1 for a start-up
// failure.
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <future>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "server/auth.h"
#include "server/config.h"
#include "server/engine.h"
#include "server/log.h"
#include "server/metrics.h"
#include "server/service.h"
#include "server/tracker.h"

namespace lesion::server {
namespace {

constexpr int kMaxMessageBytes = 512 << 20;  // captured tensors can be large

int Fail(const std::string& what, const absl::Status& status) {
  Log(LogLevel::kError, "start_failed",
      {{"while", what}, {"code", absl::StatusCodeToString(status.code())}, {"error", status.message()}});
  return 1;
}

// A sweep logs once, not once per variant.
void LogFinished(const lesion::v1::Experiment& e) {
  if (!e.parent_id().empty()) return;
  std::string state = lesion::v1::ExperimentStatus_Name(e.status());
  absl::AsciiStrToLower(&state);
  const double duration_s =
      e.started_unix_micros() > 0 ? static_cast<double>(e.finished_unix_micros() - e.started_unix_micros()) / 1e6 : 0;
  if (e.status() == lesion::v1::FAILED) {
    Log(LogLevel::kWarning, "experiment_failed",
        {{"id", e.id()},
         {"user", e.user()},
         {"model", e.model()},
         {"code", e.error_code()},
         {"error", e.error()},
         {"duration_s", duration_s}});
  } else {
    Log(LogLevel::kInfo, "experiment_finished",
        {{"id", e.id()}, {"user", e.user()}, {"model", e.model()}, {"status", state}, {"duration_s", duration_s}});
  }
}

std::shared_ptr<grpc::ServerCredentials> Credentials(const ServerConfig& config, absl::Status& error) {
  if (config.tls_cert.empty()) return grpc::InsecureServerCredentials();
  absl::StatusOr<std::string> cert = ReadFile(config.tls_cert);
  absl::StatusOr<std::string> key = ReadFile(config.tls_key);
  if (!cert.ok() || !key.ok()) {
    error = !cert.ok() ? cert.status() : key.status();
    return nullptr;
  }
  grpc::SslServerCredentialsOptions options;
  options.pem_key_cert_pairs.push_back({*key, *cert});
  return grpc::SslServerCredentials(options);
}

// The address as clients reach it: a requested port 0 replaced by the port the kernel chose.
std::string BoundAddress(const std::string& listen, int port) {
  if (absl::StartsWith(listen, "unix:") || port <= 0) return listen;
  size_t colon = listen.rfind(':');
  if (colon == std::string::npos) return listen;
  return absl::StrCat(listen.substr(0, colon), ":", port);
}

int Main(int argc, char** argv) {
  // Signals are taken by sigwait below; block them before any thread starts so none receives them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  absl::StatusOr<ServerConfig> parsed = ParseServerConfig(std::vector<std::string>(argv + 1, argv + argc));
  if (!parsed.ok()) {
    std::cerr << "lesiond: " << parsed.status().message() << "\n\n" << Usage();
    return 2;
  }
  const ServerConfig config = *std::move(parsed);
  if (config.help) {
    std::cout << Usage();
    return 0;
  }
  SetLogFormat(config.log_format == "json" ? LogFormat::kJson : LogFormat::kText);  // checked by the parser
  Log(LogLevel::kInfo, "starting",
      {{"version", LESION_VERSION},
       {"pid", int64_t{getpid()}},
       {"listen", config.listen},
       {"database", config.database},
       {"metrics_address", config.metrics_address}});

  absl::StatusOr<Authenticator> auth = config.tokens_file.empty()
                                           ? Authenticator::Anonymous(config.allow_anonymous_admin)
                                           : Authenticator::FromTokensFile(config.tokens_file);
  if (!auth.ok()) {
    Log(LogLevel::kError, "start_failed", {{"while", "reading --tokens-file"}, {"error", auth.status().message()}});
    return 2;
  }

  EngineOptions engine_options;
  engine_options.data_dir = config.data_dir;
  engine_options.max_queue_per_device = config.max_queue_per_device;
  engine_options.max_capture_bytes = config.max_capture_bytes;
  engine_options.max_tokens = config.max_tokens;
  engine_options.max_sweep_variants = config.max_sweep_variants;
  engine_options.max_pass_tokens = config.max_pass_tokens;
  engine_options.tf32 = config.tf32;
  engine_options.default_device = config.default_device;
  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Create(engine_options);
  if (!engine.ok()) return Fail("starting the engine", engine.status());

  absl::StatusOr<std::unique_ptr<ExperimentTracker>> tracker =
      ExperimentTracker::Create(config.database, engine->get(),
                                TrackerOptions{.max_sweep_variants = config.max_sweep_variants,
                                               .baseline_cache_bytes = config.baseline_cache_bytes,
                                               .max_queued_per_user = config.max_queued_per_user,
                                               .read_connections = config.read_connections,
                                               .max_user_bytes = config.max_user_bytes,
                                               .max_list_bytes = config.max_list_bytes,
                                               .tf32 = config.tf32});
  if (!tracker.ok()) return Fail(absl::StrCat("opening the database ", config.database), tracker.status());

  for (const ModelPreload& m : config.models) {
    std::promise<absl::StatusOr<ModelSummary>> loaded;
    std::future<absl::StatusOr<ModelSummary>> done = loaded.get_future();
    absl::Status queued =
        (*engine)->LoadModel(m.name, m.dir, m.dtype, m.device, /*cancelled=*/{},
                             [&loaded](absl::StatusOr<ModelSummary> s) { loaded.set_value(std::move(s)); });
    absl::Status status = queued.ok() ? done.get().status() : queued;
    if (!status.ok()) {
      (*engine)->Shutdown();
      return Fail(absl::StrCat("loading model ", m.name, " from ", m.dir), status);
    }
    Log(LogLevel::kInfo, "model_loaded", {{"model", m.name}, {"dir", m.dir}, {"device", m.device}, {"dtype", m.dtype}});
  }

  // /metrics, when asked for: the counters it needs are fed from here on.
  std::unique_ptr<Metrics> metrics;
  if (!config.metrics_address.empty()) {
    metrics = std::make_unique<Metrics>([&engine, &tracker, &config, started = absl::Now()] {
      return CollectServerStatus(**engine, **tracker, config.database, started);
    });
  }
  (*tracker)->SetFinishObserver([metrics = metrics.get()](const lesion::v1::Experiment& e) {
    if (metrics != nullptr) metrics->ObserveFinished(e);
    LogFinished(e);
  });

  LesionService service(engine->get(), tracker->get(), &*auth, &config);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  absl::Status credentials_error;
  std::shared_ptr<grpc::ServerCredentials> credentials = Credentials(config, credentials_error);
  if (credentials == nullptr) return Fail("reading the TLS certificate or key", credentials_error);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(config.listen, credentials, &port);
  builder.RegisterService(&service);
  builder.SetMaxReceiveMessageSize(kMaxMessageBytes);
  builder.SetMaxSendMessageSize(kMaxMessageBytes);
  if (metrics != nullptr) {
    std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
    interceptors.push_back(metrics->NewInterceptorFactory());
    builder.experimental().SetInterceptorCreators(std::move(interceptors));
  }
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || (!absl::StartsWith(config.listen, "unix:") && port == 0)) {
    (*engine)->Shutdown();
    return Fail("serving", absl::UnavailableError(absl::StrCat("cannot listen on ", config.listen)));
  }
  // Health checks name the service ("lesion.v1.Lesion") or the server as a whole (""); the
  // default health service knows only "" until a service is named.
  server->GetHealthCheckService()->SetServingStatus(lesion::v1::Lesion::service_full_name(), true);
  server->GetHealthCheckService()->SetServingStatus("", true);
  if (metrics != nullptr) {
    absl::StatusOr<std::string> metrics_bound = metrics->Serve(config.metrics_address);
    if (!metrics_bound.ok()) {
      server->Shutdown();
      (*engine)->Shutdown();
      return Fail("serving metrics", metrics_bound.status());
    }
    Log(LogLevel::kInfo, "metrics_listening", {{"address", *metrics_bound}, {"path", "/metrics"}});
  }
  Log(LogLevel::kInfo, "listening", {{"address", BoundAddress(config.listen, port)}});
  std::cout << "lesiond listening on " << BoundAddress(config.listen, port) << std::endl;

  int signal_number = 0;
  sigwait(&signals, &signal_number);
  Log(LogLevel::kInfo, "shutting_down", {{"signal", signal_number == SIGINT ? "SIGINT" : "SIGTERM"}});
  // New submissions are refused from here on; the server keeps answering reads and watches while
  // running experiments use their grace period.
  (*tracker)->BeginShutdown();
  if (config.shutdown_grace_seconds > 0) {
    const int64_t interrupted = (*tracker)->InterruptQueued();
    Log(LogLevel::kInfo, "shutdown_grace",
        {{"queued_interrupted", interrupted}, {"grace_seconds", config.shutdown_grace_seconds}});
    if (!(*tracker)->AwaitUnfinished(absl::Seconds(config.shutdown_grace_seconds))) {
      Log(LogLevel::kWarning, "shutdown_grace_over", {{"action", "stopping the experiments still running"}});
    }
  }
  (*engine)->Shutdown();
  absl::StatusOr<int64_t> recorded = (*tracker)->RecordInterrupted();
  if (recorded.ok()) {
    Log(LogLevel::kInfo, "experiments_interrupted", {{"count", *recorded}});  // ResubmitExperiment runs one again
  } else {
    // The next start records them.
    Log(LogLevel::kError, "recording_interrupted_failed",
        {{"code", absl::StatusCodeToString(recorded.status().code())}, {"error", recorded.status().message()}});
  }
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  server->Wait();
  (*tracker)->Flush();
  if (metrics != nullptr) metrics->StopServing();  // scrapes read the tracker and the engine
  tracker->reset();                                // joins the writer
  engine->reset();
  Log(LogLevel::kInfo, "stopped");
  return 0;
}

}  // namespace
}  // namespace lesion::server

int main(int argc, char** argv) { return lesion::server::Main(argc, argv); }
