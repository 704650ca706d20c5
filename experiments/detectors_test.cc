// Detectors against the planted-outlier fixture (tests/fixtures/make_fixtures.py,
// planted_outliers(): a super weight, its massive activation and a gamma outlier at known
// coordinates) and against direct computations on captured tensors.
#include "experiments/detectors.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <filesystem>

#include "common/file_util.h"
#include "common/testing/status_matchers.h"
#include "experiments/measurements.h"
#include "experiments/runner.h"
#include "experiments/weight_edits.h"
#include "model/model.h"
#include "nlohmann/json.hpp"

namespace lesion::experiments {
namespace {

using ::lesion::matchers::StatusIs;

const std::filesystem::path kFixtures = std::filesystem::path(LESION_SOURCE_DIR) / "tests/fixtures";

class PlantedOutliers : public ::testing::Test {
 protected:
  void SetUp() override {
    auto text = ReadFile(kFixtures / "reference/planted.json");
    ASSERT_OK(text);
    ref_ = nlohmann::json::parse(*text);
    auto model = model::Model::Load(kFixtures / "models/planted", {});
    ASSERT_OK(model);
    model_ = *std::move(model);
    std::vector<int64_t> flat;
    for (const auto& row : ref_["input_ids"]) {
      for (const auto& id : row) flat.push_back(id.get<int64_t>());
    }
    ids_ = at::tensor(flat, at::kLong).view({static_cast<int64_t>(ref_["input_ids"].size()), -1});
  }
  nlohmann::json ref_;
  std::unique_ptr<model::Model> model_;
  at::Tensor ids_;  // [2, 16]
};

TEST_F(PlantedOutliers, SuperWeightIsFoundAtItsCoordinatesOnly) {
  auto detector = SuperWeightDetector::Create(model_->config(), 100, 0);
  ASSERT_OK(detector);
  model::RunPlan plan(model_->config().n_layers);
  (*detector)->Attach(plan);
  ASSERT_OK(model_->transformer().Forward(ids_, plan));
  auto found = (*detector)->Finish(model_->transformer());
  ASSERT_OK(found);
  const auto& want = ref_["super_weight"];
  ASSERT_EQ(found->size(), 1u);
  const result::SuperWeight& w = (*found)[0];
  EXPECT_EQ(w.layer, want["layer"].get<int64_t>());
  EXPECT_EQ(w.row, want["row"].get<int64_t>());
  EXPECT_EQ(w.col, want["col"].get<int64_t>());
  EXPECT_EQ(w.token, want["token"].get<int64_t>());
  EXPECT_DOUBLE_EQ(w.weight, want["weight"].get<double>());
  EXPECT_NEAR(w.input_spike, want["input_spike"].get<double>(), 1e-3 * std::abs(want["input_spike"].get<double>()));
  EXPECT_NEAR(w.output_spike, want["output_spike"].get<double>(), 1e-3 * std::abs(want["output_spike"].get<double>()));
  EXPECT_GT(w.input_ratio, 100);
  EXPECT_GT(w.output_ratio, 100);
}

TEST_F(PlantedOutliers, MassiveActivationIsTheSuperWeightsRowAtTheFirstToken) {
  auto sites = model::ParseSitePattern("blocks.*.resid_post", model_->config().n_layers);
  ASSERT_OK(sites);
  auto detector = MassiveActivationDetector::Create(*sites, 100, 1000, 20);
  ASSERT_OK(detector);
  model::RunPlan plan(model_->config().n_layers);
  (*detector)->Attach(plan);
  ASSERT_OK(model_->transformer().Forward(ids_, plan));
  auto reports = (*detector)->Finish();
  ASSERT_OK(reports);
  ASSERT_EQ(reports->size(), 3u);
  const auto& want = ref_["massive_activation"];
  EXPECT_EQ((*reports)[0].count, 0) << "layer 0 has no massive activation";
  for (int layer : {1, 2}) {
    const result::MassiveActivationReport& r = (*reports)[layer];
    EXPECT_EQ(r.site, "blocks." + std::to_string(layer) + ".resid_post");
    ASSERT_EQ(r.count, 2) << r.site << ": one per window, nothing else";
    for (const result::MassiveActivation& m : r.top) {
      EXPECT_EQ(m.token, want["token"].get<int64_t>());
      EXPECT_EQ(m.dim, want["dim"].get<int64_t>());
      const double v = want["values"][std::to_string(layer)][m.sequence].get<double>();
      EXPECT_NEAR(m.value, v, 1e-3 * std::abs(v));
      const double median = ref_["median_abs_resid_post"][std::to_string(layer)][m.sequence].get<double>();
      EXPECT_NEAR(m.ratio, std::abs(v) / median, 0.01 * std::abs(v) / median);
    }
  }
}

TEST_F(PlantedOutliers, NormOutlierIsThePlantedGammaOnly) {
  auto found = DetectNormOutliers(model_->transformer(), 8, 10);
  ASSERT_OK(found);
  ASSERT_EQ(found->size(), 1u);
  const auto& want = ref_["norm_outlier"];
  EXPECT_EQ((*found)[0].norm, want["norm"].get<std::string>());
  EXPECT_EQ((*found)[0].layer, want["layer"].get<int64_t>());
  EXPECT_EQ((*found)[0].channel, want["channel"].get<int64_t>());
  EXPECT_DOUBLE_EQ((*found)[0].gamma, want["gamma"].get<double>());
  EXPECT_GT((*found)[0].z, 50);
}

// Yu et al.'s experiment in one spec: zeroing the super weight removes the massive activation,
// and the detectors on the intervened pass see neither; the checkpoint is bit-identical after.
TEST_F(PlantedOutliers, ZeroingTheSuperWeightRemovesTheMassiveActivation) {
  const auto& sw = ref_["super_weight"];
  std::vector<int32_t> ids;
  for (const auto& row : ref_["input_ids"]) {
    for (const auto& id : row) ids.push_back(id.get<int32_t>());
  }
  nlohmann::json spec = {
      {"dataset", {{"token_ids", {{"ids", ids}}}}},
      {"eval", {{"seq_len", 16}}},
      {"interventions",
       {{{"weight_edit",
          {{"layer", sw["layer"]}, {"module", "mlp.down"}, {"row", sw["row"]}, {"col", sw["col"]}, {"op", "ZERO"}}}}}},
      {"measurements",
       {{{"perplexity", nlohmann::json::object()}},
        {{"super_weights", nlohmann::json::object()}},
        {{"massive_activations", nlohmann::json::object()}},
        {{"norm_outliers", nlohmann::json::object()}}}}};
  auto experiment = spec::ParseExperimentJson(spec.dump());
  ASSERT_OK(experiment);
  const std::string before = model_->fingerprint();
  auto r = RunExperiment(*model_, *experiment, std::filesystem::path(LESION_SOURCE_DIR) / "data");
  ASSERT_OK(r);
  ASSERT_EQ(r->baseline.super_weights.size(), 1u);
  EXPECT_EQ(r->baseline.super_weights[0].row, sw["row"].get<int64_t>());
  EXPECT_TRUE(r->intervened.super_weights.empty());
  ASSERT_EQ(r->baseline.massive_activations.size(), 3u);
  EXPECT_EQ(r->baseline.massive_activations[1].count, 2);
  for (const auto& report : r->intervened.massive_activations) EXPECT_EQ(report.count, 0) << report.site;
  EXPECT_EQ(r->baseline.norm_outliers.size(), 1u);
  EXPECT_EQ(model::WeightsFingerprint(model_->transformer()).value(), before);
}

TEST(AttentionOutliers, IsTheShareOfAttentionMassAgainstADirectComputation) {
  auto model = model::Model::Load(kFixtures / "models/llama2", {});
  ASSERT_OK(model);
  const model::ModelConfig& c = (*model)->config();
  auto detector = AttentionOutlierDetector::Create(c, {1}, 0.0, 100000);
  ASSERT_OK(detector);
  model::RunPlan plan(c.n_layers);
  std::vector<at::Tensor> patterns;
  plan.AddHook({model::SiteKind::kAttnPattern, 1},
               [&](const model::SiteId&, at::Tensor& p) { patterns.push_back(p.clone()); });
  (*detector)->Attach(plan);
  auto sink = AttentionSinkCollector::Create(c, {1});
  ASSERT_OK(sink);
  (*sink)->Attach(plan);
  at::manual_seed(3);
  at::Tensor long_ids = at::randint(0, c.vocab_size, {2, 12}, at::kLong);
  at::Tensor short_ids = at::randint(0, c.vocab_size, {1, 7}, at::kLong);  // a shorter tail window
  ASSERT_OK((*model)->transformer().Forward(long_ids, plan));
  ASSERT_OK((*model)->transformer().Forward(short_ids, plan));
  auto found = (*detector)->Finish();
  ASSERT_OK(found);
  // Direct: for each key k, the mean over the windows that reach k of sum_{q >= 1} p[q, k] / (s - 1).
  std::map<std::pair<int64_t, int64_t>, double> sums, counts;
  for (const at::Tensor& p : patterns) {  // [b, heads, s, s]
    for (int64_t b = 0; b < p.size(0); ++b) {
      for (int64_t h = 0; h < p.size(1); ++h) {
        for (int64_t k = 0; k < p.size(2); ++k) {
          double sum = 0;
          for (int64_t q = 1; q < p.size(2); ++q) sum += p[b][h][q][k].item<double>();
          sums[{h, k}] += sum / static_cast<double>(p.size(2) - 1);
          counts[{h, k}] += 1;
        }
      }
    }
  }
  ASSERT_EQ(found->size(), sums.size());
  double max_diff = 0;
  for (const result::AttentionOutlierKey& key : *found) {
    EXPECT_EQ(key.layer, 1);
    const auto at = std::make_pair(key.head, key.key_position);
    max_diff = std::max(max_diff, std::abs(key.mass - sums[at] / counts[at]));
  }
  EXPECT_LT(max_diff, 1e-6) << "max difference " << max_diff;
  // Key 0's share is the attention sink score.
  at::Tensor sink_scores = (*sink)->Finish().value();  // [1, heads]
  for (const result::AttentionOutlierKey& key : *found) {
    if (key.key_position == 0) {
      EXPECT_NEAR(key.mass, sink_scores[0][key.head].item<double>(), 1e-9);
    }
  }
  for (size_t i = 1; i < found->size(); ++i) EXPECT_GE((*found)[i - 1].mass, (*found)[i].mass);
  auto filtered = AttentionOutlierDetector::Create(c, {}, 1.5, 10);
  EXPECT_THAT(filtered, StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(Detectors, BadArguments) {
  model::ModelConfig c;
  c.n_layers = 2;
  EXPECT_EQ(MassiveActivationDetector::Create({}, 100, 1000, 20).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MassiveActivationDetector::Create({{model::SiteKind::kAttnPattern, 0}}, 100, 1000, 20).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MassiveActivationDetector::Create({{model::SiteKind::kEmbed, -1}}, -1, 1000, 20).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SuperWeightDetector::Create(c, NAN, 0).status().code(), absl::StatusCode::kInvalidArgument);
  auto layer = AttentionOutlierDetector::Create(c, {2}, 0.3, 10);
  EXPECT_THAT(layer, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_NE(layer.status().message().find("layer 2 out of range"), std::string::npos);
}

}  // namespace
}  // namespace lesion::experiments
