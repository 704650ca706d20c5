#include "model/hook_sites.h"

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/error_text.h"
#include "common/status_macros.h"

namespace lesion::model {
namespace {

constexpr absl::string_view kSiteNames[kNumSiteKinds] = {
#define LESION_HOOK_SITE(enumerator, name, per_layer) name,
#include "common/model_names.def"
};
constexpr bool kPerLayer[kNumSiteKinds] = {
#define LESION_HOOK_SITE(enumerator, name, per_layer) per_layer,
#include "common/model_names.def"
};

// "embed, final_norm, logits, blocks.L.{attn_in, ..., resid_post}"
std::string KnownSites() {
  std::vector<absl::string_view> model_level, per_layer;
  for (int k = 0; k < kNumSiteKinds; ++k) (kPerLayer[k] ? per_layer : model_level).push_back(kSiteNames[k]);
  return absl::StrCat(absl::StrJoin(model_level, ", "), ", blocks.L.{", absl::StrJoin(per_layer, ", "), "}");
}

}  // namespace

bool IsPerLayer(SiteKind kind) { return kPerLayer[static_cast<int>(kind)]; }

absl::string_view SiteKindName(SiteKind kind) { return kSiteNames[static_cast<int>(kind)]; }

std::string SiteId::Name() const {
  if (!IsPerLayer(kind)) return std::string(SiteKindName(kind));
  return absl::StrCat("blocks.", layer, ".", SiteKindName(kind));
}

absl::StatusOr<std::vector<SiteId>> ParseSitePattern(absl::string_view pattern, int64_t n_layers) {
  pattern = absl::StripAsciiWhitespace(pattern);
  for (int k = 0; k < kNumSiteKinds; ++k) {
    const auto kind = static_cast<SiteKind>(k);
    if (!IsPerLayer(kind) && pattern == kSiteNames[k]) return std::vector<SiteId>{{kind, -1}};
  }
  std::vector<absl::string_view> parts = absl::StrSplit(pattern, '.');
  if (parts.size() != 3 || parts[0] != "blocks") {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown hook site ", QuoteForError(pattern), " (known: ", KnownSites(), ")"));
  }
  const auto* name = std::find(std::begin(kSiteNames), std::end(kSiteNames), parts[2]);
  if (name == std::end(kSiteNames) || !IsPerLayer(static_cast<SiteKind>(name - std::begin(kSiteNames)))) {
    return absl::InvalidArgumentError(absl::StrCat("unknown hook site ", QuoteForError(pattern), ": no per-layer site ",
                                                   QuoteForError(parts[2]), " (known: ", KnownSites(), ")"));
  }
  const auto kind = static_cast<SiteKind>(name - std::begin(kSiteNames));
  std::vector<SiteId> sites;
  if (parts[1] == "*") {
    for (int64_t l = 0; l < n_layers; ++l) sites.push_back({kind, l});
    return sites;
  }
  int64_t layer = 0;
  if (!absl::SimpleAtoi(parts[1], &layer)) {
    return absl::InvalidArgumentError(absl::StrCat("hook site ", QuoteForError(pattern), ": layer ",
                                                   QuoteForError(parts[1]), " is not a number or *"));
  }
  if (layer < 0 || layer >= n_layers) {
    return absl::InvalidArgumentError(absl::StrCat("hook site ", QuoteForError(pattern), ": layer ", layer,
                                                   " out of range: the model has ", n_layers, " layers (0..",
                                                   n_layers - 1, ")"));
  }
  sites.push_back({kind, layer});
  return sites;
}

absl::StatusOr<std::vector<SiteId>> ParseSiteList(absl::string_view patterns, int64_t n_layers) {
  std::vector<SiteId> sites;
  for (absl::string_view pattern : absl::StrSplit(patterns, ',', absl::SkipWhitespace())) {
    ASSIGN_OR_RETURN(std::vector<SiteId> parsed, ParseSitePattern(pattern, n_layers));
    for (const SiteId& s : parsed) {
      if (std::find(sites.begin(), sites.end(), s) == sites.end()) sites.push_back(s);
    }
  }
  if (sites.empty()) return absl::InvalidArgumentError("no hook sites given");
  return sites;
}

}  // namespace lesion::model
