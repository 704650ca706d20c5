// A spec bound to a model, the part a single experiment (runner.cc) and a sweep (sweep.cc) share
// before any pass: every check of the spec against the model (Prepare), its interventions turned
// into run-plan hooks and weight edits, and the dataset means of MEAN modes. Internal to
// experiments/: the public entry points are runner.h and sweep.h. Thread-compatible; every
// function that calls torch may throw (callers wrap them in TorchCall) unless it returns a status.
#ifndef LESION_EXPERIMENTS_SPEC_BINDING_H_
#define LESION_EXPERIMENTS_SPEC_BINDING_H_

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
#include "experiments/interventions.h"
#include "experiments/measurements.h"
#include "experiments/pass_collectors.h"
#include "experiments/runner.h"
#include "experiments/weight_edits.h"
#include "model/model.h"
#include "model/perplexity.h"
#include "model/run_plan.h"
#include "spec/result.h"
#include "spec/spec.h"

namespace lesion::experiments::internal {

// Dataset means needed by MEAN-mode interventions, gathered on the baseline pass (on the CPU, so
// that they can serve a model on any device).
struct Means {
  std::map<int64_t, at::Tensor> head_sums;        // layer -> [heads, hd] sum over tokens
  std::map<int64_t, int64_t> head_counts;         // layer -> tokens
  std::map<std::string, at::Tensor> site_sums;    // site -> [seq, features] sum over windows
  std::map<std::string, at::Tensor> site_counts;  // site -> [seq, 1] windows that reach the position
};

// The enums and numbers of `interventions`, which the spec parser checks too (a spec::Experiment
// may be built otherwise): every mode and op a known value, every number (factors, values,
// attention-bias keys and values) finite, at most spec::kMaxInterventionMagnitude in magnitude and
// finite in `dtype`, the model's (float16 ends at 65504). InvalidArgument naming the intervention.
absl::Status CheckInterventionValues(at::ScalarType dtype, const std::vector<spec::Intervention>& interventions);

// Activation-edit positions within windows of `window_tokens` tokens: a position beyond every
// window would edit nothing, so it is refused (InvalidArgument naming the intervention).
absl::Status CheckEditPositions(const std::vector<spec::Intervention>& interventions, int64_t window_tokens);

// Weight edits and norm-channel resets of `interventions` applied through `edits`.
absl::Status ApplyWeightEdits(const std::vector<spec::Intervention>& interventions, WeightEditSession& edits);
// Their checks against the model, without editing.
absl::Status CheckWeightEdits(const model::Transformer& t, const std::vector<spec::Intervention>& interventions);

// Adds the activation-level interventions (head ablations, activation edits, attention biases) to
// `plan`. With `means` null, MEAN modes get zero placeholders of the right shape: that validates
// every index before any compute.
absl::Status AddActivationInterventions(const model::ModelConfig& c,
                                        const std::vector<spec::Intervention>& interventions, int64_t seq_len,
                                        const Means* means, model::RunPlan& plan);
// Observers that sum what MEAN-mode interventions need over the baseline pass into `means`
// (which must outlive the plan's use).
void AddMeanObservers(const model::ModelConfig& c, const std::vector<spec::Intervention>& interventions, Means& means,
                      model::RunPlan& plan);
bool NeedsMeans(const std::vector<spec::Intervention>& interventions);

// The perplexity protocol of a spec (its eval config with the defaults filled in), unchecked.
model::PerplexityOptions EvalOptions(const model::ModelConfig& c, const spec::Experiment& e);

// What validation finds out and the run uses.
struct Prepared {
  std::vector<int32_t> ids;
  model::PerplexityOptions options;
  model::PerplexityResult protocol;  // what every pass shares: tokens, windows, protocol
  std::vector<result::TokenProbability> tokens;
  bool needs_kl = false;
  bool needs_means = false;
  // No interventions, no sweep and not a sweep's variant: one pass, the baseline, measures all.
  bool observational = false;
  int64_t window_tokens = 0;  // tokens of the longest window (BOS included)
  PassCollectors base, inter;
};

// Bytes a pass's per-prompt rows hold (and its reducer's per-window sums on the device): 0 unless
// the dataset is a prompt set. Counted in the capture budget, like captures and token outputs.
int64_t PromptRowBytes(const Prepared& p);

// Every check of the spec against the model, without device work or touching the weights.
absl::StatusOr<Prepared> Prepare(const model::Model& model, const spec::Experiment& e,
                                 const std::filesystem::path& data_dir, const RunLimits& limits);

}  // namespace lesion::experiments::internal

#endif  // LESION_EXPERIMENTS_SPEC_BINDING_H_
