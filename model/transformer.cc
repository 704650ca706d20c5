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

Transformer::Transformer(ModelConfig config, TransformerWeights weights, at::Tensor lm_head_padded,
                         at::Tensor lm_head_bias_padded, at::Tensor inv_freq, at::Tensor sliding_inv_freq)
    : config_(std::move(config)),
      weights_(std::move(weights)),
      lm_head_padded_(std::move(lm_head_padded)),
      lm_head_bias_padded_(std::move(lm_head_bias_padded)),
      inv_freq_(std::move(inv_freq)),
      sliding_inv_freq_(std::move(sliding_inv_freq)) {}

absl::StatusOr<Transformer> Transformer::Create(ModelConfig config, TransformerWeights weights) {
  if (static_cast<int64_t>(weights.blocks.size()) != config.n_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("weights hold ", weights.blocks.size(), " blocks, config says ", config.n_layers));
  }
  if (config.rotary_dim == 0) config.rotary_dim = config.head_dim;  // a config built by hand: the whole head
  return TorchCall("building rotary tables and the output head", [&]() -> absl::StatusOr<Transformer> {
    at::Tensor inv_freq, sliding_inv_freq;
    if (config.rope.has_value()) {
      inv_freq = InverseFrequencies(*config.rope, config.rotary_dim, weights.embed.device());
    }
    if (config.sliding_rope.has_value()) {
      sliding_inv_freq = InverseFrequencies(*config.sliding_rope, config.rotary_dim, weights.embed.device());
    }
    at::Tensor head = weights.lm_head, head_bias = weights.lm_head_bias;
    const int64_t vocab = head.size(0);
    if (head.is_cuda() && vocab % kHeadRowAlignment != 0) {
      const int64_t padded_rows = (vocab + kHeadRowAlignment - 1) / kHeadRowAlignment * kHeadRowAlignment;
      const bool tied = weights.lm_head.is_same(weights.embed);
      at::Tensor padded = at::zeros({padded_rows, head.size(1)}, head.options());  // [padded, d]
      padded.narrow(0, 0, vocab).copy_(head);
      head = padded;
      weights.lm_head = padded.narrow(0, 0, vocab);  // the original is freed with its last reference
      if (tied) weights.embed = weights.lm_head;
      if (head_bias.defined()) {
        at::Tensor padded_bias = at::zeros({padded_rows}, head_bias.options());  // [padded]
        padded_bias.narrow(0, 0, vocab).copy_(head_bias);
        head_bias = padded_bias;
        weights.lm_head_bias = padded_bias.narrow(0, 0, vocab);
      }
    }
    return Transformer(std::move(config), std::move(weights), std::move(head), std::move(head_bias),
                       std::move(inv_freq), std::move(sliding_inv_freq));
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
  if (config_.learned_positions && ids.size(1) > config_.max_position_embeddings) {  // past the table's end
    return absl::InvalidArgumentError(absl::StrCat("sequence of ", ids.size(1), " tokens is longer than the model's ",
                                                   config_.max_position_embeddings, " positions"));
  }
  return absl::OkStatus();
}

absl::StatusOr<at::Tensor> Transformer::Embed(const at::Tensor& ids, const RunPlan& plan, int64_t offset) const {
  // An out-of-range id on CUDA would poison the context: check first.
  const int64_t lo = ids.min().item<int64_t>();
  const int64_t hi = ids.max().item<int64_t>();
  if (lo < 0 || hi >= config_.vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("token id ", lo < 0 ? lo : hi, " out of range: vocabulary has ", config_.vocab_size, " ids"));
  }
  const at::Tensor input = ids.to(device(), at::kLong);  // [b, s]
  at::Tensor x = at::embedding(weights_.embed, input);   // [b, s, d]
  if (config_.embed_scale != 1.0) {
    // Gemma multiplies by sqrt(d_model) rounded to the model dtype first, as a tensor of that dtype.
    x = x * at::scalar_tensor(config_.embed_scale, x.options());
  }
  if (config_.learned_positions) {
    x = x + weights_.positions.narrow(0, config_.position_offset + offset, input.size(1));
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

absl::StatusOr<at::Tensor> Transformer::ForwardCached(const at::Tensor& ids, const RunPlan& plan,
                                                      KvCache& cache) const {
  if (absl::Status s = CheckInput(ids, plan); !s.ok()) return s;
  const int64_t past = cache.length;
  if (config_.learned_positions && past + ids.size(1) > config_.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("sequence of ", past + ids.size(1),
                                                   " tokens is longer than the model's ",
                                                   config_.max_position_embeddings, " positions"));
  }
  if (past > 0 && (cache.keys.empty() || !cache.keys[0].defined() || cache.keys[0].size(0) != ids.size(0))) {
    return absl::InvalidArgumentError("the cache holds a different batch of sequences");
  }
  return TorchCall(absl::StrCat("cached forward pass of ", config_.architecture), [&]() -> absl::StatusOr<at::Tensor> {
    c10::InferenceMode guard;
    absl::StatusOr<at::Tensor> x = Embed(ids, plan, past);
    if (!x.ok()) return x.status();
    if (cache.keys.empty()) {
      cache.keys.resize(config_.n_layers);
      cache.values.resize(config_.n_layers);
    }
    at::Tensor out = RunBlocks(*std::move(x), 0, config_.n_layers, plan, &cache);
    if (!out.defined()) return absl::CancelledError("forward pass interrupted");
    cache.length = past + ids.size(1);
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

Transformer::RotaryTables Transformer::MakeRotaryTables(int64_t seq, int64_t offset) const {
  auto table = [&](const at::Tensor& inv_freq) -> RotaryTable {
    if (!inv_freq.defined()) return {};
    at::Tensor pos =
        at::arange(offset, offset + seq, at::TensorOptions().dtype(at::kLong).device(device())).to(at::kFloat);
    at::Tensor freqs = at::outer(pos, inv_freq);                                  // [s, rd/2] float32
    at::Tensor cos = at::cat({freqs, freqs}, -1).cos().to(dtype()).unsqueeze(1);  // [s, 1, rd]
    // rotate_half(x) * sin == swap_halves(x) * [-sin_1, sin_2]: the sign moves into the table.
    at::Tensor sin = at::cat({-freqs.sin(), freqs.sin()}, -1).to(dtype()).unsqueeze(1);  // [s, 1, rd]
    return {cos, sin};
  };
  return {table(inv_freq_), table(sliding_inv_freq_)};
}

at::Tensor Transformer::RunBlocks(at::Tensor x, int64_t begin, int64_t end, const RunPlan& plan, KvCache* cache) const {
  const RotaryTables rotary = MakeRotaryTables(x.size(1), cache != nullptr ? cache->length : 0);
  for (int64_t l = begin; l < end; ++l) {
    if (plan.Interrupted()) return at::Tensor();  // the caller reports Cancelled
    x = Block(l, std::move(x), rotary, plan, cache);
  }
  return x;
}

at::Tensor Transformer::Head(const at::Tensor& x, const RunPlan& plan) const {
  at::Tensor h = Norm(weights_.final_norm, x, plan.norm_gamma(-1, NormSite::kFinal));  // [b, s, d]
  plan.Apply({SiteKind::kFinalNorm, -1}, h);
  // [b, s, vocab], a view of the padded head's output on CUDA
  at::Tensor logits = at::linear(h, lm_head_padded_, lm_head_bias_padded_).narrow(-1, 0, config_.vocab_size);
  if (config_.final_softcap.has_value()) {
    const double cap = *config_.final_softcap;
    logits = at::tanh(logits / cap) * cap;  // as transformers: divide, tanh, multiply
  }
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

at::Tensor Transformer::BlockNorm(const NormWeights& w, int64_t layer, NormSite site, const at::Tensor& x,
                                  const RunPlan& plan) const {
  return Norm(w, x, plan.norm_gamma(layer, site));
}

at::Tensor Transformer::Block(int64_t l, at::Tensor x, const RotaryTables& rotary, const RunPlan& plan,
                              KvCache* cache) const {
  const BlockWeights& w = weights_.blocks[l];
  const BlockLayout layout = config_.block_layout;

  // [b, s, d]: the attention's input; without pre-norms (OLMo-2) the residual stream itself.
  at::Tensor h = config_.pre_norms ? BlockNorm(w.attn_norm, l, NormSite::kAttn, x, plan) : x;
  // Phi-2's MLP reads the same normed tensor, as it was before any attn_in hook.
  const at::Tensor shared_norm_out = h;
  plan.Apply({SiteKind::kAttnIn, l}, h);
  at::Tensor z = Attention(l, h, rotary, plan, cache);  // [b, s, heads, hd]
  plan.Apply({SiteKind::kAttnZ, l}, z);
  at::Tensor attn_out = Linear(z.flatten(2), w.o, l, LinearSite::kO, plan);  // [b, s, d]
  if (config_.post_norms) attn_out = BlockNorm(w.attn_post_norm, l, NormSite::kAttnPost, attn_out, plan);
  plan.Apply({SiteKind::kAttnOut, l}, attn_out);
  at::Tensor resid_mid = x + attn_out;  // [b, s, d]; parallel blocks: not what the MLP reads
  plan.Apply({SiteKind::kResidMid, l}, resid_mid);

  at::Tensor m;  // [b, s, d]: the MLP's input
  if (layout == BlockLayout::kParallelSharedNorm) {
    m = shared_norm_out;
  } else {
    const at::Tensor& stream = layout == BlockLayout::kParallel ? x : resid_mid;
    m = config_.pre_norms ? BlockNorm(w.mlp_norm, l, NormSite::kMlp, stream, plan) : stream;
  }
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
  if (config_.post_norms) mlp_out = BlockNorm(w.mlp_post_norm, l, NormSite::kMlpPost, mlp_out, plan);
  plan.Apply({SiteKind::kMlpOut, l}, mlp_out);
  at::Tensor resid_post = resid_mid + mlp_out;  // [b, s, d]
  plan.Apply({SiteKind::kResidPost, l}, resid_post);
  return resid_post;
}

at::Tensor Transformer::Rotate(const at::Tensor& x, const RotaryTable& table) const {
  // HF's x * cos + rotate_half(x) * sin on the first rotary_dim dims; rotate_half is a swap of the
  // two halves here, its sign being in the sin table.
  const int64_t b = x.size(0), s = x.size(1), n = x.size(2), hd = x.size(3), rd = config_.rotary_dim;
  const at::Tensor part = rd == hd ? x : x.narrow(-1, 0, rd);  // [b, s, n, rd]
  at::Tensor swapped = part.reshape({b, s, n, 2, rd / 2}).flip(3).reshape({b, s, n, rd});
  at::Tensor rotated = at::addcmul(part * table.cos, swapped, table.sin);
  return rd == hd ? rotated : at::cat({rotated, x.narrow(-1, rd, hd - rd)}, -1);
}

at::Tensor Transformer::Attention(int64_t l, const at::Tensor& h, const RotaryTables& rotary, const RunPlan& plan,
                                  KvCache* cache) const {
  const BlockWeights& w = weights_.blocks[l];
  const int64_t b = h.size(0), s = h.size(1);
  const int64_t n_heads = config_.n_heads, n_kv = config_.n_kv_heads, hd = config_.head_dim;
  const auto& window = config_.sliding_window[l];
  const RotaryTable& table = window.has_value() && rotary.sliding.cos.defined() ? rotary.sliding : rotary.full;

  at::Tensor qkv = Linear(h, w.qkv, l, LinearSite::kQkv, plan);  // [b, s, (heads + 2 kv) hd]
  at::Tensor q, k;                                               // [b, heads | kv, s, hd]
  if (config_.qk_norm == QkNorm::kNone) {
    // q and k side by side, rotated at once: [b, s, heads + kv, hd]
    at::Tensor qk = qkv.narrow(-1, 0, (n_heads + n_kv) * hd).view({b, s, n_heads + n_kv, hd});
    if (table.cos.defined()) qk = Rotate(qk, table);
    q = qk.narrow(2, 0, n_heads).transpose(1, 2);
    k = qk.narrow(2, n_heads, n_kv).transpose(1, 2);
  } else {
    at::Tensor q_flat = qkv.narrow(-1, 0, n_heads * hd);          // [b, s, heads hd]
    at::Tensor k_flat = qkv.narrow(-1, n_heads * hd, n_kv * hd);  // [b, s, kv hd]
    at::Tensor q_gamma = plan.norm_gamma(l, NormSite::kQ), k_gamma = plan.norm_gamma(l, NormSite::kK);
    if (config_.qk_norm == QkNorm::kFullWidth) {  // OLMo-2: over the whole projection, then split
      q = Norm(w.q_norm, q_flat, q_gamma).reshape({b, s, n_heads, hd});
      k = Norm(w.k_norm, k_flat, k_gamma).reshape({b, s, n_kv, hd});
    } else {  // per head; a sweep's per-row gamma [rows, 1, hd] broadcasts over the heads
      q = Norm(w.q_norm, q_flat.reshape({b, s, n_heads, hd}), q_gamma.defined() ? q_gamma.unsqueeze(1) : q_gamma);
      k = Norm(w.k_norm, k_flat.reshape({b, s, n_kv, hd}), k_gamma.defined() ? k_gamma.unsqueeze(1) : k_gamma);
    }
    if (table.cos.defined()) {
      q = Rotate(q, table);
      k = Rotate(k, table);
    }
    q = q.transpose(1, 2);
    k = k.transpose(1, 2);
  }
  at::Tensor v =
      qkv.narrow(-1, (n_heads + n_kv) * hd, n_kv * hd).view({b, s, n_kv, hd}).transpose(1, 2);  // [b, kv, s, hd]
  // With a cache the queries are the last s of `keys` positions.
  const int64_t past = cache != nullptr ? cache->length : 0;
  if (cache != nullptr) {
    if (past > 0) {
      k = at::cat({cache->keys[l], k}, 2);
      v = at::cat({cache->values[l], v}, 2);
    }
    cache->keys[l] = k;
    cache->values[l] = v;
  }
  const int64_t keys = past + s;
  if (n_kv != n_heads) {  // GQA: each KV head serves heads / kv consecutive query heads
    const int64_t rep = n_heads / n_kv;
    k = k.unsqueeze(2).expand({b, n_kv, rep, keys, hd}).reshape({b, n_heads, keys, hd});
    v = v.unsqueeze(2).expand({b, n_kv, rep, keys, hd}).reshape({b, n_heads, keys, hd});
  }

  // Soft-capped scores have no fused kernel: they take the explicit path.
  const bool explicit_path = plan.NeedsExplicitAttention(l) || config_.attn_softcap.has_value();
  at::Tensor allowed;  // [s, keys] bool: query q may attend key k
  if (window.has_value() || explicit_path || past > 0) {
    const auto long_options = at::TensorOptions().dtype(at::kLong).device(h.device());
    at::Tensor diff = at::arange(past, keys, long_options).unsqueeze(1) - at::arange(keys, long_options).unsqueeze(0);
    allowed = diff >= 0;  // q - k, in positions of the whole sequence
    if (window.has_value()) allowed = allowed.logical_and(diff < *window);
  }

  const double scale = config_.attention_scale.value_or(1.0 / std::sqrt(static_cast<double>(hd)));
  auto softcap = [&](at::Tensor scores) {
    if (!config_.attn_softcap.has_value()) return scores;
    const double cap = *config_.attn_softcap;
    return at::tanh(scores / cap) * cap;  // as transformers: divide, tanh, multiply
  };
  at::Tensor out;  // [b, heads, s, hd]
  if (!explicit_path) {
    if (allowed.defined()) {
      out = at::scaled_dot_product_attention(q, k, v, allowed, 0.0, /*is_causal=*/false, scale);
    } else {
      out = at::scaled_dot_product_attention(q, k, v, {}, 0.0, /*is_causal=*/true, scale);
    }
  } else {
    at::Tensor scores = softcap(at::matmul(q, k.transpose(-1, -2)) * scale);  // [b, heads, q, k]
    scores = scores.masked_fill(allowed.logical_not(), -std::numeric_limits<double>::infinity());
    const auto& bias = plan.attention_bias(l);
    at::Tensor bias_value;  // [heads, 1, hd] or [b, heads, 1, hd]
    if (bias.has_value()) {
      const int64_t rep = n_heads / n_kv;
      const bool batched = bias->rows.defined();
      // [heads, hd] or [b, heads, hd]
      at::Tensor bias_key = bias->key.to(q.options()).repeat_interleave(rep, batched ? 1 : 0);
      bias_value = bias->value.to(q.options()).repeat_interleave(rep, batched ? 1 : 0).unsqueeze(-2);
      // [b, heads, q, 1]: scaled and soft-capped like every key, and outside any window
      at::Tensor extra = softcap(at::matmul(q, bias_key.unsqueeze(-1)) * scale);
      if (batched) {  // rows without the slot give it probability 0
        extra =
            extra.masked_fill(bias->rows.logical_not().view({b, 1, 1, 1}), -std::numeric_limits<double>::infinity());
      }
      scores = at::cat({scores, extra}, -1);  // [b, heads, q, k + 1]
    }
    at::Tensor pattern = at::softmax(scores, -1, at::kFloat).to(q.scalar_type());
    plan.Apply({SiteKind::kAttnPattern, l}, pattern);
    if (bias.has_value()) {
      out = at::matmul(pattern.narrow(-1, 0, keys), v) + pattern.narrow(-1, keys, 1) * bias_value;
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
