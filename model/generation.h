// Greedy decoding, for demos and for checking a converted checkpoint against known output. It
// recomputes the whole prefix each step (no KV cache): fine for the short samples it is used for.
// Thread-compatible.
#ifndef LESION_MODEL_GENERATION_H_
#define LESION_MODEL_GENERATION_H_

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "model/transformer.h"

namespace lesion::model {

// Appends up to `max_new_tokens` argmax tokens to `prompt` (non-empty), stopping after `stop_id`
// if given. Returns only the new tokens.
absl::StatusOr<std::vector<int32_t>> GreedyGenerate(const Transformer& model, const std::vector<int32_t>& prompt,
                                                    int64_t max_new_tokens, std::optional<int32_t> stop_id);

}  // namespace lesion::model

#endif  // LESION_MODEL_GENERATION_H_
