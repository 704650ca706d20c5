// Measurements that observe hook sites during forward passes and reduce on the device, reading
// back to the host once in Finish() (no syncs inside the layer loop):
//
//  * ActivationStatsCollector (DESIGN.md "Activation stats"): per site, each window's top-k |x|
//    over all its tokens and features with their (sequence, token, dim), its median |x| and mean
//    |x|; aggregated over windows as the users' notes do: the mean of the per-window top-k, the
//    overall largest k with coordinates, and the mean of per-window medians and means.
//  * AttentionSinkCollector (DESIGN.md "Attention sink score"): per layer and head, the mean over
//    query positions q >= 1 of the attention probability on key 0, averaged over windows.
//
// Usage: create, Attach to the RunPlan of every forward pass (a window batch each), then Finish.
// The collector must stay at one address while attached (it is neither copyable nor movable).
// Thread-compatible.
#ifndef LESION_EXPERIMENTS_MEASUREMENTS_H_
#define LESION_EXPERIMENTS_MEASUREMENTS_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "experiments/hook_sites.h"
#include "experiments/model_config.h"
#include "experiments/run_plan.h"

namespace lesion::experiments {

class ActivationStatsCollector {
 public:
  struct TopEntry {
    double value = 0;
    int64_t sequence = 0;  // window index, in the order windows were run
    int64_t token = 0;
    int64_t dim = 0;       // feature index (attn_z: head * head_dim + i)
  };
  struct SiteStats {
    SiteId site;
    std::vector<double> mean_top;   // [k]: mean over windows of the i-th largest |x|
    std::vector<TopEntry> max_top;  // [k]: the k largest |x| over all windows
    double median = 0;              // mean over windows of the median |x|
    double mean_abs = 0;            // mean over windows of the mean |x|
    int64_t n_windows = 0;
  };

  // InvalidArgument for top_k < 1, no sites, or attn_pattern (use AttentionSinkCollector).
  static absl::StatusOr<std::unique_ptr<ActivationStatsCollector>> Create(std::vector<SiteId> sites,
                                                                          int64_t top_k);
  ActivationStatsCollector(const ActivationStatsCollector&) = delete;
  ActivationStatsCollector& operator=(const ActivationStatsCollector&) = delete;

  void Attach(RunPlan& plan);
  // Reduces everything seen; FailedPrecondition if no window was observed.
  absl::StatusOr<std::vector<SiteStats>> Finish() const;

 private:
  struct PerSite {
    SiteId site;
    std::vector<at::Tensor> top_values;   // [b, k] per batch
    std::vector<at::Tensor> top_indices;  // [b, k] flat token * features + dim
    std::vector<at::Tensor> medians;      // [b]
    std::vector<at::Tensor> means;        // [b]
    std::vector<int64_t> features;        // per batch
    std::vector<int64_t> first_sequence;  // per batch
    int64_t n_sequences = 0;
  };
  ActivationStatsCollector(std::vector<SiteId> sites, int64_t top_k);
  void Observe(PerSite& s, const at::Tensor& x);

  int64_t top_k_;
  std::vector<PerSite> sites_;
};

class AttentionSinkCollector {
 public:
  // `layers` empty means every layer. InvalidArgument for a layer out of range.
  static absl::StatusOr<std::unique_ptr<AttentionSinkCollector>> Create(const ModelConfig& config,
                                                                        std::vector<int64_t> layers);
  AttentionSinkCollector(const AttentionSinkCollector&) = delete;
  AttentionSinkCollector& operator=(const AttentionSinkCollector&) = delete;

  // Reading the pattern switches those layers to the explicit attention path.
  void Attach(RunPlan& plan);
  // [layers.size(), n_heads] float64 on the CPU; FailedPrecondition if no window had q >= 1.
  absl::StatusOr<at::Tensor> Finish() const;
  const std::vector<int64_t>& layers() const { return layers_; }

 private:
  explicit AttentionSinkCollector(std::vector<int64_t> layers) : layers_(std::move(layers)) {}
  std::vector<int64_t> layers_;
  std::vector<at::Tensor> sums_;  // per layer: [heads] float64 on the device
  int64_t n_windows_ = 0;         // counted on layers_[0]
};

}  // namespace lesion::experiments

#endif  // LESION_EXPERIMENTS_MEASUREMENTS_H_
