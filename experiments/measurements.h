// Measurements that observe hook sites during forward passes and reduce on the device, reading
// back to the host once in Finish() (no syncs inside the layer loop):
//
//  * ActivationStatsCollector (docs/design.md, "Measurements"): per site, each window's top-k |x|
//    over all its tokens and features with their (sequence, token, dim), its median |x| and mean
//    |x|; aggregated over windows as the users' notes do: the mean of the per-window top-k, the
//    overall largest k with coordinates, and the mean of per-window medians and means.
//  * AttentionSinkCollector (docs/design.md, "Measurements"): per layer and head, the mean over
//    query positions q >= 1 of the attention probability on key 0, averaged over windows.
//  * CaptureCollector: raw tensors at sites for the first windows (the spec's capture).
//
// Usage: create, Attach to the RunPlan of every forward pass (a window batch each), then Finish.
// The collector must stay at one address while attached (it is neither copyable nor movable).
// Thread-compatible.
#ifndef LESION_EXPERIMENTS_MEASUREMENTS_H_
#define LESION_EXPERIMENTS_MEASUREMENTS_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "model/hook_sites.h"
#include "model/model_config.h"
#include "model/run_plan.h"
#include "spec/result.h"

namespace lesion::experiments {

class ActivationStatsCollector {
 public:
  // InvalidArgument for top_k < 1, no sites, or attn_pattern (use AttentionSinkCollector).
  static absl::StatusOr<std::unique_ptr<ActivationStatsCollector>> Create(std::vector<model::SiteId> sites,
                                                                          int64_t top_k);
  ActivationStatsCollector(const ActivationStatsCollector&) = delete;
  ActivationStatsCollector& operator=(const ActivationStatsCollector&) = delete;

  void Attach(model::RunPlan& plan);
  // Reduces everything seen, one entry per site in the order given (result.h has the fields);
  // FailedPrecondition if no window was observed.
  absl::StatusOr<std::vector<result::SiteStats>> Finish() const;

  // Per site (in Finish's order), per sequence in the order the passes saw them: the largest |x|
  // and the mean |x|, each [n_sequences] float64 on the CPU. May throw (a torch call).
  struct PerSequence {
    at::Tensor max_abs, mean_abs;
  };
  std::vector<PerSequence> PerSequenceStats() const;
  size_t n_sites() const { return sites_.size(); }

 private:
  struct PerSite {
    model::SiteId site;
    std::vector<at::Tensor> top_values;   // [b, k] per batch
    std::vector<at::Tensor> top_indices;  // [b, k] flat token * features + dim
    std::vector<at::Tensor> medians;      // [b]
    std::vector<at::Tensor> means;        // [b]
    std::vector<int64_t> features;        // per batch
    std::vector<int64_t> first_sequence;  // per batch
    int64_t n_sequences = 0;
  };
  ActivationStatsCollector(std::vector<model::SiteId> sites, int64_t top_k);
  void Observe(PerSite& s, const at::Tensor& x);

  int64_t top_k_;
  std::vector<PerSite> sites_;
};

class AttentionSinkCollector {
 public:
  // `layers` empty means every layer. InvalidArgument for a layer out of range.
  static absl::StatusOr<std::unique_ptr<AttentionSinkCollector>> Create(const model::ModelConfig& config,
                                                                        std::vector<int64_t> layers);
  AttentionSinkCollector(const AttentionSinkCollector&) = delete;
  AttentionSinkCollector& operator=(const AttentionSinkCollector&) = delete;

  // Reading the pattern switches those layers to the explicit attention path.
  void Attach(model::RunPlan& plan);
  // [layers.size(), n_heads] float64 on the CPU; FailedPrecondition if no window had q >= 1.
  absl::StatusOr<at::Tensor> Finish() const;
  const std::vector<int64_t>& layers() const { return layers_; }

 private:
  explicit AttentionSinkCollector(std::vector<int64_t> layers) : layers_(std::move(layers)) {}
  std::vector<int64_t> layers_;
  std::vector<at::Tensor> sums_;  // per layer: [heads] float64 on the device
  int64_t n_windows_ = 0;         // counted on layers_[0]
};

// Raw tensors at sites: the first `max_windows` windows of the pass that have the first window's
// length (a shorter tail window is left out), at `positions` (all when empty; positions beyond
// the window are dropped), copied to the host as float32. Per site the result has shape
// [windows, positions, ...] (attn_pattern: [windows, heads, positions, keys]).
class CaptureCollector {
 public:
  // `sequence_windows`: the window of each sequence in the order the passes see them
  // (model::SequenceOrder); the windows captured are the first max_windows of the dataset, in
  // window order. With `pad_shorter` (a prompt set) a window shorter than the run's longest is
  // captured zero-padded to it; without, only windows of the longest length are captured (a text's
  // shorter last window is left out). InvalidArgument for no sites or max_windows < 1.
  static absl::StatusOr<std::unique_ptr<CaptureCollector>> Create(std::vector<model::SiteId> sites,
                                                                  std::vector<int64_t> positions, int64_t max_windows,
                                                                  std::vector<int64_t> sequence_windows = {},
                                                                  bool pad_shorter = false);
  CaptureCollector(const CaptureCollector&) = delete;
  CaptureCollector& operator=(const CaptureCollector&) = delete;

  // Bytes the capture holds for `n_windows` windows of at most `seq` tokens of a model `config`.
  int64_t ExpectedBytes(const model::ModelConfig& config, int64_t n_windows, int64_t seq) const;

  void Attach(model::RunPlan& plan);
  // Shorter windows zero-padded to the run's longest (result.proto, Tensor.lengths).
  absl::StatusOr<std::vector<result::Tensor>> Finish() const;

 private:
  struct PerSite {
    model::SiteId site;
    std::map<int64_t, at::Tensor> windows;  // window -> [1, ...] float32 on the host, padded
    std::map<int64_t, int64_t> lengths;     // window -> its length
    std::vector<int64_t> positions;         // the positions taken
    int64_t length = -1;                    // of the longest window (the first seen)
    int64_t n_seen = 0;                     // sequences observed
  };
  CaptureCollector(std::vector<model::SiteId> sites, std::vector<int64_t> positions, int64_t max_windows,
                   std::vector<int64_t> sequence_windows, bool pad_shorter);
  void Observe(PerSite& s, const at::Tensor& x);

  std::vector<int64_t> positions_;
  int64_t max_windows_;
  std::vector<int64_t> sequence_windows_;  // empty: sequence i is window i
  bool pad_shorter_;
  std::vector<PerSite> sites_;
};

}  // namespace lesion::experiments

#endif  // LESION_EXPERIMENTS_MEASUREMENTS_H_
