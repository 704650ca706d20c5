// Exact, restorable in-place weight edits: the machinery behind super-weight edits and norm-channel
// resets. Weights are addressed as model/weight_addressing.h says.
//
//   WeightEditSession edits(&model);
//   RETURN_IF_ERROR(edits.EditElement(2, WeightModule::kMlpDown, 3968, 7003, ElementOp::kZero, 0));
//   ... run forward passes ...
//   RETURN_IF_ERROR(edits.Restore());  // also done by the destructor
//
// Edits write into the model's weight tensors in place; the first time an element or channel is
// touched its original value is saved, and Restore writes the saved originals back (never undoing
// arithmetic) and proves with a checksum of each touched tensor that it is bit-identical to before.
//
// Thread-safety: a session must not overlap a forward pass or another session on the same model;
// the executor thread that owns the model runs both. Not copyable.
#ifndef LESION_EXPERIMENTS_WEIGHT_EDITS_H_
#define LESION_EXPERIMENTS_WEIGHT_EDITS_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "model/transformer.h"
#include "model/weight_addressing.h"
#include "spec/spec.h"

namespace lesion::experiments {

// The spec's enums are the runtime's: one definition from the request to the weights.
using ElementOp = spec::WeightEdit::Op;
using NormResetMode = spec::NormChannelReset::Mode;

// The checks of EditElement and ResetNormChannels without the edit (InvalidArgument naming the
// index, shape or value): a spec can be validated while another thread runs the model.
absl::Status CheckElementEdit(const model::Transformer& model, int64_t layer, model::WeightModule module, int64_t row,
                              int64_t col, double value);
absl::Status CheckNormReset(const model::Transformer& model, int64_t layer, model::NormSite norm,
                            const std::vector<int64_t>& channels, double value);

// What a list of edits would write, computed on copies of the touched elements and gammas with the
// same arithmetic as WeightEditSession, while the model stays untouched: a sweep turns these into
// per-variant corrections of the activations (RunPlan::AddLinearCorrection, SetNormGamma) so that
// variants with different weight edits can share a forward pass. Same checks and errors as the
// session. Thread-compatible; reads the model's weights.
class WeightEditPreview {
 public:
  struct Element {
    int64_t layer = 0;
    model::WeightModule module = model::WeightModule::kAttnQ;
    int64_t row = 0, col = 0;
    double original = 0;  // the checkpoint's value
    double edited = 0;    // after every edit of this element, rounded to the weight's dtype
  };
  struct Gamma {
    int64_t layer = 0;  // -1 for the final norm
    model::NormSite norm = model::NormSite::kAttn;
    at::Tensor gamma;  // [d] the whole gamma after the resets, in the weight's dtype and device
  };

  explicit WeightEditPreview(const model::Transformer* model) : model_(model) {}  // `model` must outlive it
  absl::Status EditElement(int64_t layer, model::WeightModule module, int64_t row, int64_t col, ElementOp op,
                           double value);
  absl::Status ResetNormChannels(int64_t layer, model::NormSite norm, const std::vector<int64_t>& channels,
                                 NormResetMode mode, double value);
  const std::vector<Element>& elements() const { return elements_; }
  const std::vector<Gamma>& gammas() const { return gammas_; }

 private:
  const model::Transformer* model_;
  std::vector<Element> elements_;
  std::vector<at::Tensor> element_values_;  // 0-d copies, parallel to elements_
  std::vector<Gamma> gammas_;
};

class WeightEditSession {
 public:
  explicit WeightEditSession(const model::Transformer* model);  // `model` must outlive the session
  ~WeightEditSession();
  WeightEditSession(const WeightEditSession&) = delete;
  WeightEditSession& operator=(const WeightEditSession&) = delete;

  // w[row, col] = 0 | w * value | value. InvalidArgument naming the index and shape when out of
  // range, or for a non-finite value.
  absl::Status EditElement(int64_t layer, model::WeightModule module, int64_t row, int64_t col, ElementOp op,
                           double value);
  // gamma[channels] = 1 | mean(original gamma) | value. Norm biases are untouched.
  absl::Status ResetNormChannels(int64_t layer, model::NormSite norm, const std::vector<int64_t>& channels,
                                 NormResetMode mode, double value);
  // Writes every saved original back and checks each touched tensor's checksum. Idempotent.
  // Internal if a tensor does not come back bit-identical (a bug, never expected).
  absl::Status Restore();

  // Take the edits out for a while (the originals back, no checksum) and put them in again, so
  // that baseline and intervened forward passes can alternate batch by batch. Resume after
  // Suspend only; edits made while suspended are not allowed (FailedPrecondition).
  absl::Status Suspend();
  absl::Status Resume();
  bool suspended() const { return suspended_; }

  int64_t n_edits() const { return n_edits_; }

 private:
  struct Saved {
    at::Tensor target;    // a view of the edited elements inside a weight tensor
    at::Tensor original;  // a copy of their values before the first edit
    at::Tensor edited;    // a copy of their edited values, taken by Suspend
  };
  struct Touched {
    at::Tensor tensor;    // the whole weight tensor
    uint64_t checksum;    // before any edit
    at::Tensor pristine;  // a copy before any edit, kept for 1-d tensors (norm gammas) only
  };
  // Records `whole` (first time only) and saves the current values of `target` (if defined).
  absl::Status Touch(const at::Tensor& whole, const at::Tensor& target);
  const Touched& FindTouched(const at::Tensor& whole) const;

  const model::Transformer* model_;
  std::vector<Saved> saved_;
  std::vector<Touched> touched_;
  int64_t n_edits_ = 0;
  bool suspended_ = false;
};

}  // namespace lesion::experiments

#endif  // LESION_EXPERIMENTS_WEIGHT_EDITS_H_
