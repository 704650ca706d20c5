#include "experiments/measurements.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <filesystem>

#include "experiments/model.h"

namespace lesion::experiments {
namespace {

std::unique_ptr<Model> LoadFixture(const char* name) {
  auto model = Model::Load(std::filesystem::path(LESION_SOURCE_DIR) / "tests/fixtures/models" / name, {});
  EXPECT_TRUE(model.ok()) << model.status();
  return *std::move(model);
}

at::Tensor Ids(int64_t b, int64_t s, int64_t vocab, int64_t seed) {
  return (at::arange(b * s, at::kLong).view({b, s}) * (7 + seed) + seed) % vocab;
}

TEST(ActivationStats, MatchesADirectComputationOverTwoBatches) {
  auto model = LoadFixture("llama2");
  const ModelConfig& c = model->config();
  const SiteId resid{SiteKind::kResidPost, 1}, z{SiteKind::kAttnZ, 2};
  auto stats = ActivationStatsCollector::Create({resid, z}, 3);
  ASSERT_TRUE(stats.ok()) << stats.status();
  std::vector<at::Tensor> seen_resid, seen_z;
  for (int64_t batch = 0; batch < 2; ++batch) {
    RunPlan plan(c.n_layers);
    (*stats)->Attach(plan);
    plan.AddHook(resid, [&](const SiteId&, at::Tensor& x) { seen_resid.push_back(x.clone()); });
    plan.AddHook(z, [&](const SiteId&, at::Tensor& x) { seen_z.push_back(x.clone()); });
    ASSERT_TRUE(model->transformer().Forward(Ids(2, 10, c.vocab_size, batch), plan).ok());
  }
  auto result = (*stats)->Finish();
  ASSERT_TRUE(result.ok()) << result.status();
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
  const ModelConfig& c = model->config();
  auto sink = AttentionSinkCollector::Create(c, {});
  ASSERT_TRUE(sink.ok());
  std::vector<at::Tensor> patterns;  // layer 2, per batch
  for (int64_t batch = 0; batch < 3; ++batch) {
    RunPlan plan(c.n_layers);
    (*sink)->Attach(plan);
    plan.AddHook({SiteKind::kAttnPattern, 2}, [&](const SiteId&, at::Tensor& p) { patterns.push_back(p.clone()); });
    ASSERT_TRUE(model->transformer().Forward(Ids(2, 9, c.vocab_size, batch), plan).ok());
  }
  auto scores = (*sink)->Finish();
  ASSERT_TRUE(scores.ok()) << scores.status();
  ASSERT_EQ(scores->sizes(), (std::vector<int64_t>{c.n_layers, c.n_heads}));
  at::Tensor p = at::cat(patterns, 0).to(at::kDouble);  // [6, heads, q, k]
  at::Tensor expected = p.narrow(2, 1, 8).select(3, 0).mean(2).mean(0);  // [heads]
  EXPECT_LE((scores->select(0, 2) - expected).abs().max().item<double>(), 1e-9);
  EXPECT_TRUE(((*scores >= 0) & (*scores <= 1)).all().item<bool>());
}

TEST(Measurements, BadArguments) {
  auto model = LoadFixture("gpt2");
  EXPECT_EQ(ActivationStatsCollector::Create({{SiteKind::kLogits, -1}}, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ActivationStatsCollector::Create({}, 3).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ActivationStatsCollector::Create({{SiteKind::kAttnPattern, 0}}, 3).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(AttentionSinkCollector::Create(model->config(), {3}).status().code(), absl::StatusCode::kInvalidArgument);
  auto unused = ActivationStatsCollector::Create({{SiteKind::kLogits, -1}}, 3);
  EXPECT_EQ((*unused)->Finish().status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace lesion::experiments
