// The runner's scheduling contracts: cancellation and progress between forward passes, validation
// without touching the weights, and a cached baseline standing in for the baseline pass.
#include "experiments/runner.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "common/testing/status_matchers.h"
#include "experiments/weight_edits.h"

namespace lesion::experiments {
namespace {

using ::lesion::matchers::StatusIs;

const std::filesystem::path kRoot = LESION_SOURCE_DIR;

std::unique_ptr<model::Model> LoadStories() {
  auto model = model::Model::Load(kRoot / "models/stories260K", {});
  EXPECT_OK(model);
  return *std::move(model);
}

spec::Experiment Spec(const std::string& measurements) {
  auto e = spec::ParseExperimentJson(
      R"({"dataset": {"named": "tinystories-sample"}, "eval": {"seq_len": 64, "add_bos": true, "batch_size": 2},
          "interventions": [{"weight_edit": {"layer": 0, "module": "mlp.down", "row": 30, "col": 66, "op": "ZERO"}},
                            {"head_ablation": {"layer": 1, "heads": [3]}}],
          "measurements": )" +
      measurements + "}");
  EXPECT_OK(e);
  return *e;
}

TEST(Runner, CancelledBetweenForwardPassesWithTheWeightsRestored) {
  auto model = LoadStories();
  const std::string before = model::WeightsFingerprint(model->transformer()).value();
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
  EXPECT_EQ(model::WeightsFingerprint(model->transformer()).value(), before);
}

TEST(Runner, ValidationLeavesTheWeightsAloneAndNamesTheField) {
  auto model = LoadStories();
  const std::string before = model::WeightsFingerprint(model->transformer()).value();
  EXPECT_OK(ValidateExperiment(*model, Spec(R"([{"perplexity": {}}])"), kRoot / "data"));
  auto bad = spec::ParseExperimentJson(
      R"({"dataset": {"named": "tinystories-sample"},
          "interventions": [{"weight_edit": {"layer": 0, "module": "mlp.down", "row": 64, "col": 0}}],
          "measurements": [{"perplexity": {}}]})");
  ASSERT_OK(bad);
  absl::Status s = ValidateExperiment(*model, *bad, kRoot / "data");
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_NE(s.message().find("[64, 0] out of range"), std::string::npos) << s;
  RunLimits tight;
  tight.max_tokens = 10;
  EXPECT_EQ(ValidateExperiment(*model, Spec(R"([{"perplexity": {}}])"), kRoot / "data", tight).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(model::WeightsFingerprint(model->transformer()).value(), before);
}

TEST(Runner, ACachedBaselineReplacesTheBaselinePassExactly) {
  auto model = LoadStories();
  const spec::Experiment e =
      Spec(R"([{"perplexity": {}}, {"activation_stats": {"sites": ["blocks.*.resid_post"]}}, {"attention_sink": {}}])");
  auto first = RunExperiment(*model, e, kRoot / "data");
  ASSERT_OK(first);
  EXPECT_FALSE(first->baseline_from_cache);
  RunControls controls;
  controls.cached_baseline = &first->baseline;
  auto second = RunExperiment(*model, e, kRoot / "data", controls);
  ASSERT_OK(second);
  EXPECT_TRUE(second->baseline_from_cache);
  EXPECT_EQ(second->run.forward_passes * 2, first->run.forward_passes);
  EXPECT_EQ(second->intervened.perplexity.mean_nll, first->intervened.perplexity.mean_nll);
  EXPECT_EQ(second->intervened.attention_sink.scores, first->intervened.attention_sink.scores);
  EXPECT_EQ(second->baseline.perplexity.mean_nll, first->baseline.perplexity.mean_nll);

  // KL needs the baseline's logits: the cache is not used.
  const spec::Experiment kl = Spec(R"([{"perplexity": {}}, {"kl_divergence": {}}])");
  auto with_kl = RunExperiment(*model, kl, kRoot / "data", controls);
  ASSERT_OK(with_kl);
  EXPECT_FALSE(with_kl->baseline_from_cache);
  EXPECT_GT(with_kl->kl_divergence, 0);
}

TEST(Runner, NoInterventionsIsOneObservationalPass) {
  auto model = LoadStories();
  auto observe = spec::ParseExperimentJson(
      R"({"dataset": {"named": "tinystories-sample"}, "eval": {"seq_len": 64, "add_bos": true, "batch_size": 2},
          "measurements": [{"perplexity": {}}, {"kl_divergence": {}},
                           {"activation_stats": {"sites": ["blocks.*.resid_post"]}}]})");
  ASSERT_OK(observe);
  auto one = RunExperiment(*model, *observe, kRoot / "data");
  ASSERT_OK(one);
  EXPECT_TRUE(one->observational);
  EXPECT_FALSE(one->intervened.has_perplexity);
  EXPECT_TRUE(one->intervened.activation_stats.empty());
  EXPECT_TRUE(one->has_kl_divergence);
  EXPECT_EQ(one->kl_divergence, 0.0);
  const int64_t windows = one->baseline.perplexity.n_windows;
  EXPECT_EQ(one->run.forward_passes, (windows + 1) / 2);  // batches of 2, once

  // Its one pass is the baseline pass of an intervened run over the same windows, bit for bit.
  auto intervened = RunExperiment(*model, Spec(R"([{"perplexity": {}}])"), kRoot / "data");
  ASSERT_OK(intervened);
  EXPECT_FALSE(intervened->observational);
  EXPECT_EQ(intervened->run.forward_passes, 2 * one->run.forward_passes);
  EXPECT_EQ(one->baseline.perplexity.mean_nll, intervened->baseline.perplexity.mean_nll);

  // A cached baseline answers it without a forward pass, KL divergence included.
  RunControls controls;
  controls.cached_baseline = &one->baseline;
  auto cached = RunExperiment(*model, *observe, kRoot / "data", controls);
  ASSERT_OK(cached);
  EXPECT_TRUE(cached->baseline_from_cache);
  EXPECT_EQ(cached->run.forward_passes, 0);
  EXPECT_EQ(cached->baseline.perplexity.mean_nll, one->baseline.perplexity.mean_nll);
}

TEST(Runner, AnActivationEditBeyondEveryWindowIsRefused) {
  auto model = LoadStories();
  auto beyond = spec::ParseExperimentJson(
      R"({"dataset": {"named": "tinystories-sample"}, "eval": {"seq_len": 64},
          "interventions": [{"head_ablation": {"layer": 0, "heads": [1]}},
                            {"activation_edit": {"site": "blocks.1.resid_post", "positions": [3, 64]}}],
          "measurements": [{"perplexity": {}}]})");
  ASSERT_OK(beyond);
  absl::Status s = ValidateExperiment(*model, *beyond, kRoot / "data");
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_NE(s.message().find("interventions[1].activation_edit: position 64 lies beyond the windows of this run (64 "
                             "tokens, positions 0..63)"),
            std::string::npos)
      << s;
  // A dataset shorter than seq_len makes shorter windows: the bound is the longest window.
  auto short_data = spec::ParseExperimentJson(
      R"({"dataset": {"token_ids": {"ids": [5, 6, 7, 8, 9, 10]}}, "eval": {"seq_len": 64},
          "interventions": [{"activation_edit": {"site": "embed", "positions": [6]}}],
          "measurements": [{"perplexity": {}}]})");
  ASSERT_OK(short_data);
  s = ValidateExperiment(*model, *short_data, kRoot / "data");
  EXPECT_NE(s.message().find("position 6 lies beyond the windows of this run (6 tokens"), std::string::npos) << s;
}

std::string TokenIds(int64_t n, int64_t vocab) {
  std::string out;
  for (int64_t i = 0; i < n; ++i) out += (i == 0 ? "" : ",") + std::to_string((i * 7919 + 13) % vocab);
  return out;
}

// Regression: a seq_len beyond max_position_embeddings was accepted for rotary models (stories260K
// has 512 positions); learned positions (GPT-2's 64 in the fixture) were refused already.
TEST(Runner, SeqLenBeyondTheModelsPositionsIsInvalidArgument) {
  auto stories = LoadStories();
  auto spec = [](int64_t seq_len, int64_t vocab) {
    auto e = spec::ParseExperimentJson(R"({"dataset": {"token_ids": {"ids": [)" + TokenIds(2000, vocab) +
                                       R"(]}}, "eval": {"seq_len": )" + std::to_string(seq_len) +
                                       R"(}, "measurements": [{"perplexity": {}}]})");
    EXPECT_OK(e);
    return *e;
  };
  EXPECT_OK(ValidateExperiment(*stories, spec(512, 512), kRoot / "data"));
  absl::Status s = ValidateExperiment(*stories, spec(513, 512), kRoot / "data");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("eval.seq_len 513 is longer than the model's 512 positions"), std::string::npos) << s;
  EXPECT_EQ(RunExperiment(*stories, spec(200000, 512), kRoot / "data").status().code(),
            absl::StatusCode::kInvalidArgument);

  auto gpt2 = model::Model::Load(kRoot / "tests/fixtures/models/gpt2", {});
  ASSERT_OK(gpt2);
  EXPECT_OK(ValidateExperiment(**gpt2, spec(64, 512), kRoot / "data"));
  s = ValidateExperiment(**gpt2, spec(65, 512), kRoot / "data");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("65 is longer than the model's 64 positions"), std::string::npos) << s;
}

// The spec parser refuses unknown enum numbers and overflowing numbers; a spec::Experiment built
// otherwise meets the same checks in the runner, and numbers must also fit the model's dtype.
TEST(Runner, UnknownEnumsAndOverflowingNumbersAreInvalidArgument) {
  auto model = LoadStories();
  const std::string before = model::WeightsFingerprint(model->transformer()).value();
  spec::Experiment e = Spec(R"([{"perplexity": {}}])");  // a weight edit, then a head ablation
  ASSERT_OK(ValidateExperiment(*model, e, kRoot / "data"));

  spec::Experiment bad_mode = e;
  std::get<spec::HeadAblation>(bad_mode.interventions[1]).mode = static_cast<spec::HeadAblation::Mode>(99);
  absl::Status s = ValidateExperiment(*model, bad_mode, kRoot / "data");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("interventions[1].head_ablation: unknown mode 99"), std::string::npos) << s;

  spec::Experiment bad_op = e;
  std::get<spec::WeightEdit>(bad_op.interventions[0]).op = static_cast<spec::WeightEdit::Op>(99);
  EXPECT_EQ(ValidateExperiment(*model, bad_op, kRoot / "data").code(), absl::StatusCode::kInvalidArgument);

  spec::Experiment set_huge = e;  // failed with INTERNAL when torch wrote 1e308 into a float32
  auto& edit = std::get<spec::WeightEdit>(set_huge.interventions[0]);
  edit.op = spec::WeightEdit::Op::kSet;
  edit.value = 1e308;
  s = RunExperiment(*model, set_huge, kRoot / "data").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("interventions[0].weight_edit: value 1e+308"), std::string::npos) << s;

  spec::Experiment factor_huge = e;  // ran to DONE with a NaN perplexity
  auto& ablation = std::get<spec::HeadAblation>(factor_huge.interventions[1]);
  ablation.mode = spec::HeadAblation::Mode::kScale;
  ablation.factor = 1e308;
  EXPECT_EQ(RunExperiment(*model, factor_huge, kRoot / "data").status().code(), absl::StatusCode::kInvalidArgument);

  spec::Experiment bias = e;  // ran to DONE with a NaN perplexity
  const int64_t width = model->config().n_kv_heads * model->config().head_dim;
  bias.interventions.push_back(spec::AttentionBias{0, std::vector<float>(width, 3e38f), std::vector<float>(width, 0)});
  s = ValidateExperiment(*model, bias, kRoot / "data");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("interventions[2].attention_bias: key[0]"), std::string::npos) << s;

  EXPECT_EQ(model::WeightsFingerprint(model->transformer()).value(), before);

  // float16 ends at 65504: a value that float32 holds overflows there.
  model::LoadOptions half;
  half.dtype = at::kHalf;
  auto model16 = model::Model::Load(kRoot / "models/stories260K", half);
  ASSERT_OK(model16);
  spec::Experiment set_big = e;
  auto& edit16 = std::get<spec::WeightEdit>(set_big.interventions[0]);
  edit16.op = spec::WeightEdit::Op::kSet;
  edit16.value = 1e5;
  EXPECT_OK(ValidateExperiment(*model, set_big, kRoot / "data"));
  s = ValidateExperiment(**model16, set_big, kRoot / "data");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("value 100000 overflows the model's dtype float16"), std::string::npos) << s;
}

}  // namespace
}  // namespace lesion::experiments
