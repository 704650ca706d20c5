#include "model/hook_sites.h"

#include <gtest/gtest.h>

#include "common/testing/status_matchers.h"

namespace lesion::model {
namespace {

using ::lesion::matchers::StatusIs;

TEST(HookSites, ParsesModelAndLayerSitesAndWildcards) {
  auto logits = ParseSitePattern("logits", 4);
  ASSERT_OK(logits);
  EXPECT_EQ((*logits)[0], (SiteId{SiteKind::kLogits, -1}));
  auto one = ParseSitePattern("blocks.3.attn_z", 4);
  ASSERT_OK(one);
  EXPECT_EQ((*one)[0], (SiteId{SiteKind::kAttnZ, 3}));
  auto all = ParseSitePattern("blocks.*.resid_post", 4);
  ASSERT_OK(all);
  ASSERT_EQ(all->size(), 4u);
  EXPECT_EQ((*all)[2].Name(), "blocks.2.resid_post");
}

TEST(HookSites, NamesRoundTrip) {
  for (int k = 0; k < kNumSiteKinds; ++k) {
    SiteId site{static_cast<SiteKind>(k), IsPerLayer(static_cast<SiteKind>(k)) ? 1 : -1};
    auto parsed = ParseSitePattern(site.Name(), 2);
    ASSERT_OK(parsed) << site.Name();
    EXPECT_EQ((*parsed)[0], site);
  }
}

TEST(HookSites, RejectsUnknownSitesAndLayersOutOfRange) {
  auto unknown = ParseSitePattern("blocks.0.attn_q", 4);
  EXPECT_THAT(unknown, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_NE(unknown.status().message().find("attn_q"), std::string::npos);
  auto range = ParseSitePattern("blocks.14.attn_z", 12);
  EXPECT_THAT(range, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_NE(range.status().message().find("layer 14 out of range"), std::string::npos);
  EXPECT_FALSE(ParseSitePattern("blocks.-1.attn_z", 12).ok());
  EXPECT_FALSE(ParseSitePattern("blocks.x.attn_z", 12).ok());
  EXPECT_FALSE(ParseSitePattern("blocks.0.logits", 12).ok());
  EXPECT_FALSE(ParseSitePattern("resid_post", 12).ok());
}

TEST(HookSites, ListDeduplicatesInOrder) {
  auto sites = ParseSiteList("logits, blocks.*.attn_z,blocks.1.attn_z", 2);
  ASSERT_OK(sites);
  ASSERT_EQ(sites->size(), 3u);
  EXPECT_EQ((*sites)[0].Name(), "logits");
  EXPECT_EQ((*sites)[2].Name(), "blocks.1.attn_z");
  EXPECT_EQ(ParseSiteList(" , ", 2).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace lesion::model
