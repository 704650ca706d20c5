#include "experiments/measurements.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "experiments/torch_util.h"

namespace lesion::experiments {

ActivationStatsCollector::ActivationStatsCollector(std::vector<SiteId> sites, int64_t top_k) : top_k_(top_k) {
  for (const SiteId& s : sites) sites_.push_back(PerSite{s});
}

absl::StatusOr<std::unique_ptr<ActivationStatsCollector>> ActivationStatsCollector::Create(
    std::vector<SiteId> sites, int64_t top_k) {
  if (top_k < 1) return absl::InvalidArgumentError(absl::StrCat("activation stats: top_k must be >= 1, got ", top_k));
  if (sites.empty()) return absl::InvalidArgumentError("activation stats: no sites given");
  for (const SiteId& s : sites) {
    if (s.kind == SiteKind::kAttnPattern) {
      return absl::InvalidArgumentError(
          "activation stats: attn_pattern is a probability, not an activation (use the attention sink score)");
    }
  }
  return std::unique_ptr<ActivationStatsCollector>(new ActivationStatsCollector(std::move(sites), top_k));
}

void ActivationStatsCollector::Attach(RunPlan& plan) {
  for (PerSite& s : sites_) {
    plan.AddHook(s.site, [this, &s](const SiteId&, at::Tensor& x) { Observe(s, x); });
  }
}

void ActivationStatsCollector::Observe(PerSite& s, const at::Tensor& x) {
  // x: [b, s, ...] -> |x| as [b, s * features] in float32
  const int64_t b = x.size(0);
  at::Tensor a = x.detach().abs().to(at::kFloat).reshape({b, -1});
  const int64_t k = std::min<int64_t>(top_k_, a.size(1));
  auto [values, indices] = a.topk(k, /*dim=*/1);
  s.top_values.push_back(values);
  s.top_indices.push_back(indices);
  s.medians.push_back(std::get<0>(a.median(/*dim=*/1)));
  s.means.push_back(a.mean(/*dim=*/1));
  s.features.push_back(x.numel() / (b * x.size(1)));
  s.first_sequence.push_back(s.n_sequences);
  s.n_sequences += b;
}

absl::StatusOr<std::vector<ActivationStatsCollector::SiteStats>> ActivationStatsCollector::Finish() const {
  return TorchCall("reducing activation stats", [&]() -> absl::StatusOr<std::vector<SiteStats>> {
    std::vector<SiteStats> out;
    for (const PerSite& s : sites_) {
      if (s.n_sequences == 0) {
        return absl::FailedPreconditionError(absl::StrCat("activation stats: site ", s.site.Name(), " saw no window"));
      }
      SiteStats stats;
      stats.site = s.site;
      stats.n_windows = s.n_sequences;
      std::vector<TopEntry> candidates;
      const int64_t k = s.top_values.front().size(1);
      std::vector<double> top_sums(k, 0.0);
      for (size_t batch = 0; batch < s.top_values.size(); ++batch) {
        at::Tensor values = s.top_values[batch].to(at::kCPU, at::kDouble);
        at::Tensor indices = s.top_indices[batch].to(at::kCPU);
        auto v = values.accessor<double, 2>();
        auto ix = indices.accessor<int64_t, 2>();
        for (int64_t i = 0; i < values.size(0); ++i) {
          for (int64_t j = 0; j < std::min<int64_t>(k, values.size(1)); ++j) {
            top_sums[j] += v[i][j];
            candidates.push_back({v[i][j], s.first_sequence[batch] + i, ix[i][j] / s.features[batch],
                                  ix[i][j] % s.features[batch]});
          }
        }
        stats.median += s.medians[batch].to(at::kCPU, at::kDouble).sum().item<double>();
        stats.mean_abs += s.means[batch].to(at::kCPU, at::kDouble).sum().item<double>();
      }
      for (double sum : top_sums) stats.mean_top.push_back(sum / s.n_sequences);
      std::partial_sort(candidates.begin(), candidates.begin() + std::min<size_t>(k, candidates.size()),
                        candidates.end(), [](const TopEntry& a, const TopEntry& b) { return a.value > b.value; });
      candidates.resize(std::min<size_t>(k, candidates.size()));
      stats.max_top = std::move(candidates);
      stats.median /= s.n_sequences;
      stats.mean_abs /= s.n_sequences;
      out.push_back(std::move(stats));
    }
    return out;
  });
}

absl::StatusOr<std::unique_ptr<AttentionSinkCollector>> AttentionSinkCollector::Create(const ModelConfig& config,
                                                                                      std::vector<int64_t> layers) {
  if (layers.empty()) {
    for (int64_t l = 0; l < config.n_layers; ++l) layers.push_back(l);
  }
  for (int64_t l : layers) {
    if (l < 0 || l >= config.n_layers) {
      return absl::InvalidArgumentError(absl::StrCat("attention sink: layer ", l, " out of range: model ",
                                                     config.architecture, " has ", config.n_layers, " layers"));
    }
  }
  auto collector = std::unique_ptr<AttentionSinkCollector>(new AttentionSinkCollector(std::move(layers)));
  collector->sums_.resize(collector->layers_.size());
  return collector;
}

void AttentionSinkCollector::Attach(RunPlan& plan) {
  for (size_t i = 0; i < layers_.size(); ++i) {
    plan.AddHook({SiteKind::kAttnPattern, layers_[i]}, [this, i](const SiteId&, at::Tensor& p) {
      // p: [b, heads, q, k]; queries 1.. and their probability on key 0
      if (p.size(2) < 2) return;
      at::Tensor on_first = p.narrow(2, 1, p.size(2) - 1).select(3, 0).to(at::kDouble);  // [b, heads, q-1]
      at::Tensor per_window = on_first.mean(2).sum(0);                                     // [heads]
      sums_[i] = sums_[i].defined() ? sums_[i] + per_window : per_window;
      if (i == 0) n_windows_ += p.size(0);
    });
  }
}

absl::StatusOr<at::Tensor> AttentionSinkCollector::Finish() const {
  if (n_windows_ == 0) {
    return absl::FailedPreconditionError("attention sink: no window with at least two tokens was observed");
  }
  return TorchCall("reducing attention sink scores", [&] {
    return at::stack(sums_).to(at::kCPU) / static_cast<double>(n_windows_);  // [layers, heads]
  });
}

}  // namespace lesion::experiments
