// Perplexity evaluation (docs/design.md, "Perplexity"): windows over a tokenized text, exp(mean
// NLL) over the predicted tokens, reported with the token count and the protocol.
//
// Protocols:
//  * non-overlapping (default): windows ids[i : i + seq_len] for i = 0, seq_len, 2 seq_len, ...;
//    each window predicts its tokens 1..n-1 from the window's own prefix; a final partial window is
//    kept when it predicts at least one token.
//  * sliding (stride < seq_len, HF's perplexity recipe): for begin = 0, stride, ...:
//    end = min(begin + seq_len, N); the window ids[begin:end] scores only the tokens not scored by
//    an earlier window (positions [prev_end, end), never the window's first position); stops once
//    end == N. Every token but the first is scored exactly once. (The HF guide weights each window's
//    mean loss by trg_len - 1, an approximation; lesion sums exact per-token NLLs.)
//  * add_bos: every window is prefixed with BOS and holds seq_len - 1 text tokens, all of which
//    (from prev_end on, with a stride) are scored.
//  * a prompt set (prompt_lengths given): the ids are the prompts one after another, and each
//    prompt is one window that predicts all its tokens but the first (with add_bos: all of them).
//    No stride; every prompt must fit in seq_len and predict at least one token.
//
// Thread-compatible; runs on the model's device.
#ifndef LESION_MODEL_PERPLEXITY_H_
#define LESION_MODEL_PERPLEXITY_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "model/run_plan.h"
#include "model/transformer.h"

namespace lesion::model {

struct PerplexityOptions {
  int64_t seq_len = 512;
  std::optional<int64_t> stride;  // < seq_len for the sliding protocol
  bool add_bos = false;
  int64_t batch_size = 8;               // windows per forward pass
  std::optional<int64_t> max_windows;   // evaluate only the first N windows
  std::vector<int64_t> prompt_lengths;  // a prompt set: the tokens of each prompt, in order
};

// One window: text positions [begin, end), of which [score_begin, end) are predicted.
struct Window {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t score_begin = 0;
};

struct PerplexityResult {
  double ppl = 0;
  double mean_nll = 0;   // nats per predicted token
  int64_t n_tokens = 0;  // predicted tokens
  int64_t n_windows = 0;
  std::string protocol;  // e.g. "non-overlapping windows of 512, no BOS"
  // Filled by the experiment runner for what every pass shares: the windows as planned, and the
  // window of each sequence in the order the batches run them (SequenceOrder).
  std::vector<Window> windows;
  std::vector<int64_t> sequence_windows;
  bool prompt_set = false;
};

// The windows of the protocol for a text of `n_ids` tokens. InvalidArgument for seq_len < 2
// (seq_len < 2 + add_bos), stride outside [1, seq_len], max_windows < 1, or a text too short to
// predict any token.
absl::StatusOr<std::vector<Window>> PlanWindows(int64_t n_ids, const PerplexityOptions& options);

std::string DescribeProtocol(const PerplexityOptions& options);

// The order in which MakeWindowBatches runs `windows`: longest first, in PlanWindows order within
// a length. Element i is the window of the i-th sequence the forward passes see.
std::vector<int64_t> SequenceOrder(absl::Span<const Window> windows);

// Windows cut into forward-pass batches: windows of equal length share a batch, longest first (in
// the text protocols only the last window can be shorter), in PlanWindows order within a length.
// Equal lengths mean no padding, so every window computes exactly what it would alone.
struct WindowBatch {
  at::Tensor input;                     // [b, n] int64 on the device (n = window length + BOS)
  at::Tensor score_mask;                // [b, n - 1] bool on the device: position p + 1 is predicted
  std::vector<int64_t> window_indices;  // [b] indices into the PlanWindows result
  int64_t first_sequence = 0;           // running index of this batch's first window over all batches
};

// Validates the protocol, BOS and ids against `model` and builds every batch on its device.
// InvalidArgument for ids out of the vocabulary or bad options (see PlanWindows),
// FailedPrecondition for add_bos without a BOS token.
absl::StatusOr<std::vector<WindowBatch>> MakeWindowBatches(const Transformer& model, absl::Span<const int32_t> ids,
                                                           const PerplexityOptions& options,
                                                           std::optional<int32_t> bos_id);

// Reductions over the next-token distributions of a batch's logits at its predicted positions:
// NLL of the targets, probabilities of chosen tokens, KL divergence from a reference. The NLL and
// token probabilities come from one fused pass over each row of logits (next_token_ops.h); the KL
// needs both full distributions and is computed a few windows at a time so that its float32
// temporaries stay within ~1 GiB. Sums are kept per variant (a sweep's batched passes hold several
// variants' logits of the same windows) and stay on the device until the caller reads them.
// Per-token outputs of a pass, when asked for: the predicted tokens numbered in window order from
// 0, of which those in [offset, offset + max_tokens) are kept, each with its NLL, the target's
// rank and the top_k next tokens.
struct TokenOutputOptions {
  int64_t top_k = 0;
  int64_t offset = 0;
  int64_t max_tokens = 0;  // 0: not asked for
  // The number of each window's first predicted token, in window order. Needed when the batches
  // do not run the windows in order (a prompt set of unequal lengths); empty: they do.
  std::vector<int64_t> window_first_token;
};

// Per-window sums, kept when asked for (a prompt set's per-prompt rows): [variants, windows].
struct PerWindowTensors {
  at::Tensor nll_sum;          // float64: NLL summed over the window's predicted tokens
  at::Tensor last_nll;         // float64: NLL of the window's last token
  at::Tensor kl_sum;           // float64: KL summed over the predicted tokens (zeros without a reference)
  at::Tensor next_token_prob;  // [variants, windows, T] float64: p(token | the whole window)
};

// What the reducer kept of one variant, on the CPU; rows in window order.
struct TokenOutputTensors {
  int64_t n_predicted = 0;  // every predicted token the variant saw
  at::Tensor window;        // [rows] int64: index of the window (PlanWindows order)
  at::Tensor position;      // [rows] int64: of the predicted token in its window's input (BOS included)
  at::Tensor target;        // [rows] int64: the token there
  at::Tensor nll;           // [rows] float64: -log p(target)
  at::Tensor rank;          // [rows] int64: vocabulary entries more likely than the target
  at::Tensor top_ids;       // [rows, top_k] int64, most likely first
  at::Tensor top_probs;     // [rows, top_k] float64
};

class NextTokenReducer {
 public:
  // `token_ids`: tokens whose probability is summed (may be empty). `n_variants` >= 1.
  // `n_windows` > 0 keeps per-window sums (per_window()) for that many windows.
  NextTokenReducer(const std::vector<int32_t>& token_ids, at::Device device, int64_t n_variants = 1,
                   TokenOutputOptions token_outputs = {}, int64_t n_windows = 0);

  // Adds `logits` [g * b, n, vocab]: the logits of g variants on `batch` (b windows each, variant
  // after variant), counted as variants first_variant .. first_variant + g - 1. With `reference`
  // (the baseline's logits of the batch, [b, n, vocab]) also KL(reference || logits).
  void Add(const at::Tensor& logits, const WindowBatch& batch, const at::Tensor& reference = {},
           int64_t first_variant = 0);

  const at::Tensor& nll_sum() const { return nll_sum_; }                // [variants] float64
  const at::Tensor& token_prob_sum() const { return token_prob_sum_; }  // [variants, T] float64
  const at::Tensor& kl_sum() const { return kl_sum_; }                  // [variants] float64
  // The per-token outputs of `variant` (empty tensors unless TokenOutputOptions asked for them).
  TokenOutputTensors token_outputs(int64_t variant) const;
  // Undefined tensors unless the constructor was given n_windows.
  const PerWindowTensors& per_window() const { return per_window_; }

 private:
  // Keeps the rows of variants first_variant.. of `logits` that fall in the asked range.
  void KeepTokenOutputs(const at::Tensor& logits, const WindowBatch& batch, const at::Tensor& targets,
                        int64_t first_variant);

  at::Tensor token_ids_;  // [T] int64 on the device, undefined when T = 0
  at::Tensor nll_sum_, token_prob_sum_, kl_sum_;
  PerWindowTensors per_window_;
  TokenOutputOptions outputs_;
  struct KeptRows {
    int64_t seen = 0;  // predicted tokens so far
    std::vector<at::Tensor> index, window, position, target, nll, rank, top_ids, top_probs;
  };
  std::vector<KeptRows> kept_;  // per variant, when outputs_ asks for them
};

// Progress callback: (windows done, windows total). Called between batches.
using ProgressFn = std::function<void(int64_t, int64_t)>;

// Evaluates `model` with `plan`'s hooks on `ids`. `bos_id` is required when options.add_bos.
absl::StatusOr<PerplexityResult> EvaluatePerplexity(const Transformer& model, absl::Span<const int32_t> ids,
                                                    const PerplexityOptions& options, std::optional<int32_t> bos_id,
                                                    const RunPlan& plan, const ProgressFn& progress = nullptr);

}  // namespace lesion::model

#endif  // LESION_MODEL_PERPLEXITY_H_
