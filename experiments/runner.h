// Runs one experiment spec in-process: the baseline and the intervened model over the same windows,
// each with the spec's measurements, and returns both (result.h; result_proto.h has its proto and
// JSON form, with the deltas).
//
// How the passes are scheduled: window batch by window batch, the baseline forward pass and then
// the intervened one, so that a KL divergence sees both distributions of a batch while they are on
// the device. When an intervention needs dataset means (MEAN modes), the whole baseline pass comes
// first to gather them. Weight edits are applied for the intervened forward passes only (suspended
// in between) and restored bit-identically before returning, also on error or cancellation.
// Every index and size of the spec is checked against the model before the first forward pass.
//
// A spec with no interventions is observational: one pass, reported as the baseline (with
// `observational` set and the intervened pass empty), served whole from a cached baseline when
// there is one.
//
// Thread-compatible: one experiment at a time per model (the server's executor thread owns it).
// Errors: InvalidArgument for a spec that does not fit the model (naming the field and value),
// FailedPrecondition (e.g. text but no tokenizer), Cancelled, ResourceExhausted (device memory).
#ifndef LESION_EXPERIMENTS_RUNNER_H_
#define LESION_EXPERIMENTS_RUNNER_H_

#include <cstdint>
#include <filesystem>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "model/model.h"
#include "spec/result.h"
#include "spec/spec.h"

namespace lesion::experiments {

// Sizes a request may reach; the server sets them from its config.
struct RunLimits {
  int64_t max_capture_bytes = int64_t{256} << 20;  // both passes together (a sweep: all its passes)
  int64_t max_tokens = int64_t{64} << 20;          // of the dataset, after tokenization
  // Sweeps (sweep.h): variants of one spec, tokens of one batched forward pass when the spec does
  // not set variants_per_pass, and variants run together in one round (their collectors live at once).
  int64_t max_sweep_variants = 65536;
  int64_t max_pass_tokens = 65536;
  int64_t max_round_variants = 512;
};

struct RunControls {
  // Polled between forward passes; returning true stops the run with Cancelled.
  std::function<bool()> cancelled;
  // After every forward pass: (passes done, passes planned).
  std::function<void(int64_t, int64_t)> progress;
  // The baseline pass of an earlier run of the same model with the same spec.baseline_sha256: used
  // instead of baseline forward passes, unless the spec needs the baseline's logits or dataset means
  // (KL divergence, MEAN modes). Not owned; must outlive the call.
  const result::Pass* cached_baseline = nullptr;
};

// `data_dir` holds the named datasets (data/ of the repository).
absl::StatusOr<result::Experiment> RunExperiment(const model::Model& model, const spec::Experiment& experiment,
                                                 const std::filesystem::path& data_dir,
                                                 const RunControls& controls = {}, const RunLimits& limits = {});

// Every check RunExperiment makes before its first forward pass, without device work and without
// touching the weights (allocates small CPU tensors only), so it may run on a thread other than the
// one running the model. Errors as RunExperiment's.
absl::Status ValidateExperiment(const model::Model& model, const spec::Experiment& experiment,
                                const std::filesystem::path& data_dir, const RunLimits& limits = {});

// The token ids of the spec's dataset (text tokenized, named datasets read from `data_dir`, a
// prompt set's prompts one after another).
absl::StatusOr<std::vector<int32_t>> ResolveDataset(const model::Model& model, const spec::Experiment& experiment,
                                                    const std::filesystem::path& data_dir);

// A prompt set's prompts as token ids, one list per prompt. InvalidArgument for a text that
// encodes to no token.
absl::StatusOr<std::vector<std::vector<int32_t>>> ResolvePrompts(const model::Model& model,
                                                                 const spec::Experiment& experiment);

}  // namespace lesion::experiments

#endif  // LESION_EXPERIMENTS_RUNNER_H_
