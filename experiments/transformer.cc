#include "experiments/transformer.h"

#include <c10/core/InferenceMode.h>

#include <cmath>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "experiments/torch_util.h"

namespace lesion::experiments {
namespace {

// HF's rotate_half: [x1, x2] -> [-x2, x1] over the last dim.
at::Tensor RotateHalf(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

// Inverse rotary frequencies exactly as transformers computes them (float32 throughout).
at::Tensor InverseFrequencies(const RopeConfig& rope, int64_t head_dim, at::Device device) {
  const auto f32 = at::TensorOptions().dtype(at::kFloat).device(device);
  at::Tensor exponent =
      at::arange(0, head_dim, 2, at::TensorOptions().dtype(at::kLong).device(device)).to(at::kFloat) /
      static_cast<float>(head_dim);
  at::Tensor inv_freq = 1.0 / at::pow(rope.theta, exponent);
  switch (rope.scaling) {
    case RopeScaling::kNone:
      return inv_freq;
    case RopeScaling::kLinear:
      return inv_freq / rope.factor;
    case RopeScaling::kLlama3: {
      const double old_len = static_cast<double>(rope.original_max_position_embeddings);
      const double low_freq_wavelen = old_len / rope.low_freq_factor;
      const double high_freq_wavelen = old_len / rope.high_freq_factor;
      at::Tensor wavelen = 2 * M_PI / inv_freq;
      at::Tensor scaled = at::where(wavelen > low_freq_wavelen, inv_freq / rope.factor, inv_freq);
      at::Tensor smooth = (old_len / wavelen - rope.low_freq_factor) /
                          (rope.high_freq_factor - rope.low_freq_factor);
      at::Tensor smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled;
      at::Tensor is_medium = at::logical_not(wavelen < high_freq_wavelen)
                                 .logical_and(at::logical_not(wavelen > low_freq_wavelen));
      return at::where(is_medium, smoothed, scaled).to(f32);
    }
  }
  return inv_freq;
}

}  // namespace

Transformer::Transformer(ModelConfig config, TransformerWeights weights, at::Tensor inv_freq)
    : config_(std::move(config)), weights_(std::move(weights)), inv_freq_(std::move(inv_freq)) {}

absl::StatusOr<Transformer> Transformer::Create(ModelConfig config, TransformerWeights weights) {
  if (static_cast<int64_t>(weights.blocks.size()) != config.n_layers) {
    return absl::InvalidArgumentError(absl::StrCat("weights hold ", weights.blocks.size(),
                                                   " blocks, config says ", config.n_layers));
  }
  return TorchCall("building rotary tables", [&]() -> absl::StatusOr<Transformer> {
    at::Tensor inv_freq;
    if (config.rope.has_value()) {
      inv_freq = InverseFrequencies(*config.rope, config.head_dim, weights.embed.device());
    }
    return Transformer(std::move(config), std::move(weights), std::move(inv_freq));
  });
}

absl::StatusOr<at::Tensor> Transformer::Forward(const at::Tensor& ids, const RunPlan& plan) const {
  if (!ids.defined() || ids.dim() != 2 || ids.size(0) == 0 || ids.size(1) == 0) {
    return absl::InvalidArgumentError("token ids must be a non-empty [batch, seq] tensor");
  }
  if (plan.n_layers() != config_.n_layers) {
    return absl::InvalidArgumentError(absl::StrCat("run plan is for ", plan.n_layers(),
                                                   " layers, the model has ", config_.n_layers));
  }
  if (config_.learned_positions && ids.size(1) > config_.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("sequence of ", ids.size(1),
                                                   " tokens is longer than the model's ",
                                                   config_.max_position_embeddings, " positions"));
  }
  return TorchCall(absl::StrCat("forward pass of ", config_.architecture),
                   [&]() -> absl::StatusOr<at::Tensor> {
                     c10::InferenceMode guard;
                     // An out-of-range id on CUDA would poison the context: check first.
                     const int64_t lo = ids.min().item<int64_t>();
                     const int64_t hi = ids.max().item<int64_t>();
                     if (lo < 0 || hi >= config_.vocab_size) {
                       return absl::InvalidArgumentError(absl::StrCat(
                           "token id ", lo < 0 ? lo : hi, " out of range: vocabulary has ",
                           config_.vocab_size, " ids"));
                     }
                     at::Tensor logits = ForwardUnchecked(ids, plan);
                     if (!logits.defined()) return absl::CancelledError("forward pass interrupted");
                     return logits;
                   });
}

at::Tensor Transformer::ForwardUnchecked(const at::Tensor& ids_in, const RunPlan& plan) const {
  const at::Tensor ids = ids_in.to(device(), at::kLong);  // [b, s]
  const int64_t seq = ids.size(1);

  at::Tensor x = at::embedding(weights_.embed, ids);  // [b, s, d]
  if (config_.learned_positions) {
    x = x + weights_.positions.narrow(0, 0, seq);
  }
  plan.Apply({SiteKind::kEmbed, -1}, x);

  at::Tensor cos, sin;  // [s, hd] in the model dtype
  if (inv_freq_.defined()) {
    at::Tensor pos = at::arange(seq, at::TensorOptions().dtype(at::kLong).device(device()))
                         .to(at::kFloat);
    at::Tensor freqs = at::outer(pos, inv_freq_);  // [s, hd/2] float32
    at::Tensor emb = at::cat({freqs, freqs}, -1);  // [s, hd]
    cos = emb.cos().to(dtype());
    sin = emb.sin().to(dtype());
  }

  for (int64_t l = 0; l < config_.n_layers; ++l) {
    if (plan.Interrupted()) return at::Tensor();  // Forward reports Cancelled
    x = Block(l, std::move(x), cos, sin, plan);
  }

  at::Tensor h = Norm(weights_.final_norm, x);  // [b, s, d]
  plan.Apply({SiteKind::kFinalNorm, -1}, h);
  at::Tensor logits = at::linear(h, weights_.lm_head);  // [b, s, vocab]
  plan.Apply({SiteKind::kLogits, -1}, logits);
  return logits;
}

at::Tensor Transformer::Block(int64_t l, at::Tensor x, const at::Tensor& cos, const at::Tensor& sin,
                              const RunPlan& plan) const {
  const BlockWeights& w = weights_.blocks[l];

  at::Tensor h = Norm(w.attn_norm, x);  // [b, s, d]
  plan.Apply({SiteKind::kAttnIn, l}, h);
  at::Tensor z = Attention(l, h, cos, sin, plan);  // [b, s, heads, hd]
  plan.Apply({SiteKind::kAttnZ, l}, z);
  at::Tensor attn_out = at::linear(z.flatten(2), w.o.weight, w.o.bias);  // [b, s, d]
  plan.Apply({SiteKind::kAttnOut, l}, attn_out);
  at::Tensor resid_mid = x + attn_out;  // [b, s, d]
  plan.Apply({SiteKind::kResidMid, l}, resid_mid);

  at::Tensor m = Norm(w.mlp_norm, resid_mid);  // [b, s, d]
  plan.Apply({SiteKind::kMlpIn, l}, m);
  at::Tensor act;  // [b, s, ffn]
  if (config_.gated_mlp) {
    at::Tensor gu = at::linear(m, w.gate_up.weight, w.gate_up.bias);  // [b, s, 2 ffn]
    act = Activate(gu.narrow(-1, 0, config_.d_ffn)) * gu.narrow(-1, config_.d_ffn, config_.d_ffn);
  } else {
    act = Activate(at::linear(m, w.up.weight, w.up.bias));
  }
  plan.Apply({SiteKind::kMlpAct, l}, act);
  at::Tensor mlp_out = at::linear(act, w.down.weight, w.down.bias);  // [b, s, d]
  plan.Apply({SiteKind::kMlpOut, l}, mlp_out);
  at::Tensor resid_post = resid_mid + mlp_out;  // [b, s, d]
  plan.Apply({SiteKind::kResidPost, l}, resid_post);
  return resid_post;
}

at::Tensor Transformer::Attention(int64_t l, const at::Tensor& h, const at::Tensor& cos,
                                  const at::Tensor& sin, const RunPlan& plan) const {
  const BlockWeights& w = weights_.blocks[l];
  const int64_t b = h.size(0), s = h.size(1);
  const int64_t n_heads = config_.n_heads, n_kv = config_.n_kv_heads, hd = config_.head_dim;

  at::Tensor qkv = at::linear(h, w.qkv.weight, w.qkv.bias);  // [b, s, (heads + 2 kv) hd]
  at::Tensor q = qkv.narrow(-1, 0, n_heads * hd).view({b, s, n_heads, hd}).transpose(1, 2);
  at::Tensor k = qkv.narrow(-1, n_heads * hd, n_kv * hd).view({b, s, n_kv, hd}).transpose(1, 2);
  at::Tensor v =
      qkv.narrow(-1, (n_heads + n_kv) * hd, n_kv * hd).view({b, s, n_kv, hd}).transpose(1, 2);
  // q: [b, heads, s, hd]; k, v: [b, kv, s, hd]
  if (cos.defined()) {
    q = q * cos + RotateHalf(q) * sin;
    k = k * cos + RotateHalf(k) * sin;
  }
  if (n_kv != n_heads) {  // GQA: each KV head serves heads / kv consecutive query heads
    const int64_t rep = n_heads / n_kv;
    k = k.unsqueeze(2).expand({b, n_kv, rep, s, hd}).reshape({b, n_heads, s, hd});
    v = v.unsqueeze(2).expand({b, n_kv, rep, s, hd}).reshape({b, n_heads, s, hd});
  }

  const auto& window = config_.sliding_window[l];
  at::Tensor allowed;  // [s, s] bool: query q may attend key k
  if (window.has_value() || plan.NeedsExplicitAttention(l)) {
    at::Tensor idx = at::arange(s, at::TensorOptions().dtype(at::kLong).device(h.device()));
    at::Tensor diff = idx.unsqueeze(1) - idx.unsqueeze(0);  // q - k
    allowed = diff >= 0;
    if (window.has_value()) allowed = allowed.logical_and(diff < *window);
  }

  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  at::Tensor out;  // [b, heads, s, hd]
  if (!plan.NeedsExplicitAttention(l)) {
    if (allowed.defined()) {
      out = at::scaled_dot_product_attention(q, k, v, allowed, 0.0, /*is_causal=*/false, scale);
    } else {
      out = at::scaled_dot_product_attention(q, k, v, {}, 0.0, /*is_causal=*/true, scale);
    }
  } else {
    at::Tensor scores = at::matmul(q, k.transpose(-1, -2)) * scale;  // [b, heads, q, k]
    scores = scores.masked_fill(allowed.logical_not(), -std::numeric_limits<double>::infinity());
    const auto& bias = plan.attention_bias(l);
    at::Tensor bias_value;  // [heads, 1, hd]
    if (bias.has_value()) {
      const int64_t rep = n_heads / n_kv;
      at::Tensor bias_key = bias->key.to(q.options()).repeat_interleave(rep, 0);  // [heads, hd]
      bias_value = bias->value.to(q.options()).repeat_interleave(rep, 0).unsqueeze(1);
      at::Tensor extra = at::matmul(q, bias_key.unsqueeze(-1)) * scale;  // [b, heads, q, 1]
      scores = at::cat({scores, extra}, -1);                              // [b, heads, q, k + 1]
    }
    at::Tensor pattern = at::softmax(scores, -1, at::kFloat).to(q.scalar_type());
    plan.Apply({SiteKind::kAttnPattern, l}, pattern);
    if (bias.has_value()) {
      out = at::matmul(pattern.narrow(-1, 0, s), v) + pattern.narrow(-1, s, 1) * bias_value;
    } else {
      out = at::matmul(pattern, v);
    }
  }
  return out.transpose(1, 2);  // [b, s, heads, hd]
}

at::Tensor Transformer::Norm(const NormWeights& w, const at::Tensor& x) const {
  if (config_.norm == NormKind::kLayerNorm) {
    return at::layer_norm(x, {x.size(-1)}, w.weight, w.bias, config_.norm_eps);
  }
  // HF's RMSNorm: normalise in float32, cast back, then scale by gamma.
  at::Tensor h = x.to(at::kFloat);
  h = h * at::rsqrt(h.pow(2).mean(-1, /*keepdim=*/true) + config_.norm_eps);
  return w.weight * h.to(x.scalar_type());
}

at::Tensor Transformer::Activate(const at::Tensor& x) const {
  switch (config_.activation) {
    case Activation::kGeluTanh:
      return at::gelu(x, "tanh");
    case Activation::kGelu:
      return at::gelu(x);
    case Activation::kSilu:
      return at::silu(x);
    case Activation::kRelu:
      return at::relu(x);
  }
  return x;
}

}  // namespace lesion::experiments
