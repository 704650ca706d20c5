#include "client/cpp/result_format.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/cpp/result_format_proto.h"
#include "google/protobuf/util/json_util.h"
#include "spec/result_proto.h"

namespace lesion::cli {
namespace {

namespace v1 = ::lesion::v1;

void AppendStats(std::string& out, const v1::ExperimentResult& r) {
  const auto& base = r.baseline().activation_stats();
  const auto& inter = r.intervened().activation_stats();
  if (base.empty()) return;
  const bool both = !r.observational();
  absl::StrAppendFormat(&out, "\n%-24s %10s %10s %10s %10s %11s   %s\n", "site", "top-1", "top-2", "top-3", "median",
                        both ? "top-1 (I)" : "", "top-1 at (window, token, dim)");
  for (int k = 0; k < base.size(); ++k) {
    const v1::SiteStats& s = base[k];
    std::string tops;
    for (int j = 0; j < 3; ++j) {
      tops += j < s.mean_top_size() ? absl::StrFormat(" %10.3f", s.mean_top(j)) : std::string(11, ' ');
    }
    const double after = k < inter.size() && inter[k].mean_top_size() > 0 ? inter[k].mean_top(0) : NAN;
    const std::string where = s.max_top_size() > 0 ? absl::StrFormat("(%d, %d, %d)", s.max_top(0).sequence(),
                                                                     s.max_top(0).token(), s.max_top(0).dim())
                                                   : "";
    const std::string intervened = both ? absl::StrFormat("%11.3f", after) : std::string(11, ' ');
    absl::StrAppendFormat(&out, "%-24s%s %10.4f %s   %s\n", s.site(), tops, s.median(), intervened, where);
  }
  out +=
      both ? "(top-k and median: means over windows; (I): intervened)\n" : "(top-k and median: means over windows)\n";
}

// The first rows of a token_outputs page: enough to see it worked; --json has them all.
void AppendTokenOutputs(std::string& out, const v1::ExperimentResult& r) {
  if (!r.baseline().has_token_outputs()) return;
  const v1::TokenOutputs& b = r.baseline().token_outputs();
  const v1::TokenOutputs& i = r.intervened().token_outputs();
  const bool both = !r.observational() && i.nll_size() == b.nll_size();
  absl::StrAppendFormat(&out, "\nper-token outputs: %d of %d predicted tokens from %d%s\n", b.nll_size(),
                        b.n_predicted(), b.offset(), b.nll_size() > 8 ? " (the first 8; --json for all)" : "");
  absl::StrAppendFormat(&out, "  %6s %8s %8s %10s %6s %10s%s\n", "window", "position", "target", "nll", "rank", "top-1",
                        both ? "   nll (I)  rank (I)" : "");
  for (int k = 0; k < std::min(b.nll_size(), 8); ++k) {
    const int top1 = b.top_k() > 0 && k * b.top_k() < b.top_ids_size() ? b.top_ids(k * b.top_k()) : -1;
    absl::StrAppendFormat(&out, "  %6d %8d %8d %10.4f %6d %10d", b.window(k), b.position(k), b.target(k), b.nll(k),
                          b.rank(k), top1);
    if (both) absl::StrAppendFormat(&out, " %10.4f %9d", i.nll(k), i.rank(k));
    out += "\n";
  }
}

// A prompt set's per-prompt rows: the first 16; --json has them all.
void AppendPrompts(std::string& out, const v1::ExperimentResult& r) {
  const auto& b = r.baseline().prompts();
  const auto& i = r.intervened().prompts();
  if (b.empty()) return;
  const bool both = !r.observational() && i.size() == b.size();
  absl::StrAppendFormat(&out, "\nper prompt%s%s:\n", both ? ", baseline -> intervened" : "",
                        b.size() > 16 ? " (the first 16; --json for all)" : "");
  absl::StrAppendFormat(&out, "  %6s %6s %12s %14s%s\n", "prompt", "length", "perplexity", "p(last token)",
                        both ? "   perplexity (I)  p(last token) (I)" : "");
  for (int k = 0; k < std::min(b.size(), 16); ++k) {
    absl::StrAppendFormat(&out, "  %6d %6d %12.4f %14.5f", b[k].prompt(), b[k].length(), b[k].perplexity(),
                          std::exp(-b[k].last_token_nll()));
    if (both) absl::StrAppendFormat(&out, " %16.4f %18.5f", i[k].perplexity(), std::exp(-i[k].last_token_nll()));
    out += "\n";
  }
}

void AppendSinks(std::string& out, const v1::ExperimentResult& r) {
  if (!r.baseline().has_attention_sink()) return;
  const v1::AttentionSinkScores& b = r.baseline().attention_sink();
  const v1::AttentionSinkScores& i = r.intervened().attention_sink();
  std::vector<int> order(b.scores_size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int x, int y) { return b.scores(x) > b.scores(y); });
  const bool both = !r.observational();
  absl::StrAppendFormat(&out, "\nattention sink score (mean mass on key 0), %shighest first:\n",
                        both ? "baseline -> intervened, " : "");
  for (size_t j = 0; j < std::min<size_t>(order.size(), 8); ++j) {
    const int idx = order[j];
    absl::StrAppendFormat(&out, "  L%d.H%d  %.4f", b.layers(idx / b.n_heads()), idx % b.n_heads(), b.scores(idx));
    if (both) absl::StrAppendFormat(&out, " -> %.4f", idx < i.scores_size() ? i.scores(idx) : NAN);
    out += "\n";
  }
}

void AppendDetections(std::string& out, const v1::ExperimentResult& r) {
  const v1::PassResult& b = r.baseline();
  // An observational run has one pass: the baseline stands for both.
  const bool both = !r.observational();
  const v1::PassResult& i = both ? r.intervened() : r.baseline();
  if (b.massive_activations_size() > 0) {
    out += both ? "\nmassive activations, baseline (intervened):\n" : "\nmassive activations:\n";
  }
  for (int k = 0; k < b.massive_activations_size(); ++k) {
    const auto& report = b.massive_activations(k);
    const int64_t after = k < i.massive_activations_size() ? i.massive_activations(k).count() : 0;
    absl::StrAppendFormat(&out, "%-24s %d%s\n", report.site(), report.count(),
                          both ? absl::StrFormat(" (%d)", after) : "");
    for (const auto& m : report.top()) {
      absl::StrAppendFormat(&out, "  window %d token %d dim %d: %.3f (%.0fx the median)\n", m.sequence(), m.token(),
                            m.dim(), m.value(), m.ratio());
    }
  }
  auto super_weights = [&](const char* which, const v1::PassResult& p) {
    absl::StrAppendFormat(&out, "\nsuper weights (%s): %d\n", which, p.super_weights_size());
    for (const auto& w : p.super_weights()) {
      absl::StrAppendFormat(&out,
                            "  layer %d mlp.down[%d, %d] = %.5g  (window %d token %d: input %.4g, %.0fx median; "
                            "output %.4g, %.0fx median)\n",
                            w.layer(), w.row(), w.col(), w.weight(), w.sequence(), w.token(), w.input_spike(),
                            w.input_ratio(), w.output_spike(), w.output_ratio());
    }
  };
  bool asked_super = false, asked_norm = false, asked_attention = false;
  for (const auto& m : r.metrics()) {
    asked_super |= m.name() == "super_weights";
    asked_norm |= m.name() == "norm_outliers";
    asked_attention |= m.name() == "attention_outliers";
  }
  if (asked_super) {
    super_weights("baseline", b);
    if (i.super_weights_size() != b.super_weights_size()) super_weights("intervened", i);
  }
  if (asked_norm) {
    absl::StrAppendFormat(&out, "\nnorm gamma outliers: %d%s\n", b.norm_outliers_size(),
                          both ? absl::StrFormat(" (intervened: %d)", i.norm_outliers_size()) : "");
    for (const auto& n : b.norm_outliers()) {
      absl::StrAppendFormat(
          &out, "  %s channel %d: gamma %.4g, z %.1f (median %.4g)\n",
          n.norm() == "final" ? std::string("final norm") : absl::StrCat("layer ", n.layer(), " ", n.norm(), " norm"),
          n.channel(), n.gamma(), n.z(), n.median());
    }
  }
  if (asked_attention) {
    absl::StrAppendFormat(&out, "\nattention outlier keys: %d%s\n", b.attention_outliers_size(),
                          both ? absl::StrFormat(" (intervened: %d)", i.attention_outliers_size()) : "");
    for (int k = 0; k < std::min(b.attention_outliers_size(), 10); ++k) {
      const auto& a = b.attention_outliers(k);
      absl::StrAppendFormat(&out, "  L%d.H%d key %d: mass %.3f\n", a.layer(), a.head(), a.key_position(), a.mass());
    }
  }
}

// A sweep's parent: the baseline, then the variants by perplexity change (all of them when few).
std::string SweepTable(const v1::ExperimentResult& r, const v1::ExperimentSpec& e) {
  std::string out;
  const v1::SweepSummary& sweep = r.sweep();
  absl::StrAppendFormat(
      &out, "sweep %s: %d variants on %s (%s, %s), %.2f s, %d forward passes, up to %d variants a pass\n",
      e.name().empty() ? "(unnamed)" : e.name(), sweep.variants_size(), r.run().architecture(), r.run().dtype(),
      r.run().device(), r.run().seconds(), r.run().forward_passes(), sweep.variants_per_pass());
  const v1::PerplexityResult& ppl = r.baseline().perplexity();
  const bool has_ppl = r.baseline().has_perplexity();
  if (has_ppl) {
    absl::StrAppendFormat(&out, "baseline perplexity %.4f on %d predicted tokens, %s\n", ppl.ppl(), ppl.n_tokens(),
                          ppl.protocol());
  }
  std::vector<int> order(sweep.variants_size());
  std::iota(order.begin(), order.end(), 0);
  const bool has_kl = std::any_of(sweep.variants().begin(), sweep.variants().end(),
                                  [](const auto& v) { return v.kl_divergence() != 0; });
  if (has_ppl) {
    std::stable_sort(order.begin(), order.end(), [&](int x, int y) {
      return sweep.variants(x).perplexity_delta_pct() > sweep.variants(y).perplexity_delta_pct();
    });
  }
  const size_t shown = order.size() <= 40 ? order.size() : 20;
  absl::StrAppendFormat(&out, "\n%-28s %12s %10s%s   %s\n", "variant", "perplexity", "delta %",
                        has_kl ? "        KL" : "", "experiment");
  for (size_t j = 0; j < shown; ++j) {
    const auto& v = sweep.variants(order[j]);
    absl::StrAppendFormat(&out, "%-28s %12.4f %+9.2f%%%s   %s\n", v.name(), v.perplexity(), v.perplexity_delta_pct(),
                          has_kl ? absl::StrFormat(" %9.5f", v.kl_divergence()) : "", v.experiment_id());
  }
  if (shown < order.size()) {
    absl::StrAppendFormat(&out, "(%d of %d variants, the largest perplexity increases first; --json for all)\n", shown,
                          order.size());
  }
  return out;
}

std::string Table(const v1::ExperimentResult& r, const v1::ExperimentSpec& e) {
  if (r.has_sweep()) return SweepTable(r, e);
  std::string out;
  const v1::PerplexityResult& ppl = r.baseline().perplexity();
  const bool both = !r.observational();
  absl::StrAppendFormat(&out, "experiment %s: %s on %s (%s, %s), %.2f s\n", e.name().empty() ? "(unnamed)" : e.name(),
                        both ? absl::StrCat(e.interventions_size(), " intervention(s)")
                             : std::string("observational (no interventions, one pass)"),
                        r.run().architecture(), r.run().dtype(), r.run().device(), r.run().seconds());
  if (r.baseline().has_perplexity()) {
    absl::StrAppendFormat(&out, "%d predicted tokens, %s\n", ppl.n_tokens(), ppl.protocol());
  }
  for (const v1::Metric& m : r.metrics()) {
    if (m.name() == "perplexity" && !both) {
      absl::StrAppendFormat(&out, "perplexity      %.4f\n", m.baseline());
    } else if (m.name() == "perplexity") {
      absl::StrAppendFormat(&out, "perplexity      baseline %.4f  intervened %.4f  delta %+.4f (%+.2f%%)\n",
                            m.baseline(), m.value(), m.delta(), m.delta_pct());
    } else if (m.name() == "kl_divergence" && both) {
      absl::StrAppendFormat(&out, "KL divergence   %.6f nats per token (baseline || intervened)\n", m.value());
    }
  }
  for (int k = 0; k < r.baseline().token_probabilities_size(); ++k) {
    const auto& t = r.baseline().token_probabilities(k);
    const double after =
        k < r.intervened().token_probabilities_size() ? r.intervened().token_probabilities(k).mean_probability() : NAN;
    absl::StrAppendFormat(&out, "p(%-10s) id %-6d %.5f%s\n", absl::StrCat("\"", t.token(), "\""), t.token_id(),
                          t.mean_probability(), both ? absl::StrFormat(" -> %.5f", after) : "");
  }
  AppendPrompts(out, r);
  AppendTokenOutputs(out, r);
  AppendStats(out, r);
  AppendSinks(out, r);
  AppendDetections(out, r);
  for (const auto& c : r.baseline().captures()) {
    absl::StrAppendFormat(&out, "\ncaptured %s [%s] float32 (%s--json for the bytes)", c.name(),
                          absl::StrJoin(c.shape(), ", "), both ? "baseline and intervened; " : "");
  }
  if (r.baseline().captures_size() > 0) out += "\n";
  return out;
}

}  // namespace

std::string RenderResult(const v1::ExperimentResult& result, const v1::ExperimentSpec& spec, bool json) {
  if (json) return result::ToJson(result, /*indent=*/true) + "\n";
  std::string out = Table(result, spec);
  for (const std::string& warning : result.warnings()) absl::StrAppend(&out, "warning: ", warning, "\n");
  return out;
}

std::string RenderResult(const result::Experiment& result, const spec::Experiment& spec, bool json) {
  // canonical_json is the parsed spec as protobuf's printer wrote it, so it reads back losslessly.
  v1::ExperimentSpec spec_proto;
  if (!google::protobuf::util::JsonStringToMessage(spec.canonical_json, &spec_proto).ok()) {
    spec_proto.set_name(spec.name);
  }
  return RenderResult(result::ToProto(result), spec_proto, json);
}

std::string RenderSweep(const result::Experiment& parent, const std::vector<result::Experiment>& variants,
                        const spec::Experiment& spec, bool json) {
  if (!json) return RenderResult(parent, spec, false);
  std::string out = absl::StrCat("{\"parent\": ", result::ToJson(result::ToProto(parent), true), ",\n\"variants\": [");
  for (size_t i = 0; i < variants.size(); ++i) {
    absl::StrAppend(&out, i == 0 ? "\n" : ",\n", result::ToJson(result::ToProto(variants[i]), true));
  }
  return absl::StrCat(out, "]}\n");
}

}  // namespace lesion::cli
