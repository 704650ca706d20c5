#include "server/tracker.h"

#include <gtest/gtest.h>

#include <condition_variable>
#include <memory>
#include <mutex>
#include <set>
#include <vector>

#include "common/testing/status_matchers.h"
#include "server/fake_engine.h"
#include "server/test_util.h"
#include "storage/experiment_store.h"

namespace lesion::server {
namespace {

using ::lesion::matchers::StatusIs;

namespace v1 = lesion::v1;
using testing_util::TestDir;
using testing_util::TinySpec;
using testing_util::TinySweep;

const Principal kAlice{"alice", Role::kUser};
const Principal kBob{"bob", Role::kUser};
const Principal kAdmin{"root", Role::kAdmin};

class TrackerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    db_ = (TestDir() / "lesion.db").string();
    engine_.AddModel("tiny");
    Open();
  }
  void Open(TrackerOptions options = {}) {
    tracker_.reset();
    absl::StatusOr<std::unique_ptr<ExperimentTracker>> tracker = ExperimentTracker::Create(db_, &engine_, options);
    ASSERT_OK(tracker);
    tracker_ = std::move(*tracker);
  }
  // The record as the store has it, after every queued write.
  storage::ExperimentRecord Stored(const std::string& id) {
    tracker_->Flush();
    auto store = storage::ExperimentStore::Open(db_);
    EXPECT_OK(store);
    absl::StatusOr<storage::ExperimentRecord> record = (*store)->Get(id);
    EXPECT_OK(record);
    return record.ok() ? *record : storage::ExperimentRecord{};
  }

  std::string db_;
  FakeEngine engine_;
  std::unique_ptr<ExperimentTracker> tracker_;
};

struct Events {
  std::mutex mu;
  std::vector<ExperimentEvent> seen;
  ExperimentTracker::Watcher watcher() {
    return [this](const ExperimentEvent& e) {
      std::lock_guard<std::mutex> lock(mu);
      seen.push_back(e);
    };
  }
};

// What a Submit answer waits for: once AfterQueuedWrites runs, another connection reads the record
// (a regression: the answer went out before the insert, and a crash lost the id).
TEST_F(TrackerTest, AfterQueuedWritesSeesTheSubmittedRecordInTheFile) {
  absl::StatusOr<v1::Experiment> queued = tracker_->Submit(kAlice, TinySpec());
  ASSERT_OK(queued);
  std::mutex mu;
  std::condition_variable cv;
  std::optional<absl::Status> read;
  tracker_->AfterQueuedWrites([&] {
    auto store = storage::ExperimentStore::Open(db_);
    absl::Status st = store.ok() ? (*store)->Get(queued->id()).status() : store.status();
    std::lock_guard<std::mutex> lock(mu);
    read = st;
    cv.notify_all();
  });
  std::unique_lock<std::mutex> lock(mu);
  ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(10), [&] { return read.has_value(); }));
  EXPECT_TRUE(read->ok()) << *read;
}

TEST_F(TrackerTest, SubmitQueuesAndRecords) {
  absl::StatusOr<v1::Experiment> queued = tracker_->Submit(kAlice, TinySpec());
  ASSERT_OK(queued);
  EXPECT_EQ(queued->id().size(), 16u) << queued->id();
  EXPECT_EQ(queued->id().substr(0, 4), "exp-");
  EXPECT_EQ(queued->status(), v1::QUEUED);
  EXPECT_EQ(queued->user(), "alice");
  EXPECT_EQ(queued->name(), "prune");
  EXPECT_EQ(queued->model_fingerprint(), "fp-tiny");
  EXPECT_EQ(queued->queue_position(), 0);
  EXPECT_EQ(engine_.SubmittedIds(), std::vector<std::string>{queued->id()});

  absl::StatusOr<v1::Experiment> second = tracker_->Submit(kBob, TinySpec());
  ASSERT_OK(second);
  EXPECT_EQ(second->queue_position(), 1);

  storage::ExperimentRecord record = Stored(queued->id());
  EXPECT_EQ(record.status, storage::ExperimentStatus::kQueued);
  EXPECT_EQ(record.user, "alice");
  EXPECT_EQ(record.model, "tiny");
  EXPECT_EQ(record.tags, std::vector<std::string>{"sinks"});
}

TEST_F(TrackerTest, BadSpecsAreRejectedBeforeTheEngine) {
  EXPECT_EQ(tracker_->Submit(kAlice, TinySpec("nope")).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(tracker_->Submit(kAlice, TinySpec("")).status().code(), absl::StatusCode::kInvalidArgument);
  v1::ExperimentSpec no_dataset = TinySpec();
  no_dataset.clear_dataset();
  EXPECT_EQ(tracker_->Submit(kAlice, no_dataset).status().code(), absl::StatusCode::kInvalidArgument);
  engine_.SetValidateError(absl::InvalidArgumentError("layer 14 out of range: model tiny has 2 layers"));
  absl::Status invalid = tracker_->Submit(kAlice, TinySpec()).status();
  EXPECT_THAT(invalid, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(invalid.message(), "layer 14 out of range: model tiny has 2 layers");
  engine_.SetValidateError(absl::OkStatus());
  engine_.SetSubmitError(absl::ResourceExhaustedError("the queue of cpu is full (64)"));
  EXPECT_EQ(tracker_->Submit(kAlice, TinySpec()).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(engine_.SubmittedIds().empty());
  v1::ListExperimentsRequest all;
  tracker_->Flush();
  EXPECT_EQ(tracker_->List(all)->total(), 0);  // nothing recorded for rejected submissions
}

TEST_F(TrackerTest, LifecycleNotifiesWatchersInOrderAndStoresTheResult) {
  v1::Experiment queued = *tracker_->Submit(kAlice, TinySpec());
  const std::string id = queued.id();
  Events events;
  absl::StatusOr<ExperimentTracker::Subscription> sub = tracker_->Subscribe(id, events.watcher());
  ASSERT_OK(sub);
  EXPECT_EQ(sub->current().experiment.status(), v1::QUEUED);
  EXPECT_FALSE(sub->current().final);

  ASSERT_OK(engine_.Start(id));
  EXPECT_EQ(tracker_->Get(id, false)->status(), v1::RUNNING);
  EXPECT_EQ(Stored(id).status, storage::ExperimentStatus::kRunning);
  ASSERT_OK(engine_.Progress(id, 1, 4));
  v1::Experiment running = *tracker_->Get(id, false);
  EXPECT_EQ(running.passes_done(), 1);
  EXPECT_EQ(running.passes_planned(), 4);
  ASSERT_OK(engine_.Finish(id, FakeEngine::Result(10.0, 12.5)));
  tracker_->Flush();  // the final event follows its store writes

  {
    std::lock_guard<std::mutex> lock(events.mu);
    ASSERT_EQ(events.seen.size(), 3u);
    EXPECT_EQ(events.seen[0].experiment.status(), v1::RUNNING);
    EXPECT_EQ(events.seen[1].experiment.passes_done(), 1);
    EXPECT_FALSE(events.seen[1].experiment.has_result());
    EXPECT_EQ(events.seen[2].experiment.status(), v1::DONE);
    EXPECT_TRUE(events.seen[2].final);
    EXPECT_DOUBLE_EQ(events.seen[2].experiment.result().intervened().perplexity().ppl(), 12.5);
    EXPECT_LT(events.seen[0].sequence, events.seen[1].sequence);
    EXPECT_LT(events.seen[1].sequence, events.seen[2].sequence);
  }
  EXPECT_EQ(Stored(id).status, storage::ExperimentStatus::kDone);
  // Retired from memory: now read from the store.
  absl::StatusOr<v1::Experiment> done = tracker_->Get(id, /*include_captures=*/false);
  ASSERT_OK(done);
  EXPECT_EQ(done->status(), v1::DONE);
  EXPECT_EQ(done->spec().name(), "prune");
  EXPECT_EQ(done->spec().interventions(0).head_ablation().layer(), 1);
  EXPECT_DOUBLE_EQ(done->result().baseline().perplexity().ppl(), 10.0);
  ASSERT_EQ(done->result().intervened().captures_size(), 1);
  EXPECT_TRUE(done->result().intervened().captures(0).data().empty());
  EXPECT_EQ(tracker_->Get(id, true)->result().intervened().captures(0).data().size(), 8u);
  EXPECT_GT(done->finished_unix_micros(), 0);

  // A subscription to a finished experiment is its final state and nothing else.
  absl::StatusOr<ExperimentTracker::Subscription> late = tracker_->Subscribe(id, events.watcher());
  ASSERT_OK(late);
  EXPECT_TRUE(late->current().final);
  EXPECT_EQ(late->current().experiment.status(), v1::DONE);
  EXPECT_EQ(tracker_->Subscribe("exp-000000000000", events.watcher()).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(TrackerTest, FailureIsRecordedWithItsError) {
  std::string id = tracker_->Submit(kAlice, TinySpec())->id();
  ASSERT_OK(engine_.Start(id));
  ASSERT_OK(engine_.Finish(id, absl::ResourceExhaustedError("CUDA out of memory")));
  v1::Experiment failed = *tracker_->Get(id, false);
  EXPECT_EQ(failed.status(), v1::FAILED);
  EXPECT_NE(failed.error().find("CUDA out of memory"), std::string::npos) << failed.error();
  storage::ExperimentRecord record = Stored(id);
  EXPECT_EQ(record.status, storage::ExperimentStatus::kFailed);
  EXPECT_NE(record.error.find("CUDA out of memory"), std::string::npos);
}

TEST_F(TrackerTest, CancelOnlyByOwnerOrAdmin) {
  std::string id = tracker_->Submit(kAlice, TinySpec())->id();
  absl::Status denied = tracker_->Cancel(kBob, id).status();
  EXPECT_THAT(denied, StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_NE(denied.message().find("alice"), absl::string_view::npos) << denied;
  absl::StatusOr<v1::Experiment> cancelled = tracker_->Cancel(kAlice, id);
  ASSERT_OK(cancelled);
  EXPECT_EQ(cancelled->status(), v1::CANCELLED);
  EXPECT_TRUE(engine_.Cancelled(id));
  EXPECT_EQ(Stored(id).status, storage::ExperimentStatus::kCancelled);
  EXPECT_EQ(tracker_->Cancel(kAlice, id).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(tracker_->Cancel(kAlice, "exp-000000000000").status().code(), absl::StatusCode::kNotFound);

  std::string other = tracker_->Submit(kBob, TinySpec())->id();
  ASSERT_OK(engine_.Start(other));
  EXPECT_EQ(tracker_->Cancel(kAdmin, other)->status(), v1::CANCELLED);
}

TEST_F(TrackerTest, BaselineIsCachedByFingerprintAndBaselineHash) {
  std::string first = tracker_->Submit(kAlice, TinySpec())->id();
  EXPECT_FALSE(engine_.SubmittedJob(first)->lookup_cached_baseline().has_value());
  ASSERT_OK(engine_.Start(first));
  ASSERT_OK(engine_.Finish(first, FakeEngine::Result(7.25, 9.0)));

  // Same dataset and measurements, other interventions and name: the same baseline.
  v1::ExperimentSpec similar = TinySpec();
  similar.set_name("other");
  similar.mutable_interventions(0)->mutable_head_ablation()->set_layer(0);
  std::string second = tracker_->Submit(kAlice, similar)->id();
  std::optional<Job> job = engine_.SubmittedJob(second);
  ASSERT_TRUE(job->lookup_cached_baseline().has_value());
  EXPECT_DOUBLE_EQ(job->lookup_cached_baseline()->perplexity.ppl, 7.25);

  // Other text: another baseline.
  std::string third = tracker_->Submit(kAlice, TinySpec("tiny", "another text"))->id();
  EXPECT_FALSE(engine_.SubmittedJob(third)->lookup_cached_baseline().has_value());

  // After a restart the cache comes from the store.
  tracker_->Flush();
  Open();
  std::string fourth = tracker_->Submit(kAlice, similar)->id();
  ASSERT_TRUE(engine_.SubmittedJob(fourth)->lookup_cached_baseline().has_value());
  EXPECT_DOUBLE_EQ(engine_.SubmittedJob(fourth)->lookup_cached_baseline()->perplexity.ppl, 7.25);
}

// Regression: the key was the fingerprint and the spec alone, so a baseline computed on the CPU
// served an experiment on CUDA (or with TF32), whose own numbers differ in the last bits.
TEST_F(TrackerTest, BaselineIsNotSharedAcrossDeviceKindsOrTf32) {
  engine_.AddModel("gpu-copy");
  engine_.SetModelPlacement("gpu-copy", "cuda:0,cuda:1", "fp-tiny");  // the same weights on GPUs
  engine_.AddModel("cpu-copy");
  engine_.SetModelPlacement("cpu-copy", "cpu,cpu", "fp-tiny");
  std::string first = tracker_->Submit(kAlice, TinySpec())->id();
  ASSERT_OK(engine_.Start(first));
  ASSERT_OK(engine_.Finish(first, FakeEngine::Result(7.25, 9.0)));

  std::string on_gpu = tracker_->Submit(kAlice, TinySpec("gpu-copy"))->id();
  EXPECT_FALSE(engine_.SubmittedJob(on_gpu)->lookup_cached_baseline().has_value());
  std::string on_cpu = tracker_->Submit(kAlice, TinySpec("cpu-copy"))->id();
  EXPECT_TRUE(engine_.SubmittedJob(on_cpu)->lookup_cached_baseline().has_value()) << "same weights, same kind";

  tracker_->Flush();
  Open(TrackerOptions{.tf32 = true});
  std::string with_tf32 = tracker_->Submit(kAlice, TinySpec())->id();
  EXPECT_FALSE(engine_.SubmittedJob(with_tf32)->lookup_cached_baseline().has_value());

  ModelSummary m;
  m.fingerprint = "fp";
  m.device = "cuda:1,cuda:0";
  EXPECT_EQ(BaselineKey(m, false, "abc"), "fp:cuda:abc");
  EXPECT_EQ(BaselineKey(m, true, "abc"), "fp:cuda:tf32:abc");
  m.device = "cpu,cuda:0";
  EXPECT_EQ(BaselineKey(m, false, "abc"), "fp:cpu+cuda:abc");
}

TEST_F(TrackerTest, RestartMarksLeftoversInterruptedAndResubmitRunsThemAgain) {
  std::string queued = tracker_->Submit(kAlice, TinySpec())->id();
  std::string running = tracker_->Submit(kAlice, TinySpec())->id();
  ASSERT_OK(engine_.Start(running));
  std::string done = tracker_->Submit(kAlice, TinySpec())->id();
  ASSERT_OK(engine_.Start(done));
  ASSERT_OK(engine_.Finish(done, FakeEngine::Result(1, 2)));
  tracker_->Flush();
  Open();  // as after a crash: the store still says queued / running
  EXPECT_EQ(tracker_->Get(queued, false)->status(), v1::INTERRUPTED);
  EXPECT_EQ(tracker_->Get(running, false)->status(), v1::INTERRUPTED);
  EXPECT_EQ(tracker_->Get(done, false)->status(), v1::DONE);

  EXPECT_EQ(tracker_->Resubmit(kBob, done).status().code(), absl::StatusCode::kFailedPrecondition);
  absl::StatusOr<v1::Experiment> again = tracker_->Resubmit(kBob, running);
  ASSERT_OK(again);
  EXPECT_NE(again->id(), running);
  EXPECT_EQ(again->user(), "bob");
  EXPECT_EQ(again->status(), v1::QUEUED);
  EXPECT_EQ(again->spec().interventions(0).head_ablation().layer(), 1);
  EXPECT_EQ(tracker_->Resubmit(kBob, "exp-000000000000").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(TrackerTest, ShutdownReportsInterruptedAndLeavesTheStoreForTheNextStart) {
  std::string id = tracker_->Submit(kAlice, TinySpec())->id();
  Events events;
  auto sub = tracker_->Subscribe(id, events.watcher());
  tracker_->BeginShutdown();
  engine_.Shutdown();
  tracker_->Flush();
  {
    std::lock_guard<std::mutex> lock(events.mu);
    ASSERT_EQ(events.seen.size(), 1u);
    EXPECT_EQ(events.seen[0].experiment.status(), v1::INTERRUPTED);
    EXPECT_TRUE(events.seen[0].final);
  }
  EXPECT_EQ(Stored(id).status, storage::ExperimentStatus::kQueued);
}

TEST_F(TrackerTest, ListFiltersOrdersPagesAndOverlaysLiveState) {
  std::string a = tracker_->Submit(kAlice, TinySpec())->id();
  std::string b = tracker_->Submit(kBob, TinySpec())->id();
  ASSERT_OK(engine_.Start(a));
  ASSERT_OK(engine_.Finish(a, FakeEngine::Result(10, 11)));
  tracker_->Flush();

  v1::ListExperimentsRequest request;
  request.set_where("metric.perplexity.delta_pct > 5");
  request.set_include_results(true);
  absl::StatusOr<v1::ListExperimentsResponse> page = tracker_->List(request);
  ASSERT_OK(page);
  ASSERT_EQ(page->experiments_size(), 1);
  EXPECT_EQ(page->experiments(0).id(), a);
  EXPECT_DOUBLE_EQ(page->experiments(0).result().intervened().perplexity().ppl(), 11);
  EXPECT_TRUE(page->experiments(0).result().intervened().captures(0).data().empty());

  request.Clear();
  request.set_where("user = \"bob\"");
  page = tracker_->List(request);
  ASSERT_EQ(page->experiments_size(), 1);
  EXPECT_EQ(page->experiments(0).id(), b);
  EXPECT_EQ(page->experiments(0).status(), v1::QUEUED);

  request.Clear();
  request.set_limit(1);
  request.set_order_by("created asc");
  page = tracker_->List(request);
  EXPECT_EQ(page->total(), 2);
  ASSERT_EQ(page->experiments_size(), 1);
  EXPECT_FALSE(page->experiments(0).has_result());

  request.Clear();
  request.set_where("modle = \"x\"");
  absl::Status bad = tracker_->List(request).status();
  EXPECT_THAT(bad, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_NE(bad.message().find("modle"), absl::string_view::npos) << bad;
  request.Clear();
  request.set_limit(-1);
  EXPECT_THAT(tracker_->List(request), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_F(TrackerTest, QueuePositionsMoveUpWhenAnExperimentStarts) {
  std::string a = tracker_->Submit(kAlice, TinySpec())->id();
  std::string b = tracker_->Submit(kAlice, TinySpec())->id();
  EXPECT_EQ(tracker_->Get(b, false)->queue_position(), 1);
  Events events;
  auto sub = tracker_->Subscribe(b, events.watcher());
  ASSERT_OK(engine_.Finish(a, FakeEngine::Result(1, 1)));  // finished from the queue
  tracker_->Flush();
  EXPECT_EQ(tracker_->Get(b, false)->queue_position(), 0);
  ASSERT_OK(engine_.Start(b));
  tracker_->Flush();
  std::lock_guard<std::mutex> lock(events.mu);
  ASSERT_EQ(events.seen.size(), 2u);
  EXPECT_EQ(events.seen[0].experiment.status(), v1::QUEUED);
  EXPECT_EQ(events.seen[0].experiment.queue_position(), 0);
  EXPECT_EQ(events.seen[1].experiment.status(), v1::RUNNING);
}

TEST(Tracker, InMemoryDatabaseIsRefused) {
  FakeEngine engine;
  EXPECT_EQ(ExperimentTracker::Create(":memory:", &engine).status().code(), absl::StatusCode::kInvalidArgument);
}

// ---- Sweeps -----------------------------------------------------------------------------------------

TEST_F(TrackerTest, ASweepIsAParentWithOneQueuedChildPerVariant) {
  absl::StatusOr<v1::Experiment> parent = tracker_->Submit(kAlice, TinySweep());
  ASSERT_OK(parent);
  EXPECT_EQ(parent->variants_total(), 4);
  EXPECT_EQ(parent->status(), v1::QUEUED);
  EXPECT_EQ(engine_.SubmittedIds(), std::vector<std::string>{parent->id()}) << "one engine job for the sweep";
  std::optional<Job> job = engine_.SubmittedJob(parent->id());
  ASSERT_TRUE(job.has_value());
  ASSERT_EQ(job->variants.size(), 4u);
  EXPECT_EQ(job->variants[3].variant_name, "L1.H1");

  const std::string child = parent->id() + ".3";
  absl::StatusOr<v1::Experiment> c = tracker_->Get(child, false);
  ASSERT_OK(c);
  EXPECT_EQ(c->parent_id(), parent->id());
  EXPECT_EQ(c->name(), "heads/L1.H1");
  EXPECT_EQ(c->status(), v1::QUEUED);
  ASSERT_EQ(c->spec().interventions_size(), 1);
  EXPECT_EQ(c->spec().interventions(0).head_ablation().layer(), 1);
  EXPECT_FALSE(c->spec().has_sweep());

  storage::ExperimentRecord record = Stored(child);
  EXPECT_EQ(record.parent_id, std::optional<std::string>(parent->id()));
  EXPECT_EQ(record.status, storage::ExperimentStatus::kQueued);
  v1::ListExperimentsRequest children;
  children.set_where("parent = \"" + parent->id() + "\"");
  absl::StatusOr<v1::ListExperimentsResponse> listed = tracker_->List(children);
  ASSERT_OK(listed);
  EXPECT_EQ(listed->total(), 4);
  EXPECT_EQ(tracker_->Cancel(kAlice, child).status().code(), absl::StatusCode::kFailedPrecondition)
      << "a variant is cancelled with its sweep";
}

TEST_F(TrackerTest, VariantsFinishOneByOneAndTheParentNamesThem) {
  absl::StatusOr<v1::Experiment> parent = tracker_->Submit(kAlice, TinySweep());
  ASSERT_OK(parent);
  const std::string id = parent->id();
  Events events;
  absl::StatusOr<ExperimentTracker::Subscription> sub = tracker_->Subscribe(id, events.watcher());
  ASSERT_OK(sub);
  ASSERT_OK(engine_.Start(id));
  EXPECT_EQ(tracker_->Get(id + ".2", false)->status(), v1::RUNNING) << "variants run with their sweep";
  ASSERT_OK(engine_.Variant(id, 2, FakeEngine::Result(3.0, 3.5)));
  absl::StatusOr<v1::Experiment> done = tracker_->Get(id + ".2", false);
  EXPECT_EQ(done->status(), v1::DONE);
  EXPECT_NEAR(done->result().metrics(0).value(), 3.5, 1e-12);
  EXPECT_EQ(tracker_->Get(id, false)->variants_done(), 1);
  for (int i : {0, 1, 3}) ASSERT_TRUE(engine_.Variant(id, i, FakeEngine::Result(3.0, 3.0 + i)).ok());
  result::Experiment summary = FakeEngine::Result(3.0, 3.0);
  summary.has_sweep = true;
  summary.sweep.variants.resize(4);
  for (int i = 0; i < 4; ++i) summary.sweep.variants[i].name = "v" + std::to_string(i);
  ASSERT_OK(engine_.Finish(id, summary));
  absl::StatusOr<v1::Experiment> finished = tracker_->Get(id, false);
  ASSERT_OK(finished);
  EXPECT_EQ(finished->status(), v1::DONE);
  EXPECT_EQ(finished->variants_done(), 4);
  ASSERT_EQ(finished->result().sweep().variants_size(), 4);
  EXPECT_EQ(finished->result().sweep().variants(3).experiment_id(), id + ".3");
  EXPECT_EQ(Stored(id + ".3").status, storage::ExperimentStatus::kDone);
  tracker_->Flush();
  EXPECT_GE(events.seen.size(), 6u) << "start, four variants, the end";
  // From the store too, after the live state is gone.
  sub->Reset();
  tracker_->Flush();
  Open();
  absl::StatusOr<v1::Experiment> reread = tracker_->Get(id, false);
  ASSERT_OK(reread);
  EXPECT_EQ(reread->variants_total(), 4);
  EXPECT_EQ(reread->result().sweep().variants(1).experiment_id(), id + ".1");
  EXPECT_EQ(tracker_->Get(id + ".1", false)->parent_id(), id);
}

TEST_F(TrackerTest, CancellingASweepCancelsTheVariantsNotDone) {
  absl::StatusOr<v1::Experiment> parent = tracker_->Submit(kAlice, TinySweep());
  ASSERT_OK(parent);
  const std::string id = parent->id();
  ASSERT_OK(engine_.Start(id));
  ASSERT_OK(engine_.Variant(id, 0, FakeEngine::Result(3.0, 3.5)));
  EXPECT_EQ(tracker_->Cancel(kBob, id).status().code(), absl::StatusCode::kPermissionDenied);
  ASSERT_OK(tracker_->Cancel(kAlice, id));
  EXPECT_EQ(tracker_->Get(id, false)->status(), v1::CANCELLED);
  EXPECT_EQ(tracker_->Get(id + ".0", false)->status(), v1::DONE) << "a finished variant stays done";
  for (int i : {1, 2, 3}) {
    absl::StatusOr<v1::Experiment> c = tracker_->Get(id + "." + std::to_string(i), false);
    EXPECT_EQ(c->status(), v1::CANCELLED);
    EXPECT_NE(c->error().find("sweep " + id), std::string::npos) << c->error();
  }
  EXPECT_EQ(Stored(id + ".2").status, storage::ExperimentStatus::kCancelled);
  // Once retired from memory, read from the store: the reason is kept (a regression: it was lost,
  // and this test failed whenever the writer retired the variants before the reads above).
  EXPECT_NE(Stored(id + ".2").error.find("sweep " + id), std::string::npos) << Stored(id + ".2").error;
  EXPECT_NE(tracker_->Get(id + ".3", false)->error().find("sweep " + id), std::string::npos);
  // A cancelled variant reruns alone.
  absl::StatusOr<v1::Experiment> again = tracker_->Resubmit(kAlice, id + ".2");
  ASSERT_OK(again);
  EXPECT_EQ(again->variants_total(), 0);
  EXPECT_TRUE(again->parent_id().empty());
  EXPECT_EQ(again->spec().interventions(0).head_ablation().layer(), 1);
}

TEST_F(TrackerTest, AFailedSweepFailsItsVariantsAndABadAxisIsRefused) {
  absl::StatusOr<v1::Experiment> parent = tracker_->Submit(kAlice, TinySweep());
  ASSERT_OK(parent);
  ASSERT_OK(engine_.Start(parent->id()));
  ASSERT_OK(engine_.Finish(parent->id(), absl::ResourceExhaustedError("out of memory on the device")));
  absl::StatusOr<v1::Experiment> child = tracker_->Get(parent->id() + ".1", false);
  EXPECT_EQ(child->status(), v1::FAILED);
  EXPECT_NE(child->error().find("out of memory"), std::string::npos) << child->error();

  v1::ExperimentSpec bad = TinySweep();
  bad.mutable_sweep()->mutable_axes(0)->mutable_heads()->add_layers(7);
  absl::Status s = tracker_->Submit(kAlice, bad).status();
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_NE(s.message().find("layer 7 out of range"), std::string::npos) << s;
}

TEST_F(TrackerTest, QueuedExperimentsPerUserAreBounded) {
  Open(TrackerOptions{.max_queued_per_user = 2});
  absl::StatusOr<v1::Experiment> first = tracker_->Submit(kAlice, TinySpec());
  ASSERT_OK(first);
  ASSERT_OK(tracker_->Submit(kAlice, TinySweep()));  // a sweep counts once
  absl::StatusOr<v1::Experiment> third = tracker_->Submit(kAlice, TinySpec());
  EXPECT_THAT(third, StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_NE(third.status().message().find("--max-queued-per-user 2"), std::string::npos) << third.status();
  EXPECT_OK(tracker_->Submit(kBob, TinySpec()));  // another user's queue is their own
  // Once one of alice's starts, she may queue another.
  ASSERT_OK(engine_.Start(first->id()));
  EXPECT_OK(tracker_->Submit(kAlice, TinySpec()));
}

// SIGTERM with a grace period: queued experiments are interrupted at once, running ones may finish,
// and what is left is recorded as interrupted before the process exits (a regression: rows stayed
// queued / running until the next start).
TEST_F(TrackerTest, ShutdownWithGraceLetsRunningFinishAndRecordsTheQueuedInterrupted) {
  absl::StatusOr<v1::Experiment> running = tracker_->Submit(kAlice, TinySpec());
  absl::StatusOr<v1::Experiment> queued = tracker_->Submit(kBob, TinySpec());
  ASSERT_OK(running);
  ASSERT_OK(queued);
  ASSERT_OK(engine_.Start(running->id()));

  tracker_->BeginShutdown();
  EXPECT_EQ(tracker_->Submit(kAlice, TinySpec()).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(tracker_->InterruptQueued(), 1);
  EXPECT_TRUE(engine_.Cancelled(queued->id()));
  EXPECT_FALSE(tracker_->AwaitUnfinished(absl::Milliseconds(20)));  // the running one
  ASSERT_OK(engine_.Finish(running->id(), FakeEngine::Result(3.0, 4.0)));
  EXPECT_TRUE(tracker_->AwaitUnfinished(absl::Seconds(10)));
  engine_.Shutdown();
  absl::StatusOr<int64_t> recorded = tracker_->RecordInterrupted();
  ASSERT_OK(recorded);
  EXPECT_EQ(*recorded, 1);
  EXPECT_EQ(Stored(running->id()).status, storage::ExperimentStatus::kDone);
  EXPECT_EQ(Stored(queued->id()).status, storage::ExperimentStatus::kInterrupted);
}

TEST_F(TrackerTest, ShutdownWithoutGraceRecordsTheRunningSweepAndItsUnfinishedVariantsInterrupted) {
  absl::StatusOr<v1::Experiment> sweep = tracker_->Submit(kAlice, TinySweep());
  ASSERT_OK(sweep);
  ASSERT_GE(sweep->variants_total(), 2);
  ASSERT_OK(engine_.Start(sweep->id()));
  ASSERT_OK(engine_.Variant(sweep->id(), 0, FakeEngine::Result(3.0, 4.0)));
  tracker_->BeginShutdown();
  engine_.Shutdown();
  absl::StatusOr<int64_t> recorded = tracker_->RecordInterrupted();
  ASSERT_OK(recorded);
  EXPECT_EQ(*recorded, sweep->variants_total());  // the parent and every variant but the first
  EXPECT_EQ(Stored(sweep->id()).status, storage::ExperimentStatus::kInterrupted);
  EXPECT_EQ(Stored(sweep->id() + ".0").status, storage::ExperimentStatus::kDone);
  EXPECT_EQ(Stored(sweep->id() + ".1").status, storage::ExperimentStatus::kInterrupted);
}

// Per-variant durability: resubmitting a stopped sweep runs only the variants that did not finish,
// and the new sweep's table names the earlier experiments of the others.
TEST_F(TrackerTest, ResubmittingASweepRunsOnlyItsUnfinishedVariants) {
  absl::StatusOr<v1::Experiment> sweep = tracker_->Submit(kAlice, TinySweep());
  ASSERT_OK(sweep);
  const std::string old = sweep->id();
  ASSERT_EQ(sweep->variants_total(), 4);
  ASSERT_OK(engine_.Start(old));
  ASSERT_OK(engine_.Variant(old, 0, FakeEngine::Result(3.0, 6.0)));
  ASSERT_OK(engine_.Variant(old, 2, FakeEngine::Result(3.0, 4.5)));
  ASSERT_OK(tracker_->Cancel(kAlice, old));
  tracker_->Flush();

  absl::StatusOr<v1::Experiment> again = tracker_->Resubmit(kAlice, old);
  ASSERT_OK(again);
  const std::string fresh = again->id();
  EXPECT_EQ(again->variants_total(), 4);
  EXPECT_EQ(again->variants_done(), 2);
  std::optional<Job> job = engine_.SubmittedJob(fresh);
  ASSERT_TRUE(job.has_value());
  EXPECT_EQ(job->skip_variants, (std::vector<int64_t>{0, 2}));

  ASSERT_OK(engine_.Start(fresh));
  ASSERT_OK(engine_.Variant(fresh, 1, FakeEngine::Result(3.0, 3.3)));
  ASSERT_OK(engine_.Variant(fresh, 3, FakeEngine::Result(3.0, 3.6)));
  result::Experiment parent = FakeEngine::Result(3.0, 0.0);
  parent.intervened = {};
  parent.has_sweep = true;
  parent.sweep.variants.resize(4);  // rows of the variants this run ran; the others left empty
  for (int i : {1, 3}) {
    parent.sweep.variants[i].name = "run-again";
    parent.sweep.variants[i].has_perplexity = true;
    parent.sweep.variants[i].perplexity = i == 1 ? 3.3 : 3.6;
  }
  ASSERT_OK(engine_.Finish(fresh, parent));
  tracker_->Flush();

  absl::StatusOr<v1::Experiment> done = tracker_->Get(fresh, /*include_captures=*/false);
  ASSERT_OK(done);
  EXPECT_EQ(done->status(), v1::DONE);
  const auto& rows = done->result().sweep().variants();
  ASSERT_EQ(rows.size(), 4);
  EXPECT_EQ(rows[0].experiment_id(), old + ".0");
  EXPECT_DOUBLE_EQ(rows[0].perplexity(), 6.0);
  EXPECT_DOUBLE_EQ(rows[0].perplexity_delta_pct(), 100.0);
  EXPECT_FALSE(rows[0].name().empty());
  EXPECT_EQ(rows[1].experiment_id(), fresh + ".1");
  EXPECT_DOUBLE_EQ(rows[1].perplexity(), 3.3);
  EXPECT_EQ(rows[2].experiment_id(), old + ".2");
  EXPECT_DOUBLE_EQ(rows[2].perplexity(), 4.5);
  EXPECT_EQ(rows[3].experiment_id(), fresh + ".3");
  EXPECT_EQ(Stored(fresh + ".1").status, storage::ExperimentStatus::kDone);
  auto store = storage::ExperimentStore::Open(db_);
  ASSERT_OK(store);
  EXPECT_EQ((*store)->Get(fresh + ".0").status().code(), absl::StatusCode::kNotFound);
}

// Finishes `id` (submitted to the fake engine) with a result that has captured bytes.
void RunToDone(FakeEngine& engine, const std::string& id) {
  ASSERT_OK(engine.Start(id));
  ASSERT_OK(engine.Finish(id, FakeEngine::Result(10.0, 12.5)));
}

// Every read connection lent to slow reads: Submit (its id and quota reads have a connection of
// their own) and the writer carry on; only pool reads wait, and a second connection serves them.
TEST_F(TrackerTest, ReadsHeldOpenBlockNeitherSubmitNorTheWriter) {
  Open({.read_connections = 1});
  const std::string done = tracker_->Submit(kAlice, TinySpec())->id();
  RunToDone(engine_, done);
  tracker_->Flush();
  std::optional<storage::ReadPool::Lease> slow(tracker_->read_pool_for_testing().Acquire());
  // A read transaction left open, as a long list over results holds one.
  auto open = (*slow)->database()->Prepare("SELECT id FROM experiments");
  ASSERT_TRUE(open.ok() && *(*open)->Step());
  absl::StatusOr<v1::Experiment> submitted = tracker_->Submit(kBob, TinySpec());
  ASSERT_OK(submitted);
  RunToDone(engine_, submitted->id());
  tracker_->Flush();  // the writer wrote the insert and the finish meanwhile
  EXPECT_EQ(Stored(submitted->id()).status, storage::ExperimentStatus::kDone);
  open->reset();
  slow.reset();
  Open({.read_connections = 2});
  std::optional<storage::ReadPool::Lease> held(tracker_->read_pool_for_testing().Acquire());
  absl::StatusOr<v1::ListExperimentsResponse> listed = tracker_->List({});  // the other connection
  ASSERT_OK(listed);
  EXPECT_EQ(listed->total(), 2);
}

TEST_F(TrackerTest, ListPagesStopAtTheByteBoundAndSayWhereToGoOn) {
  Open({.max_list_bytes = 1});
  for (int i = 0; i < 3; ++i) RunToDone(engine_, tracker_->Submit(kAlice, TinySpec())->id());
  tracker_->Flush();
  v1::ListExperimentsRequest request;
  request.set_include_results(true);
  std::set<std::string> seen;
  int pages = 0;
  do {
    absl::StatusOr<v1::ListExperimentsResponse> page = tracker_->List(request);
    ASSERT_OK(page);
    ASSERT_EQ(page->experiments_size(), 1);  // the bound is below one row: one per page
    EXPECT_EQ(page->total(), 3);
    EXPECT_TRUE(page->experiments(0).result().intervened().captures(0).data().empty());
    seen.insert(page->experiments(0).id());
    request.set_offset(page->next_offset());
  } while (request.offset() != 0 && ++pages < 5);
  EXPECT_EQ(seen.size(), 3u);
}

TEST_F(TrackerTest, StoredBytesQuotaRefusesSubmitNamingTheLimitUntilSpaceIsFreed) {
  Open({.max_user_bytes = 1});
  const std::string first = tracker_->Submit(kAlice, TinySpec())->id();  // alice stored nothing yet
  RunToDone(engine_, first);
  tracker_->Flush();
  const absl::Status refused = tracker_->Submit(kAlice, TinySpec()).status();
  EXPECT_THAT(refused, StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_NE(refused.message().find("--max-user-bytes 1"), absl::string_view::npos) << refused;
  EXPECT_NE(refused.message().find("'alice'"), absl::string_view::npos) << refused;
  EXPECT_OK(tracker_->Submit(kBob, TinySpec()));  // per user
  v1::RetentionRequest rm;
  rm.set_where("user = \"alice\"");
  absl::StatusOr<v1::RetentionResponse> deleted = tracker_->DeleteExperiments(rm);
  ASSERT_OK(deleted);
  EXPECT_EQ(deleted->experiments(), 1);
  EXPECT_OK(tracker_->Submit(kAlice, TinySpec()));
}

TEST_F(TrackerTest, RetentionSkipsActiveExperimentsAndADryRunChangesNothing) {
  const std::string done = tracker_->Submit(kAlice, TinySpec())->id();
  RunToDone(engine_, done);
  const std::string queued = tracker_->Submit(kAlice, TinySpec())->id();
  tracker_->Flush();
  v1::RetentionRequest request;
  request.set_where("user = \"alice\"");
  request.set_dry_run(true);
  absl::StatusOr<v1::RetentionResponse> planned = tracker_->DropCaptures(request);
  ASSERT_OK(planned);
  EXPECT_EQ(planned->experiments(), 1);
  EXPECT_EQ(planned->skipped_active(), 1);
  EXPECT_GE(planned->bytes(), 8);
  EXPECT_EQ(tracker_->Get(done, true)->result().intervened().captures(0).data().size(), 8u);

  request.set_dry_run(false);
  absl::StatusOr<v1::RetentionResponse> dropped = tracker_->DropCaptures(request);
  ASSERT_OK(dropped);
  EXPECT_EQ(dropped->bytes(), planned->bytes());
  absl::StatusOr<v1::Experiment> kept = tracker_->Get(done, true);
  ASSERT_OK(kept);
  EXPECT_TRUE(kept->result().intervened().captures(0).data().empty());
  EXPECT_DOUBLE_EQ(kept->result().intervened().perplexity().ppl(), 12.5);

  absl::StatusOr<v1::RetentionResponse> deleted = tracker_->DeleteExperiments(request);
  ASSERT_OK(deleted);
  EXPECT_EQ(deleted->experiments(), 1);
  EXPECT_EQ(deleted->skipped_active(), 1);
  EXPECT_EQ(tracker_->Get(done, false).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(tracker_->Get(queued, false)->status(), v1::QUEUED);
  request.set_where("");
  EXPECT_THAT(tracker_->DeleteExperiments(request), StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace lesion::server
