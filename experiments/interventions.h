// Activation-level interventions attached to a RunPlan: head ablation at attn_z and activation
// edits at any [batch, seq, features] site. (Weight-level edits live in weight_edits.h; the
// attention-bias slot is RunPlan::SetAttentionBias.) Each function validates its arguments against
// the model before adding hooks; errors are InvalidArgument naming the field and value.
// Thread-compatible, like RunPlan.
#ifndef LESION_EXPERIMENTS_INTERVENTIONS_H_
#define LESION_EXPERIMENTS_INTERVENTIONS_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "model/hook_sites.h"
#include "model/model_config.h"
#include "model/run_plan.h"
#include "spec/spec.h"

namespace lesion::experiments {

// The spec's enums are the runtime's: one definition from the request to the forward pass.
using HeadAblationMode = spec::HeadAblation::Mode;

// Replaces the heads' slices of blocks.`layer`.attn_z (before the output projection) with zero,
// `factor` times themselves, or `head_means` ([n_heads, head_dim], each head's mean output over a
// dataset; required for kMean).
absl::Status AddHeadAblation(const model::ModelConfig& config, int64_t layer, const std::vector<int64_t>& heads,
                             HeadAblationMode mode, double factor, const at::Tensor& head_means, model::RunPlan& plan);

using ActivationOp = spec::ActivationEdit::Op;

// Edits x[:, positions, dims] at `site` (all positions / dims when empty), each selected row r
// (the D = |dims| selected features of one position):
//   kZero: r = 0;  kSet: r = value;  kScale: r *= value;
//   kMean: r = mean[position, dims] (`mean` [seq, features]: the site's mean over a dataset, by
//          position and feature; Sun et al.'s "set to mean");
//   kAdd: r += value * vector (steering: `vector` has D values, `value` is alpha);
//   kProjectOut: r -= (r . u) u with u = vector / |vector| (a direction ablated; D values);
//   kSetVectors: r = vector (patching: D values for every selected position, or D per position,
//          in the order of `positions`).
// attn_z is addressed as [seq, heads * head_dim]; attn_pattern cannot be edited this way.
// Positions beyond a window's length are skipped (the runner refuses positions beyond its windows).
// `vector` must be empty for the first four ops.
absl::Status AddActivationEdit(const model::ModelConfig& config, const model::SiteId& site,
                               const std::vector<int64_t>& positions, const std::vector<int64_t>& dims, ActivationOp op,
                               double value, const at::Tensor& mean, model::RunPlan& plan,
                               const std::vector<float>& vector = {});

// True for the ops that take a vector (kAdd, kProjectOut, kSetVectors).
bool TakesVector(ActivationOp op);

// Width of the feature dimension of a site (d_model, d_ffn, heads * head_dim, vocab).
int64_t SiteFeatures(const model::ModelConfig& config, model::SiteKind kind);

}  // namespace lesion::experiments

#endif  // LESION_EXPERIMENTS_INTERVENTIONS_H_
