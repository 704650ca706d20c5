#include "experiments/runner.h"

#include <c10/core/InferenceMode.h>

#include <chrono>
#include <cmath>
#include <memory>

#include "absl/strings/str_cat.h"
#include "common/error_text.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "experiments/spec_binding.h"
#include "experiments/weight_edits.h"
#include "model/torch_util.h"

namespace lesion::experiments {

using internal::Means;
using internal::PassCollectors;
using internal::Prepared;

absl::StatusOr<std::vector<std::vector<int32_t>>> ResolvePrompts(const model::Model& model, const spec::Experiment& e) {
  std::vector<std::vector<int32_t>> out;
  for (size_t i = 0; i < e.prompts.size(); ++i) {
    const spec::Prompt& prompt = e.prompts[i];
    if (!prompt.token_ids.empty()) {
      out.push_back(prompt.token_ids);
      continue;
    }
    ASSIGN_OR_RETURN(const model::Tokenizer* tokenizer, model.RequireTokenizer());
    ASSIGN_OR_RETURN(std::vector<int32_t> ids, tokenizer->Encode(prompt.text));
    if (ids.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("dataset.prompts[", i, "]: ", QuoteForError(prompt.text), " encodes to no token"));
    }
    out.push_back(std::move(ids));
  }
  return out;
}

absl::StatusOr<std::vector<int32_t>> ResolveDataset(const model::Model& model, const spec::Experiment& e,
                                                    const std::filesystem::path& data_dir) {
  if (!e.token_ids.empty()) return e.token_ids;
  if (!e.prompts.empty()) {
    ASSIGN_OR_RETURN(std::vector<std::vector<int32_t>> prompts, ResolvePrompts(model, e));
    std::vector<int32_t> ids;
    for (const auto& prompt : prompts) ids.insert(ids.end(), prompt.begin(), prompt.end());
    return ids;
  }
  std::string text = e.text;
  if (!e.named_dataset.empty()) {
    std::filesystem::path file;
    if (e.named_dataset == "wikitext-2-raw-test") {
      file = data_dir / "wikitext-2/wiki.test.raw";
    } else if (e.named_dataset == "tinystories-sample") {
      file = data_dir / "tinystories_sample.txt";
    } else {
      return absl::InvalidArgumentError(absl::StrCat("dataset.named: unknown dataset ", QuoteForError(e.named_dataset),
                                                     " (known: wikitext-2-raw-test, tinystories-sample)"));
    }
    ASSIGN_OR_RETURN(text, ReadFile(file));
  }
  ASSIGN_OR_RETURN(const model::Tokenizer* tokenizer, model.RequireTokenizer());
  return tokenizer->Encode(text);
}

absl::Status ValidateExperiment(const model::Model& model, const spec::Experiment& e,
                                const std::filesystem::path& data_dir, const RunLimits& limits) {
  return model::TorchCall("validating the experiment",
                          [&]() -> absl::Status { return internal::Prepare(model, e, data_dir, limits).status(); });
}

absl::StatusOr<result::Experiment> RunExperiment(const model::Model& model, const spec::Experiment& e,
                                                 const std::filesystem::path& data_dir, const RunControls& controls,
                                                 const RunLimits& limits) {
  const auto start = std::chrono::steady_clock::now();
  const model::ModelConfig& c = model.config();
  const model::Transformer& t = model.transformer();

  // Everything is validated before the first forward pass.
  ASSIGN_OR_RETURN(Prepared prepared, internal::Prepare(model, e, data_dir, limits));
  PassCollectors& base = prepared.base;
  PassCollectors& inter = prepared.inter;
  const bool needs_kl = prepared.needs_kl;
  const bool needs_means = prepared.needs_means;
  const bool observational = prepared.observational;
  // A cached baseline serves when the baseline's logits and means are not needed again (an
  // observational run needs neither: its KL divergence is exactly 0, and it has no MEAN modes).
  const bool reuse_baseline = controls.cached_baseline != nullptr && (observational || (!needs_kl && !needs_means));
  ASSIGN_OR_RETURN(std::vector<model::WindowBatch> batches,
                   model::MakeWindowBatches(t, prepared.ids, prepared.options, model.bos_id()));
  std::vector<int32_t> token_ids;
  for (const auto& tp : prepared.tokens) token_ids.push_back(tp.token_id);
  RETURN_IF_ERROR(model::TorchCall("next-token reducers", [&] {
    // A prompt set keeps its sums per prompt too, for the per-prompt rows.
    const int64_t per_window = prepared.protocol.prompt_set ? prepared.protocol.n_windows : 0;
    base.next_token =
        std::make_unique<model::NextTokenReducer>(token_ids, t.device(), 1, base.token_outputs, per_window);
    inter.next_token =
        std::make_unique<model::NextTokenReducer>(token_ids, t.device(), 1, inter.token_outputs, per_window);
  }));

  const int64_t n_batches = static_cast<int64_t>(batches.size());
  int64_t planned = reuse_baseline ? n_batches : n_batches * (needs_means && needs_kl ? 3 : 2);
  if (observational) planned = reuse_baseline ? 0 : n_batches;
  int64_t passes = 0;
  auto forward = [&](const model::WindowBatch& batch, const model::RunPlan& plan) -> absl::StatusOr<at::Tensor> {
    if (controls.cancelled && controls.cancelled()) {
      return absl::CancelledError(
          absl::StrCat("experiment cancelled after ", passes, " of ", planned, " forward passes"));
    }
    absl::StatusOr<at::Tensor> logits = t.Forward(batch.input, plan);  // [b, n, vocab]
    if (absl::IsCancelled(logits.status())) {
      return absl::CancelledError(
          absl::StrCat("experiment cancelled during forward pass ", passes + 1, " of ", planned));
    }
    ++passes;
    if (logits.ok() && controls.progress) controls.progress(passes, planned);
    return logits;
  };

  Means means;
  model::RunPlan baseline_plan(c.n_layers);
  base.Attach(baseline_plan);
  internal::AddMeanObservers(c, e.interventions, means, baseline_plan);
  model::RunPlan plain(c.n_layers);
  if (controls.cancelled) {
    baseline_plan.SetInterrupt(controls.cancelled);
    plain.SetInterrupt(controls.cancelled);
  }
  WeightEditSession edits(&t);  // restores in its destructor on every early return

  RETURN_IF_ERROR(model::TorchCall("running the experiment", [&]() -> absl::Status {
    c10::InferenceMode guard;
    bool baseline_done = reuse_baseline;
    if (needs_means || (observational && !baseline_done)) {
      // The dataset means first, since the intervened pass depends on them; or the one pass of an
      // observational run.
      for (const model::WindowBatch& batch : batches) {
        ASSIGN_OR_RETURN(at::Tensor logits, forward(batch, baseline_plan));
        base.next_token->Add(logits, batch);
      }
      baseline_done = true;
    }
    if (observational) return absl::OkStatus();
    model::RunPlan plan(c.n_layers);
    if (controls.cancelled) plan.SetInterrupt(controls.cancelled);
    RETURN_IF_ERROR(internal::AddActivationInterventions(c, e.interventions, prepared.options.seq_len, &means, plan));
    inter.Attach(plan);
    RETURN_IF_ERROR(internal::ApplyWeightEdits(e.interventions, edits));
    RETURN_IF_ERROR(edits.Suspend());
    for (const model::WindowBatch& batch : batches) {
      at::Tensor reference;
      if (!baseline_done || needs_kl) {
        ASSIGN_OR_RETURN(at::Tensor logits, forward(batch, baseline_done ? plain : baseline_plan));
        if (!baseline_done) base.next_token->Add(logits, batch);
        if (needs_kl) reference = logits;
      }
      RETURN_IF_ERROR(edits.Resume());
      ASSIGN_OR_RETURN(at::Tensor logits, forward(batch, plan));
      RETURN_IF_ERROR(edits.Suspend());
      inter.next_token->Add(logits, batch, reference);
    }
    return absl::OkStatus();
  }));

  result::Experiment out;
  if (reuse_baseline) {
    out.baseline = *controls.cached_baseline;
    out.baseline_from_cache = true;
  } else {
    ASSIGN_OR_RETURN(out.baseline, internal::FinishPass(base, t, prepared.protocol, prepared.tokens, *base.next_token,
                                                        0));  // pristine weights
  }
  if (observational) {
    out.observational = true;
    out.has_kl_divergence = needs_kl;  // KL(p || p) = 0 exactly
  } else {
    RETURN_IF_ERROR(edits.Resume());
    absl::StatusOr<result::Pass> intervened =
        internal::FinishPass(inter, t, prepared.protocol, prepared.tokens, *inter.next_token, 0);
    RETURN_IF_ERROR(edits.Restore());
    if (!intervened.ok()) return intervened.status();
    out.intervened = *std::move(intervened);
    if (needs_kl) {
      out.has_kl_divergence = true;
      ASSIGN_OR_RETURN(double kl_sum, model::TorchCall("reading the KL divergence",
                                                       [&] { return inter.next_token->kl_sum()[0].item<double>(); }));
      out.kl_divergence = kl_sum / static_cast<double>(prepared.protocol.n_tokens);
    }
  }
  out.run = internal::RunInfoOf(model, e.spec_sha256);
  out.run.forward_passes = passes;
  out.run.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return out;
}

}  // namespace lesion::experiments
