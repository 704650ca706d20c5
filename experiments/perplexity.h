// Perplexity evaluation (DESIGN.md "Perplexity"): windows over a tokenized text, exp(mean NLL)
// over the predicted tokens, reported with the token count and the protocol.
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
//
// Thread-compatible; runs on the model's device.
#ifndef LESION_EXPERIMENTS_PERPLEXITY_H_
#define LESION_EXPERIMENTS_PERPLEXITY_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "experiments/run_plan.h"
#include "experiments/transformer.h"

namespace lesion::experiments {

struct PerplexityOptions {
  int64_t seq_len = 512;
  std::optional<int64_t> stride;       // < seq_len for the sliding protocol
  bool add_bos = false;
  int64_t batch_size = 8;              // windows per forward pass
  std::optional<int64_t> max_windows;  // evaluate only the first N windows
};

// One window: text positions [begin, end), of which [score_begin, end) are predicted.
struct Window {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t score_begin = 0;
};

struct PerplexityResult {
  double ppl = 0;
  double mean_nll = 0;  // nats per predicted token
  int64_t n_tokens = 0;  // predicted tokens
  int64_t n_windows = 0;
  std::string protocol;  // e.g. "non-overlapping windows of 512, no BOS"
};

// The windows of the protocol for a text of `n_ids` tokens. InvalidArgument for seq_len < 2
// (seq_len < 2 + add_bos), stride outside [1, seq_len], max_windows < 1, or a text too short to
// predict any token.
absl::StatusOr<std::vector<Window>> PlanWindows(int64_t n_ids, const PerplexityOptions& options);

std::string DescribeProtocol(const PerplexityOptions& options);

// Progress callback: (windows done, windows total). Called between batches.
using ProgressFn = std::function<void(int64_t, int64_t)>;

// Evaluates `model` with `plan`'s hooks on `ids`. `bos_id` is required when options.add_bos.
absl::StatusOr<PerplexityResult> EvaluatePerplexity(const Transformer& model,
                                                    absl::Span<const int32_t> ids,
                                                    const PerplexityOptions& options,
                                                    std::optional<int32_t> bos_id,
                                                    const RunPlan& plan,
                                                    const ProgressFn& progress = nullptr);

}  // namespace lesion::experiments

#endif  // LESION_EXPERIMENTS_PERPLEXITY_H_
