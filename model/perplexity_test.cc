#include "model/perplexity.h"

#include <gtest/gtest.h>

#include "common/testing/status_matchers.h"

namespace lesion::model {
namespace {

using ::lesion::matchers::StatusIs;

int64_t Scored(const std::vector<Window>& windows) {
  int64_t n = 0;
  for (const Window& w : windows) n += w.end - w.score_begin;
  return n;
}

TEST(PlanWindows, NonOverlappingKeepsAPartialTail) {
  PerplexityOptions o;
  o.seq_len = 4;
  auto w = PlanWindows(10, o);
  ASSERT_OK(w);
  ASSERT_EQ(w->size(), 3u);
  EXPECT_EQ((*w)[2].begin, 8);
  EXPECT_EQ((*w)[2].end, 10);
  EXPECT_EQ((*w)[0].score_begin, 1);
  EXPECT_EQ(Scored(*w), 3 + 3 + 1);
  // A tail of one token predicts nothing and is dropped.
  auto w2 = PlanWindows(9, o);
  ASSERT_OK(w2);
  EXPECT_EQ(w2->size(), 2u);
}

TEST(PlanWindows, SlidingScoresEveryTokenButTheFirstOnce) {
  PerplexityOptions o;
  o.seq_len = 8;
  o.stride = 3;
  auto w = PlanWindows(20, o);
  ASSERT_OK(w);
  EXPECT_EQ(Scored(*w), 19);
  EXPECT_EQ(w->back().end, 20);
  for (size_t i = 1; i < w->size(); ++i) {
    EXPECT_EQ((*w)[i].score_begin, (*w)[i - 1].end);  // contiguous, no overlap
    EXPECT_LE((*w)[i].end - (*w)[i].begin, 8);
  }
}

TEST(PlanWindows, BosWindowsScoreAllTheirTokens) {
  PerplexityOptions o;
  o.seq_len = 5;  // BOS + 4 text tokens
  o.add_bos = true;
  auto w = PlanWindows(10, o);
  ASSERT_OK(w);
  ASSERT_EQ(w->size(), 3u);
  EXPECT_EQ((*w)[0].end - (*w)[0].begin, 4);
  EXPECT_EQ(Scored(*w), 10);
}

TEST(PlanWindows, MaxWindowsAndBadOptions) {
  PerplexityOptions o;
  o.seq_len = 4;
  o.max_windows = 2;
  auto w = PlanWindows(100, o);
  ASSERT_OK(w);
  EXPECT_EQ(w->size(), 2u);
  o.max_windows = 0;
  EXPECT_EQ(PlanWindows(100, o).status().code(), absl::StatusCode::kInvalidArgument);
  o.max_windows.reset();
  o.seq_len = 1;
  EXPECT_EQ(PlanWindows(100, o).status().code(), absl::StatusCode::kInvalidArgument);
  o.seq_len = 4;
  o.stride = 5;
  EXPECT_EQ(PlanWindows(100, o).status().code(), absl::StatusCode::kInvalidArgument);
  o.stride.reset();
  EXPECT_EQ(PlanWindows(1, o).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(DescribeProtocol, SaysWhatWasComputed) {
  PerplexityOptions o;
  o.seq_len = 1024;
  EXPECT_EQ(DescribeProtocol(o), "non-overlapping windows of 1024, no BOS");
  o.stride = 512;
  o.add_bos = true;
  EXPECT_EQ(DescribeProtocol(o), "sliding windows of 1024 with stride 512, BOS per window");
}

TEST(PlanWindows, APromptSetIsOneWindowPerPromptInOrder) {
  PerplexityOptions o;
  o.seq_len = 6;
  o.prompt_lengths = {3, 5, 2, 5};
  auto w = PlanWindows(15, o);
  ASSERT_OK(w);
  ASSERT_EQ(w->size(), 4u);
  EXPECT_EQ((*w)[1].begin, 3);
  EXPECT_EQ((*w)[1].end, 8);
  EXPECT_EQ((*w)[1].score_begin, 4);  // every token but the first
  EXPECT_EQ(Scored(*w), 2 + 4 + 1 + 4);
  // The batches run the longest first, in prompt order within a length.
  EXPECT_EQ(SequenceOrder(*w), (std::vector<int64_t>{1, 3, 0, 2}));
  EXPECT_EQ(DescribeProtocol(o), "prompt set of 4 prompts, no BOS");

  o.add_bos = true;  // BOS makes every token predicted, and counts against seq_len
  auto bos = PlanWindows(15, o);
  ASSERT_OK(bos);
  EXPECT_EQ((*bos)[1].score_begin, 3);
  EXPECT_EQ(Scored(*bos), 15);
  o.max_windows = 2;
  auto first = PlanWindows(15, o);
  ASSERT_OK(first);
  EXPECT_EQ(first->size(), 2u);
  EXPECT_EQ(DescribeProtocol(o), "prompt set of 4 prompts, BOS per prompt, first 2 prompts");

  o.max_windows.reset();
  o.seq_len = 5;
  EXPECT_THAT(PlanWindows(15, o).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, testing::HasSubstr("prompt 1 has 6 tokens with BOS, more "
                                                                              "than seq_len 5")));
  o.add_bos = false;
  o.prompt_lengths = {3, 1};
  EXPECT_THAT(PlanWindows(4, o).status(), StatusIs(absl::StatusCode::kInvalidArgument,
                                                   testing::HasSubstr("prompt 1 has 1 token: it predicts none")));
  o.prompt_lengths = {3, 2};
  o.stride = 1;
  EXPECT_THAT(PlanWindows(5, o).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, testing::HasSubstr("it takes no stride")));
}

}  // namespace
}  // namespace lesion::model
