#include "spec/result_proto.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"

namespace lesion::result {
namespace {

const lesion::v1::Metric* Find(const lesion::v1::ExperimentResult& r, const std::string& name) {
  for (const auto& m : r.metrics()) {
    if (m.name() == name) return &m;
  }
  return nullptr;
}

TEST(ResultProto, DerivesMetricsWithDeltas) {
  Experiment r;
  r.baseline.has_perplexity = r.intervened.has_perplexity = true;
  r.baseline.perplexity.ppl = 10;
  r.intervened.perplexity.ppl = 12.5;
  r.baseline.activation_stats.push_back({"blocks.1.resid_post", {300, 20}, {}, 0.5, 0.7, 4});
  r.intervened.activation_stats.push_back({"blocks.1.resid_post", {30, 20}, {}, 0.5, 0.7, 4});
  r.baseline.has_attention_sink = r.intervened.has_attention_sink = true;
  r.baseline.attention_sink = {{0, 3}, 2, {0.1, 0.2, 0.3, 0.9}};
  r.intervened.attention_sink = {{0, 3}, 2, {0.1, 0.2, 0.3, 0.45}};
  r.has_kl_divergence = true;
  r.kl_divergence = 0.25;
  r.baseline.has_super_weights = r.intervened.has_super_weights = true;
  r.baseline.super_weights.push_back({});
  lesion::v1::ExperimentResult p = ToProto(r);
  const auto* ppl = Find(p, "perplexity");
  ASSERT_NE(ppl, nullptr);
  EXPECT_DOUBLE_EQ(ppl->delta(), 2.5);
  EXPECT_DOUBLE_EQ(ppl->delta_pct(), 25.0);
  const auto* top1 = Find(p, "top1:blocks.1.resid_post");
  ASSERT_NE(top1, nullptr);
  EXPECT_DOUBLE_EQ(top1->delta_pct(), -90.0);
  const auto* sink = Find(p, "attention_sink:L3.H1");
  ASSERT_NE(sink, nullptr);
  EXPECT_DOUBLE_EQ(sink->value(), 0.45);
  EXPECT_DOUBLE_EQ(Find(p, "kl_divergence")->value(), 0.25);
  EXPECT_DOUBLE_EQ(Find(p, "super_weights")->delta(), -1);
  EXPECT_EQ(Find(p, "norm_outliers"), nullptr) << "not measured";
}

// An observational run reports its one pass once: the intervened pass stays empty and every
// metric's value is the baseline's.
TEST(ResultProto, ObservationalRunsReportOnePass) {
  Experiment r;
  r.observational = true;
  r.baseline.has_perplexity = true;
  r.baseline.perplexity.ppl = std::nan("");
  r.baseline.perplexity.mean_nll = 2;
  r.baseline.activation_stats.push_back({"blocks.1.resid_post", {300, 20}, {}, 0.5, 0.7, 4});
  r.has_kl_divergence = true;
  lesion::v1::ExperimentResult p = ToProto(r);
  EXPECT_TRUE(p.observational());
  EXPECT_FALSE(p.has_intervened());
  const auto* nll = Find(p, "mean_nll");
  ASSERT_NE(nll, nullptr);
  EXPECT_EQ(nll->baseline(), 2);
  EXPECT_EQ(nll->value(), 2);
  EXPECT_EQ(nll->delta(), 0);
  EXPECT_EQ(Find(p, "top1:blocks.1.resid_post")->value(), 300);
  EXPECT_EQ(Find(p, "kl_divergence")->value(), 0);
  ASSERT_EQ(p.warnings_size(), 2) << "nothing of an intervened pass";
  EXPECT_EQ(p.warnings(0), "metric perplexity: baseline value is nan");
  EXPECT_EQ(p.warnings(1), "baseline perplexity is nan");
}

// A regression: `factor 1e308` ended DONE with perplexity nan and nothing said so.
TEST(ResultProto, FlagsNonFiniteResults) {
  Experiment r;
  r.baseline.has_perplexity = r.intervened.has_perplexity = true;
  r.baseline.perplexity.ppl = 10;
  r.intervened.perplexity.ppl = std::nan("");
  r.intervened.perplexity.mean_nll = std::numeric_limits<double>::infinity();
  lesion::v1::ExperimentResult p = ToProto(r);
  ASSERT_EQ(p.warnings_size(), 2);
  EXPECT_EQ(p.warnings(0), "metric perplexity: intervened value is nan");
  EXPECT_EQ(p.warnings(1), "metric mean_nll: intervened value is inf");

  r.intervened.perplexity.ppl = 12;
  r.intervened.perplexity.mean_nll = 2.5;
  EXPECT_EQ(ToProto(r).warnings_size(), 0) << "finite results carry no warning";

  Experiment sweep;  // a sweep's rows, capped at 16 lines
  sweep.has_sweep = true;
  for (int i = 0; i < 40; ++i)
    sweep.sweep.variants.push_back(
        {absl::StrCat("v", i), "", true, -std::numeric_limits<double>::infinity(), 0, false, 0});
  lesion::v1::ExperimentResult rows = ToProto(sweep);
  ASSERT_EQ(rows.warnings_size(), 16);
  EXPECT_EQ(rows.warnings(0), "variant v0: perplexity is -inf");
  EXPECT_EQ(rows.warnings(15), "... and 25 more non-finite results");
}

TEST(ResultProto, JsonKeepsProtoFieldNamesAndZeros) {
  Experiment r;
  r.baseline.has_perplexity = r.intervened.has_perplexity = true;
  r.baseline.perplexity.ppl = r.intervened.perplexity.ppl = 4;
  const std::string json = ToJson(ToProto(r), false);
  EXPECT_NE(json.find("\"mean_nll\""), std::string::npos) << json;
  EXPECT_NE(json.find("\"delta_pct\":0"), std::string::npos) << json;
}

}  // namespace
}  // namespace lesion::result
