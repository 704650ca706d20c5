#include "experiments/weight_edits.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <random>

#include "common/testing/status_matchers.h"
#include "model/checkpoint_loader.h"
#include "model/model.h"
#include "model/safetensors/safetensors.h"

namespace lesion::experiments {
namespace {

using ::lesion::matchers::StatusIs;

const std::filesystem::path kFixtures = std::filesystem::path(LESION_SOURCE_DIR) / "tests/fixtures/models";

std::unique_ptr<model::Model> LoadFixture(const char* name) {
  auto model = model::Model::Load(kFixtures / name, {});
  EXPECT_OK(model);
  return *std::move(model);
}

// Every weight tensor of the model, including norms and embeddings.
std::vector<at::Tensor> AllWeights(const model::Transformer& m) {
  std::vector<at::Tensor> all;
  for (const at::Tensor* t : model::WeightTensors(m)) {
    if (t->defined()) all.push_back(*t);
  }
  return all;
}

uint64_t ModelChecksum(const model::Transformer& m) {
  uint64_t sum = 0;
  for (const at::Tensor& t : AllWeights(m)) sum = sum * 1099511628211ULL + model::BitChecksum(t);
  return sum;
}

at::Tensor Logits(const model::Transformer& m) {
  at::Tensor ids = at::arange(12, at::kLong).view({1, 12}) * 7 % m.config().vocab_size;
  auto logits = m.Forward(ids, model::RunPlan(m.config().n_layers));
  EXPECT_OK(logits);
  return logits->clone();
}

TEST(WeightEdits, ThousandsOfRandomEditsRestoreTheModelBitForBit) {
  for (const char* name : {"llama2", "gpt2"}) {
    auto model = LoadFixture(name);
    const model::Transformer& m = model->transformer();
    const uint64_t before = ModelChecksum(m);
    const at::Tensor logits_before = Logits(m);
    std::mt19937 rng(42);
    const bool gated = m.config().gated_mlp;
    {
      WeightEditSession edits(&m);
      for (int i = 0; i < 3000; ++i) {
        const int64_t layer = rng() % m.config().n_layers;
        if (i % 10 == 0) {
          const std::vector<model::NormSite> norms = model::ModelNormSites(m);  // attn, mlp, final here
          const model::NormSite norm = norms[rng() % norms.size()];
          const auto mode = static_cast<NormResetMode>(rng() % 3);
          ASSERT_TRUE(
              edits.ResetNormChannels(layer, norm, {static_cast<int64_t>(rng() % m.config().d_model)}, mode, 2.5).ok());
          continue;
        }
        model::WeightModule module = static_cast<model::WeightModule>(rng() % 7);
        if (!gated && module == model::WeightModule::kMlpGate) module = model::WeightModule::kMlpUp;
        at::Tensor w = *model::ModuleWeight(m, layer, module);
        const auto op = static_cast<ElementOp>(rng() % 3);
        ASSERT_OK(edits.EditElement(layer, module, rng() % w.size(0), rng() % w.size(1), op, -3.25));
      }
      EXPECT_NE(ModelChecksum(m), before);
      const at::Tensor logits_edited = Logits(m);
      EXPECT_FALSE(at::equal(logits_edited, logits_before));
      // Suspended, the model is the checkpoint; resumed, it is the edited model again, exactly.
      for (int round = 0; round < 3; ++round) {
        ASSERT_OK(edits.Suspend());
        EXPECT_EQ(ModelChecksum(m), before) << name << " round " << round;
        EXPECT_TRUE(at::equal(Logits(m), logits_before));
        EXPECT_EQ(edits.EditElement(0, model::WeightModule::kMlpDown, 0, 0, ElementOp::kZero, 0).code(),
                  absl::StatusCode::kFailedPrecondition);
        ASSERT_OK(edits.Resume());
        EXPECT_TRUE(at::equal(Logits(m), logits_edited)) << name << " round " << round;
      }
      EXPECT_THAT(edits.Resume(), StatusIs(absl::StatusCode::kFailedPrecondition));
      ASSERT_OK(edits.Restore());
    }
    EXPECT_EQ(ModelChecksum(m), before) << name;
    EXPECT_TRUE(at::equal(Logits(m), logits_before)) << name;
  }
}

TEST(WeightEdits, DestructorRestores) {
  auto model = LoadFixture("qwen2");
  const model::Transformer& m = model->transformer();
  const uint64_t before = ModelChecksum(m);
  {
    WeightEditSession edits(&m);
    ASSERT_OK(edits.EditElement(1, model::WeightModule::kMlpDown, 3, 7, ElementOp::kSet, 100));
    EXPECT_EQ((*model::ModuleWeight(m, 1, model::WeightModule::kMlpDown))[3][7].item<float>(), 100.0f);
  }
  EXPECT_EQ(ModelChecksum(m), before);
}

TEST(WeightEdits, Gpt2AddressingIsLinearConventionOverConv1D) {
  auto model = LoadFixture("gpt2");
  auto file = model::SafetensorsFile::Open(kFixtures / "gpt2/model.safetensors");
  ASSERT_OK(file);
  auto read = [&](const char* name) {
    const model::TensorInfo* info = (*file)->Find(std::string("transformer.") + name);
    if (info == nullptr) info = (*file)->Find(name);
    at::Tensor t = at::empty(info->shape, at::kFloat);
    std::memcpy(t.data_ptr(), (*file)->Data(*info).data(), t.nbytes());
    return t;
  };
  const int64_t d = model->config().d_model;
  at::Tensor c_attn = read("h.1.attn.c_attn.weight");  // Conv1D [in, 3 out]
  at::Tensor c_fc = read("h.1.mlp.c_fc.weight");       // [in, ffn]
  const model::Transformer& m = model->transformer();
  // row = output feature, col = input feature
  EXPECT_EQ((*model::ModuleWeight(m, 1, model::WeightModule::kAttnQ))[5][9].item<float>(), c_attn[9][5].item<float>());
  EXPECT_EQ((*model::ModuleWeight(m, 1, model::WeightModule::kAttnK))[5][9].item<float>(),
            c_attn[9][d + 5].item<float>());
  EXPECT_EQ((*model::ModuleWeight(m, 1, model::WeightModule::kAttnV))[5][9].item<float>(),
            c_attn[9][2 * d + 5].item<float>());
  EXPECT_EQ((*model::ModuleWeight(m, 1, model::WeightModule::kMlpUp))[70][3].item<float>(), c_fc[3][70].item<float>());
}

TEST(WeightEdits, GammaMeanIsTheCheckpointsMean) {
  auto model = LoadFixture("llama2");
  const model::Transformer& m = model->transformer();
  at::Tensor gamma = *model::NormGamma(m, 0, model::NormSite::kMlp);
  const float mean = gamma.mean().item<float>();
  WeightEditSession edits(&m);
  ASSERT_OK(edits.ResetNormChannels(0, model::NormSite::kMlp, {0, 1, 2}, NormResetMode::kValue, 1000));
  ASSERT_OK(edits.ResetNormChannels(0, model::NormSite::kMlp, {5}, NormResetMode::kGammaMean, 0));
  EXPECT_NEAR(gamma[5].item<float>(), mean, 1e-6);
  EXPECT_EQ(gamma[1].item<float>(), 1000.0f);
  ASSERT_OK(edits.ResetNormChannels(-1, model::NormSite::kFinal, {2}, NormResetMode::kOne, 0));
  EXPECT_EQ(m.weights().final_norm.weight[2].item<float>(), 1.0f);
}

TEST(WeightEdits, BadAddressesAreInvalidArgumentWithTheValue) {
  auto model = LoadFixture("gpt2");
  const model::Transformer& m = model->transformer();
  WeightEditSession edits(&m);
  absl::Status row = edits.EditElement(0, model::WeightModule::kMlpDown, 64, 0, ElementOp::kZero, 0);
  EXPECT_THAT(row, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_NE(row.message().find("[64, 0] out of range"), std::string::npos) << row;
  EXPECT_NE(row.message().find("[64, 128]"), std::string::npos) << row;
  absl::Status gate = edits.EditElement(0, model::WeightModule::kMlpGate, 0, 0, ElementOp::kZero, 0);
  EXPECT_THAT(gate, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_NE(gate.message().find("no gated MLP"), std::string::npos) << gate;
  absl::Status layer = edits.EditElement(14, model::WeightModule::kAttnQ, 0, 0, ElementOp::kZero, 0);
  EXPECT_NE(layer.message().find("layer 14 out of range"), std::string::npos) << layer;
  EXPECT_EQ(edits.EditElement(0, model::WeightModule::kAttnQ, 0, 0, ElementOp::kSet, NAN).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(edits.ResetNormChannels(0, model::NormSite::kAttn, {64}, NormResetMode::kOne, 0).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(model::ParseWeightModule("mlp.c_fc").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(edits.n_edits(), 0);
}

}  // namespace
}  // namespace lesion::experiments
