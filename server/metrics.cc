#include "server/metrics.h"

#include <google/protobuf/descriptor.h>
#include <prometheus/collectable.h>
#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/family.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <algorithm>
#include <exception>
#include <filesystem>
#include <map>
#include <sstream>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "server/log.h"
#include "server/service.h"

#ifndef LESION_VERSION
#define LESION_VERSION "unknown"
#endif

namespace lesion::server {
namespace {

namespace v1 = lesion::v1;
using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

// 0 for a file that is not there (no -wal file after a clean close).
int64_t FileBytes(const std::string& path) {
  std::error_code ec;
  const std::uintmax_t size = std::filesystem::file_size(path, ec);
  return ec ? 0 : static_cast<int64_t>(size);
}

// Experiment durations, start to finish: from a fraction of a second (a tiny model) to a day (a
// large sweep on a big model).
const prometheus::Histogram::BucketBoundaries& DurationBuckets() {
  static const auto* buckets = new prometheus::Histogram::BucketBoundaries{
      0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400};
  return *buckets;
}

MetricFamily Gauge(std::string name, std::string help) {
  MetricFamily family;
  family.name = std::move(name);
  family.help = std::move(help);
  family.type = MetricType::Gauge;
  return family;
}

void AddSample(MetricFamily& family, double value, std::vector<ClientMetric::Label> labels = {}) {
  ClientMetric metric;
  metric.label = std::move(labels);
  metric.gauge.value = value;
  family.metric.push_back(std::move(metric));
}

MetricFamily Single(std::string name, std::string help, double value) {
  MetricFamily family = Gauge(std::move(name), std::move(help));
  AddSample(family, value);
  return family;
}

// The families read from a ServerStatus.
std::vector<MetricFamily> StatusFamilies(const v1::ServerStatus& s) {
  std::vector<MetricFamily> out;
  MetricFamily info = Gauge("lesion_build_info", "Always 1; the version of lesiond in its label.");
  AddSample(info, 1, {{"version", s.version()}});
  out.push_back(std::move(info));
  out.push_back(Single("lesion_start_time_seconds", "When lesiond started, seconds since the Unix epoch.",
                       static_cast<double>(s.started_unix_micros()) / 1e6));
  out.push_back(Single("lesion_uptime_seconds", "Seconds since lesiond started.", s.uptime_seconds()));

  out.push_back(Single("lesion_models_loaded", "Models loaded.", s.models_size()));
  MetricFamily weights = Gauge("lesion_model_weight_bytes", "Bytes of a loaded model's weights, per replica.");
  for (const v1::ModelInfo& m : s.models()) {
    AddSample(weights, static_cast<double>(m.weight_bytes()), {{"model", m.name()}, {"device", m.device()}});
  }
  out.push_back(std::move(weights));

  MetricFamily queued = Gauge("lesion_queue_length", "Experiments waiting on a device (a sweep's shard counts one).");
  MetricFamily busy = Gauge("lesion_device_busy", "1 while the device runs an experiment, else 0.");
  MetricFamily allocated =
      Gauge("lesion_device_memory_allocated_bytes", "CUDA: bytes held by tensors on the device (0 on the CPU).");
  MetricFamily reserved = Gauge("lesion_device_memory_reserved_bytes",
                                "CUDA: bytes the caching allocator holds from the driver (0 on the CPU).");
  for (const v1::DeviceStatus& d : s.devices()) {
    const std::vector<ClientMetric::Label> labels = {{"device", d.device()}};
    AddSample(queued, static_cast<double>(d.queued()), labels);
    AddSample(busy, d.running_id().empty() ? 0 : 1, labels);
    AddSample(allocated, static_cast<double>(d.memory_allocated_bytes()), labels);
    AddSample(reserved, static_cast<double>(d.memory_reserved_bytes()), labels);
  }
  out.push_back(std::move(queued));
  out.push_back(std::move(busy));
  out.push_back(std::move(allocated));
  out.push_back(std::move(reserved));

  MetricFamily experiments = Gauge("lesion_experiments", "Experiments in the database, by state.");
  for (const auto& [state, count] : std::map<std::string, int64_t>(s.experiments().begin(), s.experiments().end())) {
    AddSample(experiments, static_cast<double>(count), {{"state", state}});
  }
  out.push_back(std::move(experiments));

  out.push_back(Single("lesion_baseline_cache_bytes", "Bytes of baseline passes held in memory.",
                       static_cast<double>(s.baseline_cache_bytes())));
  out.push_back(Single("lesion_baseline_cache_entries", "Baseline passes held in memory.",
                       static_cast<double>(s.baseline_cache_entries())));
  out.push_back(Single("lesion_baseline_cache_max_bytes", "The bound on lesion_baseline_cache_bytes.",
                       static_cast<double>(s.baseline_cache_max_bytes())));
  MetricFamily database = Gauge("lesion_database_bytes",
                                "Size of the SQLite database (file=\"main\") and its "
                                "write-ahead log (file=\"wal\").");
  AddSample(database, static_cast<double>(s.database_bytes()), {{"file", "main"}});
  AddSample(database, static_cast<double>(s.database_wal_bytes()), {{"file", "wal"}});
  out.push_back(std::move(database));
  return out;
}

// The interceptor: counts the status every call ends with.
class CountingInterceptor : public grpc::experimental::Interceptor {
 public:
  CountingInterceptor(Metrics* metrics, std::string method) : metrics_(metrics), method_(std::move(method)) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(grpc::experimental::InterceptionHookPoints::PRE_SEND_STATUS)) {
      metrics_->CountResponse(method_, methods->GetSendStatus().error_code());
    }
    methods->Proceed();
  }

 private:
  Metrics* const metrics_;
  const std::string method_;
};

class CountingInterceptorFactory : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit CountingInterceptorFactory(Metrics* metrics) : metrics_(metrics) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(grpc::experimental::ServerRpcInfo* info) override {
    return new CountingInterceptor(metrics_, MethodLabel(info->method()));
  }

 private:
  Metrics* const metrics_;
};

// grpc::StatusCode as absl spells it ("NOT_FOUND"): the two enums share their numbers.
std::string CodeName(grpc::StatusCode code) { return absl::StatusCodeToString(static_cast<absl::StatusCode>(code)); }

}  // namespace

absl::StatusOr<v1::ServerStatus> CollectServerStatus(const Engine& engine, ExperimentTracker& tracker,
                                                     const std::string& database_path, absl::Time started) {
  v1::ServerStatus s;
  const absl::Time now = absl::Now();
  s.set_version(LESION_VERSION);
  s.set_started_unix_micros(absl::ToUnixMicros(started));
  s.set_uptime_seconds(absl::ToDoubleSeconds(now - started));
  for (const ModelSummary& m : engine.ListModels()) *s.add_models() = ToModelInfo(m);
  for (const DeviceStats& d : engine.Devices()) {
    v1::DeviceStatus* out = s.add_devices();
    out->set_device(d.device);
    out->set_queued(d.queued);
    out->set_running_id(d.running_id);
    out->set_memory_allocated_bytes(d.memory_allocated_bytes);
    out->set_memory_reserved_bytes(d.memory_reserved_bytes);
  }
  absl::StatusOr<std::map<std::string, int64_t>> counts = tracker.CountByStatus();
  if (!counts.ok()) {
    return absl::Status(counts.status().code(),
                        absl::StrCat("counting the experiments in the database: ", counts.status().message()));
  }
  for (const auto& [state, count] : *counts) (*s.mutable_experiments())[state] = count;
  const BaselineCache& cache = tracker.baseline_cache();
  s.set_baseline_cache_bytes(cache.bytes());
  s.set_baseline_cache_entries(cache.entries());
  s.set_baseline_cache_max_bytes(cache.max_bytes());
  s.set_database_bytes(FileBytes(database_path));
  s.set_database_wal_bytes(FileBytes(database_path + "-wal"));
  return s;
}

std::string MethodLabel(absl::string_view grpc_method) {
  // "/package.Service/Method"
  if (!absl::ConsumePrefix(&grpc_method, "/")) return "other";
  const size_t slash = grpc_method.find('/');
  if (slash == absl::string_view::npos) return "other";
  const std::string service(grpc_method.substr(0, slash));
  const std::string method(grpc_method.substr(slash + 1));
  // Only methods that exist: the label set stays what the protos declare.
  if (service == "lesion.v1.Lesion") {
    const google::protobuf::ServiceDescriptor* lesion =
        google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(service);
    if (lesion != nullptr && lesion->FindMethodByName(method) != nullptr) return absl::StrCat("Lesion/", method);
  } else if (service == "grpc.health.v1.Health" && (method == "Check" || method == "Watch")) {
    return absl::StrCat("Health/", method);
  } else if (absl::StartsWith(service, "grpc.reflection.") && method == "ServerReflectionInfo") {
    return "Reflection/ServerReflectionInfo";
  }
  return "other";
}

// Reads the ServerStatus at every scrape. A failure (the database) costs the families that come
// from it, counted in lesion_status_errors_total, not the whole scrape.
class Metrics::StatusCollectable : public prometheus::Collectable {
 public:
  StatusCollectable(StatusSource source, prometheus::Counter* errors) : source_(std::move(source)), errors_(errors) {}
  std::vector<MetricFamily> Collect() const override {
    absl::StatusOr<v1::ServerStatus> status = source_();
    if (!status.ok()) {
      errors_->Increment();
      Log(LogLevel::kWarning, "metrics_collection_failed",
          {{"code", absl::StatusCodeToString(status.status().code())}, {"error", status.status().message()}});
      return {};
    }
    return StatusFamilies(*status);
  }

 private:
  const StatusSource source_;
  prometheus::Counter* const errors_;  // owned by Metrics' registry
};

Metrics::Metrics(StatusSource status) : registry_(std::make_shared<prometheus::Registry>()) {
  responses_ = &prometheus::BuildCounter()
                    .Name("lesion_grpc_responses_total")
                    .Help("gRPC calls answered, by method and status code (OK included).")
                    .Register(*registry_);
  durations_ = &prometheus::BuildHistogram()
                    .Name("lesion_experiment_duration_seconds")
                    .Help(
                        "Experiments (a sweep once, not its variants) from start to final state, by that "
                        "state; those that never started are left out.")
                    .Register(*registry_);
  prometheus::Counter& errors = prometheus::BuildCounter()
                                    .Name("lesion_status_errors_total")
                                    .Help("Scrapes whose database-backed metrics could not be read.")
                                    .Register(*registry_)
                                    .Add({});
  status_ = std::make_shared<StatusCollectable>(std::move(status), &errors);
}

Metrics::~Metrics() { exposer_.reset(); }

absl::StatusOr<std::string> Metrics::Serve(const std::string& address) {
  if (exposer_ != nullptr) return absl::FailedPreconditionError("the metrics endpoint is already serving");
  const size_t colon = address.rfind(':');
  int port = 0;
  if (colon == std::string::npos || colon == 0 || !absl::SimpleAtoi(address.substr(colon + 1), &port) || port < 0 ||
      port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("--metrics-address: '", address, "' is not host:port (e.g. 127.0.0.1:9464)"));
  }
  // civetweb's exceptions end here: lesiond's code does not throw.
  try {
    exposer_ = std::make_unique<prometheus::Exposer>(address, /*num_threads=*/2);
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("cannot serve metrics on ", address, ": ", e.what()));
  }
  exposer_->RegisterCollectable(registry_);
  exposer_->RegisterCollectable(status_);
  const std::vector<int> ports = exposer_->GetListeningPorts();
  if (ports.empty()) {
    exposer_.reset();
    return absl::UnavailableError(absl::StrCat("cannot serve metrics on ", address, ": not listening"));
  }
  return absl::StrCat(address.substr(0, colon), ":", ports.front());
}

void Metrics::StopServing() { exposer_.reset(); }

std::string Metrics::ExpositionText() const {
  std::vector<MetricFamily> families = status_->Collect();
  std::vector<MetricFamily> events = registry_->Collect();
  families.insert(families.end(), std::make_move_iterator(events.begin()), std::make_move_iterator(events.end()));
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, families);
  return out.str();
}

void Metrics::ObserveFinished(const v1::Experiment& e) {
  if (!e.parent_id().empty() || e.started_unix_micros() == 0) return;
  const double seconds =
      std::max<double>(0, static_cast<double>(e.finished_unix_micros() - e.started_unix_micros()) / 1e6);
  std::string state = v1::ExperimentStatus_Name(e.status());
  absl::AsciiStrToLower(&state);
  durations_->Add({{"state", state}}, DurationBuckets()).Observe(seconds);
}

void Metrics::CountResponse(absl::string_view method_label, grpc::StatusCode code) {
  responses_->Add({{"method", std::string(method_label)}, {"code", CodeName(code)}}).Increment();
}

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> Metrics::NewInterceptorFactory() {
  return std::make_unique<CountingInterceptorFactory>(this);
}

}  // namespace lesion::server
