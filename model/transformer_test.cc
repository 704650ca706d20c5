#include "model/transformer.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "common/testing/status_matchers.h"
#include "model/checkpoint_loader.h"

namespace lesion::model {
namespace {

using ::lesion::matchers::StatusIs;

ModelConfig Config(const char* json) {
  auto c = ParseModelConfig(json, "test");
  EXPECT_OK(c);
  return *c;
}

const char* kGpt2 = R"({"architectures": ["GPT2LMHeadModel"], "n_layer": 2, "n_embd": 32,
    "n_head": 4, "vocab_size": 50, "n_positions": 16})";
const char* kLlamaGqaWindow = R"({"architectures": ["MistralForCausalLM"], "num_hidden_layers": 2,
    "hidden_size": 32, "intermediate_size": 48, "num_attention_heads": 4, "num_key_value_heads": 2,
    "vocab_size": 50, "sliding_window": 3, "rope_theta": 1000.0})";

Transformer RandomModel(const char* json) {
  at::manual_seed(7);
  ModelConfig c = Config(json);
  auto w = MakeRandomWeights(c, at::kCPU, at::kFloat);
  EXPECT_OK(w);
  // Non-trivial norms and biases so that a wrong formula shows.
  for (BlockWeights& b : w->blocks) {
    b.attn_norm.weight.normal_(1.0, 0.3);
    if (b.qkv.bias.defined()) b.qkv.bias.normal_(0.0, 0.3);
    b.qkv.weight.mul_(10);
  }
  auto t = Transformer::Create(c, *std::move(w));
  EXPECT_OK(t);
  return *std::move(t);
}

at::Tensor Ids(int64_t b, int64_t s) { return at::randint(50, {b, s}, at::kLong); }

double MaxDiff(const at::Tensor& a, const at::Tensor& b) { return (a - b).abs().max().item<double>(); }

TEST(Transformer, ExplicitAttentionMatchesFastPath) {
  for (const char* json : {kGpt2, kLlamaGqaWindow}) {
    Transformer model = RandomModel(json);
    at::Tensor ids = Ids(2, 9);
    auto fast = model.Forward(ids, RunPlan(2));
    RunPlan explicit_plan(2);
    at::Tensor pattern;
    explicit_plan.AddHook({SiteKind::kAttnPattern, 0}, [&](const SiteId&, at::Tensor& p) { pattern = p; });
    explicit_plan.AddHook({SiteKind::kAttnPattern, 1}, [](const SiteId&, at::Tensor&) {});
    auto slow = model.Forward(ids, explicit_plan);
    ASSERT_OK(fast);
    ASSERT_OK(slow);
    EXPECT_LE(MaxDiff(*fast, *slow), 1e-4) << json;
    // Rows are distributions over allowed keys only.
    EXPECT_LE(MaxDiff(pattern.sum(-1), at::ones_like(pattern.sum(-1))), 1e-5);
    EXPECT_EQ(pattern[0][0][2][3].item<float>(), 0.0f);  // causal
    if (json == kLlamaGqaWindow) {
      EXPECT_EQ(pattern[0][0][5][2].item<float>(), 0.0f);  // outside the window of 3
      EXPECT_GT(pattern[0][0][5][3].item<float>(), 0.0f);
    }
  }
}

TEST(Transformer, ObservingHooksDoNotChangeResults) {
  Transformer model = RandomModel(kLlamaGqaWindow);
  at::Tensor ids = Ids(1, 7);
  RunPlan observe(2);
  int calls = 0;
  for (int k = 0; k < kNumSiteKinds; ++k) {
    auto kind = static_cast<SiteKind>(k);
    if (kind == SiteKind::kAttnPattern) continue;  // would switch the attention path
    for (int64_t l : IsPerLayer(kind) ? std::vector<int64_t>{0, 1} : std::vector<int64_t>{-1}) {
      observe.AddHook({kind, l}, [&calls](const SiteId&, at::Tensor&) { ++calls; });
    }
  }
  auto a = model.Forward(ids, RunPlan(2));
  auto b = model.Forward(ids, observe);
  ASSERT_OK(a);
  ASSERT_OK(b);
  EXPECT_TRUE(at::equal(*a, *b));
  EXPECT_EQ(calls, 3 + 2 * 8);
}

TEST(Transformer, ReplacingASiteChangesDownstream) {
  Transformer model = RandomModel(kGpt2);
  at::Tensor ids = Ids(1, 5);
  RunPlan plan(2);
  plan.AddHook({SiteKind::kResidPost, 1}, [](const SiteId&, at::Tensor& x) { x = at::zeros_like(x); });
  auto logits = model.Forward(ids, plan);
  ASSERT_OK(logits);
  // LayerNorm(0) = its bias; here the bias is zero, so every logit is 0.
  EXPECT_LE(logits->abs().max().item<double>(), 1e-6);
}

TEST(Transformer, AnInterruptStopsThePassBetweenLayers) {
  Transformer model = RandomModel(kGpt2);
  RunPlan plan(2);
  int layers_run = 0;
  plan.AddHook({SiteKind::kResidPost, 0}, [&](const SiteId&, at::Tensor&) { ++layers_run; });
  plan.AddHook({SiteKind::kResidPost, 1}, [&](const SiteId&, at::Tensor&) { ++layers_run; });
  plan.SetInterrupt([&] { return layers_run >= 1; });
  auto logits = model.Forward(Ids(1, 5), plan);
  EXPECT_THAT(logits, StatusIs(absl::StatusCode::kCancelled));
  EXPECT_EQ(layers_run, 1) << "layer 1 never ran";
}

TEST(Transformer, AttentionBiasSlotIsExactSoftmaxOverExtraKey) {
  Transformer model = RandomModel(kGpt2);
  const ModelConfig& c = model.config();
  at::Tensor ids = Ids(1, 6);
  at::Tensor key = at::randn({c.n_kv_heads, c.head_dim});
  at::Tensor value = at::randn({c.n_kv_heads, c.head_dim});
  RunPlan plan(2);
  plan.SetAttentionBias(0, {key, value, {}});
  at::Tensor attn_in, z;
  plan.AddHook({SiteKind::kAttnIn, 0}, [&](const SiteId&, at::Tensor& x) { attn_in = x; });
  plan.AddHook({SiteKind::kAttnZ, 0}, [&](const SiteId&, at::Tensor& x) { z = x; });
  ASSERT_OK(model.Forward(ids, plan));

  // Reference: softmax(Q [K; k'] / sqrt(d)) [V; v'] written out directly.
  const BlockWeights& w = model.weights().blocks[0];
  const int64_t h = c.n_heads, hd = c.head_dim, s = 6;
  auto heads = [&](const LinearWeights& lw) {
    return at::linear(attn_in, lw.weight, lw.bias).view({1, s, h, hd}).transpose(1, 2);
  };
  at::Tensor q = heads(w.q), k = heads(w.k), v = heads(w.v);    // [1, h, s, hd]
  at::Tensor k_all = at::cat({k, key.view({1, h, 1, hd})}, 2);  // [1, h, s + 1, hd]
  at::Tensor v_all = at::cat({v, value.view({1, h, 1, hd})}, 2);
  at::Tensor scores = at::matmul(q, k_all.transpose(-1, -2)) / std::sqrt(double(hd));  // [1,h,s,s+1]
  at::Tensor allowed = at::cat({at::ones({s, s}, at::kBool).tril(), at::ones({s, 1}, at::kBool)}, 1);
  scores = scores.masked_fill(allowed.logical_not(), -INFINITY);
  at::Tensor expected = at::matmul(at::softmax(scores, -1), v_all).transpose(1, 2);  // [1, s, h, hd]
  EXPECT_LE(MaxDiff(z, expected), 1e-5);
}

TEST(Transformer, RejectsBadIds) {
  Transformer model = RandomModel(kGpt2);
  EXPECT_EQ(model.Forward(at::full({1, 3}, 50, at::kLong), RunPlan(2)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(model.Forward(at::full({1, 3}, -1, at::kLong), RunPlan(2)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(model.Forward(at::zeros({3}, at::kLong), RunPlan(2)).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(model.Forward(at::zeros({1, 17}, at::kLong), RunPlan(2)).status().code(),
            absl::StatusCode::kInvalidArgument);  // beyond GPT-2's 16 positions
  EXPECT_EQ(model.Forward(at::zeros({1, 3}, at::kLong), RunPlan(3)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(Transformer, PrefixThenRestEqualsOneForwardPass) {
  for (const char* json : {kGpt2, kLlamaGqaWindow}) {
    Transformer t = RandomModel(json);
    const RunPlan plan(t.config().n_layers);
    const at::Tensor ids = Ids(3, 9);
    const at::Tensor whole = *t.Forward(ids, plan);
    for (int64_t layer = 0; layer <= t.config().n_layers; ++layer) {
      auto prefix = t.ForwardPrefix(ids, layer, plan);
      ASSERT_OK(prefix);
      auto rest = t.ForwardFrom(*prefix, layer, plan);
      ASSERT_OK(rest);
      EXPECT_TRUE(at::equal(*rest, whole)) << "split at layer " << layer;
    }
    EXPECT_EQ(t.ForwardFrom(at::zeros({1, 2, 5}), 0, plan).status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(t.ForwardFrom(at::zeros({1, 2, t.config().d_model}), 3, plan).status().code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(t.ForwardPrefix(ids, -1, plan).status().code(), absl::StatusCode::kInvalidArgument);
  }
}

// Decoding through the KV cache in chunks (a prompt, then one token at a time) gives the logits of
// one pass over the whole sequence, past a sliding window (3) and along learned positions, with an
// attention-bias slot and the explicit attention path too.
TEST(Transformer, CachedChunksEqualOneForwardPass) {
  for (const char* json : {kGpt2, kLlamaGqaWindow}) {
    Transformer t = RandomModel(json);
    const ModelConfig& c = t.config();
    RunPlan plain(c.n_layers);
    RunPlan explicit_with_bias(c.n_layers);
    explicit_with_bias.SetAttentionBias(
        1, {at::randn({c.n_kv_heads, c.head_dim}), at::randn({c.n_kv_heads, c.head_dim}), {}});
    explicit_with_bias.RequireExplicitAttention(0);
    for (RunPlan* plan : {&plain, &explicit_with_bias}) {
      const at::Tensor ids = Ids(2, 11);
      const at::Tensor whole = *t.Forward(ids, *plan);
      KvCache cache;
      std::vector<at::Tensor> parts;
      for (auto [begin, length] : std::vector<std::pair<int64_t, int64_t>>{{0, 5}, {5, 1}, {6, 1}, {7, 4}}) {
        plan->SetPositionOffset(begin);
        auto part = t.ForwardCached(ids.narrow(1, begin, length), *plan, cache);
        ASSERT_OK(part);
        parts.push_back(*part);
        EXPECT_EQ(cache.length, begin + length);
      }
      plan->SetPositionOffset(0);
      EXPECT_LT(MaxDiff(at::cat(parts, 1), whole), 1e-5) << c.architecture;
      // A cache of another batch is refused.
      EXPECT_EQ(t.ForwardCached(Ids(1, 1), *plan, cache).status().code(), absl::StatusCode::kInvalidArgument);
    }
  }
  // Learned positions end: gpt2 has 16.
  Transformer gpt2 = RandomModel(kGpt2);
  KvCache cache;
  const RunPlan plan(gpt2.config().n_layers);
  ASSERT_OK(gpt2.ForwardCached(Ids(1, 16), plan, cache));
  EXPECT_THAT(gpt2.ForwardCached(Ids(1, 1), plan, cache), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(Transformer, PerRowCorrectionsAndGammasEqualEditedWeights) {
  // Row 0 runs the model as it is, row 1 as if o[5, 7] were 3 and the layer-1 MLP norm's channel 2
  // were 0.25: what a sweep does instead of writing the weights.
  for (const char* json : {kGpt2, kLlamaGqaWindow}) {
    Transformer t = RandomModel(json);
    const int64_t n_layers = t.config().n_layers;
    const at::Tensor ids = Ids(1, 9);
    RunPlan batched(n_layers);
    const double original = t.weights().blocks[0].o.weight[5][7].item<double>();
    batched.AddLinearCorrection(0, LinearSite::kO, {5, 7, at::tensor({0.f, static_cast<float>(3.0 - original)})});
    at::Tensor gamma = t.weights().blocks[1].mlp_norm.weight.unsqueeze(0).repeat({2, 1});
    gamma[1][2] = 0.25;
    batched.SetNormGamma(1, NormSite::kMlp, gamma.unsqueeze(1));
    const at::Tensor both = *t.Forward(ids.repeat({2, 1}), batched);

    const RunPlan plain(n_layers);
    const at::Tensor unedited = *t.Forward(ids, plain);
    t.weights().blocks[0].o.weight[5][7] = 3.0;
    t.weights().blocks[1].mlp_norm.weight[2] = 0.25;
    const at::Tensor edited = *t.Forward(ids, plain);
    EXPECT_LE((both[0] - unedited[0]).abs().max().item<double>(), 1e-5);
    EXPECT_LE((both[1] - edited[0]).abs().max().item<double>(), 1e-5);
    EXPECT_GT((edited - unedited).abs().max().item<double>(), 1e-3) << "the edit must matter";
  }
}

TEST(Transformer, BatchedAttentionBiasLeavesRowsWithoutTheSlotUnchanged) {
  Transformer t = RandomModel(kLlamaGqaWindow);
  const ModelConfig& c = t.config();
  const at::Tensor ids = Ids(1, 9);
  const at::Tensor key = at::randn({c.n_kv_heads, c.head_dim}), value = at::randn({c.n_kv_heads, c.head_dim});
  RunPlan single(c.n_layers);
  single.SetAttentionBias(1, AttentionBias{key, value, {}});
  RunPlan batched(c.n_layers);
  batched.SetAttentionBias(
      1, AttentionBias{at::stack({at::zeros_like(key), key}), at::stack({at::zeros_like(value), value}),
                       at::tensor({0, 1}).to(at::kBool)});
  const at::Tensor both = *t.Forward(ids.repeat({2, 1}), batched);
  const at::Tensor plain = *t.Forward(ids, RunPlan(c.n_layers));
  const at::Tensor biased = *t.Forward(ids, single);
  EXPECT_LE((both[0] - plain[0]).abs().max().item<double>(), 1e-5);
  EXPECT_LE((both[1] - biased[0]).abs().max().item<double>(), 1e-5);
  EXPECT_GT((biased - plain).abs().max().item<double>(), 1e-3);
}

}  // namespace
}  // namespace lesion::model
