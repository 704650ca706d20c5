// RunPlan: what one forward pass reads and replaces at hook sites. Built per run and handed to
// Transformer::Forward; the model itself never changes. An empty plan costs one bit test per site.
//
//   RunPlan plan(config.n_layers);
//   plan.AddHook({SiteKind::kAttnZ, 5}, [](const SiteId&, at::Tensor& z) {
//     z = z.clone();
//     z.select(2, 1).zero_();  // ablate head 1 of layer 5
//   });
//
// A hook may observe the tensor or assign a replacement of the same shape to it; hooks at one site
// run in the order they were added. Hooks must not keep references to tensors they do not own
// beyond the run. Thread-compatible: build on one thread, then use from the thread that runs the
// forward pass.
#ifndef LESION_EXPERIMENTS_RUN_PLAN_H_
#define LESION_EXPERIMENTS_RUN_PLAN_H_

#include <ATen/ATen.h>

#include <functional>
#include <optional>
#include <vector>

#include "experiments/hook_sites.h"

namespace lesion::experiments {

// One extra key/value slot per KV head, post-rotary, visible to every query of a layer:
// softmax(Q [K; k'] / sqrt(d)) [V; v'] (Sun et al. 2024's explicit attention bias).
struct AttentionBias {
  at::Tensor key;    // [n_kv_heads, head_dim]
  at::Tensor value;  // [n_kv_heads, head_dim]
};

class RunPlan {
 public:
  using Hook = std::function<void(const SiteId& site, at::Tensor& value)>;

  explicit RunPlan(int64_t n_layers);

  // Attaches `hook` at `site`. The site must be valid for the model (see ParseSitePattern).
  void AddHook(const SiteId& site, Hook hook);
  // Adds an attention-bias slot to `layer`, replacing any earlier one.
  void SetAttentionBias(int64_t layer, AttentionBias bias);
  // Polled before every layer: when it returns true the forward pass stops and Forward returns
  // Cancelled, so a cancelled experiment leaves the device within a layer, not a whole pass.
  void SetInterrupt(std::function<bool()> interrupt) { interrupt_ = std::move(interrupt); }
  bool Interrupted() const { return interrupt_ && interrupt_(); }

  bool empty() const { return n_hooks_ == 0 && n_biases_ == 0; }
  bool HasHooks(const SiteId& site) const { return !hooks_[Index(site)].empty(); }
  // Runs the hooks of `site` on `value` (no-op without hooks).
  void Apply(const SiteId& site, at::Tensor& value) const {
    const auto& hooks = hooks_[Index(site)];
    for (const Hook& hook : hooks) hook(site, value);
  }
  const std::optional<AttentionBias>& attention_bias(int64_t layer) const {
    return attention_bias_[layer];
  }
  // The pattern is read or edited, or a bias slot is added: the explicit attention path is needed.
  bool NeedsExplicitAttention(int64_t layer) const {
    return HasHooks({SiteKind::kAttnPattern, layer}) || attention_bias_[layer].has_value();
  }
  int64_t n_layers() const { return n_layers_; }

 private:
  size_t Index(const SiteId& site) const {
    // Model-level sites are stored after the per-layer ones.
    return site.layer < 0 ? static_cast<size_t>(n_layers_ * kNumSiteKinds + static_cast<int>(site.kind))
                          : static_cast<size_t>(site.layer * kNumSiteKinds + static_cast<int>(site.kind));
  }

  int64_t n_layers_;
  std::vector<std::vector<Hook>> hooks_;  // indexed by Index(site)
  std::vector<std::optional<AttentionBias>> attention_bias_;  // per layer
  int n_hooks_ = 0;
  int n_biases_ = 0;
  std::function<bool()> interrupt_;
};

}  // namespace lesion::experiments

#endif  // LESION_EXPERIMENTS_RUN_PLAN_H_
