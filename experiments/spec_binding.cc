#include "experiments/spec_binding.h"

#include <c10/core/InferenceMode.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <map>
#include <memory>
#include <optional>

#include "absl/strings/str_cat.h"
#include "common/error_text.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "experiments/detectors.h"
#include "experiments/interventions.h"
#include "experiments/measurements.h"
#include "experiments/weight_edits.h"
#include "model/perplexity.h"
#include "model/torch_util.h"

namespace lesion::experiments::internal {

namespace {

bool IsKnown(spec::HeadAblation::Mode m) {
  switch (m) {
    case spec::HeadAblation::Mode::kZero:
    case spec::HeadAblation::Mode::kMean:
    case spec::HeadAblation::Mode::kScale:
      return true;
  }
  return false;
}
bool IsKnown(spec::WeightEdit::Op op) {
  switch (op) {
    case spec::WeightEdit::Op::kZero:
    case spec::WeightEdit::Op::kScale:
    case spec::WeightEdit::Op::kSet:
      return true;
  }
  return false;
}
bool IsKnown(spec::NormChannelReset::Mode m) {
  switch (m) {
    case spec::NormChannelReset::Mode::kOne:
    case spec::NormChannelReset::Mode::kGammaMean:
    case spec::NormChannelReset::Mode::kValue:
      return true;
  }
  return false;
}
bool IsKnown(spec::ActivationEdit::Op op) {
  switch (op) {
    case spec::ActivationEdit::Op::kZero:
    case spec::ActivationEdit::Op::kSet:
    case spec::ActivationEdit::Op::kScale:
    case spec::ActivationEdit::Op::kMean:
    case spec::ActivationEdit::Op::kAdd:
    case spec::ActivationEdit::Op::kProjectOut:
    case spec::ActivationEdit::Op::kSetVectors:
      return true;
  }
  return false;
}

// `value` converted to `dtype` (a floating type) is finite.
bool FiniteIn(at::ScalarType dtype, double value) {
  if (!std::isfinite(value) || std::fabs(value) > std::numeric_limits<float>::max()) return false;
  const float f = static_cast<float>(value);
  switch (dtype) {
    case at::kHalf:
      return std::isfinite(static_cast<float>(c10::Half(f)));
    case at::kBFloat16:
      return std::isfinite(static_cast<float>(c10::BFloat16(f)));
    default:
      return std::isfinite(f);
  }
}

// A number of an intervention: finite, within the spec's limit, and finite in the model's dtype.
absl::Status CheckNumber(at::ScalarType dtype, absl::string_view where, absl::string_view field, double value) {
  if (!std::isfinite(value) || std::fabs(value) > spec::kMaxInterventionMagnitude) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", field, " ", value,
                                                   " is not a finite number of magnitude at most ",
                                                   spec::kMaxInterventionMagnitude));
  }
  if (!FiniteIn(dtype, value)) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": ", field, " ", value, " overflows the model's dtype ", model::DtypeName(dtype)));
  }
  return absl::OkStatus();
}

absl::Status UnknownEnum(absl::string_view where, absl::string_view field, int value) {
  return absl::InvalidArgumentError(absl::StrCat(where, ": unknown ", field, " ", value));
}

}  // namespace

absl::Status CheckInterventionValues(at::ScalarType dtype, const std::vector<spec::Intervention>& interventions) {
  for (size_t i = 0; i < interventions.size(); ++i) {
    const spec::Intervention& in = interventions[i];
    const std::string where = absl::StrCat("interventions[", i, "]");
    if (const auto* h = std::get_if<spec::HeadAblation>(&in)) {
      const std::string at = where + ".head_ablation";
      if (!IsKnown(h->mode)) return UnknownEnum(at, "mode", static_cast<int>(h->mode));
      RETURN_IF_ERROR(CheckNumber(dtype, at, "factor", h->factor));
    } else if (const auto* w = std::get_if<spec::WeightEdit>(&in)) {
      const std::string at = where + ".weight_edit";
      if (!IsKnown(w->op)) return UnknownEnum(at, "op", static_cast<int>(w->op));
      RETURN_IF_ERROR(CheckNumber(dtype, at, "value", w->value));
    } else if (const auto* n = std::get_if<spec::NormChannelReset>(&in)) {
      const std::string at = where + ".norm_channel_reset";
      if (!IsKnown(n->mode)) return UnknownEnum(at, "mode", static_cast<int>(n->mode));
      RETURN_IF_ERROR(CheckNumber(dtype, at, "value", n->value));
    } else if (const auto* b = std::get_if<spec::AttentionBias>(&in)) {
      const std::string at = where + ".attention_bias";
      for (size_t k = 0; k < b->key.size(); ++k) {
        RETURN_IF_ERROR(CheckNumber(dtype, at, absl::StrCat("key[", k, "]"), b->key[k]));
      }
      for (size_t k = 0; k < b->value.size(); ++k) {
        RETURN_IF_ERROR(CheckNumber(dtype, at, absl::StrCat("value[", k, "]"), b->value[k]));
      }
    } else if (const auto* a = std::get_if<spec::ActivationEdit>(&in)) {
      const std::string at = where + ".activation_edit";
      if (!IsKnown(a->op)) return UnknownEnum(at, "op", static_cast<int>(a->op));
      RETURN_IF_ERROR(CheckNumber(dtype, at, "value", a->value));
      for (size_t k = 0; k < a->vector.size(); ++k) {
        RETURN_IF_ERROR(CheckNumber(dtype, at, absl::StrCat("vector[", k, "]"), a->vector[k]));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status CheckEditPositions(const std::vector<spec::Intervention>& interventions, int64_t window_tokens) {
  for (size_t i = 0; i < interventions.size(); ++i) {
    const auto* a = std::get_if<spec::ActivationEdit>(&interventions[i]);
    if (a == nullptr) continue;
    for (int64_t p : a->positions) {
      if (p >= window_tokens) {
        return absl::InvalidArgumentError(
            absl::StrCat("interventions[", i, "].activation_edit: position ", p,
                         " lies beyond the windows of this run (", window_tokens, " tokens, positions 0..",
                         window_tokens - 1, "); positions count from the start of each window (eval.seq_len)"));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status ApplyWeightEdits(const std::vector<spec::Intervention>& interventions, WeightEditSession& edits) {
  for (const spec::Intervention& in : interventions) {
    if (const auto* w = std::get_if<spec::WeightEdit>(&in)) {
      ASSIGN_OR_RETURN(model::WeightModule module, model::ParseWeightModule(w->module));
      RETURN_IF_ERROR(edits.EditElement(w->layer, module, w->row, w->col, w->op, w->value));
    } else if (const auto* n = std::get_if<spec::NormChannelReset>(&in)) {
      ASSIGN_OR_RETURN(model::NormSite norm, model::ParseNormSite(n->norm));
      RETURN_IF_ERROR(edits.ResetNormChannels(n->layer, norm, n->channels, n->mode, n->value));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckWeightEdits(const model::Transformer& t, const std::vector<spec::Intervention>& interventions) {
  // The error names the intervention, as the spec's own checks do: "interventions[2].weight_edit: ...".
  auto located = [](const absl::Status& s, size_t i, absl::string_view kind) {
    return s.ok() ? s : absl::Status(s.code(), absl::StrCat("interventions[", i, "].", kind, ": ", s.message()));
  };
  for (size_t i = 0; i < interventions.size(); ++i) {
    const spec::Intervention& in = interventions[i];
    if (const auto* w = std::get_if<spec::WeightEdit>(&in)) {
      absl::StatusOr<model::WeightModule> module = model::ParseWeightModule(w->module);
      absl::Status s = module.ok() ? CheckElementEdit(t, w->layer, *module, w->row, w->col, w->value) : module.status();
      RETURN_IF_ERROR(located(s, i, "weight_edit"));
    } else if (const auto* n = std::get_if<spec::NormChannelReset>(&in)) {
      absl::StatusOr<model::NormSite> norm = model::ParseNormSite(n->norm);
      absl::Status s = norm.ok() ? CheckNormReset(t, n->layer, *norm, n->channels, n->value) : norm.status();
      RETURN_IF_ERROR(located(s, i, "norm_channel_reset"));
    }
  }
  return absl::OkStatus();
}

// Adds the activation-level interventions to `plan`. With `means` null, MEAN modes get zero
// placeholders of the right shape: that validates every index before any compute.
absl::Status AddActivationInterventions(const model::ModelConfig& c,
                                        const std::vector<spec::Intervention>& interventions, int64_t seq_len,
                                        const Means* means, model::RunPlan& plan) {
  for (const spec::Intervention& in : interventions) {
    if (const auto* h = std::get_if<spec::HeadAblation>(&in)) {
      at::Tensor head_means;
      if (h->mode == spec::HeadAblation::Mode::kMean) {
        head_means = means != nullptr && means->head_sums.count(h->layer)
                         ? means->head_sums.at(h->layer) / static_cast<double>(means->head_counts.at(h->layer))
                         : at::zeros({c.n_heads, c.head_dim});
      }
      RETURN_IF_ERROR(AddHeadAblation(c, h->layer, h->heads, h->mode, h->factor, head_means, plan));
    } else if (const auto* a = std::get_if<spec::ActivationEdit>(&in)) {
      ASSIGN_OR_RETURN(std::vector<model::SiteId> sites, model::ParseSitePattern(a->site, c.n_layers));
      for (const model::SiteId& site : sites) {
        at::Tensor mean;
        if (a->op == spec::ActivationEdit::Op::kMean) {
          const std::string name = site.Name();
          mean = means != nullptr && means->site_sums.count(name)
                     ? means->site_sums.at(name) / means->site_counts.at(name).clamp_min(1)
                     : at::zeros({seq_len, SiteFeatures(c, site.kind)});
        }
        RETURN_IF_ERROR(AddActivationEdit(c, site, a->positions, a->dims, a->op, a->value, mean, plan, a->vector));
      }
    } else if (const auto* b = std::get_if<spec::AttentionBias>(&in)) {
      const int64_t width = c.n_kv_heads * c.head_dim;
      if (b->layer < 0 || b->layer >= c.n_layers) {
        return absl::InvalidArgumentError(absl::StrCat("attention bias: layer ", b->layer, " out of range: model ",
                                                       c.architecture, " has ", c.n_layers, " layers"));
      }
      if (static_cast<int64_t>(b->key.size()) != width || static_cast<int64_t>(b->value.size()) != width) {
        return absl::InvalidArgumentError(absl::StrCat("attention bias at layer ", b->layer, ": key and value need ",
                                                       width, " numbers (n_kv_heads ", c.n_kv_heads, " x head_dim ",
                                                       c.head_dim, "), got ", b->key.size(), " and ", b->value.size()));
      }
      for (float v : b->key) {
        if (!std::isfinite(v)) return absl::InvalidArgumentError("attention bias: key holds a non-finite number");
      }
      for (float v : b->value) {
        if (!std::isfinite(v)) return absl::InvalidArgumentError("attention bias: value holds a non-finite number");
      }
      ASSIGN_OR_RETURN(model::AttentionBias bias, model::TorchCall("attention bias", [&] {
                         return model::AttentionBias{at::tensor(b->key).view({c.n_kv_heads, c.head_dim}),
                                                     at::tensor(b->value).view({c.n_kv_heads, c.head_dim}),
                                                     at::Tensor()};
                       }));
      plan.SetAttentionBias(b->layer, std::move(bias));
    }
  }
  return absl::OkStatus();
}

// Observers that sum what MEAN-mode interventions need over the baseline pass.
void AddMeanObservers(const model::ModelConfig& c, const std::vector<spec::Intervention>& interventions, Means& means,
                      model::RunPlan& plan) {
  for (const spec::Intervention& in : interventions) {
    if (const auto* h = std::get_if<spec::HeadAblation>(&in); h && h->mode == spec::HeadAblation::Mode::kMean) {
      if (means.head_sums.count(h->layer)) continue;
      means.head_sums[h->layer] = at::Tensor();
      plan.AddHook({model::SiteKind::kAttnZ, h->layer},
                   [&means, layer = h->layer](const model::SiteId&, at::Tensor& z) {
                     at::Tensor sum = z.to(at::kDouble).sum(at::IntArrayRef{0, 1}).cpu();  // [heads, hd]
                     at::Tensor& acc = means.head_sums[layer];
                     acc = acc.defined() ? acc + sum : sum;
                     means.head_counts[layer] += z.size(0) * z.size(1);
                   });
    } else if (const auto* a = std::get_if<spec::ActivationEdit>(&in); a && a->op == spec::ActivationEdit::Op::kMean) {
      auto sites = model::ParseSitePattern(a->site, c.n_layers);
      if (!sites.ok()) continue;  // reported by validation
      for (const model::SiteId& site : *sites) {
        const std::string name = site.Name();
        if (means.site_sums.count(name)) continue;
        means.site_sums[name] = at::Tensor();
        plan.AddHook(site, [&means, name](const model::SiteId&, at::Tensor& x) {
          at::Tensor sum = x.reshape({x.size(0), x.size(1), -1}).to(at::kDouble).sum(0).cpu();  // [s, features]
          at::Tensor& acc = means.site_sums[name];
          at::Tensor& count = means.site_counts[name];
          if (!acc.defined()) {  // the first batch holds the longest windows
            acc = at::zeros_like(sum);
            count = at::zeros({sum.size(0), 1}, sum.options());
          }
          // A shorter last window adds into the leading positions only, and counts only there.
          const int64_t n = std::min(acc.size(0), sum.size(0));
          acc.narrow(0, 0, n) += sum.narrow(0, 0, n);
          count.narrow(0, 0, n) += static_cast<double>(x.size(0));
        });
      }
    }
  }
}

bool NeedsMeans(const std::vector<spec::Intervention>& interventions) {
  for (const spec::Intervention& in : interventions) {
    if (const auto* h = std::get_if<spec::HeadAblation>(&in); h && h->mode == spec::HeadAblation::Mode::kMean) {
      return true;
    }
    if (const auto* a = std::get_if<spec::ActivationEdit>(&in); a && a->op == spec::ActivationEdit::Op::kMean) {
      return true;
    }
  }
  return false;
}

model::PerplexityOptions EvalOptions(const model::ModelConfig& c, const spec::Experiment& e) {
  model::PerplexityOptions options;
  options.seq_len = e.seq_len > 0 ? e.seq_len : std::min<int64_t>(512, c.max_position_embeddings);
  if (e.stride > 0) options.stride = e.stride;
  if (e.max_windows > 0) options.max_windows = e.max_windows;
  if (e.batch_size > 0) options.batch_size = e.batch_size;
  options.add_bos = e.add_bos;
  return options;
}

int64_t PromptRowBytes(const Prepared& p) {
  if (!p.protocol.prompt_set) return 0;
  int64_t sites = 0;
  for (const auto& stats : p.base.stats) sites += static_cast<int64_t>(stats->n_sites());
  // NLL, last-token NLL and KL sums, the token probabilities, max and mean |x| per stats site.
  const int64_t numbers = 3 + static_cast<int64_t>(p.tokens.size()) + 2 * sites;
  return p.protocol.n_windows * numbers * static_cast<int64_t>(sizeof(double));
}

// Every check of the spec against the model, without device work or touching the weights.
absl::StatusOr<Prepared> Prepare(const model::Model& model, const spec::Experiment& e,
                                 const std::filesystem::path& data_dir, const RunLimits& limits) {
  const model::ModelConfig& c = model.config();
  Prepared p;
  std::vector<int64_t> prompt_lengths;
  if (!e.prompts.empty()) {
    ASSIGN_OR_RETURN(std::vector<std::vector<int32_t>> prompts, ResolvePrompts(model, e));
    for (const auto& prompt : prompts) {
      p.ids.insert(p.ids.end(), prompt.begin(), prompt.end());
      prompt_lengths.push_back(static_cast<int64_t>(prompt.size()));
    }
  } else {
    ASSIGN_OR_RETURN(p.ids, ResolveDataset(model, e, data_dir));
  }
  if (static_cast<int64_t>(p.ids.size()) > limits.max_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("dataset: ", p.ids.size(), " tokens exceed the limit of ",
                                                   limits.max_tokens, " tokens per experiment"));
  }
  const int64_t vocab = c.vocab_size;
  for (size_t i = 0; i < p.ids.size(); ++i) {
    if (p.ids[i] < 0 || p.ids[i] >= vocab) {
      return absl::InvalidArgumentError(absl::StrCat("dataset: token id ", p.ids[i], " at position ", i,
                                                     " out of range: vocabulary has ", vocab, " ids"));
    }
  }
  p.options = EvalOptions(c, e);
  model::PerplexityOptions& options = p.options;
  if (!prompt_lengths.empty()) {
    // A prompt set's windows are its prompts: by default as long as the longest one.
    if (e.seq_len == 0) {  // the prompts kept: max_windows drops the others unread
      const size_t kept = std::min<size_t>(prompt_lengths.size(), options.max_windows.value_or(prompt_lengths.size()));
      options.seq_len =
          *std::max_element(prompt_lengths.begin(), prompt_lengths.begin() + kept) + (options.add_bos ? 1 : 0);
    }
    options.prompt_lengths = std::move(prompt_lengths);
  }
  if (options.add_bos && !model.bos_id().has_value()) {
    return absl::FailedPreconditionError("eval.add_bos: the model defines no BOS token");
  }
  // Learned positions end there; rotary ones go on, but untrained (and a window that long could
  // ask for any amount of memory).
  if (options.seq_len > c.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("eval.seq_len ", options.seq_len, " is longer than the model's ",
                                                   c.max_position_embeddings, " positions (max_position_embeddings)"));
  }
  ASSIGN_OR_RETURN(std::vector<model::Window> windows, model::PlanWindows(static_cast<int64_t>(p.ids.size()), options));
  p.protocol.n_windows = static_cast<int64_t>(windows.size());
  p.protocol.protocol = model::DescribeProtocol(options);
  for (const model::Window& w : windows) p.protocol.n_tokens += w.end - w.score_begin;
  p.protocol.sequence_windows = model::SequenceOrder(windows);
  p.protocol.prompt_set = !options.prompt_lengths.empty();

  for (const spec::Measurement& m : e.measurements) {
    if (const auto* tp = std::get_if<spec::TokenProbabilities>(&m)) {
      ASSIGN_OR_RETURN(p.tokens, ResolveTokens(model, *tp));
    }
    p.needs_kl |= std::holds_alternative<spec::KlDivergence>(m);
  }
  p.needs_means = NeedsMeans(e.interventions);
  // A sweep's variant keeps both passes, even a control variant without interventions, so that it
  // reads like its siblings and equals itself run alone.
  p.observational = e.interventions.empty() && !e.has_sweep && e.variant_name.empty();
  // The longest window: the first the batches run.
  const model::Window& longest = windows[p.protocol.sequence_windows.front()];
  p.window_tokens = longest.end - longest.begin + (options.add_bos ? 1 : 0);
  p.protocol.windows = std::move(windows);
  RETURN_IF_ERROR(CheckInterventionValues(model.transformer().dtype(), e.interventions));
  RETURN_IF_ERROR(CheckEditPositions(e.interventions, p.window_tokens));
  {
    model::RunPlan dry_run(c.n_layers);
    RETURN_IF_ERROR(AddActivationInterventions(c, e.interventions, options.seq_len, nullptr, dry_run));
  }
  RETURN_IF_ERROR(CheckWeightEdits(model.transformer(), e.interventions));
  ASSIGN_OR_RETURN(p.base, MakeCollectors(model, e, p.protocol));
  ASSIGN_OR_RETURN(p.inter, MakeCollectors(model, e, p.protocol));
  const int64_t passes = p.observational ? 1 : 2;
  int64_t bytes = 0;
  for (const auto& cap : p.base.captures)
    bytes += passes * cap->ExpectedBytes(c, p.protocol.n_windows, p.window_tokens);
  const model::TokenOutputOptions& outputs = p.base.token_outputs;
  if (outputs.max_tokens > 0 && outputs.offset >= p.protocol.n_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("token_outputs: offset ", outputs.offset,
                                                   " is past the last predicted token (the dataset predicts ",
                                                   p.protocol.n_tokens, " tokens)"));
  }
  const int64_t output_bytes = passes * TokenOutputBytes(outputs, p.protocol.n_tokens);
  if (output_bytes > limits.max_capture_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("token_outputs: ", output_bytes, " bytes for ",
                                                   passes == 1 ? "the pass" : "both passes", " exceed the limit of ",
                                                   limits.max_capture_bytes, " bytes; lower max_tokens or top_k"));
  }
  if (bytes > limits.max_capture_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "capture: ", bytes, " bytes for ", passes == 1 ? "the pass" : "both passes", " exceed the limit of ",
        limits.max_capture_bytes, " bytes; capture fewer sites, positions or windows"));
  }
  const int64_t prompt_bytes = passes * PromptRowBytes(p);
  if (prompt_bytes > limits.max_capture_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("dataset.prompts: the per-prompt rows take ", prompt_bytes,
                                                   " bytes, more than the limit of ", limits.max_capture_bytes,
                                                   " bytes; give fewer prompts or token_probabilities tokens"));
  }
  return p;
}

}  // namespace lesion::experiments::internal
