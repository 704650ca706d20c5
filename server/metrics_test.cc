#include "server/metrics.h"

#include <arpa/inet.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/testing/status_matchers.h"
#include "server/config.h"
#include "server/fake_engine.h"
#include "server/service.h"
#include "server/test_util.h"
#include "server/tracker.h"

namespace lesion::server {
namespace {

namespace v1 = lesion::v1;
using testing_util::TestDir;
using testing_util::TinySpec;

// Every sample of a Prometheus text exposition, "name{labels}" -> value.
std::map<std::string, double> Samples(const std::string& text) {
  std::map<std::string, double> out;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (line.empty() || line.front() == '#') continue;
    const size_t space = line.rfind(' ');
    double value = 0;
    if (space == absl::string_view::npos || !absl::SimpleAtod(line.substr(space + 1), &value)) continue;
    out[std::string(line.substr(0, space))] = value;
  }
  return out;
}

// The value of `key` in `text`, or -1 when it has no such sample (printed for the failure).
double Sample(const std::string& text, const std::string& key) {
  const std::map<std::string, double> samples = Samples(text);
  auto it = samples.find(key);
  return it == samples.end() ? -1 : it->second;
}

// GET `path` over plain HTTP/1.0; the whole response, headers included.
std::string HttpGet(int port, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return "";
  }
  const std::string request = absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
  (void)!write(fd, request.data(), request.size());
  std::string response;
  char buffer[4096];
  for (ssize_t n; (n = read(fd, buffer, sizeof(buffer))) > 0;) response.append(buffer, static_cast<size_t>(n));
  close(fd);
  return response;
}

class MetricsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = TestDir();
    config_.database = (dir_ / "lesion.db").string();
    config_.models.clear();
    engine_.AddModel("tiny");
    auth_ = std::make_unique<Authenticator>(Authenticator::Anonymous(/*anonymous_admin=*/false));
    tracker_ = *ExperimentTracker::Create(config_.database, &engine_);
    metrics_ = std::make_unique<Metrics>(
        [this] { return CollectServerStatus(engine_, *tracker_, config_.database, absl::Now() - absl::Seconds(5)); });
    tracker_->SetFinishObserver([this](const v1::Experiment& e) { metrics_->ObserveFinished(e); });
    service_ = std::make_unique<LesionService>(&engine_, tracker_.get(), auth_.get(), &config_);
    grpc::ServerBuilder builder;
    builder.RegisterService(service_.get());
    std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
    interceptors.push_back(metrics_->NewInterceptorFactory());
    builder.experimental().SetInterceptorCreators(std::move(interceptors));
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    stub_ = v1::Lesion::NewStub(server_->InProcessChannel(grpc::ChannelArguments()));
  }
  void TearDown() override {
    tracker_->BeginShutdown();
    engine_.Shutdown();
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
    server_->Wait();
    tracker_.reset();
  }

  static std::unique_ptr<grpc::ClientContext> As(const std::string& user) {
    auto context = std::make_unique<grpc::ClientContext>();
    context->AddMetadata("x-lesion-user", user);
    return context;
  }

  std::string Submit(const std::string& user) {
    v1::SubmitExperimentRequest request;
    *request.mutable_spec() = TinySpec();
    v1::Experiment response;
    const grpc::Status status = stub_->SubmitExperiment(As(user).get(), request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response.id();
  }

  std::filesystem::path dir_;
  ServerConfig config_;
  FakeEngine engine_;
  std::unique_ptr<Authenticator> auth_;
  std::unique_ptr<ExperimentTracker> tracker_;
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<LesionService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1::Lesion::Stub> stub_;
};

TEST(MethodLabel, NamesOnlyTheMethodsServed) {
  EXPECT_EQ(MethodLabel("/lesion.v1.Lesion/SubmitExperiment"), "Lesion/SubmitExperiment");
  EXPECT_EQ(MethodLabel("/lesion.v1.Lesion/GetServerStatus"), "Lesion/GetServerStatus");
  EXPECT_EQ(MethodLabel("/grpc.health.v1.Health/Check"), "Health/Check");
  // Made-up paths cannot grow the label set.
  EXPECT_EQ(MethodLabel("/lesion.v1.Lesion/NoSuchMethod"), "other");
  EXPECT_EQ(MethodLabel("/evil.Service/x"), "other");
  EXPECT_EQ(MethodLabel("garbage"), "other");
  EXPECT_EQ(MethodLabel(""), "other");
}

TEST_F(MetricsTest, CountsEveryResponseByMethodAndCode) {
  v1::GetExperimentRequest get;
  get.set_id("exp-000000000000");
  v1::Experiment experiment;
  EXPECT_EQ(stub_->GetExperiment(As("ada").get(), get, &experiment).error_code(), grpc::StatusCode::NOT_FOUND);
  v1::ListModelsResponse models;
  ASSERT_OK(stub_->ListModels(As("ada").get(), {}, &models));
  ASSERT_OK(stub_->ListModels(As("ada").get(), {}, &models));
  v1::LoadModelRequest load;  // not an admin
  load.set_name("x");
  load.set_dir("/tmp");
  v1::ModelInfo info;
  EXPECT_EQ(stub_->LoadModel(As("ada").get(), load, &info).error_code(), grpc::StatusCode::PERMISSION_DENIED);

  const std::string text = metrics_->ExpositionText();
  EXPECT_EQ(Sample(text, R"(lesion_grpc_responses_total{code="NOT_FOUND",method="Lesion/GetExperiment"})"), 1) << text;
  EXPECT_EQ(Sample(text, R"(lesion_grpc_responses_total{code="OK",method="Lesion/ListModels"})"), 2) << text;
  EXPECT_EQ(Sample(text, R"(lesion_grpc_responses_total{code="PERMISSION_DENIED",method="Lesion/LoadModel"})"), 1)
      << text;
}

TEST_F(MetricsTest, GaugesAndDurationsFollowTheServer) {
  const std::string first = Submit("ada");
  const std::string second = Submit("bob");
  tracker_->Flush();
  std::string text = metrics_->ExpositionText();
  EXPECT_EQ(Sample(text, R"(lesion_experiments{state="queued"})"), 2) << text;
  EXPECT_EQ(Sample(text, R"(lesion_experiments{state="done"})"), 0) << text;
  EXPECT_EQ(Sample(text, R"(lesion_queue_length{device="cpu"})"), 2) << text;
  EXPECT_EQ(Sample(text, R"(lesion_device_busy{device="cpu"})"), 0) << text;
  EXPECT_EQ(Sample(text, "lesion_models_loaded"), 1) << text;
  EXPECT_GE(Sample(text, "lesion_uptime_seconds"), 5) << text;
  EXPECT_GT(Sample(text, R"(lesion_database_bytes{file="main"})"), 0) << text;

  ASSERT_OK(engine_.Start(first));
  engine_.SetDeviceMemory(1000, 4096);
  tracker_->Flush();
  text = metrics_->ExpositionText();
  EXPECT_EQ(Sample(text, R"(lesion_queue_length{device="cpu"})"), 1) << text;
  EXPECT_EQ(Sample(text, R"(lesion_device_busy{device="cpu"})"), 1) << text;
  EXPECT_EQ(Sample(text, R"(lesion_experiments{state="running"})"), 1) << text;
  EXPECT_EQ(Sample(text, R"(lesion_device_memory_allocated_bytes{device="cpu"})"), 1000) << text;
  EXPECT_EQ(Sample(text, R"(lesion_device_memory_reserved_bytes{device="cpu"})"), 4096) << text;

  ASSERT_OK(engine_.Finish(first, FakeEngine::Result(3.0, 4.0)));
  ASSERT_OK(engine_.Start(second));
  ASSERT_OK(engine_.Finish(second, absl::ResourceExhaustedError("out of memory")));
  tracker_->Flush();
  text = metrics_->ExpositionText();
  EXPECT_EQ(Sample(text, R"(lesion_experiments{state="done"})"), 1) << text;
  EXPECT_EQ(Sample(text, R"(lesion_experiments{state="failed"})"), 1) << text;
  EXPECT_EQ(Sample(text, R"(lesion_experiments{state="queued"})"), 0) << text;
  EXPECT_EQ(Sample(text, R"(lesion_experiment_duration_seconds_count{state="done"})"), 1) << text;
  EXPECT_EQ(Sample(text, R"(lesion_experiment_duration_seconds_count{state="failed"})"), 1) << text;
  EXPECT_EQ(Sample(text, R"(lesion_experiment_duration_seconds_bucket{state="done",le="+Inf"})"), 1) << text;
  // The baseline of the done experiment is cached (it has captures: only if the cache holds them).
  EXPECT_GE(Sample(text, "lesion_baseline_cache_bytes"), 0) << text;
  EXPECT_GT(Sample(text, "lesion_baseline_cache_max_bytes"), 0) << text;
}

TEST_F(MetricsTest, SweepVariantsAreNotTimedOneByOne) {
  v1::SubmitExperimentRequest request;
  *request.mutable_spec() = testing_util::TinySweep();
  v1::Experiment sweep;
  ASSERT_OK(stub_->SubmitExperiment(As("ada").get(), request, &sweep));
  ASSERT_OK(engine_.Start(sweep.id()));
  ASSERT_OK(engine_.Finish(sweep.id(), absl::InternalError("broke")));
  tracker_->Flush();
  const std::string text = metrics_->ExpositionText();
  EXPECT_EQ(Sample(text, R"(lesion_experiment_duration_seconds_count{state="failed"})"), 1) << text;
  EXPECT_EQ(Sample(text, R"(lesion_experiments{state="failed"})"), 1 + sweep.variants_total()) << text;
}

TEST_F(MetricsTest, GetServerStatusShowsTheSameNumbers) {
  const std::string id = Submit("ada");
  tracker_->Flush();
  engine_.SetDeviceMemory(10, 20);
  v1::ServerStatus status;
  const grpc::Status rpc = stub_->GetServerStatus(As("ada").get(), {}, &status);
  ASSERT_TRUE(rpc.ok()) << rpc.error_message();
  EXPECT_FALSE(status.version().empty());
  EXPECT_GT(status.uptime_seconds(), 0);
  ASSERT_EQ(status.models_size(), 1);
  EXPECT_EQ(status.models(0).name(), "tiny");
  ASSERT_EQ(status.devices_size(), 1);
  EXPECT_EQ(status.devices(0).device(), "cpu");
  EXPECT_EQ(status.devices(0).queued(), 1);
  EXPECT_EQ(status.devices(0).memory_reserved_bytes(), 20);
  EXPECT_EQ(status.experiments().at("queued"), 1);
  EXPECT_EQ(status.experiments().at("interrupted"), 0);
  EXPECT_EQ(status.experiments_size(), 6);
  EXPECT_EQ(status.database_bytes(), static_cast<int64_t>(std::filesystem::file_size(config_.database)));
  (void)id;
}

TEST_F(MetricsTest, ServesTheTextOnHttp) {
  absl::StatusOr<std::string> address = metrics_->Serve("127.0.0.1:0");
  ASSERT_OK(address);
  int port = 0;
  ASSERT_TRUE(absl::SimpleAtoi(address->substr(address->rfind(':') + 1), &port)) << *address;
  ASSERT_GT(port, 0);
  const std::string response = HttpGet(port, "/metrics");
  EXPECT_NE(response.find("200 OK"), std::string::npos) << response;
  EXPECT_NE(response.find("\nlesion_models_loaded 1"), std::string::npos) << response;
  EXPECT_NE(response.find("# TYPE lesion_experiments gauge"), std::string::npos) << response;

  EXPECT_EQ(metrics_->Serve("127.0.0.1:0").status().code(), absl::StatusCode::kFailedPrecondition);
  Metrics other([] { return absl::StatusOr<v1::ServerStatus>(v1::ServerStatus()); });
  EXPECT_EQ(other.Serve(*address).status().code(), absl::StatusCode::kUnavailable);  // the port is taken
  EXPECT_EQ(other.Serve("no-port").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(other.Serve("127.0.0.1:99999").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(Metrics, AFailedStatusReadCostsOnlyItsOwnFamilies) {
  Metrics metrics([] { return absl::StatusOr<v1::ServerStatus>(absl::UnavailableError("database is locked")); });
  metrics.CountResponse("Lesion/ListModels", grpc::StatusCode::OK);
  const std::string text = metrics.ExpositionText();
  EXPECT_EQ(Sample(text, "lesion_status_errors_total"), 1) << text;
  EXPECT_EQ(Sample(text, "lesion_models_loaded"), -1) << text;
  EXPECT_EQ(Sample(text, R"(lesion_grpc_responses_total{code="OK",method="Lesion/ListModels"})"), 1) << text;
}

}  // namespace
}  // namespace lesion::server
