// lesiond: the lesion experiment server. See server/config.h for its flags, server/service.h for
// the API and server/tracker.h for how experiments are kept.
//
// Start-up: config -> auth -> engine -> tracker (opens the database, marks what a crash left
// queued or running interrupted) -> preload models (waits; exit 1 naming the model if one fails)
// -> serve, printing "lesiond listening on ADDRESS" once it accepts calls. SIGINT / SIGTERM: stop
// taking experiments, cancel what runs (recorded as interrupted), stop the server within 5 s, drain
// the store writer, exit 0. Exit 2 for bad flags, 1 for a start-up failure.
#include <signal.h>

#include <cstdlib>
#include <future>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "server/auth.h"
#include "server/config.h"
#include "server/engine.h"
#include "server/service.h"
#include "server/tracker.h"

namespace lesion::server {
namespace {

constexpr int kMaxMessageBytes = 512 << 20;  // captured tensors can be large

int Fail(const std::string& what, const absl::Status& status) {
  std::cerr << "lesiond: " << what << ": " << status.message() << "\n";
  return 1;
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

  absl::StatusOr<Authenticator> auth = config.tokens_file.empty()
                                           ? Authenticator::Anonymous(config.allow_anonymous_admin)
                                           : Authenticator::FromTokensFile(config.tokens_file);
  if (!auth.ok()) {
    std::cerr << "lesiond: --tokens-file: " << auth.status().message() << "\n";
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

  absl::StatusOr<std::unique_ptr<ExperimentTracker>> tracker = ExperimentTracker::Create(config.database, engine->get(), config.max_sweep_variants);
  if (!tracker.ok()) return Fail(absl::StrCat("opening the database ", config.database), tracker.status());

  for (const ModelPreload& m : config.models) {
    std::promise<absl::StatusOr<ModelSummary>> loaded;
    std::future<absl::StatusOr<ModelSummary>> done = loaded.get_future();
    absl::Status queued = (*engine)->LoadModel(m.name, m.dir, m.dtype, m.device, /*cancelled=*/{},
                                               [&loaded](absl::StatusOr<ModelSummary> s) { loaded.set_value(std::move(s)); });
    absl::Status status = queued.ok() ? done.get().status() : queued;
    if (!status.ok()) {
      (*engine)->Shutdown();
      return Fail(absl::StrCat("loading model ", m.name, " from ", m.dir), status);
    }
    std::cerr << "lesiond: loaded model " << m.name << " from " << m.dir << "\n";
  }

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
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || (!absl::StartsWith(config.listen, "unix:") && port == 0)) {
    (*engine)->Shutdown();
    return Fail("serving", absl::UnavailableError(absl::StrCat("cannot listen on ", config.listen)));
  }
  // Health checks name the service ("lesion.v1.Lesion") or the server as a whole (""); the
  // default health service knows only "" until a service is named.
  server->GetHealthCheckService()->SetServingStatus(lesion::v1::Lesion::service_full_name(), true);
  server->GetHealthCheckService()->SetServingStatus("", true);
  std::cout << "lesiond listening on " << BoundAddress(config.listen, port) << std::endl;

  int signal_number = 0;
  sigwait(&signals, &signal_number);
  std::cerr << "lesiond: " << (signal_number == SIGINT ? "SIGINT" : "SIGTERM") << ", shutting down\n";
  (*tracker)->BeginShutdown();
  (*engine)->Shutdown();
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  server->Wait();
  (*tracker)->Flush();
  tracker->reset();  // joins the writer
  engine->reset();
  return 0;
}

}  // namespace
}  // namespace lesion::server

int main(int argc, char** argv) { return lesion::server::Main(argc, argv); }
