// Metrics: lesiond's Prometheus metrics, served as text on GET /metrics (prometheus-cpp's civetweb
// exposer), and the ServerStatus that `lesion status` shows (GetServerStatus). Torch-free.
//
//   Metrics metrics([&] { return CollectServerStatus(*engine, *tracker, db_path, started); });
//   tracker->SetFinishObserver([&](const auto& e) { metrics.ObserveFinished(e); });
//   builder.experimental().SetInterceptorCreators(...metrics.NewInterceptorFactory()...);
//   ASSIGN_OR_RETURN(std::string bound, metrics.Serve("127.0.0.1:9464"));
//
// Most values are read when they are scraped, from the engine, the tracker and the database
// file, rather than counted as they change: a gauge cannot drift from the state it reports. Two
// things are counted as they happen: gRPC responses by method and code (a server interceptor) and
// the durations of finished experiments (the tracker's finish observer). docs/operations.md lists
// every metric with its meaning.
//
// Thread-safety: every method may be called from any thread. The status source is called on the
// exposer's threads (one scrape at a time per thread) and must be thread-safe.
#ifndef LESION_SERVER_METRICS_H_
#define LESION_SERVER_METRICS_H_

#include <grpcpp/grpcpp.h>
#include <grpcpp/support/server_interceptor.h>

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "proto/lesion/v1/service.pb.h"
#include "server/engine.h"
#include "server/tracker.h"

namespace prometheus {
class Exposer;
class Registry;
template <typename T>
class Family;
class Counter;
class Histogram;
}  // namespace prometheus

namespace lesion::server {

// The server's state now: `engine`'s models and devices, `tracker`'s experiment counts and
// baseline cache, the size of the database at `database_path` and its -wal file, uptime since
// `started`. The store's errors (counting experiments reads the database).
absl::StatusOr<lesion::v1::ServerStatus> CollectServerStatus(const Engine& engine, ExperimentTracker& tracker,
                                                             const std::string& database_path, absl::Time started);

// The label a gRPC method is counted under: "Lesion/SubmitExperiment", "Health/Check", ... for the
// methods lesiond serves, "other" for any other path (a client cannot grow the label set).
std::string MethodLabel(absl::string_view grpc_method);

class Metrics {
 public:
  using StatusSource = std::function<absl::StatusOr<lesion::v1::ServerStatus>()>;

  explicit Metrics(StatusSource status);
  ~Metrics();  // stops the exposer first
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // Serves GET /metrics on `address` (host:port; port 0 picks a free one) and returns the address
  // it listens on, the chosen port filled in. InvalidArgument for an address that is not
  // host:port; Unavailable when it cannot listen there (in use, not a local address);
  // FailedPrecondition if already serving.
  absl::StatusOr<std::string> Serve(const std::string& address);
  // Stops the endpoint, waiting for a scrape in progress (before what the status source reads is
  // destroyed). Serve and StopServing: from one thread.
  void StopServing();

  // What GET /metrics answers now (Prometheus text format 0.0.4).
  std::string ExpositionText() const;

  // An experiment reached a final state (ExperimentTracker::FinishObserver). Sweep variants are
  // left out of the durations: their sweep is observed once.
  void ObserveFinished(const lesion::v1::Experiment& experiment);
  // A gRPC call ended with `code` (the interceptor calls this).
  void CountResponse(absl::string_view method_label, grpc::StatusCode code);

  // Counts every response of the server it is installed in (ServerBuilder::experimental()
  // .SetInterceptorCreators); this Metrics must outlive that server.
  std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> NewInterceptorFactory();

 private:
  class StatusCollectable;

  std::shared_ptr<prometheus::Registry> registry_;      // event-driven metrics
  std::shared_ptr<StatusCollectable> status_;           // read at scrape time
  prometheus::Family<prometheus::Counter>* responses_;  // owned by registry_
  prometheus::Family<prometheus::Histogram>* durations_;
  std::unique_ptr<prometheus::Exposer> exposer_;  // set once by Serve, before it returns
};

}  // namespace lesion::server

#endif  // LESION_SERVER_METRICS_H_
