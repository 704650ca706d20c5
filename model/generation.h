// Decoding: greedy, or sampling with a seed, one token per step through a KV cache
// (Transformer::ForwardCached), with a run plan's hooks, attention-bias slots and per-row edits in
// every step, so that an intervention acts on the prompt and on every generated token alike.
// Thread-compatible.
#ifndef LESION_MODEL_GENERATION_H_
#define LESION_MODEL_GENERATION_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "model/run_plan.h"
#include "model/transformer.h"

namespace lesion::model {

struct GenerationOptions {
  int64_t max_new_tokens = 64;
  // 0: greedy (argmax). Otherwise tokens are drawn from softmax(logits / temperature), restricted
  // to the top_k most likely when top_k > 0, with a generator seeded by `seed`: the same seed and
  // logits give the same tokens on every host.
  double temperature = 0;
  int64_t top_k = 0;
  uint64_t seed = 0;
  std::optional<int32_t> stop_id;  // generation ends after this token
};

struct Generated {
  std::vector<int32_t> tokens;  // the new tokens
  // log p(token) under the model's distribution at its step (before temperature and top_k).
  std::vector<double> logprobs;
};

// Called after every generated token with (token, logprob); returning false stops the generation.
using TokenCallback = std::function<bool(int32_t token, double logprob)>;

// Generates up to options.max_new_tokens after `prompt` (non-empty; ids in the vocabulary) with
// `plan`'s hooks in every step. The plan's position offset is set per step (RunPlan::
// SetPositionOffset), so activation edits address positions of the whole sequence. Stops early at
// the model's last learned position. InvalidArgument for a bad prompt or option; errors of the
// forward pass otherwise.
absl::StatusOr<Generated> Generate(const Transformer& model, const std::vector<int32_t>& prompt, RunPlan& plan,
                                   const GenerationOptions& options, const TokenCallback& on_token = nullptr);

// Greedy decoding without hooks: the new tokens only.
absl::StatusOr<std::vector<int32_t>> GreedyGenerate(const Transformer& model, const std::vector<int32_t>& prompt,
                                                    int64_t max_new_tokens, std::optional<int32_t> stop_id);

}  // namespace lesion::model

#endif  // LESION_MODEL_GENERATION_H_
