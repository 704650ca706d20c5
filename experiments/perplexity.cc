#include "experiments/perplexity.h"

#include <c10/core/InferenceMode.h>

#include <cmath>
#include <map>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "experiments/torch_util.h"

namespace lesion::experiments {

absl::StatusOr<std::vector<Window>> PlanWindows(int64_t n_ids, const PerplexityOptions& o) {
  const int64_t bos = o.add_bos ? 1 : 0;
  if (o.seq_len < 2) {
    return absl::InvalidArgumentError(absl::StrCat("seq_len must be at least 2, got ", o.seq_len));
  }
  const int64_t span = o.seq_len - bos;  // text tokens per window
  const int64_t stride = o.stride.value_or(span);
  if (stride < 1 || stride > span) {
    return absl::InvalidArgumentError(absl::StrCat("stride must be in [1, ", span, "], got ",
                                                   stride));
  }
  if (o.max_windows.has_value() && *o.max_windows < 1) {
    return absl::InvalidArgumentError(absl::StrCat("max_windows must be at least 1, got ",
                                                   *o.max_windows));
  }
  std::vector<Window> windows;
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
    return absl::InvalidArgumentError(absl::StrCat("text of ", n_ids,
                                                   " tokens is too short to predict any token"));
  }
  return windows;
}

std::string DescribeProtocol(const PerplexityOptions& o) {
  std::string s = o.stride.has_value() && *o.stride < o.seq_len - (o.add_bos ? 1 : 0)
                      ? absl::StrCat("sliding windows of ", o.seq_len, " with stride ", *o.stride)
                      : absl::StrCat("non-overlapping windows of ", o.seq_len);
  absl::StrAppend(&s, o.add_bos ? ", BOS per window" : ", no BOS");
  if (o.max_windows.has_value()) absl::StrAppend(&s, ", first ", *o.max_windows, " windows");
  return s;
}

absl::StatusOr<PerplexityResult> EvaluatePerplexity(const Transformer& model,
                                                    absl::Span<const int32_t> ids,
                                                    const PerplexityOptions& options,
                                                    std::optional<int32_t> bos_id,
                                                    const RunPlan& plan,
                                                    const ProgressFn& progress) {
  if (options.add_bos && !bos_id.has_value()) {
    return absl::FailedPreconditionError("add_bos asked for, but the model defines no BOS token");
  }
  if (options.batch_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat("batch_size must be at least 1, got ",
                                                   options.batch_size));
  }
  const int64_t vocab = model.config().vocab_size;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", ids[i], " at position ", i,
                                                     " out of range: vocabulary has ", vocab,
                                                     " ids"));
    }
  }
  ASSIGN_OR_RETURN(std::vector<Window> windows,
                   PlanWindows(static_cast<int64_t>(ids.size()), options));

  // Windows of equal length share a batch; in both protocols only the last one can be shorter.
  std::map<int64_t, std::vector<const Window*>> by_length;
  for (const Window& w : windows) by_length[w.end - w.begin].push_back(&w);
  const int64_t bos = options.add_bos ? 1 : 0;

  PerplexityResult result;
  result.n_windows = static_cast<int64_t>(windows.size());
  result.protocol = DescribeProtocol(options);
  for (const Window& w : windows) result.n_tokens += w.end - w.score_begin;

  int64_t done = 0;
  absl::StatusOr<double> total = TorchCall("perplexity", [&]() -> absl::StatusOr<double> {
    c10::InferenceMode guard;
    at::Tensor nll_sum = at::zeros({}, at::TensorOptions().dtype(at::kDouble).device(model.device()));
    for (const auto& [length, group] : by_length) {
      const int64_t n = length + bos;  // input tokens per window
      for (size_t start = 0; start < group.size(); start += options.batch_size) {
        const int64_t b = std::min<int64_t>(options.batch_size, group.size() - start);
        at::Tensor input = at::empty({b, n}, at::kLong);   // [b, n]
        at::Tensor mask = at::zeros({b, n - 1}, at::kBool);  // position p+1 is scored
        auto in = input.accessor<int64_t, 2>();
        auto m = mask.accessor<bool, 2>();
        for (int64_t i = 0; i < b; ++i) {
          const Window& w = *group[start + i];
          if (bos) in[i][0] = *bos_id;
          for (int64_t p = w.begin; p < w.end; ++p) in[i][p - w.begin + bos] = ids[p];
          for (int64_t p = w.score_begin; p < w.end; ++p) m[i][p - w.begin + bos - 1] = true;
        }
        input = input.to(model.device(), /*non_blocking=*/true);
        mask = mask.to(model.device(), /*non_blocking=*/true);
        ASSIGN_OR_RETURN(at::Tensor logits, model.Forward(input, plan));  // [b, n, vocab]
        // NLL per predicted position, a few windows at a time: the float32 copy of the logits and
        // its log-softmax are the largest tensors of the pass, so bound them (~1 GiB per chunk).
        const int64_t rows = std::max<int64_t>(1, (int64_t{1} << 28) / std::max<int64_t>(1, (n - 1) * vocab));
        for (int64_t r = 0; r < b; r += rows) {
          const int64_t m = std::min(rows, b - r);
          at::Tensor nll = at::cross_entropy_loss(
              logits.narrow(0, r, m).narrow(1, 0, n - 1).reshape({-1, vocab}).to(at::kFloat),
              input.narrow(0, r, m).narrow(1, 1, n - 1).reshape({-1}), {},
              at::Reduction::None);  // [m * (n - 1)]
          // where(), not masked_select(): no host-device sync to size the result.
          nll_sum += at::where(mask.narrow(0, r, m).reshape({-1}), nll, 0.0).sum(at::kDouble);
        }
        done += b;
        if (progress) progress(done, result.n_windows);
      }
    }
    return nll_sum.item<double>();
  });
  if (!total.ok()) return total.status();
  result.mean_nll = *total / static_cast<double>(result.n_tokens);
  result.ppl = std::exp(result.mean_nll);
  return result;
}

}  // namespace lesion::experiments
