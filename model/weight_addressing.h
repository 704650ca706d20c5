// Weight addressing: every matrix of every architecture is addressed [row, col] in nn.Linear's
// [out_features, in_features] convention (GPT-2's Conv1D weights are stored transposed at load, see
// transformer.h), through its logical module attn.q/k/v/o or mlp.gate/up/down, and every norm by
// its name (attn, mlp, attn_post, mlp_post, q, k, final), whatever the storage (fused qkv and gate/up tensors are
// addressed through views of their parts). Also the bit-exact fingerprint of a model's weights that proves edits were
// undone. Thread-compatible: these read the model's weights.
#ifndef LESION_MODEL_WEIGHT_ADDRESSING_H_
#define LESION_MODEL_WEIGHT_ADDRESSING_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "model/run_plan.h"
#include "model/transformer.h"

namespace lesion::model {

// The modules of common/model_names.def, in its order.
enum class WeightModule {
#define LESION_WEIGHT_MODULE(enumerator, name) enumerator,
#include "common/model_names.def"
};

// "attn.q" ... "mlp.down"; InvalidArgument listing the known names otherwise.
absl::StatusOr<WeightModule> ParseWeightModule(absl::string_view name);
absl::string_view WeightModuleName(WeightModule module);
// "attn", "mlp", "attn_post", "mlp_post", "q", "k", "final" (which of them a model has depends on
// its family: ModelNormSites).
absl::StatusOr<NormSite> ParseNormSite(absl::string_view name);
absl::string_view NormSiteName(NormSite site);
inline constexpr NormSite kNormSites[] = {
#define LESION_NORM(enumerator, name) NormSite::enumerator,
#include "common/model_names.def"
};
// The norms `model` has, in kNormSites order (every layer has the same ones).
std::vector<NormSite> ModelNormSites(const Transformer& model);
// The weights of norm `site` in `layer` (ignored for kFinal; must be in range otherwise); their
// tensors are undefined when the model has no such norm.
const NormWeights* FindNorm(const TransformerWeights& weights, int64_t layer, NormSite site);

// The [out, in] weight of (layer, module): a view into the model's storage. InvalidArgument for a
// layer out of range or a module the architecture lacks (mlp.gate on GPT-2).
absl::StatusOr<at::Tensor> ModuleWeight(const Transformer& model, int64_t layer, WeightModule module);
// The gamma [width] of a norm; `layer` is ignored for kFinal. InvalidArgument naming the model's
// norms when it has no such norm (mlp on Phi-2, attn on OLMo-2, q on LLaMA).
absl::StatusOr<at::Tensor> NormGamma(const Transformer& model, int64_t layer, NormSite norm);

// An order-sensitive checksum of a tensor's exact bits (any float dtype, any device).
uint64_t BitChecksum(const at::Tensor& tensor);

// Every weight tensor slot of `model` in a fixed order: embed, positions, final norm weight and
// bias, lm_head, then per block its norms, fused qkv, o, fused gate/up and down with their biases.
// Slots the architecture lacks are undefined tensors; a tied lm_head is the embed tensor itself.
std::vector<const at::Tensor*> WeightTensors(const Transformer& model);

// Hex digest of the BitChecksum, dtype and shape of every weight tensor of `model`, in a fixed order.
absl::StatusOr<std::string> WeightsFingerprint(const Transformer& model);

// OK if 0 <= layer < the model's layer count; InvalidArgument naming the model's count otherwise.
absl::Status CheckLayerIndex(const Transformer& model, int64_t layer);

}  // namespace lesion::model

#endif  // LESION_MODEL_WEIGHT_ADDRESSING_H_
