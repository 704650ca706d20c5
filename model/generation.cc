#include "model/generation.h"

#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "model/torch_util.h"

namespace lesion::model {
namespace {

// The next token from one row of logits, and its log-probability under the model.
struct Choice {
  int32_t token = 0;
  double logprob = 0;
};

Choice Choose(const at::Tensor& row, const GenerationOptions& options, std::mt19937_64& rng) {
  // float64 on the host: the draw depends on the logits only, not on the device's arithmetic.
  const at::Tensor logits = row.to(at::kCPU, at::kDouble).contiguous();
  const at::Tensor log_probs = at::log_softmax(logits, -1);
  const double* lp = log_probs.data_ptr<double>();
  const int64_t vocab = logits.numel();
  if (options.temperature <= 0) {
    const int64_t best = logits.argmax().item<int64_t>();
    return {static_cast<int32_t>(best), lp[best]};
  }
  std::vector<int64_t> candidates(vocab);
  std::iota(candidates.begin(), candidates.end(), 0);
  if (options.top_k > 0 && options.top_k < vocab) {
    // Ties broken by the smaller id, so the set does not depend on the sort's stability.
    std::partial_sort(candidates.begin(), candidates.begin() + options.top_k, candidates.end(),
                      [&](int64_t a, int64_t b) { return lp[a] > lp[b] || (lp[a] == lp[b] && a < b); });
    candidates.resize(options.top_k);
  }
  double max_scaled = -INFINITY;
  for (int64_t t : candidates) max_scaled = std::max(max_scaled, lp[t] / options.temperature);
  std::vector<double> weights;
  weights.reserve(candidates.size());
  double total = 0;
  for (int64_t t : candidates) {
    weights.push_back(std::exp(lp[t] / options.temperature - max_scaled));
    total += weights.back();
  }
  const double draw = std::uniform_real_distribution<double>(0.0, total)(rng);
  double acc = 0;
  for (size_t i = 0; i < candidates.size(); ++i) {
    acc += weights[i];
    if (draw < acc || i + 1 == candidates.size()) {
      return {static_cast<int32_t>(candidates[i]), lp[candidates[i]]};
    }
  }
  return {static_cast<int32_t>(candidates.back()), lp[candidates.back()]};
}

}  // namespace

absl::StatusOr<Generated> Generate(const Transformer& model, const std::vector<int32_t>& prompt, RunPlan& plan,
                                   const GenerationOptions& options, const TokenCallback& on_token) {
  const ModelConfig& c = model.config();
  if (prompt.empty()) return absl::InvalidArgumentError("generation needs a non-empty prompt");
  if (options.max_new_tokens < 0) {
    return absl::InvalidArgumentError(absl::StrCat("max_new_tokens must be >= 0, got ", options.max_new_tokens));
  }
  if (!std::isfinite(options.temperature) || options.temperature < 0) {
    return absl::InvalidArgumentError(absl::StrCat("temperature must be >= 0, got ", options.temperature));
  }
  if (options.top_k < 0) return absl::InvalidArgumentError(absl::StrCat("top_k must be >= 0, got ", options.top_k));
  for (int32_t id : prompt) {
    if (id < 0 || id >= c.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("prompt token id ", id, " out of range: vocabulary has ", c.vocab_size, " ids"));
    }
  }
  const int64_t max_positions = c.learned_positions ? c.max_position_embeddings : INT64_MAX;
  if (static_cast<int64_t>(prompt.size()) > max_positions) {
    return absl::InvalidArgumentError(
        absl::StrCat("prompt of ", prompt.size(), " tokens is longer than the model's ", max_positions, " positions"));
  }
  Generated out;
  KvCache cache;
  std::mt19937_64 rng(options.seed);
  ASSIGN_OR_RETURN(at::Tensor next_ids, TorchCall("building the prompt", [&] {
                     return at::tensor(std::vector<int64_t>(prompt.begin(), prompt.end()), at::kLong).unsqueeze(0);
                   }));
  for (int64_t step = 0; step < options.max_new_tokens; ++step) {
    if (cache.length + next_ids.size(1) > max_positions) break;  // the learned positions end here
    plan.SetPositionOffset(cache.length);
    absl::StatusOr<at::Tensor> logits = model.ForwardCached(next_ids, plan, cache);  // [1, n, vocab]
    plan.SetPositionOffset(0);
    if (!logits.ok()) return logits.status();
    ASSIGN_OR_RETURN(Choice choice, TorchCall("choosing the next token", [&] {
                       c10::InferenceMode guard;
                       return Choose((*logits)[0][-1], options, rng);
                     }));
    out.tokens.push_back(choice.token);
    out.logprobs.push_back(choice.logprob);
    if (on_token && !on_token(choice.token, choice.logprob)) break;
    if (options.stop_id.has_value() && choice.token == *options.stop_id) break;
    ASSIGN_OR_RETURN(next_ids, TorchCall("building the next step", [&] {
                       return at::full({1, 1}, static_cast<int64_t>(choice.token), at::kLong);
                     }));
  }
  return out;
}

absl::StatusOr<std::vector<int32_t>> GreedyGenerate(const Transformer& model, const std::vector<int32_t>& prompt,
                                                    int64_t max_new_tokens, std::optional<int32_t> stop_id) {
  RunPlan plan(model.config().n_layers);
  GenerationOptions options;
  options.max_new_tokens = max_new_tokens;
  options.stop_id = stop_id;
  ASSIGN_OR_RETURN(Generated g, Generate(model, prompt, plan, options));
  return g.tokens;
}

}  // namespace lesion::model
