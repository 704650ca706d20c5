#include "experiments/weight_edits.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/error_text.h"
#include "common/status_macros.h"
#include "model/torch_util.h"

namespace lesion::experiments {
namespace {

std::string Shape(const at::Tensor& t) { return absl::StrCat("[", absl::StrJoin(t.sizes(), ", "), "]"); }

// The one definition of an element edit's arithmetic, in the weight's dtype.
void ApplyElementOp(at::Tensor& element, ElementOp op, double value) {
  switch (op) {
    case ElementOp::kZero:
      element.zero_();
      break;
    case ElementOp::kScale:
      element.mul_(value);
      break;
    case ElementOp::kSet:
      element.fill_(value);
      break;
  }
}

// The value a norm-channel reset writes; `pristine` is the checkpoint's gamma.
absl::StatusOr<double> ResetValue(const at::Tensor& pristine, NormResetMode mode, double value) {
  switch (mode) {
    case NormResetMode::kOne:
      return 1.0;
    case NormResetMode::kValue:
      return value;
    case NormResetMode::kGammaMean:
      return model::TorchCall("gamma mean", [&] { return pristine.to(at::kDouble).mean().item<double>(); });
  }
  return 1.0;
}

}  // namespace

absl::Status WeightEditPreview::EditElement(int64_t layer, model::WeightModule module, int64_t row, int64_t col,
                                            ElementOp op, double value) {
  RETURN_IF_ERROR(CheckElementEdit(*model_, layer, module, row, col, value));
  ASSIGN_OR_RETURN(at::Tensor w, model::ModuleWeight(*model_, layer, module));  // [out, in]
  return model::TorchCall("previewing a weight edit", [&] {
    size_t i = 0;
    while (i < elements_.size() && !(elements_[i].layer == layer && elements_[i].module == module &&
                                     elements_[i].row == row && elements_[i].col == col)) {
      ++i;
    }
    if (i == elements_.size()) {
      at::Tensor original = w.select(0, row).select(0, col).clone();  // 0-d
      elements_.push_back({layer, module, row, col, original.item<double>(), 0});
      element_values_.push_back(original);
    }
    ApplyElementOp(element_values_[i], op, value);
    elements_[i].edited = element_values_[i].item<double>();
  });
}

absl::Status WeightEditPreview::ResetNormChannels(int64_t layer, model::NormSite norm,
                                                  const std::vector<int64_t>& channels, NormResetMode mode,
                                                  double value) {
  RETURN_IF_ERROR(CheckNormReset(*model_, layer, norm, channels, value));
  ASSIGN_OR_RETURN(at::Tensor pristine, model::NormGamma(*model_, layer, norm));  // [d]
  ASSIGN_OR_RETURN(const double fill, ResetValue(pristine, mode, value));
  const int64_t key_layer = norm == model::NormSite::kFinal ? -1 : layer;
  return model::TorchCall("previewing a norm-channel reset", [&] {
    size_t i = 0;
    while (i < gammas_.size() && !(gammas_[i].layer == key_layer && gammas_[i].norm == norm)) ++i;
    if (i == gammas_.size()) gammas_.push_back({key_layer, norm, pristine.clone()});
    for (int64_t c : channels) gammas_[i].gamma.select(0, c).fill_(fill);
  });
}

WeightEditSession::WeightEditSession(const model::Transformer* model) : model_(model) {}

WeightEditSession::~WeightEditSession() { (void)Restore(); }

const WeightEditSession::Touched& WeightEditSession::FindTouched(const at::Tensor& whole) const {
  for (const Touched& t : touched_) {
    if (t.tensor.is_same(whole)) return t;
  }
  return touched_.back();  // unreachable: callers Touch first
}

absl::Status WeightEditSession::Touch(const at::Tensor& whole, const at::Tensor& target) {
  if (suspended_) return absl::FailedPreconditionError("weight edits cannot be added while suspended");
  return model::TorchCall("saving weights before an edit", [&] {
    bool seen = false;
    for (const Touched& t : touched_) seen = seen || t.tensor.is_same(whole);
    // Norm gammas are small: keep a pristine copy for the gamma-mean reset.
    if (!seen) touched_.push_back({whole, model::BitChecksum(whole), whole.dim() == 1 ? whole.clone() : at::Tensor()});
    if (target.defined()) saved_.push_back({target, target.clone(), at::Tensor()});
  });
}

absl::Status CheckElementEdit(const model::Transformer& model, int64_t layer, model::WeightModule module, int64_t row,
                              int64_t col, double value) {
  ASSIGN_OR_RETURN(at::Tensor w, model::ModuleWeight(model, layer, module));  // [out, in]
  if (row < 0 || row >= w.size(0) || col < 0 || col >= w.size(1)) {
    return absl::InvalidArgumentError(absl::StrCat("index [", row, ", ", col, "] out of range for layer ", layer, " ",
                                                   model::WeightModuleName(module), " of shape ", Shape(w),
                                                   " ([out_features, in_features])"));
  }
  if (!std::isfinite(value)) {
    return absl::InvalidArgumentError(absl::StrCat("edit value ", value, " is not finite"));
  }
  return absl::OkStatus();
}

absl::Status CheckNormReset(const model::Transformer& model, int64_t layer, model::NormSite norm,
                            const std::vector<int64_t>& channels, double value) {
  ASSIGN_OR_RETURN(at::Tensor gamma, model::NormGamma(model, layer, norm));  // [d]
  for (int64_t c : channels) {
    if (c < 0 || c >= gamma.size(0)) {
      return absl::InvalidArgumentError(
          absl::StrCat("channel ", c, " out of range: the norm has ", gamma.size(0), " channels"));
    }
  }
  if (!std::isfinite(value)) return absl::InvalidArgumentError(absl::StrCat("value ", value, " is not finite"));
  if (channels.empty()) return absl::InvalidArgumentError("no channels given");
  return absl::OkStatus();
}

absl::Status WeightEditSession::EditElement(int64_t layer, model::WeightModule module, int64_t row, int64_t col,
                                            ElementOp op, double value) {
  RETURN_IF_ERROR(CheckElementEdit(*model_, layer, module, row, col, value));
  ASSIGN_OR_RETURN(at::Tensor w, model::ModuleWeight(*model_, layer, module));  // [out, in]
  // The whole tensor that owns the storage: q/k/v and gate/up are views of fused matrices.
  const model::BlockWeights& b = model_->weights().blocks[layer];
  const at::Tensor& whole = module <= model::WeightModule::kAttnV     ? b.qkv.weight
                            : module == model::WeightModule::kAttnO   ? b.o.weight
                            : module == model::WeightModule::kMlpDown ? b.down.weight
                                                                      : b.gate_up.weight;
  at::Tensor element = w.select(0, row).select(0, col);  // 0-d view
  RETURN_IF_ERROR(Touch(whole, element));
  RETURN_IF_ERROR(model::TorchCall("editing a weight", [&] { ApplyElementOp(element, op, value); }));
  ++n_edits_;
  return absl::OkStatus();
}

absl::Status WeightEditSession::ResetNormChannels(int64_t layer, model::NormSite norm,
                                                  const std::vector<int64_t>& channels, NormResetMode mode,
                                                  double value) {
  RETURN_IF_ERROR(CheckNormReset(*model_, layer, norm, channels, value));
  ASSIGN_OR_RETURN(at::Tensor gamma, model::NormGamma(*model_, layer, norm));  // [d]
  // The gamma mean is that of the checkpoint's gamma, whatever this session edited before.
  RETURN_IF_ERROR(Touch(gamma, at::Tensor()));
  ASSIGN_OR_RETURN(const double fill, ResetValue(FindTouched(gamma).pristine, mode, value));
  for (int64_t c : channels) {
    at::Tensor element = gamma.select(0, c);
    RETURN_IF_ERROR(Touch(gamma, element));
    RETURN_IF_ERROR(model::TorchCall("resetting a norm channel", [&] { element.fill_(fill); }));
  }
  ++n_edits_;
  return absl::OkStatus();
}

absl::Status WeightEditSession::Suspend() {
  if (suspended_) return absl::OkStatus();
  RETURN_IF_ERROR(model::TorchCall("suspending weight edits", [&] {
    // All edited values first: restoring an element edited twice would change what a later copy sees.
    for (Saved& s : saved_) s.edited = s.target.clone();
    for (auto it = saved_.rbegin(); it != saved_.rend(); ++it) it->target.copy_(it->original);
  }));
  suspended_ = true;
  return absl::OkStatus();
}

absl::Status WeightEditSession::Resume() {
  if (!suspended_) return absl::FailedPreconditionError("weight edits are not suspended");
  RETURN_IF_ERROR(model::TorchCall("resuming weight edits", [&] {
    for (Saved& s : saved_) s.target.copy_(s.edited);
  }));
  suspended_ = false;
  return absl::OkStatus();
}

absl::Status WeightEditSession::Restore() {
  absl::Status status = model::TorchCall("restoring weights", [&]() -> absl::Status {
    // Newest first, so an element edited twice ends with its value from before the first edit.
    for (auto it = saved_.rbegin(); it != saved_.rend(); ++it) it->target.copy_(it->original);
    for (const Touched& t : touched_) {
      if (model::BitChecksum(t.tensor) != t.checksum) {
        return absl::InternalError("a weight tensor is not bit-identical after restoring its edits");
      }
    }
    return absl::OkStatus();
  });
  saved_.clear();
  touched_.clear();
  suspended_ = false;
  return status;
}

}  // namespace lesion::experiments
