#include "experiments/run_plan.h"

#include <utility>

namespace lesion::experiments {

RunPlan::RunPlan(int64_t n_layers)
    : n_layers_(n_layers),
      hooks_(static_cast<size_t>((n_layers + 1) * kNumSiteKinds)),
      attention_bias_(static_cast<size_t>(n_layers)) {}

void RunPlan::AddHook(const SiteId& site, Hook hook) {
  hooks_[Index(site)].push_back(std::move(hook));
  ++n_hooks_;
}

void RunPlan::SetAttentionBias(int64_t layer, AttentionBias bias) {
  if (!attention_bias_[layer].has_value()) ++n_biases_;
  attention_bias_[layer] = std::move(bias);
}

}  // namespace lesion::experiments
