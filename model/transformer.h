// Transformer: the one decoder-only transformer implementation of lesion, parameterised by
// ModelConfig: LayerNorm or RMSNorm, learned or rotary (full or partial) positions, GELU or gated
// MLPs, GQA, optional biases, sliding windows, sequential or parallel blocks, pre-, post- and QK-norms,
// scaled embeddings and soft-capped scores and logits (docs/architectures.md lists the families).
// Every intermediate passes a named hook site (model/hook_sites.h) through the per-run RunPlan.
//
// Weights follow nn.Linear's [out_features, in_features] convention for every architecture (GPT-2's
// Conv1D weights are transposed at load). q/k/v are row views of one fused matrix, gate/up likewise,
// so one matrix product serves all three and an edit of a view edits the fused weight.
//
// On CUDA the output head is stored with its rows padded to a multiple of 64 (embed and lm_head
// are views of its first vocab_size rows): cuBLAS has no fast kernels for a vocabulary like GPT-2's
// 50257, whose rows of logits are not 16-byte aligned, and takes several times longer. Logits are
// then a [b, s, vocab] view with a row stride of the padded size.
//
// Thread-safety: Forward is const and may run on several threads at once, but the intended use is
// one executor thread per device. Weight tensors are shared with the caller through weights();
// edits to them (an experiment's weight edits) must not overlap a forward pass.
#ifndef LESION_MODEL_TRANSFORMER_H_
#define LESION_MODEL_TRANSFORMER_H_

#include <ATen/ATen.h>

#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "model/model_config.h"
#include "model/run_plan.h"

namespace lesion::model {

struct LinearWeights {
  at::Tensor weight;  // [out, in]
  at::Tensor bias;    // [out], undefined when the layer has none
};

struct NormWeights {
  at::Tensor weight;  // [d]  (gamma); undefined when the model has no such norm
  at::Tensor bias;    // [d]  LayerNorm only, else undefined
};

struct BlockWeights {
  NormWeights attn_norm;       // absent without pre-norms (OLMo-2)
  LinearWeights qkv;           // [(heads + 2 kv_heads) * hd, d]: rows q, then k, then v
  LinearWeights q, k, v;       // row views of qkv
  LinearWeights o;             // [d, heads * hd]
  NormWeights attn_post_norm;  // on attention's output (OLMo-2, Gemma), else absent
  NormWeights q_norm, k_norm;  // [head_dim] per head, or [heads * head_dim] / [kv_heads * head_dim] full width
  NormWeights mlp_norm;        // absent without pre-norms, and when attn_norm feeds the MLP too (Phi-2)
  NormWeights mlp_post_norm;   // on the MLP's output (OLMo-2, Gemma), else absent
  LinearWeights gate_up;       // gated MLP: [2 * ffn, d], rows gate then up; else [ffn, d] = up
  LinearWeights gate, up;      // row views of gate_up (gate undefined without a gated MLP)
  LinearWeights down;          // [d, ffn]
};

struct TransformerWeights {
  at::Tensor embed;      // [vocab, d]
  at::Tensor positions;  // [max_positions + position_offset, d] with learned positions, else undefined
  std::vector<BlockWeights> blocks;
  NormWeights final_norm;
  at::Tensor lm_head;       // [vocab, d]; the same tensor as `embed` when tied
  at::Tensor lm_head_bias;  // [vocab] (Phi-2), else undefined
};

// The keys and values of the tokens already run, per layer, for decoding one step at a time
// (Transformer::ForwardCached): post-rotary, before GQA's expansion, every position kept (sliding
// windows are applied by masking). Starts empty; one cache per sequence batch.
struct KvCache {
  std::vector<at::Tensor> keys, values;  // per layer [b, n_kv, length, hd]
  int64_t length = 0;                    // positions held
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

  // The rest of a forward pass from the residual stream `resid` [batch, seq, d] entering block
  // `first_layer` (n_layers: only the final norm and the head), with `plan`'s hooks from there on.
  // This is how a sweep reuses the layers before a variant's first intervened layer. Errors as
  // Forward's; InvalidArgument for a layer out of [0, n_layers] or a resid of the wrong shape.
  absl::StatusOr<at::Tensor> ForwardFrom(const at::Tensor& resid, int64_t first_layer, const RunPlan& plan) const;

  // The first part of a forward pass: the embedding and blocks 0 .. end_layer - 1 with `plan`'s
  // hooks; returns the residual stream [batch, seq, d] entering block `end_layer` (in [0,
  // n_layers]). Errors as Forward's.
  absl::StatusOr<at::Tensor> ForwardPrefix(const at::Tensor& ids, int64_t end_layer, const RunPlan& plan) const;

  // ids [batch, new] as the continuation of the sequences whose keys and values `cache` holds (at
  // positions cache.length ..), appending theirs: the logits [batch, new, vocab] equal Forward's on
  // the whole sequences at those positions. Hooks see the new positions only, with
  // plan.position_offset() set by the caller to cache.length. Errors as Forward's; InvalidArgument
  // when the sequences would pass the model's learned positions or the batch does not match.
  absl::StatusOr<at::Tensor> ForwardCached(const at::Tensor& ids, const RunPlan& plan, KvCache& cache) const;

  const ModelConfig& config() const { return config_; }
  const TransformerWeights& weights() const { return weights_; }
  at::Device device() const { return weights_.embed.device(); }
  at::ScalarType dtype() const { return weights_.embed.scalar_type(); }

 private:
  // cos and sin [s, 1, rotary_dim] in the model dtype, sin with rotate_half's sign folded into its
  // first half; undefined without rotary.
  struct RotaryTable {
    at::Tensor cos, sin;
  };
  // The tables of the rotary layers: `full` for every layer, or only for the full-attention layers
  // when the sliding ones have their own (`sliding`, Gemma-3).
  struct RotaryTables {
    RotaryTable full, sliding;
  };

  Transformer(ModelConfig config, TransformerWeights weights, at::Tensor lm_head_padded, at::Tensor lm_head_bias_padded,
              at::Tensor inv_freq, at::Tensor sliding_inv_freq);

  // Checks of ids and plan shared by Forward and ForwardPrefix (no device work).
  absl::Status CheckInput(const at::Tensor& ids, const RunPlan& plan) const;
  // Checks the ids' range on the device, then embeds them: [b, s, d] after the embed hooks.
  absl::StatusOr<at::Tensor> Embed(const at::Tensor& ids, const RunPlan& plan, int64_t offset = 0) const;
  // Blocks [begin, end); an undefined tensor when the plan's interrupt fired. With `cache`, x holds
  // the positions after the cached ones (see ForwardCached).
  at::Tensor RunBlocks(at::Tensor x, int64_t begin, int64_t end, const RunPlan& plan, KvCache* cache = nullptr) const;
  // The final norm and the output head: logits [b, s, vocab].
  at::Tensor Head(const at::Tensor& x, const RunPlan& plan) const;
  // The tables of positions [offset, offset + seq).
  RotaryTables MakeRotaryTables(int64_t seq, int64_t offset = 0) const;
  at::Tensor Block(int64_t layer, at::Tensor x, const RotaryTables& rotary, const RunPlan& plan, KvCache* cache) const;
  at::Tensor Attention(int64_t layer, const at::Tensor& h, const RotaryTables& rotary, const RunPlan& plan,
                       KvCache* cache) const;
  // x [b, s, n, hd] rotated on its first rotary_dim dims by `table`.
  at::Tensor Rotate(const at::Tensor& x, const RotaryTable& table) const;
  // The block norm `site` of layer `layer` on x, with the plan's per-row gamma if it sets one.
  at::Tensor BlockNorm(const NormWeights& w, int64_t layer, NormSite site, const at::Tensor& x,
                       const RunPlan& plan) const;
  // x @ w.T + b, then the plan's per-row corrections of (layer, site).
  at::Tensor Linear(const at::Tensor& x, const LinearWeights& w, int64_t layer, LinearSite site,
                    const RunPlan& plan) const;
  at::Tensor Norm(const NormWeights& w, const at::Tensor& x, const at::Tensor& gamma_override) const;
  at::Tensor Activate(const at::Tensor& x) const;

  ModelConfig config_;
  TransformerWeights weights_;
  at::Tensor lm_head_padded_;       // [vocab rounded up, d] on CUDA (weights_.lm_head is a view), else lm_head
  at::Tensor lm_head_bias_padded_;  // the same for lm_head_bias; undefined without one
  at::Tensor inv_freq_;             // [rotary_dim / 2] float32 on the device; undefined without rotary
  at::Tensor sliding_inv_freq_;     // the same for the sliding layers when they differ, else undefined
};

}  // namespace lesion::model

#endif  // LESION_MODEL_TRANSFORMER_H_
