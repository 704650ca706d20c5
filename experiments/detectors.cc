#include "experiments/detectors.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "experiments/weight_edits.h"
#include "model/torch_util.h"
#include "model/weight_addressing.h"

namespace lesion::experiments {
namespace {

absl::Status CheckNonNegative(absl::string_view what, double value) {
  if (!std::isfinite(value) || value < 0) {
    return absl::InvalidArgumentError(absl::StrCat(what, " must be a finite number >= 0, got ", value));
  }
  return absl::OkStatus();
}

absl::Status CheckLayers(const model::ModelConfig& c, absl::string_view what, std::vector<int64_t>& layers) {
  if (layers.empty()) {
    for (int64_t l = 0; l < c.n_layers; ++l) layers.push_back(l);
  }
  for (int64_t l : layers) {
    if (l < 0 || l >= c.n_layers) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": layer ", l, " out of range: model ", c.architecture, " has ", c.n_layers, " layers"));
    }
  }
  return absl::OkStatus();
}

// Per row of a [b, n] tensor: the median as torch has it (the lower of the two middle values for
// even n), like the activation stats. Not at::quantile: it refuses inputs over 2^24 elements, which
// one window of a 7B model's residual stream already exceeds.
at::Tensor RowMedian(const at::Tensor& a) { return std::get<0>(a.median(/*dim=*/1)); }

}  // namespace

// --- massive activations ---------------------------------------------------------------------

MassiveActivationDetector::MassiveActivationDetector(std::vector<model::SiteId> sites, double min_magnitude,
                                                     double min_ratio, int64_t max_reports)
    : min_magnitude_(min_magnitude), min_ratio_(min_ratio), max_reports_(max_reports) {
  for (const model::SiteId& s : sites) {
    PerSite p;
    p.site = s;
    sites_.push_back(std::move(p));
  }
}

absl::StatusOr<std::unique_ptr<MassiveActivationDetector>> MassiveActivationDetector::Create(
    std::vector<model::SiteId> sites, double min_magnitude, double min_ratio, int64_t max_reports) {
  if (sites.empty()) return absl::InvalidArgumentError("massive activations: no sites given");
  for (const model::SiteId& s : sites) {
    if (s.kind == model::SiteKind::kAttnPattern) {
      return absl::InvalidArgumentError(
          "massive activations: attn_pattern holds probabilities, not activations (use attention_outliers)");
    }
  }
  RETURN_IF_ERROR(CheckNonNegative("massive activations: min_magnitude", min_magnitude));
  RETURN_IF_ERROR(CheckNonNegative("massive activations: min_ratio", min_ratio));
  if (max_reports < 1) {
    return absl::InvalidArgumentError(absl::StrCat("massive activations: max_reports must be >= 1, got ", max_reports));
  }
  return std::unique_ptr<MassiveActivationDetector>(
      new MassiveActivationDetector(std::move(sites), min_magnitude, min_ratio, max_reports));
}

void MassiveActivationDetector::Attach(model::RunPlan& plan) {
  for (PerSite& s : sites_) {
    plan.AddHook(s.site, [this, &s](const model::SiteId&, at::Tensor& x) { Observe(s, x); });
  }
}

void MassiveActivationDetector::Observe(PerSite& s, const at::Tensor& x) {
  const int64_t b = x.size(0);
  at::Tensor flat = x.detach().reshape({b, -1}).to(at::kFloat);  // [b, s * features]
  at::Tensor a = flat.abs();
  at::Tensor median = RowMedian(a);                                                        // [b]
  at::Tensor threshold = at::clamp_min(median * min_ratio_, min_magnitude_).unsqueeze(1);  // [b, 1]
  at::Tensor passed = a >= threshold;                                                      // [b, N]
  at::Tensor n = passed.sum();
  s.count = s.count.defined() ? s.count + n : n;
  const int64_t r = std::min<int64_t>(max_reports_, a.size(1));
  auto [top, index] = at::where(passed, a, -1.0f).topk(r, /*dim=*/1);  // [b, r]
  at::Tensor values = at::where(top >= 0, flat.gather(1, index), std::numeric_limits<float>::quiet_NaN());
  s.values.push_back(values);
  s.indices.push_back(index);
  s.medians.push_back(median);
  s.features.push_back(x.numel() / (b * x.size(1)));
  s.first_sequence.push_back(s.n_sequences);
  s.n_sequences += b;
}

absl::StatusOr<std::vector<result::MassiveActivationReport>> MassiveActivationDetector::Finish() const {
  return model::TorchCall(
      "reducing massive activations", [&]() -> absl::StatusOr<std::vector<result::MassiveActivationReport>> {
        std::vector<result::MassiveActivationReport> out;
        for (const PerSite& s : sites_) {
          if (s.n_sequences == 0) {
            return absl::FailedPreconditionError(
                absl::StrCat("massive activations: site ", s.site.Name(), " saw no window"));
          }
          result::MassiveActivationReport report;
          report.site = s.site.Name();
          report.count = s.count.item<int64_t>();
          for (size_t batch = 0; batch < s.values.size(); ++batch) {
            at::Tensor values = s.values[batch].to(at::kCPU, at::kDouble);
            at::Tensor indices = s.indices[batch].to(at::kCPU);
            at::Tensor medians = s.medians[batch].to(at::kCPU, at::kDouble);
            auto v = values.accessor<double, 2>();
            auto ix = indices.accessor<int64_t, 2>();
            auto med = medians.accessor<double, 1>();
            for (int64_t i = 0; i < values.size(0); ++i) {
              for (int64_t j = 0; j < values.size(1); ++j) {
                if (std::isnan(v[i][j])) continue;
                const int64_t features = s.features[batch];
                report.top.push_back(
                    {s.first_sequence[batch] + i, ix[i][j] / features, ix[i][j] % features, v[i][j],
                     med[i] > 0 ? std::abs(v[i][j]) / med[i] : std::numeric_limits<double>::infinity()});
              }
            }
          }
          std::stable_sort(report.top.begin(), report.top.end(),
                           [](const result::MassiveActivation& a, const result::MassiveActivation& b) {
                             return std::abs(a.value) > std::abs(b.value);
                           });
          if (static_cast<int64_t>(report.top.size()) > max_reports_) report.top.resize(max_reports_);
          out.push_back(std::move(report));
        }
        return out;
      });
}

// --- super weights ---------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<SuperWeightDetector>> SuperWeightDetector::Create(const model::ModelConfig& config,
                                                                                 double min_ratio,
                                                                                 double min_magnitude) {
  RETURN_IF_ERROR(CheckNonNegative("super weights: min_ratio", min_ratio));
  RETURN_IF_ERROR(CheckNonNegative("super weights: min_magnitude", min_magnitude));
  return std::unique_ptr<SuperWeightDetector>(new SuperWeightDetector(config.n_layers, min_ratio, min_magnitude));
}

// Columns of PerLayer::spikes.
enum SpikeColumn { kOutValue, kToken, kRow, kOutMedian, kInValue, kCol, kInMedian, kNumSpikeColumns };

void SuperWeightDetector::Attach(model::RunPlan& plan) {
  for (size_t l = 0; l < layers_.size(); ++l) {
    PerLayer& layer = layers_[l];
    const int64_t li = static_cast<int64_t>(l);
    // mlp_act comes before mlp_out in every block: keep it until the output arrives.
    plan.AddHook({model::SiteKind::kMlpAct, li}, [&layer](const model::SiteId&, at::Tensor& act) {
      layer.act = act.detach().to(at::kFloat);  // [b, s, ffn]
    });
    plan.AddHook({model::SiteKind::kMlpOut, li}, [&layer](const model::SiteId&, at::Tensor& out_in) {
      at::Tensor out = out_in.detach().to(at::kFloat);  // [b, s, d]
      const int64_t b = out.size(0), d = out.size(2), ffn = layer.act.size(2);
      at::Tensor out_flat = out.reshape({b, -1});  // [b, s d]
      at::Tensor out_abs = out_flat.abs();
      at::Tensor out_index = std::get<1>(out_abs.max(1));  // [b]
      at::Tensor token = at::floor_divide(out_index, d);   // [b]
      at::Tensor row = at::remainder(out_index, d);        // [b]
      at::Tensor out_value = out_flat.gather(1, out_index.unsqueeze(1)).squeeze(1);
      at::Tensor act_at = layer.act.gather(1, token.view({b, 1, 1}).expand({b, 1, ffn})).squeeze(1);  // [b, ffn]
      at::Tensor col = std::get<1>(act_at.abs().max(1));                                              // [b]
      at::Tensor in_value = act_at.gather(1, col.unsqueeze(1)).squeeze(1);
      at::Tensor in_median = RowMedian(layer.act.reshape({b, -1}).abs());
      at::Tensor out_median = RowMedian(out_abs);
      layer.spikes.push_back(
          at::stack({out_value.to(at::kDouble), token.to(at::kDouble), row.to(at::kDouble), out_median.to(at::kDouble),
                     in_value.to(at::kDouble), col.to(at::kDouble), in_median.to(at::kDouble)},
                    1));  // [b, kNumSpikeColumns]
      layer.first_sequence.push_back(layer.n_sequences);
      layer.n_sequences += b;
      layer.act = at::Tensor();
    });
  }
}

absl::StatusOr<std::vector<result::SuperWeight>> SuperWeightDetector::Finish(const model::Transformer& model) const {
  return model::TorchCall("reducing super-weight spikes", [&]() -> absl::StatusOr<std::vector<result::SuperWeight>> {
    std::vector<result::SuperWeight> found;
    for (size_t l = 0; l < layers_.size(); ++l) {
      const PerLayer& layer = layers_[l];
      if (layer.n_sequences == 0) {
        return absl::FailedPreconditionError("super weights: no window was observed");
      }
      // The window with the largest output spike of the layer.
      double best = -1;
      int64_t best_sequence = 0;
      std::vector<double> spike(kNumSpikeColumns);
      for (size_t batch = 0; batch < layer.spikes.size(); ++batch) {
        at::Tensor s = layer.spikes[batch].to(at::kCPU);
        auto a = s.accessor<double, 2>();
        for (int64_t i = 0; i < s.size(0); ++i) {
          if (std::abs(a[i][kOutValue]) > best) {
            best = std::abs(a[i][kOutValue]);
            best_sequence = layer.first_sequence[batch] + i;
            for (int c = 0; c < kNumSpikeColumns; ++c) spike[c] = a[i][c];
          }
        }
      }
      const double out_ratio = spike[kOutMedian] > 0 ? std::abs(spike[kOutValue]) / spike[kOutMedian]
                                                     : std::numeric_limits<double>::infinity();
      const double in_ratio =
          spike[kInMedian] > 0 ? std::abs(spike[kInValue]) / spike[kInMedian] : std::numeric_limits<double>::infinity();
      if (out_ratio < min_ratio_ || in_ratio < min_ratio_ || std::abs(spike[kOutValue]) < min_magnitude_ ||
          std::abs(spike[kInValue]) < min_magnitude_) {
        continue;
      }
      result::SuperWeight w;
      w.layer = static_cast<int64_t>(l);
      w.row = static_cast<int64_t>(spike[kRow]);
      w.col = static_cast<int64_t>(spike[kCol]);
      ASSIGN_OR_RETURN(at::Tensor down,
                       model::ModuleWeight(model, w.layer, model::WeightModule::kMlpDown));  // [d, ffn]
      w.weight = down[w.row][w.col].item<double>();
      w.sequence = best_sequence;
      w.token = static_cast<int64_t>(spike[kToken]);
      w.input_spike = spike[kInValue];
      w.output_spike = spike[kOutValue];
      w.input_ratio = in_ratio;
      w.output_ratio = out_ratio;
      found.push_back(w);
    }
    return found;
  });
}

// --- attention outliers ----------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<AttentionOutlierDetector>> AttentionOutlierDetector::Create(
    const model::ModelConfig& config, std::vector<int64_t> layers, double min_mass, int64_t max_reports) {
  RETURN_IF_ERROR(CheckLayers(config, "attention outliers", layers));
  if (!(min_mass >= 0 && min_mass <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat("attention outliers: min_mass must be in [0, 1], got ", min_mass));
  }
  if (max_reports < 1) {
    return absl::InvalidArgumentError(absl::StrCat("attention outliers: max_reports must be >= 1, got ", max_reports));
  }
  auto detector =
      std::unique_ptr<AttentionOutlierDetector>(new AttentionOutlierDetector(std::move(layers), min_mass, max_reports));
  detector->mass_sums_.resize(detector->layers_.size());
  detector->counts_.resize(detector->layers_.size());
  return detector;
}

void AttentionOutlierDetector::Attach(model::RunPlan& plan) {
  for (size_t i = 0; i < layers_.size(); ++i) {
    plan.AddHook({model::SiteKind::kAttnPattern, layers_[i]}, [this, i](const model::SiteId&, at::Tensor& p_in) {
      // p: [b, heads, q, k (+ 1 attention-bias slot)]; only the sequence's own keys count.
      const int64_t b = p_in.size(0), s = p_in.size(2);
      if (s < 2) return;
      // Query 0 sees only key 0: leave it out, as the sink score does.
      at::Tensor p = p_in.narrow(2, 1, s - 1).narrow(3, 0, s).to(at::kDouble);  // [b, heads, s - 1, s]
      at::Tensor sum = (p.sum(2) / static_cast<double>(s - 1)).sum(0);          // [heads, s]
      if (!mass_sums_[i].defined()) {  // the first batch holds the longest windows
        mass_sums_[i] = at::zeros_like(sum);
        counts_[i] = at::zeros({s}, p.options());
      }
      const int64_t n = std::min<int64_t>(s, mass_sums_[i].size(1));
      mass_sums_[i].narrow(1, 0, n).add_(sum.narrow(1, 0, n));
      counts_[i].narrow(0, 0, n).add_(static_cast<double>(b));
    });
  }
}

absl::StatusOr<std::vector<result::AttentionOutlierKey>> AttentionOutlierDetector::Finish() const {
  return model::TorchCall(
      "reducing attention outliers", [&]() -> absl::StatusOr<std::vector<result::AttentionOutlierKey>> {
        std::vector<result::AttentionOutlierKey> found;
        for (size_t i = 0; i < layers_.size(); ++i) {
          if (!mass_sums_[i].defined()) {
            return absl::FailedPreconditionError("attention outliers: no window with at least two tokens was observed");
          }
          at::Tensor mean = (mass_sums_[i] / counts_[i].clamp_min(1)).to(at::kCPU);  // [heads, positions]
          auto m = mean.accessor<double, 2>();
          for (int64_t h = 0; h < mean.size(0); ++h) {
            for (int64_t k = 0; k < mean.size(1); ++k) {
              if (m[h][k] >= min_mass_) found.push_back({layers_[i], h, k, m[h][k]});
            }
          }
        }
        std::stable_sort(
            found.begin(), found.end(),
            [](const result::AttentionOutlierKey& a, const result::AttentionOutlierKey& b) { return a.mass > b.mass; });
        if (static_cast<int64_t>(found.size()) > max_reports_) found.resize(max_reports_);
        return found;
      });
}

// --- norm gamma outliers ---------------------------------------------------------------------

absl::StatusOr<std::vector<result::NormOutlier>> DetectNormOutliers(const model::Transformer& model, double min_z,
                                                                    int64_t max_reports) {
  RETURN_IF_ERROR(CheckNonNegative("norm outliers: min_z", min_z));
  if (max_reports < 1) {
    return absl::InvalidArgumentError(absl::StrCat("norm outliers: max_reports must be >= 1, got ", max_reports));
  }
  struct Norm {
    model::NormSite site;
    int64_t layer;
    const at::Tensor* gamma;
  };
  std::vector<Norm> norms;
  const model::TransformerWeights& w = model.weights();
  const std::vector<model::NormSite> sites = model::ModelNormSites(model);
  for (int64_t l = 0; l < model.config().n_layers; ++l) {
    for (model::NormSite site : sites) {
      if (site != model::NormSite::kFinal) norms.push_back({site, l, &model::FindNorm(w, l, site)->weight});
    }
  }
  norms.push_back({model::NormSite::kFinal, -1, &w.final_norm.weight});
  return model::TorchCall("scanning norm gammas", [&] {
    std::vector<result::NormOutlier> found;
    for (const Norm& n : norms) {
      at::Tensor g = n.gamma->detach().to(at::kCPU, at::kDouble);  // [d]
      const double median = g.median().item<double>();
      at::Tensor deviation = (g - median).abs();
      double scale = 1.4826 * deviation.median().item<double>();
      // Most gammas equal (e.g. all ones but a few): fall back to the mean absolute deviation,
      // scaled to the standard deviation of a normal distribution.
      if (scale == 0) scale = 1.2533 * deviation.mean().item<double>();
      if (scale == 0) continue;  // every channel equal: nothing stands out
      at::Tensor z = (g - median) / scale;
      auto za = z.accessor<double, 1>();
      auto ga = g.accessor<double, 1>();
      std::vector<result::NormOutlier> here;
      for (int64_t c = 0; c < g.size(0); ++c) {
        if (std::abs(za[c]) >= min_z)
          here.push_back({std::string(model::NormSiteName(n.site)), n.layer, c, ga[c], za[c], median});
      }
      std::stable_sort(here.begin(), here.end(), [](const result::NormOutlier& a, const result::NormOutlier& b) {
        return std::abs(a.z) > std::abs(b.z);
      });
      if (static_cast<int64_t>(here.size()) > max_reports) here.resize(max_reports);
      found.insert(found.end(), here.begin(), here.end());
    }
    return found;
  });
}

}  // namespace lesion::experiments
