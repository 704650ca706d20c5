#include "server/baseline_cache.h"

#include <string>

#include "gtest/gtest.h"

namespace lesion::server {
namespace {

lesion::v1::PassResult PassOfSize(double ppl, int n_layers) {
  lesion::v1::PassResult pass;
  pass.mutable_perplexity()->set_ppl(ppl);
  for (int l = 0; l < n_layers; ++l)
    pass.add_activation_stats()->set_site("blocks." + std::to_string(l) + ".resid_post");
  return pass;
}

int64_t SizeOf(const std::string& key, const lesion::v1::PassResult& pass) {
  return static_cast<int64_t>(pass.ByteSizeLong() + key.size());
}

TEST(BaselineCacheTest, HoldsAndReturnsACopy) {
  BaselineCache cache(1 << 20);
  cache.Put("fp:a", PassOfSize(7.25, 3));
  std::optional<lesion::v1::PassResult> hit = cache.Get("fp:a");
  ASSERT_TRUE(hit.has_value());
  EXPECT_DOUBLE_EQ(hit->perplexity().ppl(), 7.25);
  EXPECT_EQ(hit->activation_stats_size(), 3);
  EXPECT_FALSE(cache.Get("fp:b").has_value());
  EXPECT_EQ(cache.bytes(), SizeOf("fp:a", PassOfSize(7.25, 3)));
}

TEST(BaselineCacheTest, EvictsTheLeastRecentlyUsedBeyondTheBound) {
  const lesion::v1::PassResult pass = PassOfSize(1.0, 20);
  const int64_t one = SizeOf("k0", pass);
  BaselineCache cache(3 * one);  // room for three
  cache.Put("k0", pass);
  cache.Put("k1", pass);
  cache.Put("k2", pass);
  ASSERT_TRUE(cache.Get("k0").has_value());  // k1 is now the least recently used
  cache.Put("k3", pass);
  EXPECT_FALSE(cache.Get("k1").has_value());
  EXPECT_TRUE(cache.Get("k0").has_value());
  EXPECT_TRUE(cache.Get("k2").has_value());
  EXPECT_TRUE(cache.Get("k3").has_value());
  EXPECT_EQ(cache.entries(), 3);
  EXPECT_LE(cache.bytes(), cache.max_bytes());
}

TEST(BaselineCacheTest, NeverHoldsCaptures) {
  BaselineCache cache(int64_t{1} << 30);
  lesion::v1::PassResult pass = PassOfSize(2.0, 1);
  lesion::v1::Tensor* capture = pass.add_captures();
  capture->set_name("blocks.0.resid_post");
  capture->set_data(std::string(1 << 16, '\0'));
  cache.Put("with-captures", pass);
  EXPECT_FALSE(cache.Get("with-captures").has_value());
  EXPECT_EQ(cache.bytes(), 0);
}

TEST(BaselineCacheTest, ReplacingAKeyKeepsTheCountRight) {
  BaselineCache cache(1 << 20);
  cache.Put("k", PassOfSize(1.0, 50));
  cache.Put("k", PassOfSize(2.0, 1));
  EXPECT_EQ(cache.entries(), 1);
  EXPECT_EQ(cache.bytes(), SizeOf("k", PassOfSize(2.0, 1)));
  EXPECT_DOUBLE_EQ(cache.Get("k")->perplexity().ppl(), 2.0);
}

TEST(BaselineCacheTest, APassLargerThanTheBoundIsNotHeldAndEvictsNothing) {
  BaselineCache cache(SizeOf("small", PassOfSize(1.0, 1)) + 4);
  cache.Put("small", PassOfSize(1.0, 1));
  cache.Put("big", PassOfSize(1.0, 1000));
  EXPECT_TRUE(cache.Get("small").has_value());
  EXPECT_FALSE(cache.Get("big").has_value());
}

TEST(BaselineCacheTest, ZeroBytesHoldsNothing) {
  BaselineCache cache(0);
  cache.Put("k", PassOfSize(1.0, 1));
  EXPECT_FALSE(cache.Get("k").has_value());
}

}  // namespace
}  // namespace lesion::server
