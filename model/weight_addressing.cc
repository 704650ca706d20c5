#include "model/weight_addressing.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/error_text.h"
#include "common/status_macros.h"
#include "model/torch_util.h"

namespace lesion::model {
namespace {

constexpr absl::string_view kModuleNames[] = {
#define LESION_WEIGHT_MODULE(enumerator, name) name,
#include "common/model_names.def"
};
constexpr absl::string_view kNormNames[] = {
#define LESION_NORM(enumerator, name) name,
#include "common/model_names.def"
};

}  // namespace

absl::Status CheckLayerIndex(const Transformer& model, int64_t layer) {
  const int64_t n = model.config().n_layers;
  if (layer < 0 || layer >= n) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer ", layer, " out of range: model ", model.config().architecture, " has ", n, " layers"));
  }
  return absl::OkStatus();
}

absl::StatusOr<WeightModule> ParseWeightModule(absl::string_view name) {
  for (size_t i = 0; i < std::size(kModuleNames); ++i) {
    if (name == kModuleNames[i]) return static_cast<WeightModule>(i);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown module ", QuoteForError(name), " (known: ", absl::StrJoin(kModuleNames, ", "), ")"));
}

absl::string_view WeightModuleName(WeightModule module) { return kModuleNames[static_cast<int>(module)]; }

absl::StatusOr<NormSite> ParseNormSite(absl::string_view name) {
  for (NormSite site : kNormSites) {
    if (name == NormSiteName(site)) return site;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown norm ", QuoteForError(name), " (known: ", absl::StrJoin(kNormNames, ", "), ")"));
}

absl::string_view NormSiteName(NormSite site) { return kNormNames[static_cast<int>(site)]; }

const NormWeights* FindNorm(const TransformerWeights& w, int64_t layer, NormSite site) {
  if (site == NormSite::kFinal) return &w.final_norm;
  const BlockWeights& b = w.blocks[layer];
  switch (site) {
    case NormSite::kAttn:
      return &b.attn_norm;
    case NormSite::kMlp:
      return &b.mlp_norm;
    case NormSite::kAttnPost:
      return &b.attn_post_norm;
    case NormSite::kMlpPost:
      return &b.mlp_post_norm;
    case NormSite::kQ:
      return &b.q_norm;
    case NormSite::kK:
      return &b.k_norm;
    case NormSite::kFinal:
      break;
  }
  return &w.final_norm;
}

std::vector<NormSite> ModelNormSites(const Transformer& model) {
  std::vector<NormSite> sites;
  if (model.weights().blocks.empty()) return sites;
  for (NormSite site : kNormSites) {
    if (site != NormSite::kFinal && FindNorm(model.weights(), 0, site)->weight.defined()) sites.push_back(site);
  }
  sites.push_back(NormSite::kFinal);
  return sites;
}

absl::StatusOr<at::Tensor> ModuleWeight(const Transformer& model, int64_t layer, WeightModule module) {
  RETURN_IF_ERROR(CheckLayerIndex(model, layer));
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
        return absl::InvalidArgumentError(
            absl::StrCat("module mlp.gate: ", model.config().architecture, " has no gated MLP (use mlp.up, mlp.down)"));
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
  RETURN_IF_ERROR(CheckLayerIndex(model, layer));
  const at::Tensor& gamma = FindNorm(model.weights(), layer, norm)->weight;
  if (!gamma.defined()) {
    std::vector<std::string> names;
    for (NormSite site : ModelNormSites(model)) names.emplace_back(NormSiteName(site));
    std::string why;
    if (model.config().block_layout == BlockLayout::kParallelSharedNorm && norm == NormSite::kMlp) {
      why = " (its attention and MLP share the attn norm)";
    }
    return absl::InvalidArgumentError(absl::StrCat("norm \"", NormSiteName(norm), "\": ", model.config().architecture,
                                                   " has no such norm", why,
                                                   "; its norms: ", absl::StrJoin(names, ", ")));
  }
  return gamma;
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
    for (const at::Tensor* t :
         {&b.attn_norm.weight, &b.attn_norm.bias, &b.qkv.weight, &b.qkv.bias, &b.o.weight, &b.o.bias,
          &b.mlp_norm.weight, &b.mlp_norm.bias, &b.gate_up.weight, &b.gate_up.bias, &b.down.weight, &b.down.bias}) {
      tensors.push_back(t);
    }
  }
  // Tensors of the later families last, and only where a family has them, so that the fingerprints
  // of the first four families stay what they were.
  if (w.lm_head_bias.defined()) tensors.push_back(&w.lm_head_bias);
  for (const BlockWeights& b : w.blocks) {
    for (const NormWeights* n : {&b.attn_post_norm, &b.mlp_post_norm, &b.q_norm, &b.k_norm}) {
      if (n->weight.defined()) tensors.push_back(&n->weight);
      if (n->bias.defined()) tensors.push_back(&n->bias);
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

}  // namespace lesion::model
