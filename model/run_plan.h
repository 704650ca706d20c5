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
#ifndef LESION_MODEL_RUN_PLAN_H_
#define LESION_MODEL_RUN_PLAN_H_

#include <ATen/ATen.h>

#include <functional>
#include <optional>
#include <vector>

#include "model/hook_sites.h"

namespace lesion::model {

// One extra key/value slot per KV head, post-rotary, visible to every query of a layer:
// softmax(Q [K; k'] / sqrt(d)) [V; v'] (Sun et al. 2024's explicit attention bias).
// Batched form (a sweep running several variants in one forward pass): key and value carry a
// leading batch dimension and `rows` says which batch rows have the slot at all; the slot of the
// other rows gets probability exactly 0, so they compute what they would without it.
struct AttentionBias {
  at::Tensor key;    // [n_kv_heads, head_dim], or [batch, n_kv_heads, head_dim]
  at::Tensor value;  // like key
  at::Tensor rows;   // [batch] bool for the batched form, else undefined
};

// The matrices of a block as they are multiplied: q/k/v and gate/up are fused (transformer.h).
enum class LinearSite { kQkv, kO, kGateUp, kDown };
inline constexpr int kNumLinearSites = 4;
// The norms of a block, and the final norm (whose layer is ignored). Which of them a model has
// depends on its family (docs/architectures.md): kAttn and kMlp before each branch, kAttnPost and
// kMlpPost on each branch's output, kQ and kK on queries and keys. Named in common/model_names.def,
// in its order (kFinal last).
enum class NormSite {
#define LESION_NORM(enumerator, name) enumerator,
#include "common/model_names.def"
};
inline constexpr int kNumBlockNormSites = static_cast<int>(NormSite::kFinal);  // every NormSite but kFinal

// A weight element edit expressed on the activations instead of the weight, per batch row:
// out[b, :, row] += delta[b] * in[b, :, col], which is exactly what the matrix product computes
// when w[row, col] is w + delta[b] (up to rounding). Lets variants with different weight edits
// share one forward pass and leaves the weights untouched.
struct LinearCorrection {
  int64_t row = 0;   // output feature of the fused matrix
  int64_t col = 0;   // input feature
  at::Tensor delta;  // [batch] float32 on the device
};

class RunPlan {
 public:
  using Hook = std::function<void(const SiteId& site, at::Tensor& value)>;

  explicit RunPlan(int64_t n_layers);

  // Attaches `hook` at `site`. The site must be valid for the model (see ParseSitePattern).
  void AddHook(const SiteId& site, Hook hook);
  // Adds an attention-bias slot to `layer`, replacing any earlier one.
  void SetAttentionBias(int64_t layer, AttentionBias bias);
  // Per-row weight element edits (see LinearCorrection), applied right after the matrix product
  // of `site` in `layer`, before any hook sees its output.
  void AddLinearCorrection(int64_t layer, LinearSite site, LinearCorrection correction);
  // Per-row norm gammas: `gamma` [batch, 1, width] replaces the norm's weight (its bias stays).
  // `layer` is ignored for NormSite::kFinal.
  void SetNormGamma(int64_t layer, NormSite norm, at::Tensor gamma);
  // Polled before every layer: when it returns true the forward pass stops and Forward returns
  // Cancelled, so a cancelled experiment leaves the device within a layer, not a whole pass.
  void SetInterrupt(std::function<bool()> interrupt) { interrupt_ = std::move(interrupt); }
  bool Interrupted() const { return interrupt_ && interrupt_(); }
  // Where the tokens of the next forward pass start in their sequence: 0 for a whole sequence,
  // the cached length when decoding step by step (Transformer::ForwardCached). Hooks that address
  // positions (activation edits) read it, so that a position means the same in every step.
  void SetPositionOffset(int64_t offset) { position_offset_ = offset; }
  int64_t position_offset() const { return position_offset_; }

  bool empty() const { return n_hooks_ == 0 && n_biases_ == 0 && n_corrections_ == 0 && n_gammas_ == 0; }
  bool HasHooks(const SiteId& site) const { return !hooks_[Index(site)].empty(); }
  // Runs the hooks of `site` on `value` (no-op without hooks).
  void Apply(const SiteId& site, at::Tensor& value) const {
    const auto& hooks = hooks_[Index(site)];
    for (const Hook& hook : hooks) hook(site, value);
  }
  const std::optional<AttentionBias>& attention_bias(int64_t layer) const { return attention_bias_[layer]; }
  // Computes the pattern of `layer` explicitly even without hooks there, so that a pass gives the
  // same numbers as another pass that observes it (a sweep's baseline passes).
  void RequireExplicitAttention(int64_t layer) { explicit_attention_[layer] = true; }
  // The pattern is read or edited, or a bias slot is added: the explicit attention path is needed.
  bool NeedsExplicitAttention(int64_t layer) const {
    return explicit_attention_[layer] || HasHooks({SiteKind::kAttnPattern, layer}) ||
           attention_bias_[layer].has_value();
  }
  int64_t n_layers() const { return n_layers_; }

  const std::vector<LinearCorrection>& linear_corrections(int64_t layer, LinearSite site) const {
    return corrections_[layer * kNumLinearSites + static_cast<int>(site)];
  }
  // Undefined when the norm keeps its own gamma.
  const at::Tensor& norm_gamma(int64_t layer, NormSite norm) const {
    return norm == NormSite::kFinal ? final_gamma_ : gammas_[layer * kNumBlockNormSites + static_cast<int>(norm)];
  }

 private:
  size_t Index(const SiteId& site) const {
    // Model-level sites are stored after the per-layer ones.
    return site.layer < 0 ? static_cast<size_t>(n_layers_ * kNumSiteKinds + static_cast<int>(site.kind))
                          : static_cast<size_t>(site.layer * kNumSiteKinds + static_cast<int>(site.kind));
  }

  int64_t n_layers_;
  std::vector<std::vector<Hook>> hooks_;                      // indexed by Index(site)
  std::vector<std::optional<AttentionBias>> attention_bias_;  // per layer
  std::vector<bool> explicit_attention_;                      // per layer
  std::vector<std::vector<LinearCorrection>> corrections_;    // [layer * kNumLinearSites + site]
  std::vector<at::Tensor> gammas_;                            // [layer * kNumBlockNormSites + norm]
  at::Tensor final_gamma_;
  int n_hooks_ = 0;
  int n_biases_ = 0;
  int n_corrections_ = 0;
  int n_gammas_ = 0;
  std::function<bool()> interrupt_;
  int64_t position_offset_ = 0;
};

}  // namespace lesion::model

#endif  // LESION_MODEL_RUN_PLAN_H_
