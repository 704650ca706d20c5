#include "server/sweep_shards.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <utility>

#include "common/testing/status_matchers.h"

namespace lesion::server {
namespace {

using ::lesion::matchers::StatusIs;

// A shard's parent result: rows named only for the variants it ran.
result::Experiment Shard(int64_t n_variants, std::initializer_list<int64_t> ran, int64_t passes, int64_t per_pass) {
  result::Experiment r;
  r.has_sweep = true;
  r.sweep.variants.resize(n_variants);
  for (int64_t v : ran) {
    r.sweep.variants[v].name = "v" + std::to_string(v);
    r.sweep.variants[v].has_perplexity = true;
    r.sweep.variants[v].perplexity = 10.0 + static_cast<double>(v);
  }
  r.run.forward_passes = passes;
  r.sweep.variants_per_pass = per_pass;
  return r;
}

TEST(ShardedSweep, OnlyTheFirstShardStartsTheSweep) {
  ShardedSweep sweep(2);
  EXPECT_TRUE(sweep.MarkStarted());
  EXPECT_FALSE(sweep.MarkStarted());
}

TEST(ShardedSweep, ProgressIsSummedOverShards) {
  ShardedSweep sweep(3);
  using Passes = std::pair<int64_t, int64_t>;  // done, planned
  EXPECT_EQ(sweep.ReportProgress(0, 1, 10), Passes(1, 10));
  EXPECT_EQ(sweep.ReportProgress(2, 4, 8), Passes(5, 18));
  EXPECT_EQ(sweep.ReportProgress(0, 2, 10), Passes(6, 18));
}

TEST(ShardedSweep, MergesEveryShardsRowsPassesAndDevices) {
  ShardedSweep sweep(2);
  ASSERT_TRUE(sweep.MarkStarted());
  sweep.Merge(Shard(4, {0, 2}, 6, 2), "cuda:0");
  sweep.Merge(Shard(4, {1, 3}, 5, 3), "cuda:1");
  ASSERT_OK_AND_ASSIGN(result::Experiment merged, sweep.Outcome());
  ASSERT_EQ(merged.sweep.variants.size(), 4u);
  for (int64_t v = 0; v < 4; ++v) {
    EXPECT_EQ(merged.sweep.variants[v].name, "v" + std::to_string(v));
    EXPECT_DOUBLE_EQ(merged.sweep.variants[v].perplexity, 10.0 + static_cast<double>(v));
  }
  EXPECT_EQ(merged.run.forward_passes, 11);
  EXPECT_EQ(merged.sweep.variants_per_pass, 3);
  EXPECT_EQ(merged.run.device, "cuda:0,cuda:1");
  EXPECT_GE(merged.run.seconds, 0.0);
}

TEST(ShardedSweep, TheFirstErrorIsTheSweepsAndAMissingShardCancelsIt) {
  ShardedSweep failed(3);
  failed.Merge(Shard(2, {0}, 1, 1), "cpu");
  failed.Merge(absl::ResourceExhaustedError("out of memory"), "cuda:0");
  failed.Merge(absl::CancelledError("stopped"), "cuda:1");
  EXPECT_THAT(failed.Outcome(), StatusIs(absl::StatusCode::kResourceExhausted, "out of memory"));

  ShardedSweep short_one(2);
  short_one.Merge(Shard(2, {0}, 1, 1), "cpu");
  EXPECT_THAT(short_one.Outcome(), StatusIs(absl::StatusCode::kCancelled));
}

}  // namespace
}  // namespace lesion::server
