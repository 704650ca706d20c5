#include "model/generation.h"

#include <c10/core/InferenceMode.h>

#include "absl/status/status.h"
#include "common/status_macros.h"
#include "model/torch_util.h"

namespace lesion::model {

absl::StatusOr<std::vector<int32_t>> GreedyGenerate(const Transformer& model, const std::vector<int32_t>& prompt,
                                                    int64_t max_new_tokens, std::optional<int32_t> stop_id) {
  if (prompt.empty()) return absl::InvalidArgumentError("generation needs a non-empty prompt");
  if (max_new_tokens < 0) return absl::InvalidArgumentError("max_new_tokens must be >= 0");
  std::vector<int32_t> tokens = prompt;
  std::vector<int32_t> generated;
  const RunPlan plan(model.config().n_layers);
  for (int64_t step = 0; step < max_new_tokens; ++step) {
    if (model.config().learned_positions &&
        static_cast<int64_t>(tokens.size()) >= model.config().max_position_embeddings) {
      break;
    }
    ASSIGN_OR_RETURN(
        at::Tensor ids, TorchCall("building ids", [&] {
          return at::tensor(std::vector<int64_t>(tokens.begin(), tokens.end()), at::kLong).unsqueeze(0);  // [1, s]
        }));
    ASSIGN_OR_RETURN(at::Tensor logits, model.Forward(ids, plan));  // [1, s, vocab]
    absl::StatusOr<int32_t> next = TorchCall("argmax", [&] {
      c10::InferenceMode guard;
      return static_cast<int32_t>(logits[0][-1].argmax().item<int64_t>());
    });
    if (!next.ok()) return next.status();
    tokens.push_back(*next);
    generated.push_back(*next);
    if (stop_id.has_value() && *next == *stop_id) break;
  }
  return generated;
}

}  // namespace lesion::model
