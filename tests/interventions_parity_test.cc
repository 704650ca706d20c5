// Interventions against transformers + plain PyTorch hooks and weight edits on the same tiny
// checkpoints (tests/fixtures/make_fixtures.py, interventions()): every kind, composed where the
// issue asks, float32 logits within 1e-4.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <map>

#include "common/testing/status_matchers.h"
#include "experiments/interventions.h"
#include "experiments/weight_edits.h"
#include "model/model.h"
#include "model/safetensors/safetensors.h"

namespace lesion::experiments {
namespace {

const std::filesystem::path kFixtures = std::filesystem::path(LESION_SOURCE_DIR) / "tests/fixtures";

class InterventionsParity : public ::testing::Test {
 protected:
  void SetUp() override {
    auto file = model::SafetensorsFile::Open(kFixtures / "reference/interventions.safetensors");
    ASSERT_OK(file);
    for (const model::TensorInfo& info : (*file)->tensors()) {
      at::Tensor t = at::empty(info.shape, info.dtype == model::DType::kI64 ? at::kLong : at::kFloat);
      std::memcpy(t.data_ptr(), (*file)->Data(info).data(), t.nbytes());
      ref_[info.name] = t;
    }
  }
  std::unique_ptr<model::Model> Load(const char* name) {
    auto model = model::Model::Load(kFixtures / "models" / name, {});
    EXPECT_OK(model);
    return *std::move(model);
  }
  void ExpectLogits(const model::Model& model, const model::RunPlan& plan, const std::string& name) {
    auto logits = model.transformer().Forward(ref_["input_ids"], plan);
    ASSERT_OK(logits);
    const double diff = (*logits - ref_[name + ".logits"]).abs().max().item<double>();
    EXPECT_LE(diff, 1e-4) << name << ": max abs difference " << diff;
  }
  std::map<std::string, at::Tensor> ref_;
};

TEST_F(InterventionsParity, HeadAblationComposedWithAWeightScale) {
  auto model = Load("llama2");
  const model::ModelConfig& c = model->config();
  model::RunPlan plan(c.n_layers);
  ASSERT_OK(AddHeadAblation(c, 1, {0, 2}, HeadAblationMode::kZero, 0, {}, plan));
  WeightEditSession edits(&model->transformer());
  ASSERT_OK(edits.EditElement(0, model::WeightModule::kMlpDown, 3, 7, ElementOp::kScale, 5));
  ExpectLogits(*model, plan, "head_ablation_weight_scale");
}

TEST_F(InterventionsParity, NormChannelResets) {
  auto model = Load("llama2");
  WeightEditSession edits(&model->transformer());
  ASSERT_OK(edits.ResetNormChannels(1, model::NormSite::kMlp, {4, 9}, NormResetMode::kOne, 0));
  ASSERT_OK(edits.ResetNormChannels(0, model::NormSite::kFinal, {2}, NormResetMode::kGammaMean, 0));
  ExpectLogits(*model, model::RunPlan(model->config().n_layers), "norm_reset");
}

TEST_F(InterventionsParity, ActivationEdit) {
  auto model = Load("llama2");
  const model::ModelConfig& c = model->config();
  model::RunPlan plan(c.n_layers);
  ASSERT_OK(AddActivationEdit(c, {model::SiteKind::kResidPost, 0}, {0, 3}, {5}, ActivationOp::kSet, 10, {}, plan));
  ExpectLogits(*model, plan, "activation_edit");
}

TEST_F(InterventionsParity, AttentionBiasOnAGqaModel) {
  auto model = Load("llama2");
  model::RunPlan plan(model->config().n_layers);
  for (int layer : {0, 2}) {
    const std::string p = "attention_bias.layer" + std::to_string(layer);
    plan.SetAttentionBias(layer, {ref_[p + ".key"], ref_[p + ".value"], {}});
  }
  ExpectLogits(*model, plan, "attention_bias");
}

TEST_F(InterventionsParity, Gpt2WeightEditInLinearConventionWithHeadScale) {
  auto model = Load("gpt2");
  const model::ModelConfig& c = model->config();
  model::RunPlan plan(c.n_layers);
  ASSERT_OK(AddHeadAblation(c, 2, {1}, HeadAblationMode::kScale, 0.5, {}, plan));
  WeightEditSession edits(&model->transformer());
  ASSERT_OK(edits.EditElement(0, model::WeightModule::kAttnQ, 5, 9, ElementOp::kSet, 0.5));
  ExpectLogits(*model, plan, "gpt2_weight_edit_head_scale");
}

}  // namespace
}  // namespace lesion::experiments
