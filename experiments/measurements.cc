#include "experiments/measurements.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "model/torch_util.h"

namespace lesion::experiments {

ActivationStatsCollector::ActivationStatsCollector(std::vector<model::SiteId> sites, int64_t top_k) : top_k_(top_k) {
  for (const model::SiteId& s : sites) {
    PerSite p;
    p.site = s;
    sites_.push_back(std::move(p));
  }
}

absl::StatusOr<std::unique_ptr<ActivationStatsCollector>> ActivationStatsCollector::Create(
    std::vector<model::SiteId> sites, int64_t top_k) {
  if (top_k < 1) return absl::InvalidArgumentError(absl::StrCat("activation stats: top_k must be >= 1, got ", top_k));
  if (sites.empty()) return absl::InvalidArgumentError("activation stats: no sites given");
  for (const model::SiteId& s : sites) {
    if (s.kind == model::SiteKind::kAttnPattern) {
      return absl::InvalidArgumentError(
          "activation stats: attn_pattern is a probability, not an activation (use the attention sink score)");
    }
  }
  return std::unique_ptr<ActivationStatsCollector>(new ActivationStatsCollector(std::move(sites), top_k));
}

void ActivationStatsCollector::Attach(model::RunPlan& plan) {
  for (PerSite& s : sites_) {
    plan.AddHook(s.site, [this, &s](const model::SiteId&, at::Tensor& x) { Observe(s, x); });
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

absl::StatusOr<std::vector<result::SiteStats>> ActivationStatsCollector::Finish() const {
  return model::TorchCall("reducing activation stats", [&]() -> absl::StatusOr<std::vector<result::SiteStats>> {
    std::vector<result::SiteStats> out;
    for (const PerSite& s : sites_) {
      if (s.n_sequences == 0) {
        return absl::FailedPreconditionError(absl::StrCat("activation stats: site ", s.site.Name(), " saw no window"));
      }
      result::SiteStats stats;
      stats.site = s.site.Name();
      stats.n_windows = s.n_sequences;
      std::vector<result::TopActivation> candidates;
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
            candidates.push_back(
                {v[i][j], s.first_sequence[batch] + i, ix[i][j] / s.features[batch], ix[i][j] % s.features[batch]});
          }
        }
        stats.median += s.medians[batch].to(at::kCPU, at::kDouble).sum().item<double>();
        stats.mean_abs += s.means[batch].to(at::kCPU, at::kDouble).sum().item<double>();
      }
      for (double sum : top_sums) stats.mean_top.push_back(sum / s.n_sequences);
      std::partial_sort(
          candidates.begin(), candidates.begin() + std::min<size_t>(k, candidates.size()), candidates.end(),
          [](const result::TopActivation& a, const result::TopActivation& b) { return a.value > b.value; });
      candidates.resize(std::min<size_t>(k, candidates.size()));
      stats.max_top = std::move(candidates);
      stats.median /= s.n_sequences;
      stats.mean_abs /= s.n_sequences;
      out.push_back(std::move(stats));
    }
    return out;
  });
}

std::vector<ActivationStatsCollector::PerSequence> ActivationStatsCollector::PerSequenceStats() const {
  std::vector<PerSequence> out;
  for (const PerSite& s : sites_) {
    std::vector<at::Tensor> max_abs, mean_abs;
    for (size_t batch = 0; batch < s.top_values.size(); ++batch) {
      max_abs.push_back(s.top_values[batch].select(1, 0).to(at::kCPU, at::kDouble));
      mean_abs.push_back(s.means[batch].to(at::kCPU, at::kDouble));
    }
    if (max_abs.empty()) {
      out.push_back({at::empty({0}, at::kDouble), at::empty({0}, at::kDouble)});
    } else {
      out.push_back({at::cat(max_abs), at::cat(mean_abs)});
    }
  }
  return out;
}

absl::StatusOr<std::unique_ptr<AttentionSinkCollector>> AttentionSinkCollector::Create(const model::ModelConfig& config,
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

void AttentionSinkCollector::Attach(model::RunPlan& plan) {
  for (size_t i = 0; i < layers_.size(); ++i) {
    plan.AddHook({model::SiteKind::kAttnPattern, layers_[i]}, [this, i](const model::SiteId&, at::Tensor& p) {
      // p: [b, heads, q, k]; queries 1.. and their probability on key 0
      if (p.size(2) < 2) return;
      at::Tensor on_first = p.narrow(2, 1, p.size(2) - 1).select(3, 0).to(at::kDouble);  // [b, heads, q-1]
      at::Tensor per_window = on_first.mean(2).sum(0);                                   // [heads]
      sums_[i] = sums_[i].defined() ? sums_[i] + per_window : per_window;
      if (i == 0) n_windows_ += p.size(0);
    });
  }
}

absl::StatusOr<at::Tensor> AttentionSinkCollector::Finish() const {
  if (n_windows_ == 0) {
    return absl::FailedPreconditionError("attention sink: no window with at least two tokens was observed");
  }
  return model::TorchCall("reducing attention sink scores", [&] {
    return at::stack(sums_).to(at::kCPU) / static_cast<double>(n_windows_);  // [layers, heads]
  });
}

CaptureCollector::CaptureCollector(std::vector<model::SiteId> sites, std::vector<int64_t> positions,
                                   int64_t max_windows, std::vector<int64_t> sequence_windows, bool pad_shorter)
    : positions_(std::move(positions)),
      max_windows_(max_windows),
      sequence_windows_(std::move(sequence_windows)),
      pad_shorter_(pad_shorter) {
  for (const model::SiteId& s : sites) {
    PerSite p;
    p.site = s;
    sites_.push_back(std::move(p));
  }
}

absl::StatusOr<std::unique_ptr<CaptureCollector>> CaptureCollector::Create(std::vector<model::SiteId> sites,
                                                                           std::vector<int64_t> positions,
                                                                           int64_t max_windows,
                                                                           std::vector<int64_t> sequence_windows,
                                                                           bool pad_shorter) {
  if (sites.empty()) return absl::InvalidArgumentError("capture: no sites given");
  if (max_windows < 1) {
    return absl::InvalidArgumentError(absl::StrCat("capture: max_windows must be >= 1, got ", max_windows));
  }
  for (int64_t p : positions) {
    if (p < 0) return absl::InvalidArgumentError(absl::StrCat("capture: position ", p, " is negative"));
  }
  return std::unique_ptr<CaptureCollector>(new CaptureCollector(std::move(sites), std::move(positions), max_windows,
                                                                std::move(sequence_windows), pad_shorter));
}

int64_t CaptureCollector::ExpectedBytes(const model::ModelConfig& c, int64_t n_windows, int64_t seq) const {
  int64_t positions = 0;
  if (positions_.empty()) {
    positions = seq;
  } else {
    for (int64_t p : positions_) positions += p < seq ? 1 : 0;
  }
  const int64_t windows = std::min(n_windows, max_windows_);
  int64_t bytes = 0;
  for (const PerSite& s : sites_) {
    int64_t features;
    switch (s.site.kind) {
      case model::SiteKind::kAttnPattern:
        features = c.n_heads * (seq + 1);  // + an attention-bias slot
        break;
      case model::SiteKind::kAttnZ:
        features = c.n_heads * c.head_dim;
        break;
      case model::SiteKind::kMlpAct:
        features = c.d_ffn;
        break;
      case model::SiteKind::kLogits:
        features = c.vocab_size;
        break;
      default:
        features = c.d_model;
    }
    bytes += windows * positions * features * static_cast<int64_t>(sizeof(float));
  }
  return bytes;
}

void CaptureCollector::Attach(model::RunPlan& plan) {
  for (PerSite& s : sites_) {
    plan.AddHook(s.site, [this, &s](const model::SiteId&, at::Tensor& x) { Observe(s, x); });
  }
}

void CaptureCollector::Observe(PerSite& s, const at::Tensor& x) {
  // Positions run along dim 1, the queries of attn_pattern [b, heads, q, k] along dim 2.
  const bool pattern = s.site.kind == model::SiteKind::kAttnPattern;
  const int64_t position_dim = pattern ? 2 : 1;
  const int64_t seq = x.size(position_dim);
  if (s.length < 0) {  // the first batch holds the longest windows
    s.length = seq;
    if (positions_.empty()) {
      for (int64_t p = 0; p < seq; ++p) s.positions.push_back(p);
    } else {
      for (int64_t p : positions_) {
        if (p < seq) s.positions.push_back(p);
      }
    }
  }
  const int64_t first = s.n_seen;
  s.n_seen += x.size(0);
  if (seq != s.length && !pad_shorter_) return;
  std::vector<int64_t> rows, windows;
  for (int64_t i = 0; i < x.size(0); ++i) {
    const int64_t sequence = first + i;
    const int64_t window =
        sequence < static_cast<int64_t>(sequence_windows_.size()) ? sequence_windows_[sequence] : sequence;
    if (window < max_windows_) {
      rows.push_back(i);
      windows.push_back(window);
    }
  }
  if (rows.empty() || s.positions.empty()) return;
  // The taken positions that this window has; the others stay zero.
  std::vector<int64_t> present, slots;
  for (size_t j = 0; j < s.positions.size(); ++j) {
    if (s.positions[j] < seq) {
      present.push_back(s.positions[j]);
      slots.push_back(static_cast<int64_t>(j));
    }
  }
  at::Tensor taken = x.detach()
                         .index_select(0, at::tensor(rows, at::kLong).to(x.device()))
                         .index_select(position_dim, at::tensor(present, at::kLong).to(x.device()))
                         .to(at::kCPU, at::kFloat);
  if (seq != s.length) {
    std::vector<int64_t> shape = taken.sizes().vec();
    shape[position_dim] = static_cast<int64_t>(s.positions.size());
    at::Tensor keys = taken;
    if (pattern) {
      // Keys [0, seq) keep their place, an attention-bias slot (key seq) moves to the end.
      const int64_t extra = x.size(3) - seq;
      shape[3] = s.length + extra;
      keys = at::zeros({taken.size(0), taken.size(1), taken.size(2), shape[3]}, taken.options());
      keys.narrow(3, 0, seq).copy_(taken.narrow(3, 0, seq));
      if (extra > 0) keys.narrow(3, s.length, extra).copy_(taken.narrow(3, seq, extra));
    }
    taken = at::zeros(shape, taken.options()).index_copy_(position_dim, at::tensor(slots, at::kLong), keys);
  }
  taken = taken.contiguous();
  for (size_t i = 0; i < rows.size(); ++i) {
    s.windows[windows[i]] = taken.narrow(0, static_cast<int64_t>(i), 1);
    s.lengths[windows[i]] = seq;
  }
}

absl::StatusOr<std::vector<result::Tensor>> CaptureCollector::Finish() const {
  return model::TorchCall("assembling captures", [&] {
    std::vector<result::Tensor> out;
    for (const PerSite& s : sites_) {
      result::Tensor t;
      t.name = s.site.Name();
      t.dtype = "float32";
      t.positions = s.positions;
      if (s.windows.empty() || s.positions.empty()) {
        t.shape = {0};
        out.push_back(std::move(t));
        continue;
      }
      std::vector<at::Tensor> parts;
      bool ragged = false;
      for (const auto& [window, tensor] : s.windows) {
        parts.push_back(tensor);
        ragged |= s.lengths.at(window) != s.length;
      }
      if (ragged) {
        for (const auto& [window, length] : s.lengths) t.lengths.push_back(length);
      }
      at::Tensor all = at::cat(parts, 0).contiguous();  // [windows, ...] in window order
      t.shape = all.sizes().vec();
      // Little-endian float32 on every host lesion builds for.
      t.data.assign(static_cast<const char*>(all.data_ptr()), all.nbytes());
      out.push_back(std::move(t));
    }
    return out;
  });
}

}  // namespace lesion::experiments
