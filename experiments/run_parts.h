// The pieces that a single experiment (runner.cc) and a sweep (sweep.cc) share: a spec's
// interventions turned into run-plan hooks and weight edits, its measurements turned into
// collectors and read back into a result pass, the dataset means of MEAN modes, and the
// validation of a spec against a model. Internal to experiments/: the public entry points are
// runner.h and sweep.h. Thread-compatible; every function that calls torch may throw (callers wrap
// them in TorchCall) unless it returns a status.
#ifndef LESION_EXPERIMENTS_RUN_PARTS_H_
#define LESION_EXPERIMENTS_RUN_PARTS_H_

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
#include "experiments/model.h"
#include "experiments/perplexity.h"
#include "experiments/run_plan.h"
#include "experiments/runner.h"
#include "experiments/spec/result.h"
#include "experiments/spec/spec.h"
#include "experiments/weight_edits.h"

namespace lesion::experiments::internal {

// Spec enums to runtime enums, spelled out so that reordering either cannot silently remap them.
HeadAblationMode ToRuntime(spec::HeadAblation::Mode m);
ElementOp ToRuntime(spec::WeightEdit::Op op);
NormResetMode ToRuntime(spec::NormChannelReset::Mode m);
ActivationOp ToRuntime(spec::ActivationEdit::Op op);

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

// Weight edits and norm-channel resets of `interventions` applied through `edits`.
absl::Status ApplyWeightEdits(const std::vector<spec::Intervention>& interventions, WeightEditSession& edits);
// Their checks against the model, without editing.
absl::Status CheckWeightEdits(const Transformer& t, const std::vector<spec::Intervention>& interventions);

// Adds the activation-level interventions (head ablations, activation edits, attention biases) to
// `plan`. With `means` null, MEAN modes get zero placeholders of the right shape: that validates
// every index before any compute.
absl::Status AddActivationInterventions(const ModelConfig& c, const std::vector<spec::Intervention>& interventions,
                                        int64_t seq_len, const Means* means, RunPlan& plan);
// Observers that sum what MEAN-mode interventions need over the baseline pass into `means`
// (which must outlive the plan's use).
void AddMeanObservers(const ModelConfig& c, const std::vector<spec::Intervention>& interventions, Means& means,
                      RunPlan& plan);
bool NeedsMeans(const std::vector<spec::Intervention>& interventions);

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
  // Single experiments keep their NLL sums here; sweeps share one reducer over all variants.
  std::unique_ptr<NextTokenReducer> next_token;

  void Attach(RunPlan& plan) {
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

absl::StatusOr<PassCollectors> MakeCollectors(const Model& model, const spec::Experiment& e);

// Reads back what a pass measured; the NLL and token probabilities are `variant`'s sums in
// `reducer`. Weight-based parts (super-weight values, norm gammas) read the model as it is now:
// call with the pass's edits in place.
absl::StatusOr<result::Pass> FinishPass(const PassCollectors& p, const Transformer& t,
                                        const PerplexityResult& windows, std::vector<result::TokenProbability> tokens,
                                        const NextTokenReducer& reducer, int64_t variant);

// What identifies a run of `spec_sha256` on `model` (model, architecture, dtype, device, weights'
// fingerprint, version, TF32); the caller adds the passes and the time.
result::RunInfo RunInfoOf(const Model& model, const std::string& spec_sha256);

// The perplexity protocol of a spec (its eval config with the defaults filled in), unchecked.
PerplexityOptions EvalOptions(const ModelConfig& c, const spec::Experiment& e);

// What validation finds out and the run uses.
struct Prepared {
  std::vector<int32_t> ids;
  PerplexityOptions options;
  PerplexityResult protocol;  // what every pass shares: tokens, windows, protocol
  std::vector<result::TokenProbability> tokens;
  bool needs_kl = false;
  bool needs_means = false;
  PassCollectors base, inter;
};

// Every check of the spec against the model, without device work or touching the weights.
absl::StatusOr<Prepared> Prepare(const Model& model, const spec::Experiment& e, const std::filesystem::path& data_dir,
                                 const RunLimits& limits);

}  // namespace lesion::experiments::internal

#endif  // LESION_EXPERIMENTS_RUN_PARTS_H_
