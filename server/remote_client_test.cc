// The C++ client (client/cpp/remote_client.h) against the real service on a FakeEngine, through an
// in-process channel.
#include "client/cpp/remote_client.h"

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "common/testing/status_matchers.h"
#include "server/fake_engine.h"
#include "server/service.h"
#include "server/test_util.h"
#include "server/tracker.h"

namespace lesion::server {
namespace {

using ::lesion::matchers::StatusIs;

namespace v1 = lesion::v1;

class RemoteClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    engine_.AddModel("tiny");
    tracker_ = *ExperimentTracker::Create((testing_util::TestDir() / "lesion.db").string(), &engine_);
    service_ = std::make_unique<LesionService>(&engine_, tracker_.get(), &auth_, &config_);
    grpc::ServerBuilder builder;
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    client::RemoteOptions options;
    options.user = "alice";
    client_ = client::RemoteClient::FromChannel(server_->InProcessChannel(grpc::ChannelArguments()), options);
  }
  void TearDown() override {
    tracker_->BeginShutdown();
    engine_.Shutdown();
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
    tracker_.reset();
  }

  ServerConfig config_;
  Authenticator auth_ = Authenticator::Anonymous(false);
  FakeEngine engine_;
  std::unique_ptr<ExperimentTracker> tracker_;
  std::unique_ptr<LesionService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<client::RemoteClient> client_;
};

TEST_F(RemoteClientTest, SubmitWatchGetListCancel) {
  absl::StatusOr<v1::ListModelsResponse> models = client_->ListModels();
  ASSERT_OK(models);
  EXPECT_EQ(models->models(0).name(), "tiny");

  absl::StatusOr<v1::Experiment> queued = client_->Submit(testing_util::TinySpec());
  ASSERT_OK(queued);
  EXPECT_EQ(queued->user(), "alice");
  std::thread driver([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    ASSERT_OK(engine_.Start(queued->id()));
    ASSERT_OK(engine_.Progress(queued->id(), 1, 1));
    ASSERT_OK(engine_.Finish(queued->id(), FakeEngine::Result(5, 6)));
  });
  int events = 0;
  absl::StatusOr<v1::Experiment> done = client_->Watch(queued->id(), [&](const v1::Experiment&) { ++events; });
  driver.join();
  ASSERT_OK(done);
  EXPECT_EQ(done->status(), v1::DONE);
  EXPECT_GE(events, 2);
  EXPECT_EQ(client_->Get(queued->id())->status(), v1::DONE);
  tracker_->Flush();
  EXPECT_EQ(client_->List({})->total(), 1);

  absl::StatusOr<v1::Experiment> second = client_->Submit(testing_util::TinySpec());
  ASSERT_OK(second);
  EXPECT_EQ(client_->Cancel(second->id())->status(), v1::CANCELLED);
  EXPECT_THAT(client_->Cancel(second->id()), StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_EQ(client_->Resubmit(second->id())->status(), v1::QUEUED);
  EXPECT_EQ(client_->Get("exp-ffffffffffff").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(client_->UnloadModel("tiny").code(), absl::StatusCode::kPermissionDenied);
}

TEST_F(RemoteClientTest, RunWithADeadline) {
  absl::StatusOr<v1::Experiment> run = client_->Run(testing_util::TinySpec(), absl::Milliseconds(200));
  EXPECT_EQ(run.status().code(), absl::StatusCode::kDeadlineExceeded) << run.status();
}

TEST(RemoteClient, ConnectToNothingIsUnavailable) {
  client::RemoteOptions options;
  options.address = "127.0.0.1:1";
  options.connect_timeout = absl::Milliseconds(200);
  absl::StatusOr<std::unique_ptr<client::RemoteClient>> client = client::RemoteClient::Connect(options);
  EXPECT_THAT(client, StatusIs(absl::StatusCode::kUnavailable));
}

}  // namespace
}  // namespace lesion::server
