// The runner's scheduling contracts: cancellation and progress between forward passes, validation
// without touching the weights, and a cached baseline standing in for the baseline pass.
#include "experiments/runner.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "experiments/weight_edits.h"

namespace lesion::experiments {
namespace {

const std::filesystem::path kRoot = LESION_SOURCE_DIR;

std::unique_ptr<Model> LoadStories() {
  auto model = Model::Load(kRoot / "models/stories260K", {});
  EXPECT_TRUE(model.ok()) << model.status();
  return *std::move(model);
}

spec::Experiment Spec(const std::string& measurements) {
  auto e = spec::ParseExperimentJson(
      R"({"dataset": {"named": "tinystories-sample"}, "eval": {"seq_len": 64, "add_bos": true, "batch_size": 2},
          "interventions": [{"weight_edit": {"layer": 0, "module": "mlp.down", "row": 30, "col": 66, "op": "ZERO"}},
                            {"head_ablation": {"layer": 1, "heads": [3]}}],
          "measurements": )" +
      measurements + "}");
  EXPECT_TRUE(e.ok()) << e.status();
  return *e;
}

TEST(Runner, CancelledBetweenForwardPassesWithTheWeightsRestored) {
  auto model = LoadStories();
  const std::string before = WeightsFingerprint(model->transformer()).value();
  RunControls controls;
  int64_t seen = 0;
  controls.progress = [&](int64_t done, int64_t planned) {
    seen = done;
    EXPECT_GT(planned, 4);
  };
  controls.cancelled = [&] { return seen >= 3; };
  auto r = RunExperiment(*model, Spec(R"([{"perplexity": {}}])"), kRoot / "data", controls);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled) << r.status();
  EXPECT_EQ(seen, 3);
  EXPECT_EQ(WeightsFingerprint(model->transformer()).value(), before);
}

TEST(Runner, ValidationLeavesTheWeightsAloneAndNamesTheField) {
  auto model = LoadStories();
  const std::string before = WeightsFingerprint(model->transformer()).value();
  EXPECT_TRUE(ValidateExperiment(*model, Spec(R"([{"perplexity": {}}])"), kRoot / "data").ok());
  auto bad = spec::ParseExperimentJson(
      R"({"dataset": {"named": "tinystories-sample"},
          "interventions": [{"weight_edit": {"layer": 0, "module": "mlp.down", "row": 64, "col": 0}}],
          "measurements": [{"perplexity": {}}]})");
  ASSERT_TRUE(bad.ok());
  absl::Status s = ValidateExperiment(*model, *bad, kRoot / "data");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("[64, 0] out of range"), std::string::npos) << s;
  RunLimits tight;
  tight.max_tokens = 10;
  EXPECT_EQ(ValidateExperiment(*model, Spec(R"([{"perplexity": {}}])"), kRoot / "data", tight).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(WeightsFingerprint(model->transformer()).value(), before);
}

TEST(Runner, ACachedBaselineReplacesTheBaselinePassExactly) {
  auto model = LoadStories();
  const spec::Experiment e =
      Spec(R"([{"perplexity": {}}, {"activation_stats": {"sites": ["blocks.*.resid_post"]}}, {"attention_sink": {}}])");
  auto first = RunExperiment(*model, e, kRoot / "data");
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_FALSE(first->baseline_from_cache);
  RunControls controls;
  controls.cached_baseline = &first->baseline;
  auto second = RunExperiment(*model, e, kRoot / "data", controls);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_TRUE(second->baseline_from_cache);
  EXPECT_EQ(second->run.forward_passes * 2, first->run.forward_passes);
  EXPECT_EQ(second->intervened.perplexity.mean_nll, first->intervened.perplexity.mean_nll);
  EXPECT_EQ(second->intervened.attention_sink.scores, first->intervened.attention_sink.scores);
  EXPECT_EQ(second->baseline.perplexity.mean_nll, first->baseline.perplexity.mean_nll);

  // KL needs the baseline's logits: the cache is not used.
  const spec::Experiment kl = Spec(R"([{"perplexity": {}}, {"kl_divergence": {}}])");
  auto with_kl = RunExperiment(*model, kl, kRoot / "data", controls);
  ASSERT_TRUE(with_kl.ok()) << with_kl.status();
  EXPECT_FALSE(with_kl->baseline_from_cache);
  EXPECT_GT(with_kl->kl_divergence, 0);
}

}  // namespace
}  // namespace lesion::experiments
