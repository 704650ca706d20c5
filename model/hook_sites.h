// Hook sites: the named intermediates of the transformer (docs/design.md, "Hook sites"). Every
// interpretable activation of a forward pass passes one of these, so interventions and
// measurements attach by name instead of editing model code.
//
//   embed                   [b, s, d]          residual stream entering block 0
//   blocks.L.attn_in        [b, s, d]          normed input of attention
//   blocks.L.attn_z         [b, s, heads, hd]  per-head outputs before the output projection
//   blocks.L.attn_pattern   [b, heads, q, k]   softmax probabilities (k gains one slot per
//                                              attention-bias key when a bias is added)
//   blocks.L.attn_out       [b, s, d]          after the output projection
//   blocks.L.resid_mid      [b, s, d]          residual after attention
//   blocks.L.mlp_in         [b, s, d]          normed input of the MLP
//   blocks.L.mlp_act        [b, s, ffn]        input of the down projection
//   blocks.L.mlp_out        [b, s, d]
//   blocks.L.resid_post     [b, s, d]          block output, BEFORE the final norm
//   final_norm              [b, s, d]          after the final norm (HF hidden_states[-1])
//   logits                  [b, s, vocab]
//
// Value types; thread-compatible.
#ifndef LESION_MODEL_HOOK_SITES_H_
#define LESION_MODEL_HOOK_SITES_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lesion::model {

// The sites of common/model_names.def, in its order.
enum class SiteKind {
#define LESION_HOOK_SITE(enumerator, name, per_layer) enumerator,
#include "common/model_names.def"
};
inline constexpr int kNumSiteKinds = 0
#define LESION_HOOK_SITE(enumerator, name, per_layer) +1
#include "common/model_names.def"
    ;

// True for the blocks.L.* sites.
bool IsPerLayer(SiteKind kind);
// "attn_z" for kAttnZ, "embed" for kEmbed, ...
absl::string_view SiteKindName(SiteKind kind);

struct SiteId {
  SiteKind kind = SiteKind::kEmbed;
  int64_t layer = -1;  // -1 for the model-level sites embed, final_norm, logits

  std::string Name() const;  // "blocks.3.attn_z", "logits"
  friend bool operator==(const SiteId& a, const SiteId& b) { return a.kind == b.kind && a.layer == b.layer; }
};

// Parses one site name or pattern against a model with `n_layers` layers: "logits",
// "blocks.3.attn_z", or "blocks.*.resid_post" (every layer). InvalidArgument naming the text for
// unknown sites and layers out of range ("layer 14 out of range: the model has 12 layers").
absl::StatusOr<std::vector<SiteId>> ParseSitePattern(absl::string_view pattern, int64_t n_layers);

// Parses a comma-separated list of patterns, in order, without duplicates.
absl::StatusOr<std::vector<SiteId>> ParseSiteList(absl::string_view patterns, int64_t n_layers);

}  // namespace lesion::model

#endif  // LESION_MODEL_HOOK_SITES_H_
