// Runs a sweep in-process: the variants of one experiment (spec::ExpandSweep), each an experiment of
// its own on the parent's dataset, eval config and measurements, without redundant work:
//
//  * the baseline once: its measurements when they are not cached, and per window batch the
//    residual stream entering every layer where some variant's first intervention sits;
//  * each variant computed from its first intervened layer on, the layers before it taken from the
//    baseline (measurements of those layers are the baseline's values, observed once per variant);
//  * several variants in one forward pass, one after the other along the batch dimension, each
//    with its own hooks on its rows: head ablations and activation edits as in a single run,
//    attention-bias slots per row, weight edits as exact per-row corrections of the activations
//    they affect (RunPlan::AddLinearCorrection) and norm-channel resets as per-row gammas, so the
//    weights are never written during the forward passes.
//
// Every variant's result equals running it alone with RunExperiment up to float rounding (batched
// matrix products, corrections instead of edited weights): tested at 1e-5 relative in float32.
//
// Variants run in rounds of whole groups (at most RunLimits::max_round_variants variants each, or
// one larger group); a variant's result is handed to on_variant as soon as its group's pass over
// the last window batch is done (the server stores it then), so a stop loses at most the groups
// still running.
// Thread-compatible like RunExperiment: the executor thread that owns the model runs it. Errors as
// RunExperiment's; validation errors name the variant's index and name; InvalidArgument for a
// variants_per_pass that puts more than RunLimits::max_pass_tokens tokens in one pass.
#ifndef LESION_EXPERIMENTS_SWEEP_H_
#define LESION_EXPERIMENTS_SWEEP_H_

#include <cstdint>
#include <filesystem>
#include <functional>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "experiments/runner.h"
#include "model/model.h"
#include "spec/result.h"
#include "spec/spec.h"

namespace lesion::experiments {

// How a sweep's variants share forward passes: groups of variants with the same first intervened
// layer, at most variants_per_pass each (the spec's, else as many as max_pass_tokens allows), in
// order of that layer. A pure function of the spec, the model and the limits, so that a variant's
// numbers never depend on how a sweep is split into rounds or across devices (each group runs the
// same batched passes wherever it runs).
struct SweepGroups {
  int64_t variants_per_pass = 0;
  std::vector<std::vector<int64_t>> groups;  // variant indices
  std::vector<int64_t> starts;               // per group: its first intervened layer
};
SweepGroups GroupSweep(const model::ModelConfig& config, const spec::Experiment& parent,
                       const std::vector<spec::Experiment>& variants, const RunLimits& limits = {});

// Deals whole groups to `n_shards` devices so that their work (variants times the layers they run)
// is balanced, largest first: per shard, its group indices in plan order. Shards may be empty.
std::vector<std::vector<int64_t>> ShardGroups(const SweepGroups& groups, int64_t n_layers, int64_t n_shards);

struct SweepControls {
  // Polled between forward passes and layers; returning true stops the sweep with Cancelled
  // (variants already handed to on_variant stay done).
  std::function<bool()> cancelled;
  // After every forward pass: (passes done, passes planned).
  std::function<void(int64_t, int64_t)> progress;
  // The baseline of an earlier run with the same model and baseline_sha256, used for every
  // variant's baseline (its measurements are not recomputed); the forward passes that give the
  // variants their first layers still run. Not owned.
  const result::Pass* cached_baseline = nullptr;
  // Each variant's result, by its index in `variants`, once its group's passes are done; on the
  // calling thread. Required.
  std::function<void(int64_t variant, result::Experiment result)> on_variant;
  // The groups of GroupSweep to run (a device's shard of the sweep); empty: all of them.
  std::vector<int64_t> only_groups;
};

// Runs `variants` (children of `parent`: same dataset, eval config and measurements; their own
// interventions) on `model`, or the shard of them that controls.only_groups names. Returns the
// parent's result: the baseline pass and the run info, with one sweep summary row per variant
// (perplexity and KL of each, in the variants' order; ids left empty; rows of variants outside the
// shard left empty too).
absl::StatusOr<result::Experiment> RunSweep(const model::Model& model, const spec::Experiment& parent,
                                            const std::vector<spec::Experiment>& variants,
                                            const std::filesystem::path& data_dir, const SweepControls& controls,
                                            const RunLimits& limits = {});

// Every check RunSweep makes before its first forward pass (the parent's dataset and measurements,
// each variant's interventions), without device work and without touching the weights.
absl::Status ValidateSweep(const model::Model& model, const spec::Experiment& parent,
                           const std::vector<spec::Experiment>& variants, const std::filesystem::path& data_dir,
                           const RunLimits& limits = {});

// The layer where a variant's interventions begin to change the forward pass: -1 for an edit of
// the embedding, n_layers for the final norm and logits (or no interventions). The layers before
// it are the baseline's. Interventions must be valid for the model.
int64_t FirstIntervenedLayer(const model::ModelConfig& config, const std::vector<spec::Intervention>& interventions);

}  // namespace lesion::experiments

#endif  // LESION_EXPERIMENTS_SWEEP_H_
