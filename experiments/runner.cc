#include "experiments/runner.h"

#include <chrono>
#include <cmath>
#include <map>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "experiments/interventions.h"
#include "experiments/torch_util.h"
#include "experiments/weight_edits.h"

namespace lesion::experiments {
namespace {

// Dataset means needed by MEAN-mode interventions, gathered on the baseline pass.
struct Means {
  std::map<int64_t, at::Tensor> head_sums;     // layer -> [heads, hd] sum over tokens
  std::map<int64_t, int64_t> head_counts;      // layer -> tokens
  std::map<std::string, at::Tensor> site_sums;  // site -> [seq, features] sum over windows
  std::map<std::string, int64_t> site_counts;   // site -> windows
};

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

absl::Status ApplyWeightEdits(const spec::Experiment& e, WeightEditSession& edits) {
  for (const spec::Intervention& in : e.interventions) {
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

// Adds the activation-level interventions to `plan`. With `means` null, MEAN modes get zero
// placeholders of the right shape: that validates every index before any compute.
absl::Status AddActivationInterventions(const ModelConfig& c, const spec::Experiment& e, int64_t seq_len,
                                        const Means* means, RunPlan& plan) {
  for (const spec::Intervention& in : e.interventions) {
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
                     ? means->site_sums.at(name) / static_cast<double>(means->site_counts.at(name))
                     : at::zeros({seq_len, SiteFeatures(c, site.kind)});
        }
        RETURN_IF_ERROR(AddActivationEdit(c, site, a->positions, a->dims, ToRuntime(a->op),
                                          a->value, mean, plan));
      }
    } else if (const auto* b = std::get_if<spec::AttentionBias>(&in)) {
      const int64_t width = c.n_kv_heads * c.head_dim;
      if (b->layer < 0 || b->layer >= c.n_layers) {
        return absl::InvalidArgumentError(absl::StrCat("attention bias: layer ", b->layer, " out of range"));
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
                                              at::tensor(b->value).view({c.n_kv_heads, c.head_dim})};
                       }));
      plan.SetAttentionBias(b->layer, std::move(bias));
    }
  }
  return absl::OkStatus();
}

// Observers that sum what MEAN-mode interventions need over the baseline pass.
void AddMeanObservers(const ModelConfig& c, const spec::Experiment& e, Means& means, RunPlan& plan) {
  for (const spec::Intervention& in : e.interventions) {
    if (const auto* h = std::get_if<spec::HeadAblation>(&in); h && h->mode == spec::HeadAblation::Mode::kMean) {
      if (means.head_sums.count(h->layer)) continue;
      means.head_sums[h->layer] = at::Tensor();
      plan.AddHook({SiteKind::kAttnZ, h->layer}, [&means, layer = h->layer](const SiteId&, at::Tensor& z) {
        at::Tensor sum = z.to(at::kDouble).sum({0, 1}).cpu();  // [heads, hd]
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
          if (!acc.defined()) {
            acc = sum;
          } else if (acc.size(0) == sum.size(0)) {
            acc += sum;
          } else {  // a shorter last window: add into the leading positions
            acc.narrow(0, 0, std::min(acc.size(0), sum.size(0))) += sum.narrow(0, 0, std::min(acc.size(0), sum.size(0)));
          }
          means.site_counts[name] += x.size(0);
        });
      }
    }
  }
}

struct Collectors {
  std::vector<std::unique_ptr<ActivationStatsCollector>> stats;
  std::unique_ptr<AttentionSinkCollector> sink;
};

absl::StatusOr<Collectors> MakeCollectors(const ModelConfig& c, const spec::Experiment& e) {
  Collectors out;
  for (const spec::Measurement& m : e.measurements) {
    if (const auto* s = std::get_if<spec::ActivationStats>(&m)) {
      std::vector<SiteId> sites;
      for (const std::string& pattern : s->sites) {
        ASSIGN_OR_RETURN(std::vector<SiteId> parsed, ParseSitePattern(pattern, c.n_layers));
        sites.insert(sites.end(), parsed.begin(), parsed.end());
      }
      ASSIGN_OR_RETURN(auto collector, ActivationStatsCollector::Create(sites, s->top_k));
      out.stats.push_back(std::move(collector));
    } else if (const auto* a = std::get_if<spec::AttentionSink>(&m)) {
      if (out.sink != nullptr) return absl::InvalidArgumentError("attention_sink is asked for twice");
      ASSIGN_OR_RETURN(out.sink, AttentionSinkCollector::Create(c, a->layers));
    }
  }
  return out;
}

absl::StatusOr<PassResult> Finish(const Collectors& collectors, PerplexityResult ppl) {
  PassResult r;
  r.perplexity = std::move(ppl);
  for (const auto& s : collectors.stats) {
    ASSIGN_OR_RETURN(auto stats, s->Finish());
    r.activation_stats.insert(r.activation_stats.end(), stats.begin(), stats.end());
  }
  if (collectors.sink != nullptr) {
    ASSIGN_OR_RETURN(r.attention_sink, collectors.sink->Finish());
  }
  return r;
}

}  // namespace

absl::StatusOr<std::vector<int32_t>> ResolveDataset(const Model& model, const spec::Experiment& e,
                                                    const std::filesystem::path& data_dir) {
  if (!e.token_ids.empty()) return e.token_ids;
  std::string text = e.text;
  if (!e.named_dataset.empty()) {
    std::filesystem::path file;
    if (e.named_dataset == "wikitext-2-raw-test") {
      file = data_dir / "wikitext-2/wiki.test.raw";
    } else if (e.named_dataset == "tinystories-sample") {
      file = data_dir / "tinystories_sample.txt";
    } else {
      return absl::InvalidArgumentError(absl::StrCat("dataset.named: unknown dataset \"", e.named_dataset,
                                                     "\" (known: wikitext-2-raw-test, tinystories-sample)"));
    }
    ASSIGN_OR_RETURN(text, ReadFile(file));
  }
  ASSIGN_OR_RETURN(const Tokenizer* tokenizer, model.RequireTokenizer());
  return tokenizer->Encode(text);
}

absl::StatusOr<ExperimentResult> RunExperiment(const Model& model, const spec::Experiment& e,
                                               const std::filesystem::path& data_dir) {
  const auto start = std::chrono::steady_clock::now();
  const ModelConfig& c = model.config();
  const Transformer& t = model.transformer();

  // Everything is validated before the first forward pass.
  ASSIGN_OR_RETURN(std::vector<int32_t> ids, ResolveDataset(model, e, data_dir));
  PerplexityOptions options;
  options.seq_len = e.seq_len > 0 ? e.seq_len : std::min<int64_t>(512, c.max_position_embeddings);
  if (e.stride > 0) options.stride = e.stride;
  if (e.max_windows > 0) options.max_windows = e.max_windows;
  if (e.batch_size > 0) options.batch_size = e.batch_size;
  options.add_bos = e.add_bos;
  RETURN_IF_ERROR(PlanWindows(static_cast<int64_t>(ids.size()), options).status());
  {
    RunPlan dry_run(c.n_layers);
    RETURN_IF_ERROR(AddActivationInterventions(c, e, options.seq_len, nullptr, dry_run));
    WeightEditSession edits(&t);
    RETURN_IF_ERROR(ApplyWeightEdits(e, edits));
    RETURN_IF_ERROR(edits.Restore());
  }
  ASSIGN_OR_RETURN(Collectors baseline_collectors, MakeCollectors(c, e));
  ASSIGN_OR_RETURN(Collectors intervened_collectors, MakeCollectors(c, e));

  ExperimentResult result;
  for (const auto& m : e.measurements) result.measured_perplexity |= std::holds_alternative<spec::Perplexity>(m);
  if (baseline_collectors.sink != nullptr) result.sink_layers = baseline_collectors.sink->layers();

  // Baseline pass (also gathers the dataset means MEAN-mode interventions use).
  Means means;
  RunPlan baseline_plan(c.n_layers);
  for (auto& s : baseline_collectors.stats) s->Attach(baseline_plan);
  if (baseline_collectors.sink) baseline_collectors.sink->Attach(baseline_plan);
  AddMeanObservers(c, e, means, baseline_plan);
  ASSIGN_OR_RETURN(PerplexityResult baseline_ppl,
                   EvaluatePerplexity(t, ids, options, model.bos_id(), baseline_plan));
  ASSIGN_OR_RETURN(result.baseline, Finish(baseline_collectors, std::move(baseline_ppl)));

  // Intervened pass: weight edits live only inside this scope.
  RunPlan plan(c.n_layers);
  RETURN_IF_ERROR(AddActivationInterventions(c, e, options.seq_len, &means, plan));
  for (auto& s : intervened_collectors.stats) s->Attach(plan);
  if (intervened_collectors.sink) intervened_collectors.sink->Attach(plan);
  {
    WeightEditSession edits(&t);
    RETURN_IF_ERROR(ApplyWeightEdits(e, edits));
    absl::StatusOr<PerplexityResult> ppl = EvaluatePerplexity(t, ids, options, model.bos_id(), plan);
    RETURN_IF_ERROR(edits.Restore());
    if (!ppl.ok()) return ppl.status();
    ASSIGN_OR_RETURN(result.intervened, Finish(intervened_collectors, *std::move(ppl)));
  }
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

}  // namespace lesion::experiments
