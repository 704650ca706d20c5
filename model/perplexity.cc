#include "model/perplexity.h"

#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "model/next_token_ops.h"
#include "model/torch_util.h"

namespace lesion::model {

namespace {

// One window per prompt (the options' prompt_lengths, the ids being the prompts in order).
absl::StatusOr<std::vector<Window>> PlanPromptWindows(int64_t n_ids, const PerplexityOptions& o) {
  const int64_t bos = o.add_bos ? 1 : 0;
  if (o.stride.has_value()) {
    return absl::InvalidArgumentError("a prompt set is one window per prompt: it takes no stride");
  }
  std::vector<Window> windows;
  int64_t begin = 0;
  for (size_t i = 0; i < o.prompt_lengths.size(); ++i) {
    if (o.max_windows.has_value() && static_cast<int64_t>(windows.size()) == *o.max_windows) break;
    const int64_t length = o.prompt_lengths[i];
    if (length + bos < 2) {
      return absl::InvalidArgumentError(
          absl::StrCat("prompt ", i, " has ", length, " token: it predicts none (give it a second token, or add_bos)"));
    }
    if (length + bos > o.seq_len) {
      return absl::InvalidArgumentError(absl::StrCat("prompt ", i, " has ", length + bos, " tokens",
                                                     bos ? " with BOS" : "", ", more than seq_len ", o.seq_len));
    }
    windows.push_back({begin, begin + length, begin + (bos ? 0 : 1)});
    begin += length;
  }
  if (begin > n_ids) {
    return absl::InvalidArgumentError(
        absl::StrCat("prompt lengths add up to ", begin, " tokens, but ", n_ids, " are given"));
  }
  return windows;
}

}  // namespace

absl::StatusOr<std::vector<Window>> PlanWindows(int64_t n_ids, const PerplexityOptions& o) {
  const int64_t bos = o.add_bos ? 1 : 0;
  if (o.seq_len < 2) {
    return absl::InvalidArgumentError(absl::StrCat("seq_len must be at least 2, got ", o.seq_len));
  }
  const int64_t span = o.seq_len - bos;  // text tokens per window
  const int64_t stride = o.stride.value_or(span);
  if (stride < 1 || stride > span) {
    return absl::InvalidArgumentError(absl::StrCat("stride must be in [1, ", span, "], got ", stride));
  }
  if (o.max_windows.has_value() && *o.max_windows < 1) {
    return absl::InvalidArgumentError(absl::StrCat("max_windows must be at least 1, got ", *o.max_windows));
  }
  std::vector<Window> windows;
  if (!o.prompt_lengths.empty()) return PlanPromptWindows(n_ids, o);
  int64_t prev_end = 0;
  for (int64_t begin = 0; begin < n_ids; begin += stride) {
    const int64_t end = std::min(begin + span, n_ids);
    // Without BOS a window's first token has no context and is never scored.
    const int64_t score_begin = std::max(prev_end, begin + (o.add_bos ? 0 : 1));
    if (end > score_begin) windows.push_back({begin, end, score_begin});
    prev_end = end;
    if (end == n_ids) break;
    if (o.max_windows.has_value() && static_cast<int64_t>(windows.size()) == *o.max_windows) break;
  }
  if (windows.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("text of ", n_ids, " tokens is too short to predict any token"));
  }
  return windows;
}

std::string DescribeProtocol(const PerplexityOptions& o) {
  if (!o.prompt_lengths.empty()) {
    std::string s = absl::StrCat("prompt set of ", o.prompt_lengths.size(), " prompts",
                                 o.add_bos ? ", BOS per prompt" : ", no BOS");
    if (o.max_windows.has_value() && *o.max_windows < static_cast<int64_t>(o.prompt_lengths.size())) {
      absl::StrAppend(&s, ", first ", *o.max_windows, " prompts");
    }
    return s;
  }
  std::string s = o.stride.has_value() && *o.stride < o.seq_len - (o.add_bos ? 1 : 0)
                      ? absl::StrCat("sliding windows of ", o.seq_len, " with stride ", *o.stride)
                      : absl::StrCat("non-overlapping windows of ", o.seq_len);
  absl::StrAppend(&s, o.add_bos ? ", BOS per window" : ", no BOS");
  if (o.max_windows.has_value()) absl::StrAppend(&s, ", first ", *o.max_windows, " windows");
  return s;
}

std::vector<int64_t> SequenceOrder(absl::Span<const Window> windows) {
  std::vector<int64_t> order(windows.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return windows[a].end - windows[a].begin > windows[b].end - windows[b].begin;
  });
  return order;
}

absl::StatusOr<std::vector<WindowBatch>> MakeWindowBatches(const Transformer& model, absl::Span<const int32_t> ids,
                                                           const PerplexityOptions& options,
                                                           std::optional<int32_t> bos_id) {
  if (options.add_bos && !bos_id.has_value()) {
    return absl::FailedPreconditionError("add_bos asked for, but the model defines no BOS token");
  }
  if (options.batch_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat("batch_size must be at least 1, got ", options.batch_size));
  }
  const int64_t vocab = model.config().vocab_size;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab) {
      return absl::InvalidArgumentError(
          absl::StrCat("token id ", ids[i], " at position ", i, " out of range: vocabulary has ", vocab, " ids"));
    }
  }
  ASSIGN_OR_RETURN(std::vector<Window> windows, PlanWindows(static_cast<int64_t>(ids.size()), options));
  const int64_t bos = options.add_bos ? 1 : 0;
  const std::vector<int64_t> order = SequenceOrder(windows);
  const Window& longest = windows[order.front()];
  if (model.config().learned_positions && longest.end - longest.begin + bos > model.config().max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("seq_len ", options.seq_len, " is longer than the model's ",
                                                   model.config().max_position_embeddings, " positions"));
  }
  return TorchCall("building window batches", [&] {
    std::vector<WindowBatch> batches;
    int64_t sequence = 0;
    // Runs of equal length in SequenceOrder, cut into batches of at most batch_size.
    for (size_t start = 0; start < order.size();) {
      const int64_t length = windows[order[start]].end - windows[order[start]].begin;
      size_t stop = start;
      while (stop < order.size() && static_cast<int64_t>(stop - start) < options.batch_size &&
             windows[order[stop]].end - windows[order[stop]].begin == length) {
        ++stop;
      }
      const int64_t b = static_cast<int64_t>(stop - start);
      const int64_t n = length + bos;  // input tokens per window
      // Page-locked on the host when the model is on a GPU, so that the copies below are
      // asynchronous (the caching host allocator keeps a block until its copy is done).
      const auto host = at::TensorOptions().pinned_memory(model.device().is_cuda());
      at::Tensor input = at::empty({b, n}, host.dtype(at::kLong));     // [b, n]
      at::Tensor mask = at::zeros({b, n - 1}, host.dtype(at::kBool));  // [b, n - 1]
      auto in = input.accessor<int64_t, 2>();
      auto m = mask.accessor<bool, 2>();
      WindowBatch batch;
      for (int64_t i = 0; i < b; ++i) {
        const Window& w = windows[order[start + i]];
        if (bos) in[i][0] = *bos_id;
        for (int64_t p = w.begin; p < w.end; ++p) in[i][p - w.begin + bos] = ids[p];
        for (int64_t p = w.score_begin; p < w.end; ++p) m[i][p - w.begin + bos - 1] = true;
        batch.window_indices.push_back(order[start + i]);
      }
      batch.input = input.to(model.device(), /*non_blocking=*/true);
      batch.score_mask = mask.to(model.device(), /*non_blocking=*/true);
      batch.first_sequence = sequence;
      sequence += b;
      batches.push_back(std::move(batch));
      start = stop;
    }
    return batches;
  });
}

NextTokenReducer::NextTokenReducer(const std::vector<int32_t>& token_ids, at::Device device, int64_t n_variants,
                                   TokenOutputOptions token_outputs, int64_t n_windows)
    : outputs_(token_outputs) {
  if (outputs_.max_tokens > 0) kept_.resize(n_variants);
  const auto f64 = at::TensorOptions().dtype(at::kDouble).device(device);
  nll_sum_ = at::zeros({n_variants}, f64);
  kl_sum_ = at::zeros({n_variants}, f64);
  token_prob_sum_ = at::zeros({n_variants, static_cast<int64_t>(token_ids.size())}, f64);
  if (!token_ids.empty()) {
    token_ids_ = at::tensor(std::vector<int64_t>(token_ids.begin(), token_ids.end()), at::kLong).to(device);
  }
  if (n_windows > 0) {
    per_window_.nll_sum = at::zeros({n_variants, n_windows}, f64);
    per_window_.last_nll = at::zeros({n_variants, n_windows}, f64);
    per_window_.kl_sum = at::zeros({n_variants, n_windows}, f64);
    per_window_.next_token_prob = at::zeros({n_variants, n_windows, static_cast<int64_t>(token_ids.size())}, f64);
  }
}

void NextTokenReducer::Add(const at::Tensor& logits, const WindowBatch& batch, const at::Tensor& reference,
                           int64_t first_variant) {
  // logits: [g b, n, vocab]; position p of a window predicts its input token p + 1, the last
  // position predicts nothing. Every sum is over a variant's rows in order, so that the result
  // does not depend on how many variants share a pass.
  const int64_t b = batch.input.size(0), n = logits.size(1), vocab = logits.size(2);
  const int64_t g = logits.size(0) / b;
  const auto f64 = logits.options().dtype(at::kDouble);
  const at::Tensor targets = at::cat({batch.input.narrow(1, 1, n - 1), at::zeros({b, 1}, batch.input.options())},
                                     1);                                                                    // [b, n]
  const at::Tensor scored = at::cat({batch.score_mask, at::zeros({b, 1}, batch.score_mask.options())}, 1);  // [b, n]
  const int64_t n_tokens = token_ids_.defined() ? token_ids_.size(0) : 0;
  at::Tensor row_nll = at::empty({g * b}, f64);             // per sequence
  at::Tensor row_prob = at::empty({g * b, n_tokens}, f64);  // per sequence and token
  const bool per_window = per_window_.nll_sum.defined();
  at::Tensor row_last_nll, row_next_prob;  // per sequence: the last token's NLL, p(token | window)
  if (per_window) {
    row_last_nll = at::empty({g * b}, f64);
    row_next_prob = at::empty({g * b, n_tokens}, f64);
  }
  // Sequences per step: the CPU fallback of LogSumExpRows makes a float32 copy of its rows.
  const int64_t step = std::max<int64_t>(1, (int64_t{1} << 28) / std::max<int64_t>(1, n * vocab));
  for (int64_t r = 0; r < g * b; r += step) {
    const int64_t m = std::min(step, g * b - r);
    const at::Tensor windows = at::arange(r, r + m, batch.input.options()).remainder(b);  // [m]
    const at::Tensor rows = logits.narrow(0, r, m).reshape({m * n, vocab});               // [m n, vocab]
    const at::Tensor mask = scored.index_select(0, windows);                              // [m, n]
    const RowLogSumExp lse = LogSumExpRows(rows, targets.index_select(0, windows).reshape({-1}));
    const at::Tensor nll = (lse.lse - lse.target_logit).view({m, n});  // [m, n]
    // where(), not masked_select(): no host-device sync to size the result.
    row_nll.narrow(0, r, m).copy_(at::where(mask, nll, 0.0).sum(1, false, at::kDouble));
    if (per_window) row_last_nll.narrow(0, r, m).copy_(nll.select(1, n - 2));  // predicts the last token
    if (n_tokens > 0) {
      at::Tensor p = (rows.index_select(1, token_ids_).to(at::kFloat) - lse.lse.unsqueeze(1)).exp();  // [m n, T]
      row_prob.narrow(0, r, m).copy_(
          at::where(mask.view({m, n, 1}), p.view({m, n, n_tokens}), 0.0).sum(1, false, at::kDouble));
      // The last position predicts what follows the window.
      if (per_window) row_next_prob.narrow(0, r, m).copy_(p.view({m, n, n_tokens}).select(1, n - 1));
    }
  }
  // Variant and window of each of the g b rows, for the per-window sums.
  at::Tensor row_variant, row_window;
  if (per_window) {
    row_variant = at::arange(first_variant, first_variant + g, batch.input.options()).repeat_interleave(b);
    row_window = at::tensor(batch.window_indices, at::kLong).to(batch.input.device()).repeat({g});
    per_window_.nll_sum.index_put_({row_variant, row_window}, row_nll);
    per_window_.last_nll.index_put_({row_variant, row_window}, row_last_nll);
    if (n_tokens > 0) per_window_.next_token_prob.index_put_({row_variant, row_window}, row_next_prob);
  }
  if (!kept_.empty()) KeepTokenOutputs(logits, batch, targets, first_variant);
  nll_sum_.narrow(0, first_variant, g) += row_nll.view({g, b}).sum(1);
  if (n_tokens > 0) token_prob_sum_.narrow(0, first_variant, g) += row_prob.view({g, b, n_tokens}).sum(1);

  if (reference.defined()) {
    // KL(reference || logits) needs both distributions in full: a few windows at a time.
    // The reference's distribution once per chunk of windows, for every variant.
    at::Tensor row_kl = at::empty({g * b}, f64);
    const int64_t kl_step = std::max<int64_t>(1, step / 3);
    for (int64_t w = 0; w < b; w += kl_step) {
      const int64_t m = std::min(kl_step, b - w);
      at::Tensor log_q = at::log_softmax(reference.narrow(0, w, m).reshape({m * n, vocab}).to(at::kFloat), -1);
      at::Tensor q = log_q.exp();  // [m n, vocab]
      for (int64_t j = 0; j < g; ++j) {
        at::Tensor log_p = at::log_softmax(logits.narrow(0, j * b + w, m).reshape({m * n, vocab}).to(at::kFloat), -1);
        at::Tensor kl = (q * (log_q - log_p)).sum(-1).view({m, n});  // [m, n]
        row_kl.narrow(0, j * b + w, m).copy_(at::where(scored.narrow(0, w, m), kl, 0.0).sum(1, false, at::kDouble));
      }
    }
    kl_sum_.narrow(0, first_variant, g) += row_kl.view({g, b}).sum(1);
    if (per_window) per_window_.kl_sum.index_put_({row_variant, row_window}, row_kl);
  }
}

void NextTokenReducer::KeepTokenOutputs(const at::Tensor& logits, const WindowBatch& batch, const at::Tensor& targets,
                                        int64_t first_variant) {
  const int64_t b = batch.input.size(0), n = logits.size(1), vocab = logits.size(2);
  const int64_t g = logits.size(0) / b;
  // (window in batch, position) of every predicted token, in window order: one sync per batch,
  // paid only when per-token outputs are asked for.
  const at::Tensor where = batch.score_mask.nonzero().to(at::kCPU);  // [count, 2]; position p predicts p + 1
  const int64_t count = where.size(0);
  // The number of each predicted token in window order (rows of `where` run window by window).
  std::vector<int64_t> numbers(count);
  const auto where_at = where.accessor<int64_t, 2>();
  {
    int64_t row = -1, first_position = 0, first_number = 0;
    for (int64_t i = 0; i < count; ++i) {
      if (where_at[i][0] != row) {
        row = where_at[i][0];
        first_position = where_at[i][1];
        first_number =
            outputs_.window_first_token.empty() ? i : outputs_.window_first_token.at(batch.window_indices[row]);
      }
      numbers[i] = first_number + where_at[i][1] - first_position;
    }
  }
  for (int64_t j = 0; j < g; ++j) {
    KeptRows& kept = kept_[first_variant + j];
    const int64_t base = outputs_.window_first_token.empty() ? kept.seen : 0;
    kept.seen += count;
    std::vector<int64_t> picked, windows, indices;
    for (int64_t i = 0; i < count; ++i) {
      const int64_t number = base + numbers[i];
      if (number >= outputs_.offset && number < outputs_.offset + outputs_.max_tokens) {
        picked.push_back(i);
        indices.push_back(number);
        windows.push_back(batch.window_indices[where_at[i][0]]);
      }
    }
    if (picked.empty()) continue;
    const at::Tensor sel = where.index_select(0, at::tensor(picked, at::kLong));
    const at::Tensor in_batch = sel.select(1, 0), pos = sel.select(1, 1);
    const at::Tensor flat = (in_batch * n + pos).to(logits.device());  // rows of a [b n, ...] view
    const at::Tensor x = logits.narrow(0, j * b, b).reshape({b * n, vocab}).index_select(0, flat).to(at::kFloat);
    const at::Tensor target = targets.reshape({-1}).index_select(0, flat);  // [r]
    const at::Tensor lse = at::logsumexp(x, {-1});
    const at::Tensor target_logit = x.gather(1, target.unsqueeze(1)).squeeze(1);
    auto [top_values, top_ids] = x.topk(std::min(outputs_.top_k, vocab), /*dim=*/1);
    kept.index.push_back(at::tensor(indices, at::kLong));
    kept.window.push_back(at::tensor(windows, at::kLong));
    kept.position.push_back(pos + 1);
    kept.target.push_back(target.to(at::kCPU));
    kept.nll.push_back((lse - target_logit).to(at::kCPU, at::kDouble));
    kept.rank.push_back((x > target_logit.unsqueeze(1)).sum(1).to(at::kCPU, at::kLong));
    kept.top_ids.push_back(top_ids.to(at::kCPU));
    kept.top_probs.push_back((top_values - lse.unsqueeze(1)).exp().to(at::kCPU, at::kDouble));
  }
}

TokenOutputTensors NextTokenReducer::token_outputs(int64_t variant) const {
  TokenOutputTensors out;
  if (kept_.empty()) return out;
  const KeptRows& kept = kept_.at(variant);
  out.n_predicted = kept.seen;
  const int64_t k = std::max<int64_t>(0, outputs_.top_k);
  auto cat = [](const std::vector<at::Tensor>& parts, at::ScalarType dtype, std::vector<int64_t> empty_shape) {
    return parts.empty() ? at::empty(empty_shape, at::TensorOptions().dtype(dtype)) : at::cat(parts, 0);
  };
  // Rows in the order of their numbers (batches may have run the windows out of order).
  const at::Tensor order = std::get<1>(cat(kept.index, at::kLong, {0}).sort());
  auto ordered = [&](const std::vector<at::Tensor>& parts, at::ScalarType dtype, std::vector<int64_t> empty_shape) {
    return cat(parts, dtype, std::move(empty_shape)).index_select(0, order);
  };
  out.window = ordered(kept.window, at::kLong, {0});
  out.position = ordered(kept.position, at::kLong, {0});
  out.target = ordered(kept.target, at::kLong, {0});
  out.nll = ordered(kept.nll, at::kDouble, {0});
  out.rank = ordered(kept.rank, at::kLong, {0});
  out.top_ids = ordered(kept.top_ids, at::kLong, {0, k});
  out.top_probs = ordered(kept.top_probs, at::kDouble, {0, k});
  return out;
}

absl::StatusOr<PerplexityResult> EvaluatePerplexity(const Transformer& model, absl::Span<const int32_t> ids,
                                                    const PerplexityOptions& options, std::optional<int32_t> bos_id,
                                                    const RunPlan& plan, const ProgressFn& progress) {
  ASSIGN_OR_RETURN(std::vector<WindowBatch> batches, MakeWindowBatches(model, ids, options, bos_id));
  ASSIGN_OR_RETURN(std::vector<Window> windows, PlanWindows(static_cast<int64_t>(ids.size()), options));
  PerplexityResult result;
  result.n_windows = static_cast<int64_t>(windows.size());
  result.protocol = DescribeProtocol(options);
  for (const Window& w : windows) result.n_tokens += w.end - w.score_begin;

  absl::StatusOr<double> total = TorchCall("perplexity", [&]() -> absl::StatusOr<double> {
    c10::InferenceMode guard;
    NextTokenReducer reducer({}, model.device());
    int64_t done = 0;
    for (const WindowBatch& batch : batches) {
      ASSIGN_OR_RETURN(at::Tensor logits, model.Forward(batch.input, plan));  // [b, n, vocab]
      reducer.Add(logits, batch);
      done += batch.input.size(0);
      if (progress) progress(done, result.n_windows);
    }
    return reducer.nll_sum().item<double>();
  });
  if (!total.ok()) return total.status();
  result.mean_nll = *total / static_cast<double>(result.n_tokens);
  result.ppl = std::exp(result.mean_nll);
  return result;
}

}  // namespace lesion::model
