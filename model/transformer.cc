#include "model/transformer.h"

#include <c10/core/InferenceMode.h>

#include <cmath>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "model/torch_util.h"

namespace lesion::model {
namespace {

// Inverse rotary frequencies exactly as transformers computes them (float32 throughout).
at::Tensor InverseFrequencies(const RopeConfig& rope, int64_t head_dim, at::Device device) {
  const auto f32 = at::TensorOptions().dtype(at::kFloat).device(device);
  at::Tensor exponent = at::arange(0, head_dim, 2, at::TensorOptions().dtype(at::kLong).device(device)).to(at::kFloat) /
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
      at::Tensor smooth = (old_len / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor);
      at::Tensor smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled;
      at::Tensor is_medium =
          at::logical_not(wavelen < high_freq_wavelen).logical_and(at::logical_not(wavelen > low_freq_wavelen));
      return at::where(is_medium, smoothed, scaled).to(f32);
    }
  }
  return inv_freq;
}

}  // namespace

// Rows of the CUDA output head are padded to this multiple (see transformer.h).
constexpr int64_t kHeadRowAlignment = 64;

Transformer::Transformer(ModelConfig config, TransformerWeights weights, at::Tensor lm_head_padded, at::Tensor inv_freq)
    : config_(std::move(config)),
      weights_(std::move(weights)),
      lm_head_padded_(std::move(lm_head_padded)),
      inv_freq_(std::move(inv_freq)) {}

absl::StatusOr<Transformer> Transformer::Create(ModelConfig config, TransformerWeights weights) {
  if (static_cast<int64_t>(weights.blocks.size()) != config.n_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("weights hold ", weights.blocks.size(), " blocks, config says ", config.n_layers));
  }
  return TorchCall("building rotary tables and the output head", [&]() -> absl::StatusOr<Transformer> {
    at::Tensor inv_freq;
    if (config.rope.has_value()) {
      inv_freq = InverseFrequencies(*config.rope, config.head_dim, weights.embed.device());
    }
    at::Tensor head = weights.lm_head;
    const int64_t vocab = head.size(0);
    if (head.is_cuda() && vocab % kHeadRowAlignment != 0) {
      const int64_t padded_rows = (vocab + kHeadRowAlignment - 1) / kHeadRowAlignment * kHeadRowAlignment;
      const bool tied = weights.lm_head.is_same(weights.embed);
      at::Tensor padded = at::zeros({padded_rows, head.size(1)}, head.options());  // [padded, d]
      padded.narrow(0, 0, vocab).copy_(head);
      head = padded;
      weights.lm_head = padded.narrow(0, 0, vocab);  // the original is freed with its last reference
      if (tied) weights.embed = weights.lm_head;
    }
    return Transformer(std::move(config), std::move(weights), std::move(head), std::move(inv_freq));
  });
}

absl::Status Transformer::CheckInput(const at::Tensor& ids, const RunPlan& plan) const {
  if (!ids.defined() || ids.dim() != 2 || ids.size(0) == 0 || ids.size(1) == 0) {
    return absl::InvalidArgumentError("token ids must be a non-empty [batch, seq] tensor");
  }
  if (plan.n_layers() != config_.n_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("run plan is for ", plan.n_layers(), " layers, the model has ", config_.n_layers));
  }
  if (config_.learned_positions && ids.size(1) > config_.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("sequence of ", ids.size(1), " tokens is longer than the model's ",
                                                   config_.max_position_embeddings, " positions"));
  }
  return absl::OkStatus();
}

absl::StatusOr<at::Tensor> Transformer::Embed(const at::Tensor& ids, const RunPlan& plan) const {
  // An out-of-range id on CUDA would poison the context: check first.
  const int64_t lo = ids.min().item<int64_t>();
  const int64_t hi = ids.max().item<int64_t>();
  if (lo < 0 || hi >= config_.vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("token id ", lo < 0 ? lo : hi, " out of range: vocabulary has ", config_.vocab_size, " ids"));
  }
  const at::Tensor input = ids.to(device(), at::kLong);  // [b, s]
  at::Tensor x = at::embedding(weights_.embed, input);   // [b, s, d]
  if (config_.learned_positions) {
    x = x + weights_.positions.narrow(0, 0, input.size(1));
  }
  plan.Apply({SiteKind::kEmbed, -1}, x);
  return x;
}

absl::StatusOr<at::Tensor> Transformer::Forward(const at::Tensor& ids, const RunPlan& plan) const {
  if (absl::Status s = CheckInput(ids, plan); !s.ok()) return s;
  return TorchCall(absl::StrCat("forward pass of ", config_.architecture), [&]() -> absl::StatusOr<at::Tensor> {
    c10::InferenceMode guard;
    absl::StatusOr<at::Tensor> x = Embed(ids, plan);
    if (!x.ok()) return x.status();
    at::Tensor out = RunBlocks(*std::move(x), 0, config_.n_layers, plan);
    if (!out.defined()) return absl::CancelledError("forward pass interrupted");
    return Head(out, plan);
  });
}

absl::StatusOr<at::Tensor> Transformer::ForwardPrefix(const at::Tensor& ids, int64_t end_layer,
                                                      const RunPlan& plan) const {
  if (absl::Status s = CheckInput(ids, plan); !s.ok()) return s;
  if (end_layer < 0 || end_layer > config_.n_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("end layer ", end_layer, " out of range [0, ", config_.n_layers, "]"));
  }
  return TorchCall(absl::StrCat("forward pass of ", config_.architecture, " up to layer ", end_layer),
                   [&]() -> absl::StatusOr<at::Tensor> {
                     c10::InferenceMode guard;
                     absl::StatusOr<at::Tensor> x = Embed(ids, plan);
                     if (!x.ok()) return x.status();
                     at::Tensor out = RunBlocks(*std::move(x), 0, end_layer, plan);
                     if (!out.defined()) return absl::CancelledError("forward pass interrupted");
                     return out;
                   });
}

absl::StatusOr<at::Tensor> Transformer::ForwardFrom(const at::Tensor& resid, int64_t first_layer,
                                                    const RunPlan& plan) const {
  if (first_layer < 0 || first_layer > config_.n_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("first layer ", first_layer, " out of range [0, ", config_.n_layers, "]"));
  }
  if (!resid.defined() || resid.dim() != 3 || resid.size(0) == 0 || resid.size(1) == 0 ||
      resid.size(2) != config_.d_model) {
    return absl::InvalidArgumentError(
        absl::StrCat("the residual stream must be a non-empty [batch, seq, ", config_.d_model, "] tensor"));
  }
  if (plan.n_layers() != config_.n_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("run plan is for ", plan.n_layers(), " layers, the model has ", config_.n_layers));
  }
  return TorchCall(absl::StrCat("forward pass of ", config_.architecture, " from layer ", first_layer),
                   [&]() -> absl::StatusOr<at::Tensor> {
                     c10::InferenceMode guard;
                     at::Tensor x = RunBlocks(resid.to(device(), dtype()), first_layer, config_.n_layers, plan);
                     if (!x.defined()) return absl::CancelledError("forward pass interrupted");
                     return Head(x, plan);
                   });
}

std::pair<at::Tensor, at::Tensor> Transformer::RotaryTables(int64_t seq) const {
  if (!inv_freq_.defined()) return {};
  at::Tensor pos = at::arange(seq, at::TensorOptions().dtype(at::kLong).device(device())).to(at::kFloat);
  at::Tensor freqs = at::outer(pos, inv_freq_);                                 // [s, hd/2] float32
  at::Tensor cos = at::cat({freqs, freqs}, -1).cos().to(dtype()).unsqueeze(1);  // [s, 1, hd]
  // rotate_half(x) * sin == swap_halves(x) * [-sin_1, sin_2]: the sign moves into the table.
  at::Tensor sin = at::cat({-freqs.sin(), freqs.sin()}, -1).to(dtype()).unsqueeze(1);  // [s, 1, hd]
  return {cos, sin};
}

at::Tensor Transformer::RunBlocks(at::Tensor x, int64_t begin, int64_t end, const RunPlan& plan) const {
  const auto [cos, sin] = RotaryTables(x.size(1));
  for (int64_t l = begin; l < end; ++l) {
    if (plan.Interrupted()) return at::Tensor();  // the caller reports Cancelled
    x = Block(l, std::move(x), cos, sin, plan);
  }
  return x;
}

at::Tensor Transformer::Head(const at::Tensor& x, const RunPlan& plan) const {
  at::Tensor h = Norm(weights_.final_norm, x, plan.norm_gamma(-1, NormSite::kFinal));  // [b, s, d]
  plan.Apply({SiteKind::kFinalNorm, -1}, h);
  // [b, s, vocab], a view of the padded head's output on CUDA
  at::Tensor logits = at::linear(h, lm_head_padded_).narrow(-1, 0, config_.vocab_size);
  plan.Apply({SiteKind::kLogits, -1}, logits);
  return logits;
}

at::Tensor Transformer::Linear(const at::Tensor& x, const LinearWeights& w, int64_t layer, LinearSite site,
                               const RunPlan& plan) const {
  at::Tensor out = at::linear(x, w.weight, w.bias);  // [b, s, out]
  for (const LinearCorrection& c : plan.linear_corrections(layer, site)) {
    // out[b, :, row] += delta[b] * x[b, :, col], in float32
    at::Tensor column = out.select(-1, c.row);  // [b, s]
    at::Tensor corrected = column.to(at::kFloat) + c.delta.view({-1, 1}) * x.select(-1, c.col).to(at::kFloat);
    column.copy_(corrected);
  }
  return out;
}

at::Tensor Transformer::Block(int64_t l, at::Tensor x, const at::Tensor& cos, const at::Tensor& sin,
                              const RunPlan& plan) const {
  const BlockWeights& w = weights_.blocks[l];

  at::Tensor h = Norm(w.attn_norm, x, plan.norm_gamma(l, NormSite::kAttn));  // [b, s, d]
  plan.Apply({SiteKind::kAttnIn, l}, h);
  at::Tensor z = Attention(l, h, cos, sin, plan);  // [b, s, heads, hd]
  plan.Apply({SiteKind::kAttnZ, l}, z);
  at::Tensor attn_out = Linear(z.flatten(2), w.o, l, LinearSite::kO, plan);  // [b, s, d]
  plan.Apply({SiteKind::kAttnOut, l}, attn_out);
  at::Tensor resid_mid = x + attn_out;  // [b, s, d]
  plan.Apply({SiteKind::kResidMid, l}, resid_mid);

  at::Tensor m = Norm(w.mlp_norm, resid_mid, plan.norm_gamma(l, NormSite::kMlp));  // [b, s, d]
  plan.Apply({SiteKind::kMlpIn, l}, m);
  at::Tensor act;  // [b, s, ffn]
  if (config_.gated_mlp) {
    at::Tensor gu = Linear(m, w.gate_up, l, LinearSite::kGateUp, plan);  // [b, s, 2 ffn]
    act = Activate(gu.narrow(-1, 0, config_.d_ffn)) * gu.narrow(-1, config_.d_ffn, config_.d_ffn);
  } else {
    act = Activate(Linear(m, w.up, l, LinearSite::kGateUp, plan));
  }
  plan.Apply({SiteKind::kMlpAct, l}, act);
  at::Tensor mlp_out = Linear(act, w.down, l, LinearSite::kDown, plan);  // [b, s, d]
  plan.Apply({SiteKind::kMlpOut, l}, mlp_out);
  at::Tensor resid_post = resid_mid + mlp_out;  // [b, s, d]
  plan.Apply({SiteKind::kResidPost, l}, resid_post);
  return resid_post;
}

at::Tensor Transformer::Attention(int64_t l, const at::Tensor& h, const at::Tensor& cos, const at::Tensor& sin,
                                  const RunPlan& plan) const {
  const BlockWeights& w = weights_.blocks[l];
  const int64_t b = h.size(0), s = h.size(1);
  const int64_t n_heads = config_.n_heads, n_kv = config_.n_kv_heads, hd = config_.head_dim;

  at::Tensor qkv = Linear(h, w.qkv, l, LinearSite::kQkv, plan);  // [b, s, (heads + 2 kv) hd]
  // q and k side by side: [b, s, heads + kv, hd]
  at::Tensor qk = qkv.narrow(-1, 0, (n_heads + n_kv) * hd).view({b, s, n_heads + n_kv, hd});
  if (cos.defined()) {
    // HF's q * cos + rotate_half(q) * sin, for q and k at once; rotate_half is a swap of the two
    // halves here, its sign being in the sin table.
    at::Tensor swapped = qk.view({b, s, n_heads + n_kv, 2, hd / 2}).flip(3).view({b, s, n_heads + n_kv, hd});
    qk = at::addcmul(qk * cos, swapped, sin);
  }
  at::Tensor q = qk.narrow(2, 0, n_heads).transpose(1, 2);     // [b, heads, s, hd]
  at::Tensor k = qk.narrow(2, n_heads, n_kv).transpose(1, 2);  // [b, kv, s, hd]
  at::Tensor v =
      qkv.narrow(-1, (n_heads + n_kv) * hd, n_kv * hd).view({b, s, n_kv, hd}).transpose(1, 2);  // [b, kv, s, hd]
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
    at::Tensor bias_value;  // [heads, 1, hd] or [b, heads, 1, hd]
    if (bias.has_value()) {
      const int64_t rep = n_heads / n_kv;
      const bool batched = bias->rows.defined();
      // [heads, hd] or [b, heads, hd]
      at::Tensor bias_key = bias->key.to(q.options()).repeat_interleave(rep, batched ? 1 : 0);
      bias_value = bias->value.to(q.options()).repeat_interleave(rep, batched ? 1 : 0).unsqueeze(-2);
      at::Tensor extra = at::matmul(q, bias_key.unsqueeze(-1)) * scale;  // [b, heads, q, 1]
      if (batched) {                                                     // rows without the slot give it probability 0
        extra =
            extra.masked_fill(bias->rows.logical_not().view({b, 1, 1, 1}), -std::numeric_limits<double>::infinity());
      }
      scores = at::cat({scores, extra}, -1);  // [b, heads, q, k + 1]
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

at::Tensor Transformer::Norm(const NormWeights& w, const at::Tensor& x, const at::Tensor& gamma_override) const {
  // gamma_override: [b, 1, d], one gamma per batch row (a sweep's norm-channel resets)
  if (config_.norm == NormKind::kLayerNorm) {
    if (gamma_override.defined()) {
      at::Tensor h = at::layer_norm(x, {x.size(-1)}, {}, {}, config_.norm_eps) * gamma_override;
      return w.bias.defined() ? h + w.bias : h;
    }
    return at::layer_norm(x, {x.size(-1)}, w.weight, w.bias, config_.norm_eps);
  }
  // HF's RMSNorm: normalise in float32, cast back, then scale by gamma. at::rms_norm is that
  // composite on the CPU and one fused kernel on CUDA (which scales before the cast).
  if (gamma_override.defined()) {
    return gamma_override * at::rms_norm(x, {x.size(-1)}, {}, config_.norm_eps);
  }
  return at::rms_norm(x, {x.size(-1)}, w.weight, config_.norm_eps);
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

}  // namespace lesion::model
