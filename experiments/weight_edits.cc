#include "experiments/weight_edits.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/error_text.h"
#include "common/status_macros.h"
#include "experiments/torch_util.h"

namespace lesion::experiments {
namespace {

constexpr absl::string_view kModuleNames[] = {"attn.q",   "attn.k", "attn.v",  "attn.o",
                                              "mlp.gate", "mlp.up", "mlp.down"};

std::string Shape(const at::Tensor& t) { return absl::StrCat("[", absl::StrJoin(t.sizes(), ", "), "]"); }

absl::Status CheckLayer(const Transformer& model, int64_t layer) {
  const int64_t n = model.config().n_layers;
  if (layer < 0 || layer >= n) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", layer, " out of range: model ",
                                                   model.config().architecture, " has ", n, " layers"));
  }
  return absl::OkStatus();
}

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
      return TorchCall("gamma mean", [&] { return pristine.to(at::kDouble).mean().item<double>(); });
  }
  return 1.0;
}

}  // namespace

absl::StatusOr<WeightModule> ParseWeightModule(absl::string_view name) {
  for (int i = 0; i < 7; ++i) {
    if (name == kModuleNames[i]) return static_cast<WeightModule>(i);
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown module ", QuoteForError(name), " (known: ",
                                                 absl::StrJoin(kModuleNames, ", "), ")"));
}

absl::string_view WeightModuleName(WeightModule module) { return kModuleNames[static_cast<int>(module)]; }

absl::StatusOr<NormSite> ParseNormSite(absl::string_view name) {
  if (name == "attn") return NormSite::kAttn;
  if (name == "mlp") return NormSite::kMlp;
  if (name == "final") return NormSite::kFinal;
  return absl::InvalidArgumentError(absl::StrCat("unknown norm \"", name, "\" (known: attn, mlp, final)"));
}

absl::StatusOr<at::Tensor> ModuleWeight(const Transformer& model, int64_t layer, WeightModule module) {
  RETURN_IF_ERROR(CheckLayer(model, layer));
  const BlockWeights& b = model.weights().blocks[layer];
  switch (module) {
    case WeightModule::kAttnQ:
      return b.q.weight;
    case WeightModule::kAttnK:
      return b.k.weight;
    case WeightModule::kAttnV:
      return b.v.weight;
    case WeightModule::kAttnO:
      return b.o.weight;
    case WeightModule::kMlpGate:
      if (!b.gate.weight.defined()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "module mlp.gate: ", model.config().architecture, " has no gated MLP (use mlp.up, mlp.down)"));
      }
      return b.gate.weight;
    case WeightModule::kMlpUp:
      return b.up.weight;
    case WeightModule::kMlpDown:
      return b.down.weight;
  }
  return absl::InternalError("unreachable");
}

absl::StatusOr<at::Tensor> NormGamma(const Transformer& model, int64_t layer, NormSite norm) {
  if (norm == NormSite::kFinal) return model.weights().final_norm.weight;
  RETURN_IF_ERROR(CheckLayer(model, layer));
  const BlockWeights& b = model.weights().blocks[layer];
  return norm == NormSite::kAttn ? b.attn_norm.weight : b.mlp_norm.weight;
}

uint64_t BitChecksum(const at::Tensor& tensor) {
  // Reinterpret the bits as integers of the same width, weight each by its position, sum in int64
  // (wrapping): any changed bit or swapped pair of elements changes the result.
  at::Tensor flat = tensor.detach().contiguous().view(-1);
  const at::ScalarType int_type = flat.element_size() == 8   ? at::kLong
                                  : flat.element_size() == 4 ? at::kInt
                                  : flat.element_size() == 2 ? at::kShort
                                                             : at::kByte;
  at::Tensor bits = flat.view(int_type).to(at::kLong);
  at::Tensor weights = at::arange(1, bits.numel() + 1, bits.options()) * 2654435761LL;
  return static_cast<uint64_t>((bits * weights).sum().item<int64_t>());
}

std::vector<const at::Tensor*> WeightTensors(const Transformer& model) {
  const TransformerWeights& w = model.weights();
  std::vector<const at::Tensor*> tensors = {&w.embed, &w.positions, &w.final_norm.weight, &w.final_norm.bias,
                                            &w.lm_head};
  for (const BlockWeights& b : w.blocks) {
    for (const at::Tensor* t : {&b.attn_norm.weight, &b.attn_norm.bias, &b.qkv.weight, &b.qkv.bias, &b.o.weight,
                                &b.o.bias, &b.mlp_norm.weight, &b.mlp_norm.bias, &b.gate_up.weight, &b.gate_up.bias,
                                &b.down.weight, &b.down.bias}) {
      tensors.push_back(t);
    }
  }
  return tensors;
}

absl::StatusOr<std::string> WeightsFingerprint(const Transformer& model) {
  return TorchCall("fingerprinting the weights", [&] {
    const std::vector<const at::Tensor*> tensors = WeightTensors(model);
    // FNV-1a over (checksum, dtype, shape) of each tensor; undefined tensors count as absent.
    uint64_t h = 1469598103934665603ULL;
    auto mix = [&h](uint64_t v) {
      for (int i = 0; i < 8; ++i) {
        h ^= (v >> (8 * i)) & 0xff;
        h *= 1099511628211ULL;
      }
    };
    for (const at::Tensor* t : tensors) {
      if (!t->defined()) {
        mix(0);
        continue;
      }
      mix(BitChecksum(*t));
      mix(static_cast<uint64_t>(t->scalar_type()));
      for (int64_t d : t->sizes()) mix(static_cast<uint64_t>(d));
    }
    return absl::StrFormat("%016x", h);
  });
}

absl::Status WeightEditPreview::EditElement(int64_t layer, WeightModule module, int64_t row, int64_t col,
                                            ElementOp op, double value) {
  RETURN_IF_ERROR(CheckElementEdit(*model_, layer, module, row, col, value));
  ASSIGN_OR_RETURN(at::Tensor w, ModuleWeight(*model_, layer, module));  // [out, in]
  return TorchCall("previewing a weight edit", [&] {
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

absl::Status WeightEditPreview::ResetNormChannels(int64_t layer, NormSite norm, const std::vector<int64_t>& channels,
                                                  NormResetMode mode, double value) {
  RETURN_IF_ERROR(CheckNormReset(*model_, layer, norm, channels, value));
  ASSIGN_OR_RETURN(at::Tensor pristine, NormGamma(*model_, layer, norm));  // [d]
  ASSIGN_OR_RETURN(const double fill, ResetValue(pristine, mode, value));
  const int64_t key_layer = norm == NormSite::kFinal ? -1 : layer;
  return TorchCall("previewing a norm-channel reset", [&] {
    size_t i = 0;
    while (i < gammas_.size() && !(gammas_[i].layer == key_layer && gammas_[i].norm == norm)) ++i;
    if (i == gammas_.size()) gammas_.push_back({key_layer, norm, pristine.clone()});
    for (int64_t c : channels) gammas_[i].gamma.select(0, c).fill_(fill);
  });
}

WeightEditSession::WeightEditSession(const Transformer* model) : model_(model) {}

WeightEditSession::~WeightEditSession() { (void)Restore(); }

const WeightEditSession::Touched& WeightEditSession::FindTouched(const at::Tensor& whole) const {
  for (const Touched& t : touched_) {
    if (t.tensor.is_same(whole)) return t;
  }
  return touched_.back();  // unreachable: callers Touch first
}

absl::Status WeightEditSession::Touch(const at::Tensor& whole, const at::Tensor& target) {
  if (suspended_) return absl::FailedPreconditionError("weight edits cannot be added while suspended");
  return TorchCall("saving weights before an edit", [&] {
    bool seen = false;
    for (const Touched& t : touched_) seen = seen || t.tensor.is_same(whole);
    // Norm gammas are small: keep a pristine copy for the gamma-mean reset.
    if (!seen) touched_.push_back({whole, BitChecksum(whole), whole.dim() == 1 ? whole.clone() : at::Tensor()});
    if (target.defined()) saved_.push_back({target, target.clone(), at::Tensor()});
  });
}

absl::Status CheckElementEdit(const Transformer& model, int64_t layer, WeightModule module, int64_t row,
                              int64_t col, double value) {
  ASSIGN_OR_RETURN(at::Tensor w, ModuleWeight(model, layer, module));  // [out, in]
  if (row < 0 || row >= w.size(0) || col < 0 || col >= w.size(1)) {
    return absl::InvalidArgumentError(absl::StrCat("index [", row, ", ", col, "] out of range for layer ",
                                                   layer, " ", WeightModuleName(module), " of shape ",
                                                   Shape(w), " ([out_features, in_features])"));
  }
  if (!std::isfinite(value)) {
    return absl::InvalidArgumentError(absl::StrCat("edit value ", value, " is not finite"));
  }
  return absl::OkStatus();
}

absl::Status CheckNormReset(const Transformer& model, int64_t layer, NormSite norm,
                            const std::vector<int64_t>& channels, double value) {
  ASSIGN_OR_RETURN(at::Tensor gamma, NormGamma(model, layer, norm));  // [d]
  for (int64_t c : channels) {
    if (c < 0 || c >= gamma.size(0)) {
      return absl::InvalidArgumentError(absl::StrCat("channel ", c, " out of range: the norm has ",
                                                     gamma.size(0), " channels"));
    }
  }
  if (!std::isfinite(value)) return absl::InvalidArgumentError(absl::StrCat("value ", value, " is not finite"));
  if (channels.empty()) return absl::InvalidArgumentError("no channels given");
  return absl::OkStatus();
}

absl::Status WeightEditSession::EditElement(int64_t layer, WeightModule module, int64_t row, int64_t col,
                                            ElementOp op, double value) {
  RETURN_IF_ERROR(CheckElementEdit(*model_, layer, module, row, col, value));
  ASSIGN_OR_RETURN(at::Tensor w, ModuleWeight(*model_, layer, module));  // [out, in]
  // The whole tensor that owns the storage: q/k/v and gate/up are views of fused matrices.
  const BlockWeights& b = model_->weights().blocks[layer];
  const at::Tensor& whole = module <= WeightModule::kAttnV ? b.qkv.weight
                            : module == WeightModule::kAttnO ? b.o.weight
                            : module == WeightModule::kMlpDown ? b.down.weight
                                                               : b.gate_up.weight;
  at::Tensor element = w.select(0, row).select(0, col);  // 0-d view
  RETURN_IF_ERROR(Touch(whole, element));
  RETURN_IF_ERROR(TorchCall("editing a weight", [&] { ApplyElementOp(element, op, value); }));
  ++n_edits_;
  return absl::OkStatus();
}

absl::Status WeightEditSession::ResetNormChannels(int64_t layer, NormSite norm,
                                                  const std::vector<int64_t>& channels, NormResetMode mode,
                                                  double value) {
  RETURN_IF_ERROR(CheckNormReset(*model_, layer, norm, channels, value));
  ASSIGN_OR_RETURN(at::Tensor gamma, NormGamma(*model_, layer, norm));  // [d]
  // The gamma mean is that of the checkpoint's gamma, whatever this session edited before.
  RETURN_IF_ERROR(Touch(gamma, at::Tensor()));
  ASSIGN_OR_RETURN(const double fill, ResetValue(FindTouched(gamma).pristine, mode, value));
  for (int64_t c : channels) {
    at::Tensor element = gamma.select(0, c);
    RETURN_IF_ERROR(Touch(gamma, element));
    RETURN_IF_ERROR(TorchCall("resetting a norm channel", [&] { element.fill_(fill); }));
  }
  ++n_edits_;
  return absl::OkStatus();
}

absl::Status WeightEditSession::Suspend() {
  if (suspended_) return absl::OkStatus();
  RETURN_IF_ERROR(TorchCall("suspending weight edits", [&] {
    // All edited values first: restoring an element edited twice would change what a later copy sees.
    for (Saved& s : saved_) s.edited = s.target.clone();
    for (auto it = saved_.rbegin(); it != saved_.rend(); ++it) it->target.copy_(it->original);
  }));
  suspended_ = true;
  return absl::OkStatus();
}

absl::Status WeightEditSession::Resume() {
  if (!suspended_) return absl::FailedPreconditionError("weight edits are not suspended");
  RETURN_IF_ERROR(TorchCall("resuming weight edits", [&] {
    for (Saved& s : saved_) s.target.copy_(s.edited);
  }));
  suspended_ = false;
  return absl::OkStatus();
}

absl::Status WeightEditSession::Restore() {
  absl::Status status = TorchCall("restoring weights", [&]() -> absl::Status {
    // Newest first, so an element edited twice ends with its value from before the first edit.
    for (auto it = saved_.rbegin(); it != saved_.rend(); ++it) it->target.copy_(it->original);
    for (const Touched& t : touched_) {
      if (BitChecksum(t.tensor) != t.checksum) {
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
