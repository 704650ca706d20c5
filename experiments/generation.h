// Generation under interventions: the same prompt decoded by the model as loaded and by the model
// with a spec's interventions (head ablations, weight edits, norm-channel resets, attention-bias
// slots, activation edits), each in every step through the KV cache (model/generation.h). Weight
// edits are in place for the intervened run only and restored bit for bit before returning, also
// on error. Thread-compatible: one run at a time per model, like the runner.
#ifndef LESION_EXPERIMENTS_GENERATION_H_
#define LESION_EXPERIMENTS_GENERATION_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "model/generation.h"
#include "model/model.h"
#include "spec/spec.h"

namespace lesion::experiments {

struct GenerationRun {
  bool has_baseline = false;
  model::Generated baseline;
  bool has_intervened = false;  // the interventions were not empty
  model::Generated intervened;
};

// Which runs a GenerateSideBySide call makes, and what it reports as they go.
struct GenerationControls {
  bool baseline = true;  // also decode with the model as loaded
  // Per token: (intervened?, token, logprob); returning false stops that run.
  std::function<bool(bool intervened, int32_t token, double logprob)> on_token;
};

// Checks `interventions` against the model and the sequence they act on (prompt + max_new_tokens
// positions) without touching the weights. InvalidArgument naming interventions[i] for what the
// runner refuses, for MEAN modes (they need a dataset's means) and for activation-edit positions
// past the sequence's end.
absl::Status ValidateGeneration(const model::Model& model, const std::vector<spec::Intervention>& interventions,
                                const std::vector<int32_t>& prompt, const model::GenerationOptions& options);

// Decodes `prompt` with the model as loaded (when controls.baseline) and, when there are
// interventions, with them; both with the same options and seed. Errors as ValidateGeneration's
// and the forward pass's.
absl::StatusOr<GenerationRun> GenerateSideBySide(const model::Model& model,
                                                 const std::vector<spec::Intervention>& interventions,
                                                 const std::vector<int32_t>& prompt,
                                                 const model::GenerationOptions& options,
                                                 const GenerationControls& controls = {});

}  // namespace lesion::experiments

#endif  // LESION_EXPERIMENTS_GENERATION_H_
