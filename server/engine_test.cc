// The engine on the bundled stories260K on the CPU: loading, running, fairness, cancellation,
// queue limits and unloading.
#include "server/engine.h"

#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <filesystem>
#include <functional>
#include <mutex>
#include <set>
#include <thread>

#include "common/testing/status_matchers.h"

namespace lesion::server {
namespace {

using ::lesion::matchers::StatusIs;

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
    c.on_variant = [this, id](int64_t i, result::Experiment r) {
      std::lock_guard<std::mutex> lock(mu_);
      variants_[id][i] = std::move(r);
    };
    c.on_finish = [this, id](absl::StatusOr<result::Experiment> r) {
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
  result::Experiment result(const std::string& id) {
    std::lock_guard<std::mutex> lock(mu_);
    return results_.at(id);
  }
  std::map<int64_t, result::Experiment> variants(const std::string& id) {
    std::lock_guard<std::mutex> lock(mu_);
    return variants_[id];
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::string> started_;
  std::map<std::string, absl::Status> finished_;
  std::map<std::string, result::Experiment> results_;
  std::map<std::string, std::map<int64_t, result::Experiment>> variants_;
};

// max_windows 0: all of WikiText-2 in windows of 64, one per forward pass: seconds of work that a
// test cancels instead of waiting for.
spec::Experiment Spec(int max_windows) {
  const std::string dataset = max_windows > 0 ? "tinystories-sample" : "wikitext-2-raw-test";
  auto e = spec::ParseExperimentJson(
      R"({"dataset": {"named": ")" + dataset + R"("}, "eval": {"seq_len": 64, "batch_size": 1, "max_windows": )" +
      std::to_string(max_windows) +
      R"(}, "interventions": [{"head_ablation": {"layer": 1, "heads": [3]}}], "measurements": [{"perplexity": {}}]})");
  EXPECT_OK(e);
  return *e;
}

// Loads `dir` as `name` and waits for the load's report (DeadlineExceeded after a minute).
absl::StatusOr<ModelSummary> LoadAndWait(Engine& engine, const std::string& name, const std::filesystem::path& dir,
                                         const std::string& devices, std::function<bool()> cancelled = {}) {
  std::mutex mu;
  std::condition_variable cv;
  std::optional<absl::StatusOr<ModelSummary>> loaded;
  absl::Status queued =
      engine.LoadModel(name, dir.string(), "", devices, std::move(cancelled), [&](absl::StatusOr<ModelSummary> s) {
        std::lock_guard<std::mutex> lock(mu);
        loaded = std::move(s);
        cv.notify_all();
      });
  if (!queued.ok()) return queued;
  std::unique_lock<std::mutex> lock(mu);
  if (!cv.wait_for(lock, std::chrono::seconds(60), [&] { return loaded.has_value(); })) {
    return absl::DeadlineExceededError("the load did not report within a minute");
  }
  return *loaded;
}

std::unique_ptr<Engine> Started(int64_t max_queue = 64, const std::string& devices = "cpu") {
  EngineOptions options;
  options.data_dir = kRoot / "data";
  options.max_queue_per_device = max_queue;
  auto engine = Engine::Create(options);
  EXPECT_OK(engine);
  absl::StatusOr<ModelSummary> loaded = LoadAndWait(**engine, "stories", kRoot / "models/stories260K", devices);
  EXPECT_OK(loaded);
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
  ASSERT_OK(summary);
  EXPECT_EQ(summary->architecture, "LlamaForCausalLM");
  EXPECT_EQ(summary->n_layers, 5);
  EXPECT_EQ(summary->device, "cpu");
  EXPECT_GT(summary->weight_bytes, 4 * 200000);
  EXPECT_EQ(engine->ListModels().size(), 1u);
  Reports reports;
  ASSERT_OK(engine->Validate("stories", Spec(2)));
  EXPECT_EQ(engine->Validate("nope", Spec(2)).code(), absl::StatusCode::kNotFound);
  ASSERT_OK(engine->Submit(MakeJob("a", "ann", reports)));
  ASSERT_OK(reports.Wait("a"));
  const auto r = reports.result("a");
  EXPECT_EQ(r.baseline.perplexity.n_windows, 2);
  EXPECT_NE(r.baseline.perplexity.mean_nll, r.intervened.perplexity.mean_nll);
  EXPECT_EQ(r.run.model_fingerprint, summary->fingerprint);
  // A second model on the executor that is already up: the load is run (a regression: it waited).
  absl::StatusOr<ModelSummary> second = LoadAndWait(*engine, "gpt2", kRoot / "tests/fixtures/models/gpt2", "cpu");
  ASSERT_OK(second);
  EXPECT_EQ(second->architecture, "GPT2LMHeadModel");
  ASSERT_OK(engine->UnloadModel("gpt2"));
  // Same name again: AlreadyExists at once.
  EXPECT_EQ(engine->LoadModel("stories", "x", "", "cpu", {}, [](auto) {}).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(engine->LoadModel("other", "x", "float64", "cpu", {}, [](auto) {}).code(),
            absl::StatusCode::kInvalidArgument);
  // A name of 1 MB: refused, and the error quotes only its start.
  absl::Status huge = engine->LoadModel(std::string(1 << 20, 'n'), "x", "", "cpu", {}, [](auto) {});
  EXPECT_THAT(huge, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_LT(huge.message().size(), 300u) << huge.message().substr(0, 300);
  absl::Status unknown = engine->Validate(std::string(1 << 20, 'm'), Spec(2));
  EXPECT_THAT(unknown, StatusIs(absl::StatusCode::kNotFound));
  EXPECT_LT(unknown.message().size(), 300u) << unknown.message().substr(0, 300);
}

TEST(Engine, RoundRobinOverUsersAndCancellation) {
  auto engine = Started();
  Reports reports;
  // A long first job holds the executor while the queue fills.
  ASSERT_OK(engine->Submit(MakeJob("long", "ann", reports, 0)));
  while (reports.started().empty()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  for (const char* id : {"ann1", "ann2", "ann3"}) ASSERT_TRUE(engine->Submit(MakeJob(id, "ann", reports)).ok());
  ASSERT_OK(engine->Submit(MakeJob("bob1", "bob", reports)));
  ASSERT_OK(engine->Submit(MakeJob("cat1", "cat", reports)));
  // Queue (after the running one): ann1, bob1, cat1, ann2, ann3.
  EXPECT_EQ(engine->QueuePosition("bob1").value(), 2);
  EXPECT_EQ(engine->QueuePosition("ann3").value(), 5);
  ASSERT_OK(engine->Cancel("ann2"));
  EXPECT_EQ(reports.Wait("ann2").code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(engine->QueuePosition("ann2").status().code(), absl::StatusCode::kNotFound);
  ASSERT_OK(engine->Cancel("long"));
  EXPECT_EQ(reports.Wait("long").code(), absl::StatusCode::kCancelled);
  for (const char* id : {"ann1", "bob1", "cat1", "ann3"}) ASSERT_TRUE(reports.Wait(id).ok()) << id;
  EXPECT_EQ(reports.started(), (std::vector<std::string>{"long", "ann1", "bob1", "cat1", "ann3"}));
  EXPECT_EQ(engine->Cancel("ann1").code(), absl::StatusCode::kNotFound);
}

TEST(Engine, CancelsARunningExperimentAndLimitsTheQueue) {
  auto engine = Started(/*max_queue=*/1);
  Reports reports;
  ASSERT_OK(engine->Submit(MakeJob("run", "ann", reports, 0)));
  while (reports.started().empty()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  ASSERT_OK(engine->Submit(MakeJob("q1", "ann", reports)));
  EXPECT_EQ(engine->Submit(MakeJob("q2", "ann", reports)).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(engine->UnloadModel("stories").code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_OK(engine->Cancel("run"));
  EXPECT_EQ(reports.Wait("run").code(), absl::StatusCode::kCancelled);
  ASSERT_OK(reports.Wait("q1"));
  ASSERT_OK(engine->UnloadModel("stories"));
  EXPECT_EQ(engine->GetModel("stories").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(engine->Submit(MakeJob("q3", "ann", reports)).status().code(), absl::StatusCode::kNotFound);
}

TEST(Engine, ShutdownCancelsWhatIsQueued) {
  auto engine = Started();
  Reports reports;
  ASSERT_OK(engine->Submit(MakeJob("run", "ann", reports, 0)));
  ASSERT_OK(engine->Submit(MakeJob("q1", "bob", reports)));
  while (reports.started().empty()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  engine->Shutdown();
  EXPECT_EQ(reports.Wait("q1").code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(reports.Wait("run").code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(engine->Submit(MakeJob("late", "ann", reports)).status().code(), absl::StatusCode::kUnavailable);
}

// Every single-head ablation of stories260K (40 variants) with perplexity and attention sinks.
Job SweepJob(const std::string& id, Reports& reports, int max_windows = 4) {
  Job job;
  job.id = id;
  job.user = "ann";
  job.model = "stories";
  auto parent = spec::ParseExperimentJson(
      R"({"name": "heads", "dataset": {"named": "tinystories-sample"}, "eval": {"seq_len": 64, "batch_size": 2,
          "max_windows": )" +
      std::to_string(max_windows) + R"(}, "measurements": [{"perplexity": {}}, {"attention_sink": {}}],
          "sweep": {"axes": [{"heads": {}}], "variants_per_pass": 4}})");
  EXPECT_OK(parent);
  auto variants = spec::ExpandSweep(*parent, {5, 8, 64}, 1000);
  EXPECT_OK(variants);
  job.spec = *parent;
  job.variants = *variants;
  job.callbacks = reports.For(id);
  return job;
}

TEST(Engine, ASweepOnTwoReplicasGivesTheNumbersOfOne) {
  auto one = Started(64, "cpu");
  auto two = Started(64, "cpu,cpu");
  EXPECT_EQ(two->GetModel("stories")->device, "cpu,cpu#1");
  Reports reports;
  ASSERT_OK(one->ValidateSweep("stories", SweepJob("x", reports).spec, SweepJob("x", reports).variants));
  ASSERT_OK(one->Submit(SweepJob("one", reports)));
  ASSERT_OK(two->Submit(SweepJob("two", reports)));
  ASSERT_OK(reports.Wait("one"));
  ASSERT_OK(reports.Wait("two"));
  const auto a = reports.variants("one"), b = reports.variants("two");
  ASSERT_EQ(a.size(), 40u);
  ASSERT_EQ(b.size(), 40u);
  std::set<std::string> devices;
  for (const auto& [i, r] : b) {
    devices.insert(r.run.device);
    EXPECT_EQ(r.intervened.perplexity.mean_nll, a.at(i).intervened.perplexity.mean_nll) << i;
    EXPECT_EQ(r.intervened.attention_sink.scores, a.at(i).intervened.attention_sink.scores) << i;
  }
  EXPECT_EQ(devices, (std::set<std::string>{"cpu", "cpu#1"})) << "both replicas ran shards";
  const auto parent = reports.result("two");
  ASSERT_EQ(parent.sweep.variants.size(), 40u);
  for (size_t i = 0; i < 40; ++i) {
    EXPECT_EQ(parent.sweep.variants[i].name, reports.result("one").sweep.variants[i].name);
    EXPECT_EQ(parent.sweep.variants[i].perplexity, reports.result("one").sweep.variants[i].perplexity);
  }
  EXPECT_EQ(parent.baseline.perplexity.mean_nll, reports.result("one").baseline.perplexity.mean_nll);
}

TEST(Engine, SingleExperimentsSpreadOverReplicasAndASweepCancelsAsAWhole) {
  auto engine = Started(64, "cpu,cpu");
  Reports reports;
  // Two long experiments run at once, one per replica.
  ASSERT_OK(engine->Submit(MakeJob("long1", "ann", reports, 0)));
  ASSERT_OK(engine->Submit(MakeJob("long2", "bob", reports, 0)));
  for (int i = 0; i < 5000 && reports.started().size() < 2; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  EXPECT_EQ(reports.started().size(), 2u) << "the second went to the idle replica";
  ASSERT_OK(engine->Cancel("long1"));
  ASSERT_OK(engine->Cancel("long2"));
  EXPECT_EQ(reports.Wait("long1").code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(reports.Wait("long2").code(), absl::StatusCode::kCancelled);

  // A sweep over all of WikiText-2: both shards start, one cancel stops both, one report.
  ASSERT_OK(engine->Submit(SweepJob("sweep", reports, 0)));
  for (int i = 0; i < 5000 && reports.started().size() < 3; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  ASSERT_OK(engine->Cancel("sweep"));
  EXPECT_EQ(reports.Wait("sweep").code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(engine->Cancel("sweep").code(), absl::StatusCode::kNotFound) << "nothing of it is left";
  ASSERT_OK(engine->UnloadModel("stories")) << "no shard is left holding the model";
}

TEST(Engine, BadDeviceListsAreRefusedAndAFailedReplicaLoadLeavesNothing) {
  auto engine = Started();
  EXPECT_EQ(engine->LoadModel("x", "d", "", "cpu,tpu", {}, [](auto) {}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(engine->LoadModel("x", "d", "", ",", {}, [](auto) {}).code(), absl::StatusCode::kInvalidArgument);
  absl::StatusOr<ModelSummary> loaded = LoadAndWait(*engine, "x", kRoot / "no/such/model", "cpu,cpu");
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kNotFound) << loaded.status();
  EXPECT_EQ(engine->GetModel("x").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(engine->ListModels().size(), 1u);
}

// Regression: loads ran on their device's executor, one after the other and between experiments,
// so one slow load (or a long experiment) held up every later load. Here one load is held between
// two tensors (its `cancelled` waits) and an experiment holds the CPU executor (its on_start
// waits); another load on the same device finishes meanwhile.
TEST(Engine, ALoadWaitsNeitherForAnotherLoadNorForAnExperiment) {
  auto engine = Started();
  std::mutex mu;
  std::condition_variable cv;
  bool release = false, experiment_started = false, load_held = false;
  std::optional<absl::StatusOr<ModelSummary>> held_result;
  auto hold = [&](bool& flag) {
    std::unique_lock<std::mutex> lock(mu);
    flag = true;
    cv.notify_all();
    cv.wait(lock, [&] { return release; });
  };
  Reports reports;
  Job job = MakeJob("busy", "ann", reports);
  job.callbacks.on_start = [&] { hold(experiment_started); };
  ASSERT_OK(engine->Submit(std::move(job)));
  ASSERT_TRUE(engine
                  ->LoadModel(
                      "held", (kRoot / "tests/fixtures/models/gpt2").string(), "", "cpu",
                      [&] {
                        hold(load_held);
                        return false;
                      },
                      [&](absl::StatusOr<ModelSummary> s) {
                        std::lock_guard<std::mutex> lock(mu);
                        held_result = std::move(s);
                        cv.notify_all();
                      })
                  .ok());
  {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(60), [&] { return experiment_started && load_held; }));
  }

  absl::StatusOr<ModelSummary> meanwhile = LoadAndWait(*engine, "meanwhile", kRoot / "models/stories260K", "cpu");
  EXPECT_OK(meanwhile);
  EXPECT_EQ(engine->GetModel("held").status().code(), absl::StatusCode::kNotFound) << "still loading";
  // Same name while it loads: AlreadyExists at once.
  EXPECT_EQ(engine->LoadModel("held", "x", "", "cpu", {}, [](auto) {}).code(), absl::StatusCode::kAlreadyExists);

  {
    std::lock_guard<std::mutex> lock(mu);
    release = true;
    cv.notify_all();
  }
  {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(60), [&] { return held_result.has_value(); }));
    EXPECT_TRUE(held_result->ok()) << held_result->status();
  }
  EXPECT_OK(reports.Wait("busy"));
  EXPECT_EQ(engine->ListModels().size(), 3u);
}

// Regression: a load whose caller had gone (deadline passed, client cancelled) still completed and
// stayed loaded. Cancelled before the first tensor, mid-way, and after the last one (the check
// before the model is registered): each leaves nothing loaded and the name free.
TEST(Engine, ACancelledLoadLeavesNothingLoaded) {
  EngineOptions options;
  options.data_dir = kRoot / "data";
  auto engine = Engine::Create(options);
  ASSERT_OK(engine);
  const std::filesystem::path dir = kRoot / "models/stories260K";
  std::atomic<int> asked{0};
  ASSERT_TRUE(LoadAndWait(**engine, "m", dir, "cpu", [&] {
                ++asked;
                return false;
              }).ok());
  ASSERT_OK((*engine)->UnloadModel("m"));
  const int questions = asked.load();
  ASSERT_GT(questions, 10) << "one question per tensor at least";
  for (int cancelled_at : {1, questions / 2, questions}) {
    std::atomic<int> k{0};
    absl::StatusOr<ModelSummary> loaded = LoadAndWait(**engine, "m", dir, "cpu", [&] { return ++k >= cancelled_at; });
    EXPECT_EQ(loaded.status().code(), absl::StatusCode::kCancelled) << "cancelled at question " << cancelled_at;
    EXPECT_EQ(k.load(), cancelled_at) << "the load went on asking after it was cancelled";
    EXPECT_TRUE((*engine)->ListModels().empty()) << "cancelled at question " << cancelled_at;
  }
  EXPECT_OK(LoadAndWait(**engine, "m", dir, "cpu")) << "the name is free again";
}

}  // namespace
}  // namespace lesion::server
