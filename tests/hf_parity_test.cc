// Parity with Hugging Face transformers: tiny random checkpoints of every supported architecture
// (tests/fixtures/models) against reference activations that transformers produced on them
// (tests/fixtures/reference, written by tests/fixtures/make_fixtures.py).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <string>

#include "common/testing/status_matchers.h"
#include "model/generation.h"
#include "model/hook_sites.h"
#include "model/model.h"
#include "model/perplexity.h"
#include "model/safetensors/safetensors.h"

namespace lesion::experiments {
namespace {

const std::filesystem::path kFixtures = std::filesystem::path(LESION_SOURCE_DIR) / "tests/fixtures";

std::map<std::string, at::Tensor> ReadReference(const std::filesystem::path& path) {
  std::map<std::string, at::Tensor> out;
  auto file = model::SafetensorsFile::Open(path);
  EXPECT_OK(file);
  if (!file.ok()) return out;
  for (const model::TensorInfo& info : (*file)->tensors()) {
    at::ScalarType dtype = info.dtype == model::DType::kI64 ? at::kLong : at::kFloat;
    EXPECT_TRUE(info.dtype == model::DType::kI64 || info.dtype == model::DType::kF32) << info.name;
    at::Tensor t = at::empty(info.shape, dtype);
    auto bytes = (*file)->Data(info);
    std::memcpy(t.data_ptr(), bytes.data(), bytes.size());
    out[info.name] = t;
  }
  return out;
}

// Runs `model_name` on the reference's input_ids capturing every site, and compares every
// captured site with the reference within `tolerance` (max abs difference).
void ExpectParity(const std::filesystem::path& model_dir, const std::string& reference_name, double tolerance,
                  std::optional<at::ScalarType> dtype = std::nullopt) {
  const std::string model_name = model_dir.filename().string();
  const auto ref_path = kFixtures / "reference" / (reference_name + ".safetensors");
  if (!std::filesystem::exists(ref_path)) GTEST_SKIP() << "no reference " << ref_path;
  model::LoadOptions options;
  options.dtype = dtype;
  auto model = model::Model::Load(model_dir, options);
  ASSERT_OK(model);
  std::map<std::string, at::Tensor> ref = ReadReference(ref_path);
  ASSERT_TRUE(ref.count("input_ids"));
  const model::ModelConfig& c = (*model)->config();

  std::map<std::string, at::Tensor> got;
  model::RunPlan plan(c.n_layers);
  std::vector<model::SiteId> sites;
  for (int k = 0; k < model::kNumSiteKinds; ++k) {
    const auto kind = static_cast<model::SiteKind>(k);
    if (!model::IsPerLayer(kind))
      sites.push_back({kind, -1});
    else
      for (int64_t l = 0; l < c.n_layers; ++l) sites.push_back({kind, l});
  }
  for (const model::SiteId& site : sites) {
    plan.AddHook(site, [&got](const model::SiteId& s, at::Tensor& v) { got[s.Name()] = v.to(at::kFloat).clone(); });
  }
  auto logits = (*model)->transformer().Forward(ref["input_ids"], plan);
  ASSERT_OK(logits);

  int compared = 0;
  for (const auto& [name, expected] : ref) {
    if (name == "input_ids" || name == "loss" || name == "greedy_ids") continue;
    ASSERT_TRUE(got.count(name)) << "site " << name << " was not produced";
    const at::Tensor& actual = got[name];
    ASSERT_EQ(actual.sizes(), expected.sizes()) << name;
    const double diff = (actual - expected).abs().max().item<double>();
    EXPECT_LE(diff, tolerance) << model_name << " " << name << ": max abs difference " << diff;
    ++compared;
  }
  EXPECT_GE(compared, 3 + 9 * c.n_layers) << "reference is missing sites";

  if (ref.count("loss")) {
    // HF's loss: mean NLL of tokens 1..n-1 over the batch = our non-overlapping protocol when
    // each row is one window.
    const at::Tensor ids = ref["input_ids"];
    model::PerplexityOptions o;
    o.seq_len = ids.size(1);
    o.batch_size = ids.size(0);
    std::vector<int32_t> flat(ids.numel());
    for (int64_t i = 0; i < ids.numel(); ++i) flat[i] = static_cast<int32_t>(ids.view(-1)[i].item<int64_t>());
    auto r = model::EvaluatePerplexity((*model)->transformer(), flat, o, std::nullopt, model::RunPlan(c.n_layers));
    ASSERT_OK(r);
    EXPECT_NEAR(r->mean_nll, ref["loss"].item<double>(), tolerance) << model_name << " loss";
    EXPECT_EQ(r->n_tokens, ids.size(0) * (ids.size(1) - 1));
  }
}

std::filesystem::path Fixture(const char* name) { return kFixtures / "models" / name; }

TEST(HfParity, Gpt2) { ExpectParity(Fixture("gpt2"), "gpt2", 1e-4); }
TEST(HfParity, Llama2Gqa) { ExpectParity(Fixture("llama2"), "llama2", 1e-4); }
TEST(HfParity, Llama3RopeScaling) { ExpectParity(Fixture("llama3"), "llama3", 1e-4); }
TEST(HfParity, MistralSlidingWindow) { ExpectParity(Fixture("mistral"), "mistral", 1e-4); }
TEST(HfParity, Qwen2QkvBias) { ExpectParity(Fixture("qwen2"), "qwen2", 1e-4); }
TEST(HfParity, ShardedCheckpointLoadsTheSameWeights) { ExpectParity(Fixture("llama2_sharded"), "llama2", 1e-4); }
TEST(HfParity, Bf16CheckpointLoadedAsFloat32) { ExpectParity(Fixture("llama2_bf16"), "llama2_bf16", 1e-4, at::kFloat); }
TEST(HfParity, Stories260KAgainstLlamaForCausalLM) {
  const auto dir = std::filesystem::path(LESION_SOURCE_DIR) / "models/stories260K";
  ExpectParity(dir, "stories260K", 1e-4);
  // The greedy continuation from BOS that transformers generated.
  auto ref = ReadReference(kFixtures / "reference/stories260K.safetensors");
  auto model = model::Model::Load(dir, {});
  ASSERT_OK(model);
  const at::Tensor expected = ref["greedy_ids"];
  auto ids = model::GreedyGenerate((*model)->transformer(), {1}, expected.numel(), std::nullopt);
  ASSERT_OK(ids);
  for (int64_t i = 0; i < expected.numel(); ++i) {
    EXPECT_EQ((*ids)[i], expected[i].item<int64_t>()) << "greedy token " << i;
  }
}

}  // namespace
}  // namespace lesion::experiments
