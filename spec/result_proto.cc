#include "spec/result_proto.h"

#include <google/protobuf/util/json_util.h>

#include <cmath>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"

namespace lesion::result {
namespace {

namespace v1 = ::lesion::v1;

void Fill(const Pass& p, v1::PassResult& out) {
  if (p.has_perplexity) {
    v1::PerplexityResult* ppl = out.mutable_perplexity();
    ppl->set_ppl(p.perplexity.ppl);
    ppl->set_mean_nll(p.perplexity.mean_nll);
    ppl->set_n_tokens(p.perplexity.n_tokens);
    ppl->set_n_windows(p.perplexity.n_windows);
    ppl->set_protocol(p.perplexity.protocol);
  }
  for (const SiteStats& s : p.activation_stats) {
    v1::SiteStats* o = out.add_activation_stats();
    o->set_site(s.site);
    for (double v : s.mean_top) o->add_mean_top(v);
    for (const TopActivation& t : s.max_top) {
      v1::TopActivation* top = o->add_max_top();
      top->set_value(t.value);
      top->set_sequence(t.sequence);
      top->set_token(t.token);
      top->set_dim(t.dim);
    }
    o->set_median(s.median);
    o->set_mean_abs(s.mean_abs);
    o->set_n_windows(s.n_windows);
  }
  if (p.has_attention_sink) {
    v1::AttentionSinkScores* o = out.mutable_attention_sink();
    for (int64_t l : p.attention_sink.layers) o->add_layers(static_cast<int32_t>(l));
    o->set_n_heads(static_cast<int32_t>(p.attention_sink.n_heads));
    for (double v : p.attention_sink.scores) o->add_scores(v);
  }
  for (const TokenProbability& t : p.token_probabilities) {
    v1::TokenProbability* o = out.add_token_probabilities();
    o->set_token_id(t.token_id);
    o->set_token(t.token);
    o->set_mean_probability(t.mean_probability);
  }
  for (const Tensor& t : p.captures) {
    v1::Tensor* o = out.add_captures();
    o->set_name(t.name);
    for (int64_t d : t.shape) o->add_shape(d);
    o->set_dtype(t.dtype);
    o->set_data(t.data);
    for (int64_t q : t.positions) o->add_positions(static_cast<int32_t>(q));
    for (int64_t n : t.lengths) o->add_lengths(static_cast<int32_t>(n));
  }
  for (const MassiveActivationReport& r : p.massive_activations) {
    v1::MassiveActivationReport* o = out.add_massive_activations();
    o->set_site(r.site);
    o->set_count(r.count);
    for (const MassiveActivation& m : r.top) {
      v1::MassiveActivation* a = o->add_top();
      a->set_sequence(m.sequence);
      a->set_token(m.token);
      a->set_dim(m.dim);
      a->set_value(m.value);
      a->set_ratio(m.ratio);
    }
  }
  for (const SuperWeight& w : p.super_weights) {
    v1::SuperWeight* o = out.add_super_weights();
    o->set_layer(static_cast<int32_t>(w.layer));
    o->set_row(w.row);
    o->set_col(w.col);
    o->set_weight(w.weight);
    o->set_sequence(w.sequence);
    o->set_token(w.token);
    o->set_input_spike(w.input_spike);
    o->set_output_spike(w.output_spike);
    o->set_input_ratio(w.input_ratio);
    o->set_output_ratio(w.output_ratio);
  }
  for (const NormOutlier& n : p.norm_outliers) {
    v1::NormOutlier* o = out.add_norm_outliers();
    o->set_norm(n.norm);
    o->set_layer(static_cast<int32_t>(n.layer));
    o->set_channel(n.channel);
    o->set_gamma(n.gamma);
    o->set_z(n.z);
    o->set_median(n.median);
  }
  for (const AttentionOutlierKey& k : p.attention_outliers) {
    v1::AttentionOutlierKey* o = out.add_attention_outliers();
    o->set_layer(static_cast<int32_t>(k.layer));
    o->set_head(static_cast<int32_t>(k.head));
    o->set_key_position(k.key_position);
    o->set_mass(k.mass);
  }
  if (p.has_token_outputs) {
    const TokenOutputs& t = p.token_outputs;
    v1::TokenOutputs* o = out.mutable_token_outputs();
    o->set_top_k(static_cast<int32_t>(t.top_k));
    o->set_n_predicted(t.n_predicted);
    o->set_offset(t.offset);
    o->mutable_window()->Add(t.window.begin(), t.window.end());
    o->mutable_position()->Add(t.position.begin(), t.position.end());
    o->mutable_target()->Add(t.target.begin(), t.target.end());
    o->mutable_nll()->Add(t.nll.begin(), t.nll.end());
    o->mutable_rank()->Add(t.rank.begin(), t.rank.end());
    o->mutable_top_ids()->Add(t.top_ids.begin(), t.top_ids.end());
    o->mutable_top_probs()->Add(t.top_probs.begin(), t.top_probs.end());
  }
  for (const PromptResult& r : p.prompts) {
    v1::PromptResult* o = out.add_prompts();
    o->set_prompt(r.prompt);
    o->set_length(static_cast<int32_t>(r.length));
    o->set_n_tokens(r.n_tokens);
    o->set_mean_nll(r.mean_nll);
    o->set_perplexity(r.perplexity);
    o->set_last_token_nll(r.last_token_nll);
    o->mutable_next_token_probabilities()->Add(r.next_token_probabilities.begin(), r.next_token_probabilities.end());
    o->set_kl_divergence(r.kl_divergence);
    o->mutable_max_abs()->Add(r.max_abs.begin(), r.max_abs.end());
    o->mutable_mean_abs()->Add(r.mean_abs.begin(), r.mean_abs.end());
  }
}

void AddMetric(v1::ExperimentResult& out, std::string name, double baseline, double value) {
  v1::Metric* m = out.add_metrics();
  m->set_name(std::move(name));
  m->set_baseline(baseline);
  m->set_value(value);
  m->set_delta(value - baseline);
  m->set_delta_pct(baseline != 0 ? 100.0 * (value - baseline) / std::abs(baseline) : 0.0);
}

}  // namespace

Pass FromProto(const v1::PassResult& in) {
  Pass p;
  if (in.has_perplexity()) {
    p.has_perplexity = true;
    const auto& ppl = in.perplexity();
    p.perplexity = {ppl.ppl(), ppl.mean_nll(), ppl.n_tokens(), ppl.n_windows(), ppl.protocol()};
  }
  for (const auto& s : in.activation_stats()) {
    SiteStats out{s.site(), {s.mean_top().begin(), s.mean_top().end()}, {}, s.median(), s.mean_abs(), s.n_windows()};
    for (const auto& t : s.max_top()) out.max_top.push_back({t.value(), t.sequence(), t.token(), t.dim()});
    p.activation_stats.push_back(std::move(out));
  }
  if (in.has_attention_sink()) {
    p.has_attention_sink = true;
    const auto& a = in.attention_sink();
    p.attention_sink = {{a.layers().begin(), a.layers().end()}, a.n_heads(), {a.scores().begin(), a.scores().end()}};
  }
  for (const auto& t : in.token_probabilities())
    p.token_probabilities.push_back({t.token_id(), t.token(), t.mean_probability()});
  for (const auto& t : in.captures()) {
    p.captures.push_back({t.name(),
                          {t.shape().begin(), t.shape().end()},
                          t.dtype(),
                          t.data(),
                          {t.positions().begin(), t.positions().end()},
                          {t.lengths().begin(), t.lengths().end()}});
  }
  for (const auto& r : in.massive_activations()) {
    MassiveActivationReport out{r.site(), r.count(), {}};
    for (const auto& m : r.top()) out.top.push_back({m.sequence(), m.token(), m.dim(), m.value(), m.ratio()});
    p.massive_activations.push_back(std::move(out));
  }
  for (const auto& w : in.super_weights()) {
    p.super_weights.push_back({w.layer(), w.row(), w.col(), w.weight(), w.sequence(), w.token(), w.input_spike(),
                               w.output_spike(), w.input_ratio(), w.output_ratio()});
  }
  for (const auto& n : in.norm_outliers()) {
    p.norm_outliers.push_back({n.norm(), n.layer(), n.channel(), n.gamma(), n.z(), n.median()});
  }
  for (const auto& k : in.attention_outliers()) {
    p.attention_outliers.push_back({k.layer(), k.head(), k.key_position(), k.mass()});
  }
  if (in.has_token_outputs()) {
    const auto& t = in.token_outputs();
    p.has_token_outputs = true;
    p.token_outputs = {t.top_k(),
                       t.n_predicted(),
                       t.offset(),
                       {t.window().begin(), t.window().end()},
                       {t.position().begin(), t.position().end()},
                       {t.target().begin(), t.target().end()},
                       {t.nll().begin(), t.nll().end()},
                       {t.rank().begin(), t.rank().end()},
                       {t.top_ids().begin(), t.top_ids().end()},
                       {t.top_probs().begin(), t.top_probs().end()}};
  }
  for (const auto& r : in.prompts()) {
    p.prompts.push_back({r.prompt(),
                         r.length(),
                         r.n_tokens(),
                         r.mean_nll(),
                         r.perplexity(),
                         r.last_token_nll(),
                         {r.next_token_probabilities().begin(), r.next_token_probabilities().end()},
                         r.kl_divergence(),
                         {r.max_abs().begin(), r.max_abs().end()},
                         {r.mean_abs().begin(), r.mean_abs().end()}});
  }
  return p;
}

namespace {

void FillRun(const Experiment& r, v1::RunInfo* run) {
  run->set_model(r.run.model);
  run->set_architecture(r.run.architecture);
  run->set_dtype(r.run.dtype);
  run->set_device(r.run.device);
  run->set_model_fingerprint(r.run.model_fingerprint);
  run->set_spec_sha256(r.run.spec_sha256);
  run->set_lesion_version(r.run.lesion_version);
  run->set_seconds(r.run.seconds);
  run->set_forward_passes(r.run.forward_passes);
  run->set_baseline_cached(r.baseline_from_cache);
  run->set_tf32(r.run.tf32);
  run->set_checkpoint_format(r.run.checkpoint_format);
  run->set_dequantized_from(r.run.dequantized_from);
}

}  // namespace

namespace {

v1::ExperimentResult ToProtoUnchecked(const Experiment& r);

// Flags every non-finite number of the scalar results, so that a nan or inf never passes as an
// ordinary DONE result.
void AddNonFiniteWarnings(v1::ExperimentResult& out) {
  constexpr int kMaxWarnings = 16;
  std::vector<std::string> found;
  auto check = [&](double value, absl::string_view what) {
    if (!std::isfinite(value))
      found.push_back(absl::StrCat(what, " is ", std::isnan(value) ? "nan" : (value > 0 ? "inf" : "-inf")));
  };
  for (const v1::Metric& m : out.metrics()) {
    check(m.baseline(), absl::StrCat("metric ", m.name(), ": baseline value"));
    if (!out.observational()) check(m.value(), absl::StrCat("metric ", m.name(), ": intervened value"));
  }
  for (const v1::SweepSummary::Variant& v : out.sweep().variants()) {
    check(v.perplexity(), absl::StrCat("variant ", v.name(), ": perplexity"));
    check(v.kl_divergence(), absl::StrCat("variant ", v.name(), ": kl_divergence"));
  }
  check(out.baseline().perplexity().ppl(), "baseline perplexity");
  for (size_t k = 0; k < found.size(); ++k) {
    if (k + 1 == kMaxWarnings && found.size() > kMaxWarnings) {
      out.add_warnings(absl::StrCat("... and ", found.size() - k, " more non-finite results"));
      break;
    }
    out.add_warnings(found[k]);
  }
}

}  // namespace

v1::ExperimentResult ToProto(const Experiment& r) {
  v1::ExperimentResult out = ToProtoUnchecked(r);
  AddNonFiniteWarnings(out);
  return out;
}

namespace {

v1::ExperimentResult ToProtoUnchecked(const Experiment& r) {
  v1::ExperimentResult out;
  Fill(r.baseline, *out.mutable_baseline());
  if (r.has_sweep) {  // a parent: the baseline and one row per variant; the metrics are the children's
    v1::SweepSummary* sweep = out.mutable_sweep();
    sweep->set_variants_per_pass(static_cast<int32_t>(r.sweep.variants_per_pass));
    for (const SweepVariant& v : r.sweep.variants) {
      v1::SweepSummary::Variant* row = sweep->add_variants();
      row->set_name(v.name);
      row->set_experiment_id(v.experiment_id);
      if (v.has_perplexity) {
        row->set_perplexity(v.perplexity);
        row->set_perplexity_delta_pct(v.perplexity_delta_pct);
      }
      if (v.has_kl_divergence) row->set_kl_divergence(v.kl_divergence);
    }
    FillRun(r, out.mutable_run());
    return out;
  }
  if (!r.observational) Fill(r.intervened, *out.mutable_intervened());
  out.set_observational(r.observational);
  if (r.has_kl_divergence) out.set_kl_divergence(r.kl_divergence);

  const Pass& b = r.baseline;
  // An observational run measured one model: each metric's value is its baseline.
  const Pass& i = r.observational ? r.baseline : r.intervened;
  if (b.has_perplexity) {
    AddMetric(out, "perplexity", b.perplexity.ppl, i.perplexity.ppl);
    AddMetric(out, "mean_nll", b.perplexity.mean_nll, i.perplexity.mean_nll);
  }
  if (r.has_kl_divergence) AddMetric(out, "kl_divergence", 0.0, r.kl_divergence);
  for (size_t k = 0; k < b.activation_stats.size() && k < i.activation_stats.size(); ++k) {
    const SiteStats& s = b.activation_stats[k];
    const SiteStats& t = i.activation_stats[k];
    if (!s.mean_top.empty() && !t.mean_top.empty()) {
      AddMetric(out, absl::StrCat("top1:", s.site), s.mean_top[0], t.mean_top[0]);
    }
    AddMetric(out, absl::StrCat("median:", s.site), s.median, t.median);
  }
  if (b.has_attention_sink) {
    const AttentionSink& s = b.attention_sink;
    for (size_t l = 0; l < s.layers.size(); ++l) {
      for (int64_t h = 0; h < s.n_heads; ++h) {
        const size_t idx = l * s.n_heads + h;
        if (idx >= s.scores.size() || idx >= i.attention_sink.scores.size()) continue;
        AddMetric(out, absl::StrCat("attention_sink:L", s.layers[l], ".H", h), s.scores[idx],
                  i.attention_sink.scores[idx]);
      }
    }
  }
  for (size_t k = 0; k < b.token_probabilities.size() && k < i.token_probabilities.size(); ++k) {
    AddMetric(out, absl::StrCat("token_probability:", b.token_probabilities[k].token_id),
              b.token_probabilities[k].mean_probability, i.token_probabilities[k].mean_probability);
  }
  for (size_t k = 0; k < b.massive_activations.size() && k < i.massive_activations.size(); ++k) {
    AddMetric(out, absl::StrCat("massive_activations:", b.massive_activations[k].site),
              static_cast<double>(b.massive_activations[k].count), static_cast<double>(i.massive_activations[k].count));
  }
  if (b.has_super_weights) {
    AddMetric(out, "super_weights", static_cast<double>(b.super_weights.size()),
              static_cast<double>(i.super_weights.size()));
  }
  if (b.has_norm_outliers) {
    AddMetric(out, "norm_outliers", static_cast<double>(b.norm_outliers.size()),
              static_cast<double>(i.norm_outliers.size()));
  }
  if (b.has_attention_outliers) {
    AddMetric(out, "attention_outliers", static_cast<double>(b.attention_outliers.size()),
              static_cast<double>(i.attention_outliers.size()));
  }

  FillRun(r, out.mutable_run());
  return out;
}

}  // namespace

std::string ToJson(const v1::ExperimentResult& result, bool indent) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.add_whitespace = indent;
  // Zeros are results too (a delta of 0, a count of 0): print every field.
  options.always_print_primitive_fields = true;
  std::string out;
  (void)google::protobuf::util::MessageToJsonString(result, &out, options);
  return out;
}

}  // namespace lesion::result
