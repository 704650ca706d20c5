#include "model/run_plan.h"

#include <utility>

namespace lesion::model {

RunPlan::RunPlan(int64_t n_layers)
    : n_layers_(n_layers),
      hooks_(static_cast<size_t>((n_layers + 1) * kNumSiteKinds)),
      attention_bias_(static_cast<size_t>(n_layers)),
      explicit_attention_(static_cast<size_t>(n_layers), false),
      corrections_(static_cast<size_t>(n_layers * kNumLinearSites)),
      gammas_(static_cast<size_t>(n_layers * kNumBlockNormSites)) {}

void RunPlan::AddHook(const SiteId& site, Hook hook) {
  hooks_[Index(site)].push_back(std::move(hook));
  ++n_hooks_;
}

void RunPlan::SetAttentionBias(int64_t layer, AttentionBias bias) {
  if (!attention_bias_[layer].has_value()) ++n_biases_;
  attention_bias_[layer] = std::move(bias);
}

void RunPlan::AddLinearCorrection(int64_t layer, LinearSite site, LinearCorrection correction) {
  corrections_[layer * kNumLinearSites + static_cast<int>(site)].push_back(std::move(correction));
  ++n_corrections_;
}

void RunPlan::SetNormGamma(int64_t layer, NormSite norm, at::Tensor gamma) {
  at::Tensor& slot =
      norm == NormSite::kFinal ? final_gamma_ : gammas_[layer * kNumBlockNormSites + static_cast<int>(norm)];
  if (!slot.defined()) ++n_gammas_;
  slot = std::move(gamma);
}

}  // namespace lesion::model
