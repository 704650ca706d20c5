// Detectors of the outlier literature, as observers of forward passes (like measurements.h: they
// reduce on the device and read back once in Finish) or, for norm gammas, as a scan of the weights:
//
//  * MassiveActivationDetector (Sun et al. 2024): entries of a site with |x| >= min_magnitude and
//    >= min_ratio x the median |x| of their window at that site.
//  * SuperWeightDetector (Yu et al. 2024): per layer, the largest |mlp_out| over all windows at
//    (window, token t, channel row), and the largest |mlp_act| at the same token (channel col);
//    mlp.down[row, col] is reported when both exceed min_ratio x the median |x| of their site in
//    that window and min_magnitude.
//  * AttentionOutlierDetector (An et al. 2025): per layer, head and key position k, the share of
//    the attention mass of the queries q >= 1 that lands on k, sum_q p[q, k] / (s - 1), averaged
//    over the windows that reach k (for k = 0 this is the attention sink score); keys at or above
//    min_mass are reported.
//  * DetectNormOutliers (arXiv 2505.21670): norm gamma channels whose robust z-score
//    (gamma - median) / (1.4826 MAD) has |z| >= min_z.
//
// Medians are torch's (the lower of the two middle values for an even count), as in
// measurements.h.
//
// Collectors stay at one address while attached (neither copyable nor movable). Thread-compatible.
#ifndef LESION_EXPERIMENTS_DETECTORS_H_
#define LESION_EXPERIMENTS_DETECTORS_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "model/hook_sites.h"
#include "model/model_config.h"
#include "model/run_plan.h"
#include "model/transformer.h"
#include "spec/result.h"

namespace lesion::experiments {

class MassiveActivationDetector {
 public:
  // InvalidArgument for no sites, attn_pattern, negative thresholds or max_reports < 1.
  static absl::StatusOr<std::unique_ptr<MassiveActivationDetector>> Create(std::vector<model::SiteId> sites,
                                                                           double min_magnitude, double min_ratio,
                                                                           int64_t max_reports);
  MassiveActivationDetector(const MassiveActivationDetector&) = delete;
  MassiveActivationDetector& operator=(const MassiveActivationDetector&) = delete;

  void Attach(model::RunPlan& plan);
  // One report per site, in the order given, the largest |x| first.
  absl::StatusOr<std::vector<result::MassiveActivationReport>> Finish() const;

 private:
  struct PerSite {
    model::SiteId site;
    std::vector<at::Tensor> values;   // per batch [b, r] signed, NaN where nothing passed
    std::vector<at::Tensor> indices;  // per batch [b, r] flat token * features + dim
    std::vector<at::Tensor> medians;  // per batch [b]
    std::vector<int64_t> features;    // per batch
    std::vector<int64_t> first_sequence;
    at::Tensor count;  // [] int64 on the device
    int64_t n_sequences = 0;
  };
  MassiveActivationDetector(std::vector<model::SiteId> sites, double min_magnitude, double min_ratio,
                            int64_t max_reports);
  void Observe(PerSite& s, const at::Tensor& x);

  double min_magnitude_, min_ratio_;
  int64_t max_reports_;
  std::vector<PerSite> sites_;
};

class SuperWeightDetector {
 public:
  // Every layer of the model. InvalidArgument for negative thresholds.
  static absl::StatusOr<std::unique_ptr<SuperWeightDetector>> Create(const model::ModelConfig& config, double min_ratio,
                                                                     double min_magnitude);
  SuperWeightDetector(const SuperWeightDetector&) = delete;
  SuperWeightDetector& operator=(const SuperWeightDetector&) = delete;

  void Attach(model::RunPlan& plan);
  // The super weights found, by layer; `weight` is read from `model` as it is when Finish runs
  // (call it with the pass's edits in place).
  absl::StatusOr<std::vector<result::SuperWeight>> Finish(const model::Transformer& model) const;

 private:
  struct PerLayer {
    at::Tensor act;                  // |mlp_act| of the batch in flight [b, s, ffn] float32
    std::vector<at::Tensor> spikes;  // per batch [b, 6] float64: out value, token, row,
                                     // out median, in value, col, in median (see .cc)
    std::vector<int64_t> first_sequence;
    int64_t n_sequences = 0;
  };
  SuperWeightDetector(int64_t n_layers, double min_ratio, double min_magnitude)
      : min_ratio_(min_ratio), min_magnitude_(min_magnitude), layers_(n_layers) {}

  double min_ratio_, min_magnitude_;
  std::vector<PerLayer> layers_;
};

class AttentionOutlierDetector {
 public:
  // `layers` empty: every layer. InvalidArgument for layers out of range, min_mass outside [0, 1]
  // or max_reports < 1.
  static absl::StatusOr<std::unique_ptr<AttentionOutlierDetector>> Create(const model::ModelConfig& config,
                                                                          std::vector<int64_t> layers, double min_mass,
                                                                          int64_t max_reports);
  AttentionOutlierDetector(const AttentionOutlierDetector&) = delete;
  AttentionOutlierDetector& operator=(const AttentionOutlierDetector&) = delete;

  // Reading the pattern switches those layers to the explicit attention path.
  void Attach(model::RunPlan& plan);
  // The keys at or above min_mass, largest mass first, at most max_reports.
  absl::StatusOr<std::vector<result::AttentionOutlierKey>> Finish() const;

 private:
  AttentionOutlierDetector(std::vector<int64_t> layers, double min_mass, int64_t max_reports)
      : layers_(std::move(layers)), min_mass_(min_mass), max_reports_(max_reports) {}
  std::vector<int64_t> layers_;
  double min_mass_;
  int64_t max_reports_;
  std::vector<at::Tensor> mass_sums_;  // per layer [heads, positions] float64 on the device
  std::vector<at::Tensor> counts_;     // per layer [positions] float64: windows that reach the position
};

// Scans the gammas of every norm of `model` (attn and mlp of each layer, then final) as they are
// now. At most `max_reports` per norm, largest |z| first. InvalidArgument for a negative min_z.
absl::StatusOr<std::vector<result::NormOutlier>> DetectNormOutliers(const model::Transformer& model, double min_z,
                                                                    int64_t max_reports);

}  // namespace lesion::experiments

#endif  // LESION_EXPERIMENTS_DETECTORS_H_
