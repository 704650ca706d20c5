// The engine on the bundled stories260K on the CPU: loading, running, fairness, cancellation,
// queue limits and unloading.
#include "server/engine.h"

#include <gtest/gtest.h>

#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <thread>

namespace lesion::server {
namespace {

const std::filesystem::path kRoot = LESION_SOURCE_DIR;

// Collects the reports of experiments and lets a test wait for them.
class Reports {
 public:
  JobCallbacks For(const std::string& id) {
    JobCallbacks c;
    c.on_start = [this, id] {
      std::lock_guard<std::mutex> lock(mu_);
      started_.push_back(id);
    };
    c.on_finish = [this, id](absl::StatusOr<experiments::result::Experiment> r) {
      std::lock_guard<std::mutex> lock(mu_);
      finished_[id] = r.status();
      if (r.ok()) results_[id] = *std::move(r);
      cv_.notify_all();
    };
    return c;
  }
  absl::Status Wait(const std::string& id) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, std::chrono::seconds(120), [&] { return finished_.count(id) > 0; });
    return finished_.count(id) ? finished_[id] : absl::DeadlineExceededError(id);
  }
  std::vector<std::string> started() {
    std::lock_guard<std::mutex> lock(mu_);
    return started_;
  }
  experiments::result::Experiment result(const std::string& id) {
    std::lock_guard<std::mutex> lock(mu_);
    return results_.at(id);
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::string> started_;
  std::map<std::string, absl::Status> finished_;
  std::map<std::string, experiments::result::Experiment> results_;
};

// max_windows 0: all of WikiText-2 in windows of 64, one per forward pass: seconds of work that a
// test cancels instead of waiting for.
experiments::spec::Experiment Spec(int max_windows) {
  const std::string dataset = max_windows > 0 ? "tinystories-sample" : "wikitext-2-raw-test";
  auto e = experiments::spec::ParseExperimentJson(
      R"({"dataset": {"named": ")" + dataset + R"("}, "eval": {"seq_len": 64, "batch_size": 1, "max_windows": )" +
      std::to_string(max_windows) +
      R"(}, "interventions": [{"head_ablation": {"layer": 1, "heads": [3]}}], "measurements": [{"perplexity": {}}]})");
  EXPECT_TRUE(e.ok()) << e.status();
  return *e;
}

std::unique_ptr<Engine> Started(int64_t max_queue = 64) {
  EngineOptions options;
  options.data_dir = kRoot / "data";
  options.max_queue_per_device = max_queue;
  auto engine = Engine::Create(options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  std::mutex mu;
  std::condition_variable cv;
  std::optional<absl::StatusOr<ModelSummary>> loaded;
  EXPECT_TRUE((*engine)
                  ->LoadModel("stories", (kRoot / "models/stories260K").string(), "", "cpu",
                              [&](absl::StatusOr<ModelSummary> s) {
                                std::lock_guard<std::mutex> lock(mu);
                                loaded = std::move(s);
                                cv.notify_all();
                              })
                  .ok());
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return loaded.has_value(); });
  EXPECT_TRUE(loaded->ok()) << loaded->status();
  return *std::move(engine);
}

Job MakeJob(const std::string& id, const std::string& user, Reports& reports, int max_windows = 2) {
  Job job;
  job.id = id;
  job.user = user;
  job.model = "stories";
  job.spec = Spec(max_windows);
  job.callbacks = reports.For(id);
  return job;
}

TEST(Engine, LoadsRunsAndSummarizes) {
  auto engine = Started();
  auto summary = engine->GetModel("stories");
  ASSERT_TRUE(summary.ok());
  EXPECT_EQ(summary->architecture, "LlamaForCausalLM");
  EXPECT_EQ(summary->n_layers, 5);
  EXPECT_EQ(summary->device, "cpu");
  EXPECT_GT(summary->weight_bytes, 4 * 200000);
  EXPECT_EQ(engine->ListModels().size(), 1u);
  Reports reports;
  ASSERT_TRUE(engine->Validate("stories", Spec(2)).ok());
  EXPECT_EQ(engine->Validate("nope", Spec(2)).code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(engine->Submit(MakeJob("a", "ann", reports)).ok());
  ASSERT_TRUE(reports.Wait("a").ok());
  const auto r = reports.result("a");
  EXPECT_EQ(r.baseline.perplexity.n_windows, 2);
  EXPECT_NE(r.baseline.perplexity.mean_nll, r.intervened.perplexity.mean_nll);
  EXPECT_EQ(r.run.model_fingerprint, summary->fingerprint);
  // A second model on the executor that is already up: the load is run (a regression: it waited).
  std::mutex mu;
  std::condition_variable cv;
  std::optional<absl::StatusOr<ModelSummary>> second;
  ASSERT_TRUE(engine
                  ->LoadModel("gpt2", (kRoot / "tests/fixtures/models/gpt2").string(), "", "cpu",
                              [&](absl::StatusOr<ModelSummary> s) {
                                std::lock_guard<std::mutex> lock(mu);
                                second = std::move(s);
                                cv.notify_all();
                              })
                  .ok());
  {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(60), [&] { return second.has_value(); }));
  }
  ASSERT_TRUE(second->ok()) << second->status();
  EXPECT_EQ((*second)->architecture, "GPT2LMHeadModel");
  ASSERT_TRUE(engine->UnloadModel("gpt2").ok());
  // Same name again: AlreadyExists at once.
  EXPECT_EQ(engine->LoadModel("stories", "x", "", "cpu", [](auto) {}).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(engine->LoadModel("other", "x", "float64", "cpu", [](auto) {}).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(Engine, RoundRobinOverUsersAndCancellation) {
  auto engine = Started();
  Reports reports;
  // A long first job holds the executor while the queue fills.
  ASSERT_TRUE(engine->Submit(MakeJob("long", "ann", reports, 0)).ok());
  while (reports.started().empty()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  for (const char* id : {"ann1", "ann2", "ann3"}) ASSERT_TRUE(engine->Submit(MakeJob(id, "ann", reports)).ok());
  ASSERT_TRUE(engine->Submit(MakeJob("bob1", "bob", reports)).ok());
  ASSERT_TRUE(engine->Submit(MakeJob("cat1", "cat", reports)).ok());
  // Queue (after the running one): ann1, bob1, cat1, ann2, ann3.
  EXPECT_EQ(engine->QueuePosition("bob1").value(), 2);
  EXPECT_EQ(engine->QueuePosition("ann3").value(), 5);
  ASSERT_TRUE(engine->Cancel("ann2").ok());
  EXPECT_EQ(reports.Wait("ann2").code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(engine->QueuePosition("ann2").status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(engine->Cancel("long").ok());
  EXPECT_EQ(reports.Wait("long").code(), absl::StatusCode::kCancelled);
  for (const char* id : {"ann1", "bob1", "cat1", "ann3"}) ASSERT_TRUE(reports.Wait(id).ok()) << id;
  EXPECT_EQ(reports.started(), (std::vector<std::string>{"long", "ann1", "bob1", "cat1", "ann3"}));
  EXPECT_EQ(engine->Cancel("ann1").code(), absl::StatusCode::kNotFound);
}

TEST(Engine, CancelsARunningExperimentAndLimitsTheQueue) {
  auto engine = Started(/*max_queue=*/1);
  Reports reports;
  ASSERT_TRUE(engine->Submit(MakeJob("run", "ann", reports, 0)).ok());
  while (reports.started().empty()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  ASSERT_TRUE(engine->Submit(MakeJob("q1", "ann", reports)).ok());
  EXPECT_EQ(engine->Submit(MakeJob("q2", "ann", reports)).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(engine->UnloadModel("stories").code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(engine->Cancel("run").ok());
  EXPECT_EQ(reports.Wait("run").code(), absl::StatusCode::kCancelled);
  ASSERT_TRUE(reports.Wait("q1").ok());
  ASSERT_TRUE(engine->UnloadModel("stories").ok());
  EXPECT_EQ(engine->GetModel("stories").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(engine->Submit(MakeJob("q3", "ann", reports)).status().code(), absl::StatusCode::kNotFound);
}

TEST(Engine, ShutdownCancelsWhatIsQueued) {
  auto engine = Started();
  Reports reports;
  ASSERT_TRUE(engine->Submit(MakeJob("run", "ann", reports, 0)).ok());
  ASSERT_TRUE(engine->Submit(MakeJob("q1", "bob", reports)).ok());
  while (reports.started().empty()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  engine->Shutdown();
  EXPECT_EQ(reports.Wait("q1").code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(reports.Wait("run").code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(engine->Submit(MakeJob("late", "ann", reports)).status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace lesion::server
