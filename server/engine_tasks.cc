// What an executor runs on one replica (engine_tasks.h).
#include "server/engine_tasks.h"

#include <optional>
#include <utility>

#include "common/status_macros.h"
#include "experiments/generation.h"
#include "experiments/sweep.h"

namespace lesion::server {
namespace {

namespace ex = ::lesion::experiments;

// A generation; its tokens go out through the job's on_token as they are chosen.
absl::StatusOr<result::Experiment> RunGeneration(Job& job, const model::Model& model,
                                                 const std::function<bool()>& cancelled) {
  GenerationJob& g = *job.generation;
  if (job.callbacks.on_start) job.callbacks.on_start();
  ASSIGN_OR_RETURN(g.prompt_ids, GenerationPrompt(model, g));
  const model::Tokenizer* tokenizer = model.tokenizer();
  auto text_of = [tokenizer](const std::vector<int32_t>& ids) -> std::string {
    if (tokenizer == nullptr) return "";
    absl::StatusOr<std::string> text = tokenizer->Decode(ids);
    return text.ok() ? *text : "";
  };
  // Each token's text is what it adds to its run's decoded continuation (a token decoded alone
  // would lose a SentencePiece word's leading space), so the pieces join to the run's text.
  struct Decoded {
    std::vector<int32_t> ids;
    std::string text;
  };
  Decoded decoded[2];
  ex::GenerationControls controls;
  controls.baseline = g.baseline;
  controls.on_token = [&](bool intervened, int32_t id, double logprob) {
    if (g.on_token) {
      Decoded& d = decoded[intervened ? 1 : 0];
      d.ids.push_back(id);
      std::string now = text_of(d.ids);
      size_t common = 0;
      while (common < d.text.size() && common < now.size() && d.text[common] == now[common]) ++common;
      g.on_token(intervened, id, logprob, now.substr(common));
      d.text = std::move(now);
    }
    return !cancelled();
  };
  ASSIGN_OR_RETURN(ex::GenerationRun run, ex::GenerateSideBySide(model, g.interventions, g.prompt_ids,
                                                                 GenerationOptionsOf(model, g), controls));
  if (cancelled()) return absl::CancelledError("generation cancelled");
  g.baseline_ids = run.baseline.tokens;
  g.intervened_ids = run.intervened.tokens;
  g.baseline_text = text_of(g.baseline_ids);
  g.intervened_text = text_of(g.intervened_ids);
  return result::Experiment{};
}

}  // namespace

absl::StatusOr<std::vector<int32_t>> GenerationPrompt(const model::Model& model, const GenerationJob& g) {
  if (!g.has_text) {
    if (g.ids.empty()) return absl::InvalidArgumentError("generate: the prompt is empty (give text or ids)");
    return g.ids;
  }
  ASSIGN_OR_RETURN(const model::Tokenizer* tokenizer, model.RequireTokenizer());
  std::vector<int32_t> ids;
  if (model.bos_id().has_value()) ids.push_back(*model.bos_id());
  ASSIGN_OR_RETURN(std::vector<int32_t> text_ids, tokenizer->Encode(g.text));
  ids.insert(ids.end(), text_ids.begin(), text_ids.end());
  if (ids.empty()) return absl::InvalidArgumentError("generate: empty text and the model has no BOS token");
  return ids;
}

model::GenerationOptions GenerationOptionsOf(const model::Model& model, const GenerationJob& g) {
  model::GenerationOptions options;
  options.max_new_tokens = g.max_new_tokens;
  options.temperature = g.temperature;
  options.top_k = g.top_k;
  options.seed = g.seed;
  options.stop_id = model.config().eos_token_id;
  return options;
}

absl::StatusOr<result::Experiment> RunEngineTask(Task& task, const std::string& executor,
                                                 const std::function<bool()>& cancelled,
                                                 const std::filesystem::path& data_dir, const ex::RunLimits& limits) {
  Job& job = *task.job;
  const model::Model& model = *task.replica.model;
  if (job.generation != nullptr) return RunGeneration(job, model, cancelled);
  std::optional<result::Pass> cached;
  if (job.lookup_cached_baseline) cached = job.lookup_cached_baseline();
  if (task.sweep == nullptr) {
    if (job.callbacks.on_start) job.callbacks.on_start();
    ex::RunControls controls;
    controls.cancelled = cancelled;
    controls.progress = job.callbacks.on_progress;
    if (cached.has_value()) controls.cached_baseline = &*cached;
    absl::StatusOr<result::Experiment> result = ex::RunExperiment(model, job.spec, data_dir, controls, limits);
    if (result.ok()) result->run.model = job.model;  // the server's name for it
    return result;
  }
  ShardedSweep& sweep = *task.sweep;
  if (sweep.MarkStarted() && job.callbacks.on_start) job.callbacks.on_start();
  ex::SweepControls controls;
  controls.cancelled = cancelled;
  controls.only_groups = task.groups;
  if (cached.has_value()) controls.cached_baseline = &*cached;
  controls.progress = [&sweep, &job, shard = task.shard](int64_t done, int64_t planned) {
    const auto [all_done, all_planned] = sweep.ReportProgress(shard, done, planned);
    if (job.callbacks.on_progress) job.callbacks.on_progress(all_done, all_planned);
  };
  controls.on_variant = [&job, &executor](int64_t i, result::Experiment r) {
    r.run.device = executor;  // the executor that ran it ("cuda:1", "cpu#1")
    r.run.model = job.model;
    if (job.callbacks.on_variant) job.callbacks.on_variant(i, std::move(r));
  };
  absl::StatusOr<result::Experiment> shard = ex::RunSweep(model, job.spec, job.variants, data_dir, controls, limits);
  if (shard.ok()) shard->run.model = job.model;
  return shard;
}

}  // namespace lesion::server
