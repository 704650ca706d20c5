#include "server/service.h"

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <thread>

#include "common/grpc/grpc_status.h"
#include "common/testing/status_matchers.h"
#include "server/fake_engine.h"
#include "server/test_util.h"
#include "server/tracker.h"

namespace lesion::server {
namespace {

using ::lesion::matchers::StatusIs;

namespace v1 = lesion::v1;
namespace fs = std::filesystem;
using testing_util::TestDir;
using testing_util::TinySpec;

// Polls `done` for up to 10 s.
template <typename F>
bool Eventually(F done) {
  for (int i = 0; i < 1000; ++i) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

class ServiceTest : public ::testing::Test {
 protected:
  void SetUp() override { StartServer(Authenticator::Anonymous(/*anonymous_admin=*/false)); }
  void TearDown() override { StopServer(); }

  void StartServer(Authenticator auth) {
    dir_ = TestDir();
    fs::create_directories(dir_ / "models" / "gpt2");
    fs::create_directories(dir_ / "elsewhere");
    config_.model_roots = {(dir_ / "models").string()};
    config_.models.clear();
    engine_.AddModel("tiny");
    auth_ = std::make_unique<Authenticator>(std::move(auth));
    tracker_ = *ExperimentTracker::Create((dir_ / "lesion.db").string(), &engine_);
    service_ = std::make_unique<LesionService>(&engine_, tracker_.get(), auth_.get(), &config_);
    grpc::ServerBuilder builder;
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    stub_ = v1::Lesion::NewStub(server_->InProcessChannel(grpc::ChannelArguments()));
  }
  void StopServer() {
    tracker_->BeginShutdown();
    engine_.Shutdown();
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
    server_->Wait();
    tracker_.reset();
  }

  // A context as user `user` (anonymous mode) or with `token` (tokens mode).
  static std::unique_ptr<grpc::ClientContext> As(const std::string& user, const std::string& token = "") {
    auto context = std::make_unique<grpc::ClientContext>();
    if (!user.empty()) context->AddMetadata("x-lesion-user", user);
    if (!token.empty()) context->AddMetadata("authorization", "Bearer " + token);
    return context;
  }

  v1::Experiment Submit(const std::string& user, const v1::ExperimentSpec& spec = TinySpec()) {
    v1::SubmitExperimentRequest request;
    *request.mutable_spec() = spec;
    v1::Experiment response;
    grpc::Status status = stub_->SubmitExperiment(As(user).get(), request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response;
  }

  fs::path dir_;
  ServerConfig config_;
  FakeEngine engine_;
  std::unique_ptr<Authenticator> auth_;
  std::unique_ptr<ExperimentTracker> tracker_;
  std::unique_ptr<LesionService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1::Lesion::Stub> stub_;
};

TEST_F(ServiceTest, ListModels) {
  v1::ListModelsResponse response;
  ASSERT_OK(stub_->ListModels(As("alice").get(), {}, &response));
  ASSERT_EQ(response.models_size(), 1);
  EXPECT_EQ(response.models(0).name(), "tiny");
  EXPECT_EQ(response.models(0).n_layers(), 2);
  EXPECT_EQ(response.models(0).fingerprint(), "fp-tiny");
}

TEST_F(ServiceTest, SubmitGetWatchToTheEnd) {
  v1::Experiment queued = Submit("alice");
  EXPECT_EQ(queued.status(), v1::QUEUED);
  EXPECT_EQ(queued.user(), "alice");

  v1::GetExperimentRequest get;
  get.set_id(queued.id());
  v1::Experiment got;
  ASSERT_TRUE(stub_->GetExperiment(As("bob").get(), get, &got).ok());  // everyone sees everything
  EXPECT_EQ(got.status(), v1::QUEUED);

  v1::WatchExperimentRequest watch;
  watch.set_id(queued.id());
  auto context = As("bob");
  std::unique_ptr<grpc::ClientReader<v1::ExperimentEvent>> reader = stub_->WatchExperiment(context.get(), watch);
  v1::ExperimentEvent event;
  ASSERT_TRUE(reader->Read(&event));
  EXPECT_EQ(event.experiment().status(), v1::QUEUED);

  // In lockstep, so that no event is coalesced with a newer one (a slow reader gets the latest).
  ASSERT_OK(engine_.Start(queued.id()));
  ASSERT_TRUE(reader->Read(&event));
  EXPECT_EQ(event.experiment().status(), v1::RUNNING);
  ASSERT_OK(engine_.Progress(queued.id(), 1, 2));
  ASSERT_TRUE(reader->Read(&event));
  EXPECT_EQ(event.experiment().passes_done(), 1);
  EXPECT_EQ(event.experiment().passes_planned(), 2);
  ASSERT_OK(engine_.Progress(queued.id(), 2, 2));
  ASSERT_TRUE(reader->Read(&event));
  EXPECT_EQ(event.experiment().passes_done(), 2);
  EXPECT_FALSE(event.experiment().has_result());
  ASSERT_OK(engine_.Finish(queued.id(), FakeEngine::Result(3.0, 4.5)));
  ASSERT_TRUE(reader->Read(&event));
  EXPECT_EQ(event.experiment().status(), v1::DONE);
  EXPECT_DOUBLE_EQ(event.experiment().result().intervened().perplexity().ppl(), 4.5);
  EXPECT_FALSE(reader->Read(&event));
  grpc::Status status = reader->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();

  // Watching a finished experiment: one event, then the end.
  auto again_context = As("bob");
  auto again = stub_->WatchExperiment(again_context.get(), watch);
  ASSERT_TRUE(again->Read(&event));
  EXPECT_EQ(event.experiment().status(), v1::DONE);
  EXPECT_FALSE(again->Read(&event));
  EXPECT_OK(again->Finish());

  // Captures only when asked for.
  ASSERT_OK(stub_->GetExperiment(As("bob").get(), get, &got));
  EXPECT_EQ(got.status(), v1::DONE);
  EXPECT_TRUE(got.result().intervened().captures(0).data().empty());
  get.set_include_captures(true);
  ASSERT_OK(stub_->GetExperiment(As("bob").get(), get, &got));
  EXPECT_EQ(got.result().intervened().captures(0).data().size(), 8u);
}

TEST_F(ServiceTest, WatchOfABurstEndsWithTheFinalStateInOrder) {
  v1::Experiment queued = Submit("alice");
  v1::WatchExperimentRequest watch;
  watch.set_id(queued.id());
  auto context = As("alice");
  auto reader = stub_->WatchExperiment(context.get(), watch);
  ASSERT_OK(engine_.Start(queued.id()));
  for (int i = 1; i <= 200; ++i) ASSERT_TRUE(engine_.Progress(queued.id(), i, 200).ok());
  ASSERT_OK(engine_.Finish(queued.id(), FakeEngine::Result(1, 2)));
  v1::ExperimentEvent event;
  std::vector<v1::Experiment> seen;
  while (reader->Read(&event)) seen.push_back(event.experiment());
  EXPECT_OK(reader->Finish());
  ASSERT_FALSE(seen.empty());
  EXPECT_EQ(seen.back().status(), v1::DONE);
  for (size_t i = 1; i < seen.size(); ++i) {
    EXPECT_LE(seen[i - 1].status(), seen[i].status());
    if (seen[i].status() == v1::RUNNING) {
      EXPECT_LE(seen[i - 1].passes_done(), seen[i].passes_done());
    }
  }
}

TEST_F(ServiceTest, WatchCancelledByTheClientEndsCleanly) {
  v1::Experiment queued = Submit("alice");
  v1::WatchExperimentRequest watch;
  watch.set_id(queued.id());
  auto context = As("alice");
  auto reader = stub_->WatchExperiment(context.get(), watch);
  v1::ExperimentEvent event;
  ASSERT_TRUE(reader->Read(&event));
  context->TryCancel();
  while (reader->Read(&event)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  // The experiment goes on; events after the watcher left go nowhere.
  ASSERT_OK(engine_.Start(queued.id()));
  ASSERT_OK(engine_.Finish(queued.id(), FakeEngine::Result(1, 2)));
  v1::GetExperimentRequest get;
  get.set_id(queued.id());
  v1::Experiment got;
  ASSERT_OK(stub_->GetExperiment(As("alice").get(), get, &got));
  EXPECT_EQ(got.status(), v1::DONE);
}

TEST_F(ServiceTest, RunExperimentWaitsForTheResult) {
  v1::SubmitExperimentRequest request;
  *request.mutable_spec() = TinySpec();
  v1::Experiment response;
  grpc::Status status;
  std::thread caller([&] { status = stub_->RunExperiment(As("alice").get(), request, &response); });
  ASSERT_TRUE(engine_.WaitForSubmitted(1));
  std::string id = engine_.SubmittedIds()[0];
  ASSERT_OK(engine_.Start(id));
  ASSERT_OK(engine_.Finish(id, FakeEngine::Result(2, 3)));
  caller.join();
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.id(), id);
  EXPECT_EQ(response.status(), v1::DONE);
  EXPECT_DOUBLE_EQ(response.result().intervened().perplexity().ppl(), 3);
}

TEST_F(ServiceTest, RunExperimentOutOfDeviceMemoryIsResourceExhaustedAndTheServerGoesOn) {
  v1::SubmitExperimentRequest request;
  *request.mutable_spec() = TinySpec();
  v1::Experiment response;
  grpc::Status status;
  std::thread caller([&] { status = stub_->RunExperiment(As("alice").get(), request, &response); });
  ASSERT_TRUE(engine_.WaitForSubmitted(1));
  const std::string id = engine_.SubmittedIds()[0];
  ASSERT_OK(engine_.Start(id));
  ASSERT_OK(engine_.Finish(id, absl::ResourceExhaustedError("forward pass of gpt2: out of memory on the device")));
  caller.join();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
  EXPECT_NE(status.error_message().find(id), std::string::npos) << status.error_message();
  v1::GetExperimentRequest get;
  get.set_id(id);
  v1::Experiment got;
  ASSERT_OK(stub_->GetExperiment(As("alice").get(), get, &got));
  EXPECT_EQ(got.status(), v1::FAILED);
  EXPECT_EQ(got.error_code(), "RESOURCE_EXHAUSTED");
  // The next request is served as usual.
  std::thread next([&] { status = stub_->RunExperiment(As("alice").get(), request, &response); });
  ASSERT_TRUE(engine_.WaitForSubmitted(2));
  const std::string second = engine_.SubmittedIds()[1];
  ASSERT_OK(engine_.Start(second));
  ASSERT_OK(engine_.Finish(second, FakeEngine::Result(2, 3)));
  next.join();
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.status(), v1::DONE);
}

TEST_F(ServiceTest, RunExperimentPastItsDeadlineCancelsTheExperiment) {
  v1::SubmitExperimentRequest request;
  *request.mutable_spec() = TinySpec();
  v1::Experiment response;
  auto context = As("alice");
  context->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(300));
  grpc::Status status = stub_->RunExperiment(context.get(), request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << status.error_message();
  ASSERT_TRUE(engine_.WaitForSubmitted(1));
  std::string id = engine_.SubmittedIds()[0];
  EXPECT_TRUE(Eventually([&] { return engine_.Cancelled(id); }));
  v1::GetExperimentRequest get;
  get.set_id(id);
  v1::Experiment got;
  ASSERT_OK(stub_->GetExperiment(As("alice").get(), get, &got));
  EXPECT_EQ(got.status(), v1::CANCELLED);
}

TEST_F(ServiceTest, CancelOnlyYourOwn) {
  v1::Experiment queued = Submit("alice");
  v1::CancelExperimentRequest cancel;
  cancel.set_id(queued.id());
  v1::Experiment response;
  grpc::Status denied = stub_->CancelExperiment(As("bob").get(), cancel, &response);
  EXPECT_EQ(denied.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_NE(denied.error_message().find("alice"), std::string::npos) << denied.error_message();
  ASSERT_OK(stub_->CancelExperiment(As("alice").get(), cancel, &response));
  EXPECT_EQ(response.status(), v1::CANCELLED);
  EXPECT_EQ(stub_->CancelExperiment(As("alice").get(), cancel, &response).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);

  // Resubmit the cancelled one; a queued one cannot be resubmitted.
  v1::ResubmitExperimentRequest resubmit;
  resubmit.set_id(queued.id());
  v1::Experiment again;
  ASSERT_OK(stub_->ResubmitExperiment(As("bob").get(), resubmit, &again));
  EXPECT_EQ(again.user(), "bob");
  EXPECT_EQ(again.status(), v1::QUEUED);
  resubmit.set_id(again.id());
  EXPECT_EQ(stub_->ResubmitExperiment(As("bob").get(), resubmit, &response).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
}

TEST_F(ServiceTest, BadRequestsGetExactCodes) {
  v1::SubmitExperimentRequest submit;
  v1::Experiment response;
  EXPECT_EQ(stub_->SubmitExperiment(As("a").get(), submit, &response).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);  // no spec
  *submit.mutable_spec() = TinySpec("gpt5");
  grpc::Status unknown_model = stub_->SubmitExperiment(As("a").get(), submit, &response);
  EXPECT_EQ(unknown_model.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_NE(unknown_model.error_message().find("gpt5"), std::string::npos);
  engine_.SetValidateError(absl::InvalidArgumentError("interventions[0].head_ablation: head 7 out of range"));
  *submit.mutable_spec() = TinySpec();
  grpc::Status invalid = stub_->SubmitExperiment(As("a").get(), submit, &response);
  EXPECT_EQ(invalid.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(invalid.error_message(), "interventions[0].head_ablation: head 7 out of range");
  engine_.SetValidateError(absl::OkStatus());
  engine_.SetSubmitError(absl::ResourceExhaustedError("queue full"));
  EXPECT_EQ(stub_->SubmitExperiment(As("a").get(), submit, &response).error_code(),
            grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(stub_->RunExperiment(As("a").get(), submit, &response).error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);

  v1::GetExperimentRequest get;
  EXPECT_EQ(stub_->GetExperiment(As("a").get(), get, &response).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  get.set_id("exp-ffffffffffff");
  EXPECT_EQ(stub_->GetExperiment(As("a").get(), get, &response).error_code(), grpc::StatusCode::NOT_FOUND);

  v1::WatchExperimentRequest watch;
  watch.set_id("exp-ffffffffffff");
  auto context = As("a");
  auto reader = stub_->WatchExperiment(context.get(), watch);
  v1::ExperimentEvent event;
  EXPECT_FALSE(reader->Read(&event));
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::NOT_FOUND);

  v1::ListExperimentsRequest list;
  list.set_where("metric.perplexity.delta_pct >");
  v1::ListExperimentsResponse page;
  EXPECT_EQ(stub_->ListExperiments(As("a").get(), list, &page).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  v1::CancelExperimentRequest cancel;
  cancel.set_id("exp-ffffffffffff");
  EXPECT_EQ(stub_->CancelExperiment(As("a").get(), cancel, &response).error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(ServiceTest, ListExperiments) {
  v1::Experiment a = Submit("alice");
  v1::Experiment b = Submit("bob");
  ASSERT_OK(engine_.Start(a.id()));
  ASSERT_OK(engine_.Finish(a.id(), FakeEngine::Result(10, 20)));
  tracker_->Flush();
  v1::ListExperimentsRequest list;
  list.set_where("metric.perplexity.delta_pct > 50");
  list.set_include_results(true);
  v1::ListExperimentsResponse page;
  ASSERT_OK(stub_->ListExperiments(As("x").get(), list, &page));
  ASSERT_EQ(page.experiments_size(), 1);
  EXPECT_EQ(page.experiments(0).id(), a.id());
  EXPECT_EQ(page.total(), 1);
  list.Clear();
  ASSERT_OK(stub_->ListExperiments(As("x").get(), list, &page));
  EXPECT_EQ(page.total(), 2);
}

TEST_F(ServiceTest, LoadAndUnloadAreAdminOnly) {
  v1::LoadModelRequest load;
  load.set_name("gpt2");
  load.set_dir((dir_ / "models" / "gpt2").string());
  v1::ModelInfo info;
  grpc::Status denied = stub_->LoadModel(As("alice").get(), load, &info);
  EXPECT_EQ(denied.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_NE(denied.error_message().find("admin"), std::string::npos);
  v1::UnloadModelRequest unload;
  unload.set_name("tiny");
  v1::UnloadModelResponse unloaded;
  EXPECT_EQ(stub_->UnloadModel(As("alice").get(), unload, &unloaded).error_code(), grpc::StatusCode::PERMISSION_DENIED);
}

class TokenServiceTest : public ServiceTest {
 protected:
  void SetUp() override {
    StartServer(*Authenticator::FromTokensText("tok-alice alice user\ntok-root root admin\n", "tokens"));
  }
};

TEST_F(TokenServiceTest, CallsNeedAKnownToken) {
  v1::ListModelsResponse models;
  grpc::Status none = stub_->ListModels(As("").get(), {}, &models);
  EXPECT_EQ(none.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(stub_->ListModels(As("", "wrong").get(), {}, &models).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_OK(stub_->ListModels(As("", "tok-alice").get(), {}, &models));
  v1::WatchExperimentRequest watch;
  watch.set_id("exp-ffffffffffff");
  auto context = As("");
  auto reader = stub_->WatchExperiment(context.get(), watch);
  v1::ExperimentEvent event;
  EXPECT_FALSE(reader->Read(&event));
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::UNAUTHENTICATED);

  // The token's user owns what it submits, whatever x-lesion-user says.
  v1::SubmitExperimentRequest submit;
  *submit.mutable_spec() = TinySpec();
  v1::Experiment submitted;
  ASSERT_OK(stub_->SubmitExperiment(As("mallory", "tok-alice").get(), submit, &submitted));
  EXPECT_EQ(submitted.user(), "alice");
  // An admin may cancel it.
  v1::CancelExperimentRequest cancel;
  cancel.set_id(submitted.id());
  v1::Experiment cancelled;
  ASSERT_OK(stub_->CancelExperiment(As("", "tok-root").get(), cancel, &cancelled));
  EXPECT_EQ(cancelled.status(), v1::CANCELLED);
}

TEST_F(TokenServiceTest, AdminLoadsFromAllowedRootsOnly) {
  v1::LoadModelRequest load;
  load.set_name("gpt2");
  load.set_dir((dir_ / "elsewhere").string());
  v1::ModelInfo info;
  EXPECT_EQ(stub_->LoadModel(As("", "tok-alice").get(), load, &info).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  grpc::Status outside = stub_->LoadModel(As("", "tok-root").get(), load, &info);
  EXPECT_EQ(outside.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_NE(outside.error_message().find("model root"), std::string::npos) << outside.error_message();
  load.set_dir((dir_ / "models" / "missing").string());
  EXPECT_EQ(stub_->LoadModel(As("", "tok-root").get(), load, &info).error_code(), grpc::StatusCode::NOT_FOUND);

  // Finished from the engine's callback, after the handler returned.
  engine_.HoldLoads(true);
  load.set_dir((dir_ / "models" / "gpt2").string());
  grpc::Status status;
  std::thread caller([&] { status = stub_->LoadModel(As("", "tok-root").get(), load, &info); });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  engine_.CompleteLoad();
  caller.join();
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(info.name(), "gpt2");
  EXPECT_EQ(stub_->LoadModel(As("", "tok-root").get(), load, &info).error_code(), grpc::StatusCode::ALREADY_EXISTS);

  // Unload: refused while an experiment on the model is queued.
  v1::SubmitExperimentRequest submit;
  *submit.mutable_spec() = TinySpec("gpt2");
  v1::Experiment submitted;
  ASSERT_OK(stub_->SubmitExperiment(As("", "tok-alice").get(), submit, &submitted));
  v1::UnloadModelRequest unload;
  unload.set_name("gpt2");
  v1::UnloadModelResponse unloaded;
  EXPECT_EQ(stub_->UnloadModel(As("", "tok-root").get(), unload, &unloaded).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  ASSERT_OK(engine_.Finish(submitted.id(), FakeEngine::Result(1, 1)));
  EXPECT_OK(stub_->UnloadModel(As("", "tok-root").get(), unload, &unloaded));
  unload.set_name("nope");
  EXPECT_EQ(stub_->UnloadModel(As("", "tok-root").get(), unload, &unloaded).error_code(), grpc::StatusCode::NOT_FOUND);
}

// Regression: loads whose callers had timed out still completed and stayed loaded.
TEST_F(TokenServiceTest, ALoadWhoseDeadlinePassedLeavesNoModel) {
  engine_.HoldLoads(true);
  v1::LoadModelRequest load;
  load.set_name("gpt2");
  load.set_dir((dir_ / "models" / "gpt2").string());
  v1::ModelInfo info;
  auto context = As("", "tok-root");
  context->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(500));
  EXPECT_EQ(stub_->LoadModel(context.get(), load, &info).error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  ASSERT_EQ(engine_.HeldLoads(), 1) << "the load never reached the engine";
  EXPECT_TRUE(engine_.HeldLoadCancelled());
  engine_.CompleteLoad();  // the engine asks the caller's cancellation before it registers the model
  v1::ListModelsResponse models;
  ASSERT_OK(stub_->ListModels(As("", "tok-root").get(), {}, &models));
  for (const v1::ModelInfo& m : models.models()) EXPECT_NE(m.name(), "gpt2");
  // The name is free again.
  engine_.HoldLoads(false);
  EXPECT_OK(stub_->LoadModel(As("", "tok-root").get(), load, &info));
}

TEST_F(TokenServiceTest, ALoadWhoseClientCancelledLeavesNoModel) {
  engine_.HoldLoads(true);
  v1::LoadModelRequest load;
  load.set_name("gpt2");
  load.set_dir((dir_ / "models" / "gpt2").string());
  v1::ModelInfo info;
  auto context = As("", "tok-root");
  grpc::Status status;
  std::thread caller([&] { status = stub_->LoadModel(context.get(), load, &info); });
  ASSERT_TRUE(Eventually([&] { return engine_.HeldLoads() == 1; }));
  EXPECT_FALSE(engine_.HeldLoadCancelled());
  context->TryCancel();
  caller.join();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(Eventually([&] { return engine_.HeldLoadCancelled(); })) << "the server never saw the cancellation";
  engine_.CompleteLoad();
  absl::StatusOr<ModelSummary> model = engine_.GetModel("gpt2");
  EXPECT_THAT(model, StatusIs(absl::StatusCode::kNotFound));
}

// Regression: a 1 MB model name or id came back as RESOURCE_EXHAUSTED "Stream removed" (the error
// echoed it whole, beyond gRPC's limit on metadata) instead of the real error.
TEST_F(ServiceTest, HugeNamesAndIdsGetTheirRealErrorInFewBytes) {
  const std::string huge(1 << 20, 'm');
  v1::SubmitExperimentRequest submit;
  *submit.mutable_spec() = TinySpec(huge);
  v1::Experiment submitted;
  grpc::Status unknown_model = stub_->SubmitExperiment(As("alice").get(), submit, &submitted);
  EXPECT_EQ(unknown_model.error_code(), grpc::StatusCode::NOT_FOUND) << unknown_model.error_message().substr(0, 200);
  EXPECT_LE(unknown_model.error_message().size(), kMaxStatusMessageBytes);

  v1::GetExperimentRequest get;
  get.set_id(huge);
  v1::Experiment got;
  grpc::Status unknown_id = stub_->GetExperiment(As("alice").get(), get, &got);
  EXPECT_EQ(unknown_id.error_code(), grpc::StatusCode::NOT_FOUND) << unknown_id.error_message().substr(0, 200);
  EXPECT_LE(unknown_id.error_message().size(), kMaxStatusMessageBytes);
}

TEST_F(TokenServiceTest, RetentionIsAdminOnlyAndNeedsAFilter) {
  v1::SubmitExperimentRequest submit;
  *submit.mutable_spec() = TinySpec();
  v1::Experiment submitted;
  ASSERT_OK(stub_->SubmitExperiment(As("", "tok-alice").get(), submit, &submitted));
  v1::RetentionRequest request;
  request.set_where("user = \"alice\"");
  v1::RetentionResponse response;
  grpc::Status denied = stub_->DeleteExperiments(As("", "tok-alice").get(), request, &response);
  EXPECT_EQ(denied.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_NE(denied.error_message().find("DeleteExperiments is admin-only"), std::string::npos);
  EXPECT_EQ(stub_->DropCaptures(As("", "tok-alice").get(), request, &response).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  // The admin's call: the queued experiment is skipped, not deleted.
  grpc::Status done = stub_->DeleteExperiments(As("", "tok-root").get(), request, &response);
  ASSERT_TRUE(done.ok()) << done.error_message();
  EXPECT_EQ(response.experiments(), 0);
  EXPECT_EQ(response.skipped_active(), 1);
  request.clear_where();
  grpc::Status no_filter = stub_->DropCaptures(As("", "tok-root").get(), request, &response);
  EXPECT_EQ(no_filter.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(no_filter.error_message().find("filter is required"), std::string::npos);
}

}  // namespace
}  // namespace lesion::server
