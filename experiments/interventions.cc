#include "experiments/interventions.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace lesion::experiments {
namespace {

absl::Status CheckIndices(const std::vector<int64_t>& indices, int64_t limit, absl::string_view what) {
  for (int64_t i : indices) {
    if (i < 0 || i >= limit) {
      return absl::InvalidArgumentError(absl::StrCat(what, " ", i, " out of range (0..", limit - 1, ")"));
    }
  }
  return absl::OkStatus();
}

at::Tensor IndexTensor(const std::vector<int64_t>& v, at::Device device) { return at::tensor(v, at::kLong).to(device); }

}  // namespace

int64_t SiteFeatures(const model::ModelConfig& c, model::SiteKind kind) {
  switch (kind) {
    case model::SiteKind::kAttnZ:
      return c.n_heads * c.head_dim;
    case model::SiteKind::kMlpAct:
      return c.d_ffn;
    case model::SiteKind::kLogits:
      return c.vocab_size;
    case model::SiteKind::kAttnPattern:
      return -1;
    default:
      return c.d_model;
  }
}

absl::Status AddHeadAblation(const model::ModelConfig& c, int64_t layer, const std::vector<int64_t>& heads,
                             HeadAblationMode mode, double factor, const at::Tensor& head_means, model::RunPlan& plan) {
  if (layer < 0 || layer >= c.n_layers) {
    return absl::InvalidArgumentError(absl::StrCat("head ablation: layer ", layer, " out of range: model ",
                                                   c.architecture, " has ", c.n_layers, " layers"));
  }
  if (heads.empty()) return absl::InvalidArgumentError("head ablation: no heads given");
  if (auto s = CheckIndices(heads, c.n_heads, "head ablation: head"); !s.ok()) return s;
  if (mode == HeadAblationMode::kScale && !std::isfinite(factor)) {
    return absl::InvalidArgumentError(absl::StrCat("head ablation: factor ", factor, " is not finite"));
  }
  if (mode == HeadAblationMode::kMean && (!head_means.defined() || head_means.dim() != 2 ||
                                          head_means.size(0) != c.n_heads || head_means.size(1) != c.head_dim)) {
    return absl::InvalidArgumentError("head ablation: mean mode needs head means of shape [n_heads, head_dim]");
  }
  plan.AddHook({model::SiteKind::kAttnZ, layer},
               [heads, mode, factor, head_means](const model::SiteId&, at::Tensor& z) {
                 // z: [b, s, heads, hd]
                 z = z.clone();
                 at::Tensor index = IndexTensor(heads, z.device());
                 at::Tensor selected = z.index_select(2, index);  // [b, s, n, hd]
                 switch (mode) {
                   case HeadAblationMode::kZero:
                     selected.zero_();
                     break;
                   case HeadAblationMode::kScale:
                     selected.mul_(factor);
                     break;
                   case HeadAblationMode::kMean:
                     selected.copy_(head_means.to(z.options()).index_select(0, index).expand_as(selected));
                     break;
                 }
                 z.index_copy_(2, index, selected);
               });
  return absl::OkStatus();
}

bool TakesVector(ActivationOp op) {
  return op == ActivationOp::kAdd || op == ActivationOp::kProjectOut || op == ActivationOp::kSetVectors;
}

absl::Status AddActivationEdit(const model::ModelConfig& c, const model::SiteId& site,
                               const std::vector<int64_t>& positions, const std::vector<int64_t>& dims, ActivationOp op,
                               double value, const at::Tensor& mean, model::RunPlan& plan,
                               const std::vector<float>& vector) {
  const int64_t features = SiteFeatures(c, site.kind);
  if (features < 0) {
    return absl::InvalidArgumentError(
        "activation edit: attn_pattern cannot be edited here (use a head ablation or an attention bias)");
  }
  if (model::IsPerLayer(site.kind) && (site.layer < 0 || site.layer >= c.n_layers)) {
    return absl::InvalidArgumentError(absl::StrCat("activation edit: layer ", site.layer, " out of range"));
  }
  if (auto s = CheckIndices(dims, features, absl::StrCat("activation edit at ", site.Name(), ": dim")); !s.ok()) {
    return s;
  }
  for (int64_t p : positions) {
    if (p < 0) return absl::InvalidArgumentError(absl::StrCat("activation edit: position ", p, " is negative"));
  }
  if (!std::isfinite(value)) {
    return absl::InvalidArgumentError(absl::StrCat("activation edit: value ", value, " is not finite"));
  }
  if (op == ActivationOp::kMean && (!mean.defined() || mean.dim() != 2 || mean.size(1) != features)) {
    return absl::InvalidArgumentError(
        absl::StrCat("activation edit: mean mode needs a mean of shape [seq, ", features, "]"));
  }
  // The width of a selected row: the vector ops take D values per row.
  const int64_t width = dims.empty() ? features : static_cast<int64_t>(dims.size());
  const int64_t n_vector = static_cast<int64_t>(vector.size());
  const std::string vector_help =
      absl::StrCat(" (site ", site.Name(), " has ", features, " features",
                   dims.empty() ? "" : absl::StrCat(", of which dims selects ", width), ")");
  if (!TakesVector(op) && n_vector != 0) {
    return absl::InvalidArgumentError(
        "activation edit: vector is only for the ADD, PROJECT_OUT and SET_VECTORS ops; leave it empty");
  }
  for (float v : vector) {
    if (!std::isfinite(v)) return absl::InvalidArgumentError("activation edit: vector has a value that is not finite");
  }
  at::Tensor direction;  // [D] float64 on the CPU, or [rows, D] for kSetVectors
  if (op == ActivationOp::kAdd || op == ActivationOp::kProjectOut) {
    if (n_vector != width) {
      return absl::InvalidArgumentError(
          absl::StrCat("activation edit: vector has ", n_vector, " values, needs ", width, vector_help));
    }
    direction = at::tensor(std::vector<double>(vector.begin(), vector.end()), at::kDouble);
    if (op == ActivationOp::kProjectOut) {
      const double norm = direction.norm().item<double>();
      if (!(norm > 0) || !std::isfinite(norm)) {
        return absl::InvalidArgumentError("activation edit: PROJECT_OUT needs a nonzero vector (the direction)");
      }
      direction = direction / norm;
    }
  } else if (op == ActivationOp::kSetVectors) {
    const int64_t n_positions = static_cast<int64_t>(positions.size());
    if (n_vector != width && (positions.empty() || n_vector != width * n_positions)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "activation edit: SET_VECTORS needs ", width, " values (one row for every position)",
          positions.empty() ? ""
                            : absl::StrCat(" or ", width * n_positions, " (", n_positions, " positions x ", width, ")"),
          ", got ", n_vector, vector_help));
    }
    direction = at::tensor(std::vector<double>(vector.begin(), vector.end()), at::kDouble).reshape({-1, width});
  }
  // Positions are of the whole sequence: a step of cached decoding starts at the plan's offset.
  const model::RunPlan* owner = &plan;
  plan.AddHook(site, [positions, dims, op, value, mean, direction, owner](const model::SiteId&, at::Tensor& x_in) {
    const auto shape = x_in.sizes().vec();
    at::Tensor x = x_in.reshape({shape[0], shape[1], -1}).clone();  // [b, s, features]
    const int64_t seq = x.size(1), offset = owner->position_offset();
    std::vector<int64_t> pos;    // selected positions in this pass, relative to its first
    std::vector<int64_t> taken;  // indices into `positions` of those
    for (size_t k = 0; k < positions.size(); ++k) {
      if (positions[k] >= offset && positions[k] < offset + seq) {
        pos.push_back(positions[k] - offset);
        taken.push_back(static_cast<int64_t>(k));
      }
    }
    if (!positions.empty() && pos.empty()) return;  // no selected position in this window
    at::Tensor p_index =
        positions.empty() ? at::arange(seq, x.options().dtype(at::kLong)) : IndexTensor(pos, x.device());
    at::Tensor d_index =
        dims.empty() ? at::arange(x.size(2), x.options().dtype(at::kLong)) : IndexTensor(dims, x.device());
    at::Tensor rows = x.index_select(1, p_index);      // [b, P, features]
    at::Tensor cells = rows.index_select(2, d_index);  // [b, P, D]
    switch (op) {
      case ActivationOp::kZero:
        cells.zero_();
        break;
      case ActivationOp::kSet:
        cells.fill_(value);
        break;
      case ActivationOp::kScale:
        cells.mul_(value);
        break;
      case ActivationOp::kMean:
        cells.copy_(mean.to(x.options()).index_select(0, p_index + offset).index_select(1, d_index).expand_as(cells));
        break;
      case ActivationOp::kAdd:
        cells.add_(direction.to(x.options()), value);
        break;
      case ActivationOp::kProjectOut: {
        const at::Tensor u = direction.to(x.options());
        cells.sub_(cells.matmul(u).unsqueeze(-1) * u);
        break;
      }
      case ActivationOp::kSetVectors: {
        at::Tensor source = direction.to(x.options());  // [1 or |positions|, D]
        if (source.size(0) > 1) source = source.index_select(0, IndexTensor(taken, x.device()));
        cells.copy_(source.expand_as(cells));
        break;
      }
    }
    rows.index_copy_(2, d_index, cells);
    x.index_copy_(1, p_index, rows);
    x_in = x.view(shape);
  });
  return absl::OkStatus();
}

}  // namespace lesion::experiments
