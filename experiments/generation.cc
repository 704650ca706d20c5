#include "experiments/generation.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "experiments/spec_binding.h"
#include "experiments/weight_edits.h"
#include "model/torch_util.h"

namespace lesion::experiments {

absl::Status ValidateGeneration(const model::Model& model, const std::vector<spec::Intervention>& interventions,
                                const std::vector<int32_t>& prompt, const model::GenerationOptions& options) {
  const model::ModelConfig& c = model.config();
  for (size_t i = 0; i < interventions.size(); ++i) {
    const spec::Intervention& in = interventions[i];
    const auto* h = std::get_if<spec::HeadAblation>(&in);
    const auto* a = std::get_if<spec::ActivationEdit>(&in);
    if ((h != nullptr && h->mode == spec::HeadAblation::Mode::kMean) ||
        (a != nullptr && a->op == spec::ActivationEdit::Op::kMean)) {
      return absl::InvalidArgumentError(
          absl::StrCat("interventions[", i,
                       "]: MEAN mode needs a dataset's means, and generation has no dataset; run it as an "
                       "experiment, or set the values with SET / SET_VECTORS"));
    }
  }
  const int64_t length = static_cast<int64_t>(prompt.size()) + std::max<int64_t>(0, options.max_new_tokens);
  return model::TorchCall("validating the generation", [&]() -> absl::Status {
    RETURN_IF_ERROR(internal::CheckInterventionValues(model.transformer().dtype(), interventions));
    model::RunPlan dry_run(c.n_layers);
    RETURN_IF_ERROR(internal::AddActivationInterventions(c, interventions, length, nullptr, dry_run));
    RETURN_IF_ERROR(internal::CheckWeightEdits(model.transformer(), interventions));
    return internal::CheckEditPositions(interventions, length);
  });
}

absl::StatusOr<GenerationRun> GenerateSideBySide(const model::Model& model,
                                                 const std::vector<spec::Intervention>& interventions,
                                                 const std::vector<int32_t>& prompt,
                                                 const model::GenerationOptions& options,
                                                 const GenerationControls& controls) {
  RETURN_IF_ERROR(ValidateGeneration(model, interventions, prompt, options));
  const model::Transformer& t = model.transformer();
  const model::ModelConfig& c = model.config();
  auto reporter = [&](bool intervened) -> model::TokenCallback {
    if (!controls.on_token) return nullptr;
    return [&, intervened](int32_t token, double logprob) { return controls.on_token(intervened, token, logprob); };
  };
  GenerationRun out;
  if (controls.baseline) {
    model::RunPlan plain(c.n_layers);
    ASSIGN_OR_RETURN(out.baseline, model::Generate(t, prompt, plain, options, reporter(false)));
    out.has_baseline = true;
  }
  if (interventions.empty()) return out;
  model::RunPlan plan(c.n_layers);
  const int64_t length = static_cast<int64_t>(prompt.size()) + options.max_new_tokens;
  RETURN_IF_ERROR(model::TorchCall("adding the interventions", [&] {
    return internal::AddActivationInterventions(c, interventions, length, nullptr, plan);
  }));
  WeightEditSession edits(&t);  // restores in its destructor on every early return
  RETURN_IF_ERROR(
      model::TorchCall("editing the weights", [&] { return internal::ApplyWeightEdits(interventions, edits); }));
  absl::StatusOr<model::Generated> intervened = model::Generate(t, prompt, plan, options, reporter(true));
  RETURN_IF_ERROR(model::TorchCall("restoring the weights", [&] { return edits.Restore(); }));
  if (!intervened.ok()) return intervened.status();
  out.intervened = *std::move(intervened);
  out.has_intervened = true;
  return out;
}

}  // namespace lesion::experiments
