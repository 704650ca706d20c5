// Runs one experiment spec in-process: the baseline pass and the intervened pass over the same
// windows, each with the requested measurements, and returns both with their deltas. Weight edits
// are applied only for the intervened pass and restored (bit-identically) before returning, also on
// error. Every index of the spec is checked against the model before any forward pass.
//
// Thread-compatible: one experiment at a time per model (the server's executor thread owns it).
#ifndef LESION_EXPERIMENTS_RUNNER_H_
#define LESION_EXPERIMENTS_RUNNER_H_

#include <ATen/ATen.h>

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "experiments/measurements.h"
#include "experiments/model.h"
#include "experiments/perplexity.h"
#include "experiments/spec/spec.h"

namespace lesion::experiments {

struct PassResult {
  PerplexityResult perplexity;
  std::vector<ActivationStatsCollector::SiteStats> activation_stats;
  at::Tensor attention_sink;  // [layers, heads] float64, undefined unless measured
};

struct ExperimentResult {
  PassResult baseline;
  PassResult intervened;
  std::vector<int64_t> sink_layers;
  bool measured_perplexity = false;
  double seconds = 0;
};

// `data_dir` holds the named datasets (data/ of the repository).
absl::StatusOr<ExperimentResult> RunExperiment(const Model& model, const spec::Experiment& experiment,
                                               const std::filesystem::path& data_dir);

// The token ids of the spec's dataset (text tokenized, named datasets read from `data_dir`).
absl::StatusOr<std::vector<int32_t>> ResolveDataset(const Model& model, const spec::Experiment& experiment,
                                                    const std::filesystem::path& data_dir);

}  // namespace lesion::experiments

#endif  // LESION_EXPERIMENTS_RUNNER_H_
