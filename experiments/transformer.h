// Transformer: the one decoder-only transformer implementation of lesion, parameterised by
// ModelConfig (GPT-2: LayerNorm, learned positions, GELU MLP; LLaMA/Mistral/Qwen2: RMSNorm, rotary,
// SwiGLU, GQA, optional biases and sliding windows). Every intermediate passes a named hook site
// (experiments/hook_sites.h) through the per-run RunPlan.
//
// Weights follow nn.Linear's [out_features, in_features] convention for every architecture (GPT-2's
// Conv1D weights are transposed at load). q/k/v are row views of one fused matrix, gate/up likewise,
// so one matrix product serves all three and an edit of a view edits the fused weight.
//
// Thread-safety: Forward is const and may run on several threads at once, but the intended use is
// one executor thread per device. Weight tensors are shared with the caller through weights();
// edits to them (issue-3 interventions) must not overlap a forward pass.
#ifndef LESION_EXPERIMENTS_TRANSFORMER_H_
#define LESION_EXPERIMENTS_TRANSFORMER_H_

#include <ATen/ATen.h>

#include <vector>

#include "absl/status/statusor.h"
#include "experiments/model_config.h"
#include "experiments/run_plan.h"

namespace lesion::experiments {

struct LinearWeights {
  at::Tensor weight;  // [out, in]
  at::Tensor bias;    // [out], undefined when the layer has none
};

struct NormWeights {
  at::Tensor weight;  // [d]  (gamma)
  at::Tensor bias;    // [d]  LayerNorm only, else undefined
};

struct BlockWeights {
  NormWeights attn_norm;
  LinearWeights qkv;  // [(heads + 2 kv_heads) * hd, d]: rows q, then k, then v
  LinearWeights q, k, v;  // row views of qkv
  LinearWeights o;        // [d, heads * hd]
  NormWeights mlp_norm;
  LinearWeights gate_up;  // gated MLP: [2 * ffn, d], rows gate then up; else [ffn, d] = up
  LinearWeights gate, up;  // row views of gate_up (gate undefined without a gated MLP)
  LinearWeights down;      // [d, ffn]
};

struct TransformerWeights {
  at::Tensor embed;      // [vocab, d]
  at::Tensor positions;  // [max_positions, d]  GPT-2 only, else undefined
  std::vector<BlockWeights> blocks;
  NormWeights final_norm;
  at::Tensor lm_head;  // [vocab, d]; the same tensor as `embed` when tied
};

class Transformer {
 public:
  // Takes weights already on `device` in `dtype`, laid out as above (see checkpoint_loader.h).
  static absl::StatusOr<Transformer> Create(ModelConfig config, TransformerWeights weights);

  // Runs ids [batch, seq] (int64, any device) through the model with `plan`'s hooks. Returns the
  // logits [batch, seq, vocab] in the model's dtype. InvalidArgument for ids out of range or
  // sequences longer than the model supports; ResourceExhausted on device OOM; Cancelled when the
  // plan's interrupt fires between layers.
  absl::StatusOr<at::Tensor> Forward(const at::Tensor& ids, const RunPlan& plan) const;

  const ModelConfig& config() const { return config_; }
  const TransformerWeights& weights() const { return weights_; }
  at::Device device() const { return weights_.embed.device(); }
  at::ScalarType dtype() const { return weights_.embed.scalar_type(); }

 private:
  Transformer(ModelConfig config, TransformerWeights weights, at::Tensor inv_freq);

  at::Tensor ForwardUnchecked(const at::Tensor& ids, const RunPlan& plan) const;
  at::Tensor Block(int64_t layer, at::Tensor x, const at::Tensor& cos, const at::Tensor& sin,
                   const RunPlan& plan) const;
  at::Tensor Attention(int64_t layer, const at::Tensor& h, const at::Tensor& cos,
                       const at::Tensor& sin, const RunPlan& plan) const;
  at::Tensor Norm(const NormWeights& w, const at::Tensor& x) const;
  at::Tensor Activate(const at::Tensor& x) const;

  ModelConfig config_;
  TransformerWeights weights_;
  at::Tensor inv_freq_;  // [hd / 2] float32 on the device; undefined without rotary
};

}  // namespace lesion::experiments

#endif  // LESION_EXPERIMENTS_TRANSFORMER_H_
