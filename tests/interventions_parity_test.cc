// Interventions against transformers + plain PyTorch hooks and weight edits on the same tiny
// checkpoints (tests/fixtures/make_fixtures.py, interventions()): every kind, composed where the
// issue asks, float32 logits within 1e-4.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <map>

#include "experiments/interventions.h"
#include "experiments/model.h"
#include "experiments/safetensors/safetensors.h"
#include "experiments/weight_edits.h"

namespace lesion::experiments {
namespace {

const std::filesystem::path kFixtures = std::filesystem::path(LESION_SOURCE_DIR) / "tests/fixtures";

class InterventionsParity : public ::testing::Test {
 protected:
  void SetUp() override {
    auto file = SafetensorsFile::Open(kFixtures / "reference/interventions.safetensors");
    ASSERT_TRUE(file.ok()) << file.status();
    for (const TensorInfo& info : (*file)->tensors()) {
      at::Tensor t = at::empty(info.shape, info.dtype == DType::kI64 ? at::kLong : at::kFloat);
      std::memcpy(t.data_ptr(), (*file)->Data(info).data(), t.nbytes());
      ref_[info.name] = t;
    }
  }
  std::unique_ptr<Model> Load(const char* name) {
    auto model = Model::Load(kFixtures / "models" / name, {});
    EXPECT_TRUE(model.ok()) << model.status();
    return *std::move(model);
  }
  void ExpectLogits(const Model& model, const RunPlan& plan, const std::string& name) {
    auto logits = model.transformer().Forward(ref_["input_ids"], plan);
    ASSERT_TRUE(logits.ok()) << logits.status();
    const double diff = (*logits - ref_[name + ".logits"]).abs().max().item<double>();
    EXPECT_LE(diff, 1e-4) << name << ": max abs difference " << diff;
  }
  std::map<std::string, at::Tensor> ref_;
};

TEST_F(InterventionsParity, HeadAblationComposedWithAWeightScale) {
  auto model = Load("llama2");
  const ModelConfig& c = model->config();
  RunPlan plan(c.n_layers);
  ASSERT_TRUE(AddHeadAblation(c, 1, {0, 2}, HeadAblationMode::kZero, 0, {}, plan).ok());
  WeightEditSession edits(&model->transformer());
  ASSERT_TRUE(edits.EditElement(0, WeightModule::kMlpDown, 3, 7, ElementOp::kScale, 5).ok());
  ExpectLogits(*model, plan, "head_ablation_weight_scale");
}

TEST_F(InterventionsParity, NormChannelResets) {
  auto model = Load("llama2");
  WeightEditSession edits(&model->transformer());
  ASSERT_TRUE(edits.ResetNormChannels(1, NormSite::kMlp, {4, 9}, NormResetMode::kOne, 0).ok());
  ASSERT_TRUE(edits.ResetNormChannels(0, NormSite::kFinal, {2}, NormResetMode::kGammaMean, 0).ok());
  ExpectLogits(*model, RunPlan(model->config().n_layers), "norm_reset");
}

TEST_F(InterventionsParity, ActivationEdit) {
  auto model = Load("llama2");
  const ModelConfig& c = model->config();
  RunPlan plan(c.n_layers);
  ASSERT_TRUE(AddActivationEdit(c, {SiteKind::kResidPost, 0}, {0, 3}, {5}, ActivationOp::kSet, 10, {}, plan).ok());
  ExpectLogits(*model, plan, "activation_edit");
}

TEST_F(InterventionsParity, AttentionBiasOnAGqaModel) {
  auto model = Load("llama2");
  RunPlan plan(model->config().n_layers);
  for (int layer : {0, 2}) {
    const std::string p = "attention_bias.layer" + std::to_string(layer);
    plan.SetAttentionBias(layer, {ref_[p + ".key"], ref_[p + ".value"], {}});
  }
  ExpectLogits(*model, plan, "attention_bias");
}

TEST_F(InterventionsParity, Gpt2WeightEditInLinearConventionWithHeadScale) {
  auto model = Load("gpt2");
  const ModelConfig& c = model->config();
  RunPlan plan(c.n_layers);
  ASSERT_TRUE(AddHeadAblation(c, 2, {1}, HeadAblationMode::kScale, 0.5, {}, plan).ok());
  WeightEditSession edits(&model->transformer());
  ASSERT_TRUE(edits.EditElement(0, WeightModule::kAttnQ, 5, 9, ElementOp::kSet, 0.5).ok());
  ExpectLogits(*model, plan, "gpt2_weight_edit_head_scale");
}

}  // namespace
}  // namespace lesion::experiments
