#include "experiments/run_parts.h"

#include <c10/core/InferenceMode.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

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
#include "experiments/perplexity.h"
#include "experiments/torch_util.h"
#include "experiments/weight_edits.h"

namespace lesion::experiments::internal {

// Spec enums to runtime enums, spelled out so that reordering either cannot silently remap them.
HeadAblationMode ToRuntime(spec::HeadAblation::Mode m) {
  switch (m) {
    case spec::HeadAblation::Mode::kZero: return HeadAblationMode::kZero;
    case spec::HeadAblation::Mode::kMean: return HeadAblationMode::kMean;
    case spec::HeadAblation::Mode::kScale: return HeadAblationMode::kScale;
  }
  return HeadAblationMode::kZero;
}
ElementOp ToRuntime(spec::WeightEdit::Op op) {
  switch (op) {
    case spec::WeightEdit::Op::kZero: return ElementOp::kZero;
    case spec::WeightEdit::Op::kScale: return ElementOp::kScale;
    case spec::WeightEdit::Op::kSet: return ElementOp::kSet;
  }
  return ElementOp::kZero;
}
NormResetMode ToRuntime(spec::NormChannelReset::Mode m) {
  switch (m) {
    case spec::NormChannelReset::Mode::kOne: return NormResetMode::kOne;
    case spec::NormChannelReset::Mode::kGammaMean: return NormResetMode::kGammaMean;
    case spec::NormChannelReset::Mode::kValue: return NormResetMode::kValue;
  }
  return NormResetMode::kOne;
}
ActivationOp ToRuntime(spec::ActivationEdit::Op op) {
  switch (op) {
    case spec::ActivationEdit::Op::kZero: return ActivationOp::kZero;
    case spec::ActivationEdit::Op::kSet: return ActivationOp::kSet;
    case spec::ActivationEdit::Op::kScale: return ActivationOp::kScale;
    case spec::ActivationEdit::Op::kMean: return ActivationOp::kMean;
  }
  return ActivationOp::kZero;
}

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
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", field, " ", value, " overflows the model's dtype ",
                                                   DtypeName(dtype)));
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
    }
  }
  return absl::OkStatus();
}

absl::Status ApplyWeightEdits(const std::vector<spec::Intervention>& interventions, WeightEditSession& edits) {
  for (const spec::Intervention& in : interventions) {
    if (const auto* w = std::get_if<spec::WeightEdit>(&in)) {
      ASSIGN_OR_RETURN(WeightModule module, ParseWeightModule(w->module));
      RETURN_IF_ERROR(edits.EditElement(w->layer, module, w->row, w->col, ToRuntime(w->op), w->value));
    } else if (const auto* n = std::get_if<spec::NormChannelReset>(&in)) {
      ASSIGN_OR_RETURN(NormSite norm, ParseNormSite(n->norm));
      RETURN_IF_ERROR(
          edits.ResetNormChannels(n->layer, norm, n->channels, ToRuntime(n->mode), n->value));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckWeightEdits(const Transformer& t, const std::vector<spec::Intervention>& interventions) {
  for (const spec::Intervention& in : interventions) {
    if (const auto* w = std::get_if<spec::WeightEdit>(&in)) {
      ASSIGN_OR_RETURN(WeightModule module, ParseWeightModule(w->module));
      RETURN_IF_ERROR(CheckElementEdit(t, w->layer, module, w->row, w->col, w->value));
    } else if (const auto* n = std::get_if<spec::NormChannelReset>(&in)) {
      ASSIGN_OR_RETURN(NormSite norm, ParseNormSite(n->norm));
      RETURN_IF_ERROR(CheckNormReset(t, n->layer, norm, n->channels, n->value));
    }
  }
  return absl::OkStatus();
}

// Adds the activation-level interventions to `plan`. With `means` null, MEAN modes get zero
// placeholders of the right shape: that validates every index before any compute.
absl::Status AddActivationInterventions(const ModelConfig& c, const std::vector<spec::Intervention>& interventions,
                                        int64_t seq_len, const Means* means, RunPlan& plan) {
  for (const spec::Intervention& in : interventions) {
    if (const auto* h = std::get_if<spec::HeadAblation>(&in)) {
      at::Tensor head_means;
      if (h->mode == spec::HeadAblation::Mode::kMean) {
        head_means = means != nullptr && means->head_sums.count(h->layer)
                         ? means->head_sums.at(h->layer) / static_cast<double>(means->head_counts.at(h->layer))
                         : at::zeros({c.n_heads, c.head_dim});
      }
      RETURN_IF_ERROR(AddHeadAblation(c, h->layer, h->heads, ToRuntime(h->mode), h->factor,
                                      head_means, plan));
    } else if (const auto* a = std::get_if<spec::ActivationEdit>(&in)) {
      ASSIGN_OR_RETURN(std::vector<SiteId> sites, ParseSitePattern(a->site, c.n_layers));
      for (const SiteId& site : sites) {
        at::Tensor mean;
        if (a->op == spec::ActivationEdit::Op::kMean) {
          const std::string name = site.Name();
          mean = means != nullptr && means->site_sums.count(name)
                     ? means->site_sums.at(name) / means->site_counts.at(name).clamp_min(1)
                     : at::zeros({seq_len, SiteFeatures(c, site.kind)});
        }
        RETURN_IF_ERROR(AddActivationEdit(c, site, a->positions, a->dims, ToRuntime(a->op),
                                          a->value, mean, plan));
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
                                                       c.head_dim, "), got ", b->key.size(), " and ",
                                                       b->value.size()));
      }
      for (float v : b->key) {
        if (!std::isfinite(v)) return absl::InvalidArgumentError("attention bias: key holds a non-finite number");
      }
      for (float v : b->value) {
        if (!std::isfinite(v)) return absl::InvalidArgumentError("attention bias: value holds a non-finite number");
      }
      ASSIGN_OR_RETURN(AttentionBias bias, TorchCall("attention bias", [&] {
                         return AttentionBias{at::tensor(b->key).view({c.n_kv_heads, c.head_dim}),
                                              at::tensor(b->value).view({c.n_kv_heads, c.head_dim}), at::Tensor()};
                       }));
      plan.SetAttentionBias(b->layer, std::move(bias));
    }
  }
  return absl::OkStatus();
}

// Observers that sum what MEAN-mode interventions need over the baseline pass.
void AddMeanObservers(const ModelConfig& c, const std::vector<spec::Intervention>& interventions, Means& means,
                      RunPlan& plan) {
  for (const spec::Intervention& in : interventions) {
    if (const auto* h = std::get_if<spec::HeadAblation>(&in); h && h->mode == spec::HeadAblation::Mode::kMean) {
      if (means.head_sums.count(h->layer)) continue;
      means.head_sums[h->layer] = at::Tensor();
      plan.AddHook({SiteKind::kAttnZ, h->layer}, [&means, layer = h->layer](const SiteId&, at::Tensor& z) {
        at::Tensor sum = z.to(at::kDouble).sum(at::IntArrayRef{0, 1}).cpu();  // [heads, hd]
        at::Tensor& acc = means.head_sums[layer];
        acc = acc.defined() ? acc + sum : sum;
        means.head_counts[layer] += z.size(0) * z.size(1);
      });
    } else if (const auto* a = std::get_if<spec::ActivationEdit>(&in); a && a->op == spec::ActivationEdit::Op::kMean) {
      auto sites = ParseSitePattern(a->site, c.n_layers);
      if (!sites.ok()) continue;  // reported by validation
      for (const SiteId& site : *sites) {
        const std::string name = site.Name();
        if (means.site_sums.count(name)) continue;
        means.site_sums[name] = at::Tensor();
        plan.AddHook(site, [&means, name](const SiteId&, at::Tensor& x) {
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


// The tokens of a token_probabilities measurement: ids as given, then texts that each encode to
// exactly one token.
absl::StatusOr<std::vector<result::TokenProbability>> ResolveTokens(const Model& model,
                                                                    const spec::TokenProbabilities& t) {
  std::vector<result::TokenProbability> out;
  const int64_t vocab = model.config().vocab_size;
  for (int32_t id : t.token_ids) {
    if (id < 0 || id >= vocab) {
      return absl::InvalidArgumentError(absl::StrCat("token_probabilities: token id ", id,
                                                     " out of range: vocabulary has ", vocab, " ids"));
    }
    std::string text;
    if (model.tokenizer() != nullptr) {
      if (auto decoded = model.tokenizer()->Decode({id}); decoded.ok()) text = *decoded;
    }
    out.push_back({id, text, 0});
  }
  if (!t.tokens.empty()) {
    ASSIGN_OR_RETURN(const Tokenizer* tokenizer, model.RequireTokenizer());
    for (const std::string& text : t.tokens) {
      ASSIGN_OR_RETURN(std::vector<int32_t> ids, tokenizer->Encode(text));
      if (ids.size() != 1) {
        return absl::InvalidArgumentError(absl::StrCat("token_probabilities: ", QuoteForError(text), " encodes to ",
                                                       ids.size(), " tokens, not one (give its id in token_ids)"));
      }
      out.push_back({ids[0], text, 0});
    }
  }
  return out;
}

absl::StatusOr<std::vector<SiteId>> ParseSites(const std::vector<std::string>& patterns, int64_t n_layers) {
  std::vector<SiteId> sites;
  for (const std::string& pattern : patterns) {
    ASSIGN_OR_RETURN(std::vector<SiteId> parsed, ParseSitePattern(pattern, n_layers));
    sites.insert(sites.end(), parsed.begin(), parsed.end());
  }
  return sites;
}

absl::StatusOr<PassCollectors> MakeCollectors(const Model& model, const spec::Experiment& e) {
  const ModelConfig& c = model.config();
  PassCollectors out;
  for (const spec::Measurement& m : e.measurements) {
    if (std::holds_alternative<spec::Perplexity>(m)) {
      out.perplexity = true;
    } else if (const auto* s = std::get_if<spec::ActivationStats>(&m)) {
      ASSIGN_OR_RETURN(std::vector<SiteId> sites, ParseSites(s->sites, c.n_layers));
      ASSIGN_OR_RETURN(auto collector, ActivationStatsCollector::Create(sites, s->top_k));
      out.stats.push_back(std::move(collector));
    } else if (const auto* a = std::get_if<spec::AttentionSink>(&m)) {
      ASSIGN_OR_RETURN(out.sink, AttentionSinkCollector::Create(c, a->layers));
    } else if (const auto* cap = std::get_if<spec::Capture>(&m)) {
      ASSIGN_OR_RETURN(std::vector<SiteId> sites, ParseSites(cap->sites, c.n_layers));
      ASSIGN_OR_RETURN(auto collector, CaptureCollector::Create(sites, cap->positions, cap->max_windows));
      out.captures.push_back(std::move(collector));
    } else if (const auto* d = std::get_if<spec::MassiveActivations>(&m)) {
      ASSIGN_OR_RETURN(std::vector<SiteId> sites, ParseSites(d->sites, c.n_layers));
      ASSIGN_OR_RETURN(auto detector,
                       MassiveActivationDetector::Create(sites, d->min_magnitude, d->min_ratio, d->max_reports));
      out.massive.push_back(std::move(detector));
    } else if (const auto* d = std::get_if<spec::SuperWeights>(&m)) {
      ASSIGN_OR_RETURN(out.super_weights, SuperWeightDetector::Create(c, d->min_ratio, d->min_magnitude));
    } else if (const auto* d = std::get_if<spec::AttentionOutliers>(&m)) {
      ASSIGN_OR_RETURN(out.attention_outliers,
                       AttentionOutlierDetector::Create(c, d->layers, d->min_mass, d->max_reports));
    } else if (const auto* d = std::get_if<spec::NormOutliers>(&m)) {
      out.norm_outliers = *d;
    }
  }
  return out;
}

// Reads back what a pass measured. Weight-based parts (super-weight values, norm gammas) read the
// model as it is now: call with the pass's edits in place.
absl::StatusOr<result::Pass> FinishPass(const PassCollectors& p, const Transformer& t,
                                        const PerplexityResult& windows, std::vector<result::TokenProbability> tokens,
                                        const NextTokenReducer& reducer, int64_t variant) {
  result::Pass out;
  if (p.perplexity) {
    ASSIGN_OR_RETURN(double nll_sum, TorchCall("reading the NLL", [&] {
                       return reducer.nll_sum()[variant].item<double>();
                     }));
    out.has_perplexity = true;
    out.perplexity.mean_nll = nll_sum / static_cast<double>(windows.n_tokens);
    out.perplexity.ppl = std::exp(out.perplexity.mean_nll);
    out.perplexity.n_tokens = windows.n_tokens;
    out.perplexity.n_windows = windows.n_windows;
    out.perplexity.protocol = windows.protocol;
  }
  if (!tokens.empty()) {
    ASSIGN_OR_RETURN(at::Tensor sums, TorchCall("reading token probabilities", [&] {
                       return reducer.token_prob_sum()[variant].to(at::kCPU);
                     }));
    for (size_t i = 0; i < tokens.size(); ++i) {
      tokens[i].mean_probability = sums[static_cast<int64_t>(i)].item<double>() / static_cast<double>(windows.n_tokens);
    }
    out.token_probabilities = std::move(tokens);
  }
  for (const auto& s : p.stats) {
    ASSIGN_OR_RETURN(auto stats, s->Finish());
    out.activation_stats.insert(out.activation_stats.end(), stats.begin(), stats.end());
  }
  if (p.sink != nullptr) {
    ASSIGN_OR_RETURN(at::Tensor scores, p.sink->Finish());  // [layers, heads] float64
    out.has_attention_sink = true;
    out.attention_sink.layers = p.sink->layers();
    out.attention_sink.n_heads = scores.size(1);
    const at::Tensor flat = scores.contiguous().view(-1);
    out.attention_sink.scores.assign(flat.data_ptr<double>(), flat.data_ptr<double>() + flat.numel());
  }
  for (const auto& c : p.captures) {
    ASSIGN_OR_RETURN(auto tensors, c->Finish());
    for (auto& tensor : tensors) out.captures.push_back(std::move(tensor));
  }
  for (const auto& m : p.massive) {
    ASSIGN_OR_RETURN(auto reports, m->Finish());
    out.massive_activations.insert(out.massive_activations.end(), reports.begin(), reports.end());
  }
  if (p.super_weights != nullptr) {
    out.has_super_weights = true;
    ASSIGN_OR_RETURN(out.super_weights, p.super_weights->Finish(t));
  }
  if (p.attention_outliers != nullptr) {
    out.has_attention_outliers = true;
    ASSIGN_OR_RETURN(out.attention_outliers, p.attention_outliers->Finish());
  }
  if (p.norm_outliers.has_value()) {
    out.has_norm_outliers = true;
    ASSIGN_OR_RETURN(out.norm_outliers, DetectNormOutliers(t, p.norm_outliers->min_z, p.norm_outliers->max_reports));
  }
  return out;
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


result::RunInfo RunInfoOf(const Model& model, const std::string& spec_sha256) {
  const Transformer& t = model.transformer();
  result::RunInfo run;
  run.model = model.dir().string();
  run.architecture = model.config().architecture;
  run.dtype = std::string(DtypeName(t.dtype()));
  run.device = t.device().str();
  run.model_fingerprint = model.fingerprint();
  run.spec_sha256 = spec_sha256;
  run.lesion_version = LESION_VERSION;
  run.tf32 = Tf32Allowed();
  run.checkpoint_format = model.checkpoint_format();
  run.dequantized_from = model.dequantized_from();
  return run;
}

PerplexityOptions EvalOptions(const ModelConfig& c, const spec::Experiment& e) {
  PerplexityOptions options;
  options.seq_len = e.seq_len > 0 ? e.seq_len : std::min<int64_t>(512, c.max_position_embeddings);
  if (e.stride > 0) options.stride = e.stride;
  if (e.max_windows > 0) options.max_windows = e.max_windows;
  if (e.batch_size > 0) options.batch_size = e.batch_size;
  options.add_bos = e.add_bos;
  return options;
}

// Every check of the spec against the model, without device work or touching the weights.
absl::StatusOr<Prepared> Prepare(const Model& model, const spec::Experiment& e, const std::filesystem::path& data_dir,
                                 const RunLimits& limits) {
  const ModelConfig& c = model.config();
  Prepared p;
  ASSIGN_OR_RETURN(p.ids, ResolveDataset(model, e, data_dir));
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
  PerplexityOptions& options = p.options;
  if (options.add_bos && !model.bos_id().has_value()) {
    return absl::FailedPreconditionError("eval.add_bos: the model defines no BOS token");
  }
  // Learned positions end there; rotary ones go on, but untrained (and a window that long could
  // ask for any amount of memory).
  if (options.seq_len > c.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("eval.seq_len ", options.seq_len, " is longer than the model's ",
                                                   c.max_position_embeddings, " positions (max_position_embeddings)"));
  }
  ASSIGN_OR_RETURN(std::vector<Window> windows, PlanWindows(static_cast<int64_t>(p.ids.size()), options));
  p.protocol.n_windows = static_cast<int64_t>(windows.size());
  p.protocol.protocol = DescribeProtocol(options);
  for (const Window& w : windows) p.protocol.n_tokens += w.end - w.score_begin;

  for (const spec::Measurement& m : e.measurements) {
    if (const auto* tp = std::get_if<spec::TokenProbabilities>(&m)) {
      ASSIGN_OR_RETURN(p.tokens, ResolveTokens(model, *tp));
    }
    p.needs_kl |= std::holds_alternative<spec::KlDivergence>(m);
  }
  p.needs_means = NeedsMeans(e.interventions);
  RETURN_IF_ERROR(CheckInterventionValues(model.transformer().dtype(), e.interventions));
  {
    RunPlan dry_run(c.n_layers);
    RETURN_IF_ERROR(AddActivationInterventions(c, e.interventions, options.seq_len, nullptr, dry_run));
  }
  RETURN_IF_ERROR(CheckWeightEdits(model.transformer(), e.interventions));
  ASSIGN_OR_RETURN(p.base, MakeCollectors(model, e));
  ASSIGN_OR_RETURN(p.inter, MakeCollectors(model, e));
  const int64_t seq = windows.front().end - windows.front().begin + (options.add_bos ? 1 : 0);
  int64_t bytes = 0;
  for (const auto& cap : p.base.captures) bytes += 2 * cap->ExpectedBytes(c, p.protocol.n_windows, seq);
  if (bytes > limits.max_capture_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("capture: ", bytes, " bytes for both passes exceed the limit of ",
                                                   limits.max_capture_bytes,
                                                   " bytes; capture fewer sites, positions or windows"));
  }
  return p;
}

}  // namespace lesion::experiments::internal
