#include "experiments/measurements.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <filesystem>

#include "common/testing/status_matchers.h"
#include "model/model.h"
#include "model/perplexity.h"

namespace lesion::experiments {
namespace {

using ::lesion::matchers::StatusIs;

std::unique_ptr<model::Model> LoadFixture(const char* name) {
  auto model = model::Model::Load(std::filesystem::path(LESION_SOURCE_DIR) / "tests/fixtures/models" / name, {});
  EXPECT_OK(model);
  return *std::move(model);
}

at::Tensor Ids(int64_t b, int64_t s, int64_t vocab, int64_t seed) {
  return (at::arange(b * s, at::kLong).view({b, s}) * (7 + seed) + seed) % vocab;
}

TEST(ActivationStats, MatchesADirectComputationOverTwoBatches) {
  auto model = LoadFixture("llama2");
  const model::ModelConfig& c = model->config();
  const model::SiteId resid{model::SiteKind::kResidPost, 1}, z{model::SiteKind::kAttnZ, 2};
  auto stats = ActivationStatsCollector::Create({resid, z}, 3);
  ASSERT_OK(stats);
  std::vector<at::Tensor> seen_resid, seen_z;
  for (int64_t batch = 0; batch < 2; ++batch) {
    model::RunPlan plan(c.n_layers);
    (*stats)->Attach(plan);
    plan.AddHook(resid, [&](const model::SiteId&, at::Tensor& x) { seen_resid.push_back(x.clone()); });
    plan.AddHook(z, [&](const model::SiteId&, at::Tensor& x) { seen_z.push_back(x.clone()); });
    ASSERT_OK(model->transformer().Forward(Ids(2, 10, c.vocab_size, batch), plan));
  }
  auto result = (*stats)->Finish();
  ASSERT_OK(result);
  ASSERT_EQ(result->size(), 2u);

  for (int which = 0; which < 2; ++which) {
    const auto& r = (*result)[which];
    at::Tensor all = at::cat(which == 0 ? seen_resid : seen_z, 0).abs();  // [4, s, ...]
    const int64_t features = all.numel() / (all.size(0) * all.size(1));
    at::Tensor flat = all.reshape({4, -1});
    EXPECT_EQ(r.n_windows, 4);
    auto [top, _] = flat.topk(3, 1);
    for (int j = 0; j < 3; ++j) EXPECT_NEAR(r.mean_top[j], top.select(1, j).mean().item<double>(), 1e-5);
    EXPECT_NEAR(r.median, std::get<0>(flat.median(1)).mean().item<double>(), 1e-6);
    EXPECT_NEAR(r.mean_abs, flat.mean().item<double>(), 1e-6);
    // The overall maximum and where it is.
    const int64_t arg = flat.argmax().item<int64_t>();
    const int64_t per_seq = flat.size(1);
    EXPECT_NEAR(r.max_top[0].value, flat.max().item<double>(), 1e-6);
    EXPECT_EQ(r.max_top[0].sequence, arg / per_seq);
    EXPECT_EQ(r.max_top[0].token, arg % per_seq / features);
    EXPECT_EQ(r.max_top[0].dim, arg % per_seq % features);
    EXPECT_GE(r.max_top[0].value, r.max_top[1].value);
  }
}

TEST(AttentionSink, IsTheMeanProbabilityOnKeyZeroOverQueriesFromOne) {
  auto model = LoadFixture("gpt2");
  const model::ModelConfig& c = model->config();
  auto sink = AttentionSinkCollector::Create(c, {});
  ASSERT_OK(sink);
  std::vector<at::Tensor> patterns;  // layer 2, per batch
  for (int64_t batch = 0; batch < 3; ++batch) {
    model::RunPlan plan(c.n_layers);
    (*sink)->Attach(plan);
    plan.AddHook({model::SiteKind::kAttnPattern, 2},
                 [&](const model::SiteId&, at::Tensor& p) { patterns.push_back(p.clone()); });
    ASSERT_OK(model->transformer().Forward(Ids(2, 9, c.vocab_size, batch), plan));
  }
  auto scores = (*sink)->Finish();
  ASSERT_OK(scores);
  ASSERT_EQ(scores->sizes(), (std::vector<int64_t>{c.n_layers, c.n_heads}));
  at::Tensor p = at::cat(patterns, 0).to(at::kDouble);                   // [6, heads, q, k]
  at::Tensor expected = p.narrow(2, 1, 8).select(3, 0).mean(2).mean(0);  // [heads]
  EXPECT_LE((scores->select(0, 2) - expected).abs().max().item<double>(), 1e-9);
  EXPECT_TRUE(((*scores >= 0) & (*scores <= 1)).all().item<bool>());
}

TEST(Capture, TakesTheFirstWindowsAtThePositionsAsked) {
  auto model = LoadFixture("llama2");
  const model::ModelConfig& c = model->config();
  const model::SiteId resid{model::SiteKind::kResidPost, 0}, pattern{model::SiteKind::kAttnPattern, 1};
  auto capture = CaptureCollector::Create({resid, pattern}, {0, 3, 50}, 3);
  ASSERT_OK(capture);
  std::vector<at::Tensor> seen_resid, seen_pattern;
  model::RunPlan plan(c.n_layers);
  (*capture)->Attach(plan);
  plan.AddHook(resid, [&](const model::SiteId&, at::Tensor& x) { seen_resid.push_back(x.clone()); });
  plan.AddHook(pattern, [&](const model::SiteId&, at::Tensor& x) { seen_pattern.push_back(x.clone()); });
  for (int64_t batch = 0; batch < 2; ++batch) {  // 2 + 2 windows of 10 tokens: the first 3 count
    ASSERT_OK(model->transformer().Forward(Ids(2, 10, c.vocab_size, batch), plan));
  }
  ASSERT_OK(model->transformer().Forward(Ids(1, 6, c.vocab_size, 9), plan));  // shorter: left out
  auto tensors = (*capture)->Finish();
  ASSERT_OK(tensors);
  ASSERT_EQ(tensors->size(), 2u);
  const at::Tensor index = at::tensor(std::vector<int64_t>{0, 3}, at::kLong);  // 50 is beyond every window
  const at::Tensor want_resid = at::cat({seen_resid[0], seen_resid[1]}, 0).narrow(0, 0, 3).index_select(1, index);
  const at::Tensor want_pattern = at::cat({seen_pattern[0], seen_pattern[1]}, 0).narrow(0, 0, 3).index_select(2, index);
  for (int which = 0; which < 2; ++which) {
    const result::Tensor& t = (*tensors)[which];
    const at::Tensor& want = which == 0 ? want_resid : want_pattern;
    EXPECT_EQ(t.dtype, "float32");
    EXPECT_EQ(t.positions, (std::vector<int64_t>{0, 3}));
    ASSERT_EQ(t.shape, want.sizes().vec()) << t.name;
    at::Tensor got = at::from_blob(const_cast<char*>(t.data.data()), t.shape, at::kFloat);
    EXPECT_TRUE(at::equal(got, want.to(at::kFloat))) << t.name;
  }
  EXPECT_EQ((*tensors)[0].name, "blocks.0.resid_post");
  EXPECT_EQ((*capture)->ExpectedBytes(c, 5, 10), 3 * 2 * (c.d_model + c.n_heads * 11) * 4);
}

// The next-token reducer against log_softmax on the whole batch: NLL of the targets, mean
// probabilities of given tokens and KL(reference || logits), at the scored positions only.
TEST(NextTokenReducer, MatchesADirectComputationAtScoredPositions) {
  auto model = LoadFixture("llama2");
  const model::ModelConfig& c = model->config();
  model::PerplexityOptions options;
  options.seq_len = 9;
  options.batch_size = 2;
  options.add_bos = true;
  std::vector<int32_t> ids;
  for (int i = 0; i < 40; ++i) ids.push_back((i * 37 + 5) % c.vocab_size);
  auto batches = model::MakeWindowBatches(model->transformer(), ids, options, 1);
  ASSERT_OK(batches);
  const std::vector<int32_t> tokens = {3, 77, 200};
  model::NextTokenReducer reducer(tokens, model->transformer().device());
  double nll = 0, kl = 0;
  std::vector<double> probs(tokens.size(), 0);
  int64_t scored = 0;
  model::RunPlan plan(c.n_layers);
  model::RunPlan ablated(c.n_layers);
  ablated.AddHook({model::SiteKind::kResidPost, 0}, [](const model::SiteId&, at::Tensor& x) { x = x * 0.5; });
  for (const model::WindowBatch& batch : *batches) {
    at::Tensor ref = *model->transformer().Forward(batch.input, plan);  // [b, n, V]
    at::Tensor logits = *model->transformer().Forward(batch.input, ablated);
    reducer.Add(logits, batch, ref);
    const int64_t n = batch.input.size(1);
    at::Tensor lp = at::log_softmax(logits.narrow(1, 0, n - 1).to(at::kDouble), -1);
    at::Tensor lq = at::log_softmax(ref.narrow(1, 0, n - 1).to(at::kDouble), -1);
    for (int64_t i = 0; i < batch.input.size(0); ++i) {
      for (int64_t p = 0; p + 1 < n; ++p) {
        if (!batch.score_mask[i][p].item<bool>()) continue;
        ++scored;
        nll -= lp[i][p][batch.input[i][p + 1].item<int64_t>()].item<double>();
        kl += (lq[i][p].exp() * (lq[i][p] - lp[i][p])).sum().item<double>();
        for (size_t t = 0; t < tokens.size(); ++t) probs[t] += lp[i][p][tokens[t]].exp().item<double>();
      }
    }
  }
  EXPECT_EQ(scored, 40) << "BOS per window: every text token is predicted";
  EXPECT_NEAR(reducer.nll_sum().item<double>(), nll, 1e-4);
  EXPECT_NEAR(reducer.kl_sum().item<double>(), kl, 1e-5);
  EXPECT_GT(kl, 1e-3) << "the ablation changes the distribution";
  at::Tensor got = reducer.token_prob_sum()[0].cpu();
  for (size_t t = 0; t < tokens.size(); ++t) EXPECT_NEAR(got[t].item<double>(), probs[t], 1e-6);
}

TEST(NextTokenReducer, SeveralVariantsInOneBatchKeepSeparateSums) {
  // A sweep's pass holds the logits of several variants of the same windows, variant after
  // variant; each variant's sums must equal what a reducer of its own would hold.
  auto model = LoadFixture("gpt2");
  const model::ModelConfig& c = model->config();
  std::vector<int32_t> ids;
  for (int i = 0; i < 37; ++i) ids.push_back((i * 29 + 5) % static_cast<int32_t>(c.vocab_size));
  model::PerplexityOptions options;
  options.seq_len = 8;
  options.batch_size = 3;
  auto batches = model::MakeWindowBatches(model->transformer(), ids, options, std::nullopt);
  ASSERT_OK(batches);
  const std::vector<int32_t> tokens = {3, 77};
  const at::Device device = model->transformer().device();
  model::NextTokenReducer together(tokens, device, /*n_variants=*/4);
  model::NextTokenReducer alone_a(tokens, device), alone_b(tokens, device);
  model::RunPlan plan(c.n_layers);
  model::RunPlan ablated(c.n_layers);
  ablated.AddHook({model::SiteKind::kResidPost, 1}, [](const model::SiteId&, at::Tensor& x) { x = x * 0.25; });
  for (const model::WindowBatch& batch : *batches) {
    at::Tensor a = *model->transformer().Forward(batch.input, plan);
    at::Tensor b = *model->transformer().Forward(batch.input, ablated);
    together.Add(at::cat({a, b}), batch, a, /*first_variant=*/2);
    alone_a.Add(a, batch, a);
    alone_b.Add(b, batch, a);
  }
  at::Tensor nll = together.nll_sum().cpu(), kl = together.kl_sum().cpu(), prob = together.token_prob_sum().cpu();
  EXPECT_EQ(nll[0].item<double>(), 0.0) << "variants 0 and 1 were never added";
  EXPECT_EQ(nll[1].item<double>(), 0.0);
  EXPECT_NEAR(nll[2].item<double>(), alone_a.nll_sum()[0].item<double>(), 1e-9);
  EXPECT_NEAR(nll[3].item<double>(), alone_b.nll_sum()[0].item<double>(), 1e-9);
  EXPECT_NEAR(kl[2].item<double>(), 0.0, 1e-9) << "KL of the baseline against itself";
  EXPECT_NEAR(kl[3].item<double>(), alone_b.kl_sum()[0].item<double>(), 1e-9);
  EXPECT_GT(kl[3].item<double>(), 1e-4);
  for (int64_t t = 0; t < 2; ++t) {
    EXPECT_NEAR(prob[3][t].item<double>(), alone_b.token_prob_sum()[0][t].item<double>(), 1e-9);
  }
}

TEST(Measurements, BadArguments) {
  auto model = LoadFixture("gpt2");
  EXPECT_EQ(ActivationStatsCollector::Create({{model::SiteKind::kLogits, -1}}, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ActivationStatsCollector::Create({}, 3).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ActivationStatsCollector::Create({{model::SiteKind::kAttnPattern, 0}}, 3).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(AttentionSinkCollector::Create(model->config(), {3}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CaptureCollector::Create({}, {}, 1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CaptureCollector::Create({{model::SiteKind::kEmbed, -1}}, {}, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CaptureCollector::Create({{model::SiteKind::kEmbed, -1}}, {-1}, 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto unused = ActivationStatsCollector::Create({{model::SiteKind::kLogits, -1}}, 3);
  EXPECT_THAT((*unused)->Finish(), StatusIs(absl::StatusCode::kFailedPrecondition));
}

}  // namespace
}  // namespace lesion::experiments
