#include "experiments/pass_collectors.h"

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

absl::StatusOr<std::vector<result::TokenProbability>> ResolveTokens(const model::Model& model,
                                                                    const spec::TokenProbabilities& t) {
  std::vector<result::TokenProbability> out;
  const int64_t vocab = model.config().vocab_size;
  for (int32_t id : t.token_ids) {
    if (id < 0 || id >= vocab) {
      return absl::InvalidArgumentError(
          absl::StrCat("token_probabilities: token id ", id, " out of range: vocabulary has ", vocab, " ids"));
    }
    std::string text;
    if (model.tokenizer() != nullptr) {
      if (auto decoded = model.tokenizer()->Decode({id}); decoded.ok()) text = *decoded;
    }
    out.push_back({id, text, 0});
  }
  if (!t.tokens.empty()) {
    ASSIGN_OR_RETURN(const model::Tokenizer* tokenizer, model.RequireTokenizer());
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

namespace {

absl::StatusOr<std::vector<model::SiteId>> ParseSites(const std::vector<std::string>& patterns, int64_t n_layers) {
  std::vector<model::SiteId> sites;
  for (const std::string& pattern : patterns) {
    ASSIGN_OR_RETURN(std::vector<model::SiteId> parsed, model::ParseSitePattern(pattern, n_layers));
    sites.insert(sites.end(), parsed.begin(), parsed.end());
  }
  return sites;
}

}  // namespace

absl::StatusOr<PassCollectors> MakeCollectors(const model::Model& model, const spec::Experiment& e,
                                              const model::PerplexityResult& layout) {
  const model::ModelConfig& c = model.config();
  PassCollectors out;
  for (const spec::Measurement& m : e.measurements) {
    if (std::holds_alternative<spec::Perplexity>(m)) {
      out.perplexity = true;
    } else if (const auto* s = std::get_if<spec::ActivationStats>(&m)) {
      ASSIGN_OR_RETURN(std::vector<model::SiteId> sites, ParseSites(s->sites, c.n_layers));
      ASSIGN_OR_RETURN(auto collector, ActivationStatsCollector::Create(sites, s->top_k));
      out.stats.push_back(std::move(collector));
    } else if (const auto* a = std::get_if<spec::AttentionSink>(&m)) {
      ASSIGN_OR_RETURN(out.sink, AttentionSinkCollector::Create(c, a->layers));
    } else if (const auto* cap = std::get_if<spec::Capture>(&m)) {
      ASSIGN_OR_RETURN(std::vector<model::SiteId> sites, ParseSites(cap->sites, c.n_layers));
      ASSIGN_OR_RETURN(auto collector, CaptureCollector::Create(sites, cap->positions, cap->max_windows,
                                                                layout.sequence_windows, layout.prompt_set));
      out.captures.push_back(std::move(collector));
    } else if (const auto* massive = std::get_if<spec::MassiveActivations>(&m)) {
      ASSIGN_OR_RETURN(std::vector<model::SiteId> sites, ParseSites(massive->sites, c.n_layers));
      ASSIGN_OR_RETURN(auto detector, MassiveActivationDetector::Create(sites, massive->min_magnitude,
                                                                        massive->min_ratio, massive->max_reports));
      out.massive.push_back(std::move(detector));
    } else if (const auto* super = std::get_if<spec::SuperWeights>(&m)) {
      ASSIGN_OR_RETURN(out.super_weights, SuperWeightDetector::Create(c, super->min_ratio, super->min_magnitude));
    } else if (const auto* outliers = std::get_if<spec::AttentionOutliers>(&m)) {
      ASSIGN_OR_RETURN(out.attention_outliers, AttentionOutlierDetector::Create(c, outliers->layers, outliers->min_mass,
                                                                                outliers->max_reports));
    } else if (const auto* norms = std::get_if<spec::NormOutliers>(&m)) {
      out.norm_outliers = *norms;
    } else if (const auto* outputs = std::get_if<spec::TokenOutputs>(&m)) {
      out.token_outputs = {outputs->top_k, outputs->offset, outputs->max_tokens, {}};
      if (layout.prompt_set) {  // its batches run the prompts longest first
        int64_t first = 0;
        for (const model::Window& w : layout.windows) {
          out.token_outputs.window_first_token.push_back(first);
          first += w.end - w.score_begin;
        }
      }
    }
  }
  return out;
}

int64_t TokenOutputBytes(const model::TokenOutputOptions& options, int64_t n_tokens) {
  const int64_t rows = std::clamp<int64_t>(n_tokens - options.offset, 0, options.max_tokens);
  // window, position, target, nll, rank; top_ids and top_probs per entry (as the proto holds them)
  return rows * (8 + 4 + 4 + 8 + 8 + options.top_k * (4 + 8));
}

namespace {

// The per-prompt rows of a prompt set's pass: next-token numbers from the reducer's per-window
// sums, activation numbers from the stats collectors.
absl::Status AddPromptRows(const PassCollectors& p, const model::PerplexityResult& windows,
                           const model::NextTokenReducer& reducer, int64_t variant, result::Pass& out) {
  return model::TorchCall("reading per-prompt results", [&]() -> absl::Status {
    const int64_t n = static_cast<int64_t>(windows.windows.size());
    const model::PerWindowTensors& w = reducer.per_window();
    at::Tensor nll, last, kl, next;
    if (w.nll_sum.defined()) {
      nll = w.nll_sum[variant].to(at::kCPU).contiguous();
      last = w.last_nll[variant].to(at::kCPU).contiguous();
      kl = w.kl_sum[variant].to(at::kCPU).contiguous();
      next = w.next_token_prob[variant].to(at::kCPU);  // [windows, T]
    }
    // Per stats site: [windows] in window order.
    std::vector<at::Tensor> max_abs, mean_abs;
    const at::Tensor order = at::tensor(windows.sequence_windows, at::kLong);
    for (const auto& collector : p.stats) {
      for (const auto& site : collector->PerSequenceStats()) {
        max_abs.push_back(at::zeros({n}, at::kDouble).index_copy_(0, order, site.max_abs));
        mean_abs.push_back(at::zeros({n}, at::kDouble).index_copy_(0, order, site.mean_abs));
      }
    }
    // Host accessors: one read per number, not a torch call each.
    const int64_t t = next.defined() ? next.size(1) : 0;
    if (next.defined()) next = next.contiguous();
    for (int64_t i = 0; i < n; ++i) {
      const model::Window& window = windows.windows[i];
      result::PromptResult row;
      row.prompt = i;
      row.n_tokens = window.end - window.score_begin;
      // With BOS every token of the prompt is predicted; without, all but the first.
      row.length = window.end - window.begin + (window.score_begin == window.begin ? 1 : 0);
      if (nll.defined()) {
        row.mean_nll = nll.data_ptr<double>()[i] / static_cast<double>(row.n_tokens);
        row.perplexity = std::exp(row.mean_nll);
        row.last_token_nll = last.data_ptr<double>()[i];
        row.kl_divergence = kl.data_ptr<double>()[i] / static_cast<double>(row.n_tokens);
        const double* probs = next.data_ptr<double>() + i * t;
        row.next_token_probabilities.assign(probs, probs + t);
      }
      for (size_t site = 0; site < max_abs.size(); ++site) {
        row.max_abs.push_back(max_abs[site].data_ptr<double>()[i]);
        row.mean_abs.push_back(mean_abs[site].data_ptr<double>()[i]);
      }
      out.prompts.push_back(std::move(row));
    }
    return absl::OkStatus();
  });
}

}  // namespace

// Reads back what a pass measured. Weight-based parts (super-weight values, norm gammas) read the
// model as it is now: call with the pass's edits in place.
absl::StatusOr<result::Pass> FinishPass(const PassCollectors& p, const model::Transformer& t,
                                        const model::PerplexityResult& windows,
                                        std::vector<result::TokenProbability> tokens,
                                        const model::NextTokenReducer& reducer, int64_t variant) {
  result::Pass out;
  if (p.perplexity) {
    ASSIGN_OR_RETURN(double nll_sum,
                     model::TorchCall("reading the NLL", [&] { return reducer.nll_sum()[variant].item<double>(); }));
    out.has_perplexity = true;
    out.perplexity.mean_nll = nll_sum / static_cast<double>(windows.n_tokens);
    out.perplexity.ppl = std::exp(out.perplexity.mean_nll);
    out.perplexity.n_tokens = windows.n_tokens;
    out.perplexity.n_windows = windows.n_windows;
    out.perplexity.protocol = windows.protocol;
  }
  if (!tokens.empty()) {
    ASSIGN_OR_RETURN(at::Tensor sums, model::TorchCall("reading token probabilities",
                                                       [&] { return reducer.token_prob_sum()[variant].to(at::kCPU); }));
    for (size_t i = 0; i < tokens.size(); ++i) {
      tokens[i].mean_probability = sums[static_cast<int64_t>(i)].item<double>() / static_cast<double>(windows.n_tokens);
    }
    out.token_probabilities = std::move(tokens);
  }
  if (p.token_outputs.max_tokens > 0) {
    ASSIGN_OR_RETURN(out.token_outputs, model::TorchCall("reading per-token outputs", [&] {
                       const model::TokenOutputTensors k = reducer.token_outputs(variant);
                       result::TokenOutputs o;
                       o.top_k = p.token_outputs.top_k;
                       o.n_predicted = k.n_predicted;
                       o.offset = p.token_outputs.offset;
                       auto longs = [](const at::Tensor& values) {
                         const at::Tensor c = values.contiguous();
                         return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
                       };
                       auto ints = [&](const at::Tensor& values) {
                         const std::vector<int64_t> v = longs(values);
                         return std::vector<int32_t>(v.begin(), v.end());
                       };
                       auto doubles = [](const at::Tensor& values) {
                         const at::Tensor c = values.contiguous();
                         return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
                       };
                       o.window = longs(k.window);
                       o.position = ints(k.position);
                       o.target = ints(k.target);
                       o.nll = doubles(k.nll);
                       o.rank = longs(k.rank);
                       o.top_ids = ints(k.top_ids);
                       o.top_probs = doubles(k.top_probs);
                       return o;
                     }));
    out.has_token_outputs = true;
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
  // The collectors number sequences in the order the batches ran them; results name windows.
  auto window_of = [&](int64_t sequence) {
    return sequence >= 0 && sequence < static_cast<int64_t>(windows.sequence_windows.size())
               ? windows.sequence_windows[sequence]
               : sequence;
  };
  for (result::SiteStats& stats : out.activation_stats) {
    for (result::TopActivation& top : stats.max_top) top.sequence = window_of(top.sequence);
  }
  for (result::MassiveActivationReport& report : out.massive_activations) {
    for (result::MassiveActivation& m : report.top) m.sequence = window_of(m.sequence);
  }
  for (result::SuperWeight& w : out.super_weights) w.sequence = window_of(w.sequence);
  if (windows.prompt_set) RETURN_IF_ERROR(AddPromptRows(p, windows, reducer, variant, out));
  return out;
}

result::RunInfo RunInfoOf(const model::Model& model, const std::string& spec_sha256) {
  const model::Transformer& t = model.transformer();
  result::RunInfo run;
  run.model = model.dir().string();
  run.architecture = model.config().architecture;
  run.dtype = std::string(model::DtypeName(t.dtype()));
  run.device = t.device().str();
  run.model_fingerprint = model.fingerprint();
  run.spec_sha256 = spec_sha256;
  run.lesion_version = LESION_VERSION;
  run.tf32 = model::Tf32Allowed();
  run.checkpoint_format = model.checkpoint_format();
  run.dequantized_from = model.dequantized_from();
  return run;
}

}  // namespace lesion::experiments::internal
