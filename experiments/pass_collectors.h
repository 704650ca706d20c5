// What one pass measures, shared by a single experiment (runner.cc) and a sweep (sweep.cc): the
// spec's measurements turned into collectors attached to a run plan, and read back into a result
// pass. Internal to experiments/. Thread-compatible; every function that calls torch may throw
// (callers wrap them in TorchCall) unless it returns a status.
#ifndef LESION_EXPERIMENTS_PASS_COLLECTORS_H_
#define LESION_EXPERIMENTS_PASS_COLLECTORS_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "experiments/detectors.h"
#include "experiments/measurements.h"
#include "experiments/runner.h"
#include "model/model.h"
#include "model/perplexity.h"
#include "model/run_plan.h"
#include "spec/result.h"
#include "spec/spec.h"

namespace lesion::experiments::internal {

// What one pass measures. Built from the spec once per pass (baseline, intervened, each variant).
struct PassCollectors {
  bool perplexity = false;
  std::vector<std::unique_ptr<ActivationStatsCollector>> stats;
  std::unique_ptr<AttentionSinkCollector> sink;
  std::vector<std::unique_ptr<CaptureCollector>> captures;
  std::vector<std::unique_ptr<MassiveActivationDetector>> massive;
  std::unique_ptr<SuperWeightDetector> super_weights;
  std::unique_ptr<AttentionOutlierDetector> attention_outliers;
  std::optional<spec::NormOutliers> norm_outliers;
  // Per-token outputs, kept by the pass's NextTokenReducer (max_tokens 0: not asked for).
  model::TokenOutputOptions token_outputs;
  // Single experiments keep their NLL sums here; sweeps share one reducer over all variants.
  std::unique_ptr<model::NextTokenReducer> next_token;

  void Attach(model::RunPlan& plan) {
    for (auto& s : stats) s->Attach(plan);
    if (sink) sink->Attach(plan);
    for (auto& c : captures) c->Attach(plan);
    for (auto& m : massive) m->Attach(plan);
    if (super_weights) super_weights->Attach(plan);
    if (attention_outliers) attention_outliers->Attach(plan);
  }
  // Weight-based parts read the model in FinishPass: its edits must be in place then.
  bool ReadsWeights() const { return super_weights != nullptr || norm_outliers.has_value(); }
};

// The tokens of a token_probabilities measurement: ids as given, then texts that each encode to
// exactly one token. InvalidArgument naming an id out of range or a text that does not.
absl::StatusOr<std::vector<result::TokenProbability>> ResolveTokens(const model::Model& model,
                                                                    const spec::TokenProbabilities& t);

// `layout`: the windows of the run and the order the passes run them in (Prepared::protocol),
// which captures and per-token outputs need to report the dataset's windows in order.
absl::StatusOr<PassCollectors> MakeCollectors(const model::Model& model, const spec::Experiment& e,
                                              const model::PerplexityResult& layout);

// Bytes a pass's per-token outputs hold for `n_tokens` predicted tokens (0 when not asked for).
int64_t TokenOutputBytes(const model::TokenOutputOptions& options, int64_t n_tokens);

// Reads back what a pass measured; the NLL and token probabilities are `variant`'s sums in
// `reducer`. Sequence numbers become window numbers (`windows.sequence_windows`); a prompt set's
// pass gets its per-prompt rows, which need a reducer made with per-window sums. Weight-based parts (super-weight
// values, norm gammas) read the model as it is now: call with the pass's edits in place.
absl::StatusOr<result::Pass> FinishPass(const PassCollectors& p, const model::Transformer& t,
                                        const model::PerplexityResult& windows,
                                        std::vector<result::TokenProbability> tokens,
                                        const model::NextTokenReducer& reducer, int64_t variant);

// What identifies a run of `spec_sha256` on `model` (model, architecture, dtype, device, weights'
// fingerprint, version, TF32); the caller adds the passes and the time.
result::RunInfo RunInfoOf(const model::Model& model, const std::string& spec_sha256);

}  // namespace lesion::experiments::internal

#endif  // LESION_EXPERIMENTS_PASS_COLLECTORS_H_
