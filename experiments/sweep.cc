#include "experiments/sweep.h"

#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <memory>
#include <optional>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "experiments/run_parts.h"
#include "experiments/torch_util.h"
#include "experiments/weight_edits.h"

namespace lesion::experiments {
namespace {

using internal::PassCollectors;
using internal::Prepared;

// Every hook site of a model, in forward order.
std::vector<SiteId> AllSites(const ModelConfig& c) {
  std::vector<SiteId> sites = {{SiteKind::kEmbed, -1}};
  for (int64_t l = 0; l < c.n_layers; ++l) {
    for (int k = 0; k < kNumSiteKinds; ++k) {
      if (IsPerLayer(static_cast<SiteKind>(k))) sites.push_back({static_cast<SiteKind>(k), l});
    }
  }
  sites.push_back({SiteKind::kFinalNorm, -1});
  sites.push_back({SiteKind::kLogits, -1});
  return sites;
}

// Whether `site` is computed before block `start` (so, for a pass beginning there, by the baseline).
bool BeforeStart(const SiteId& site, int64_t start) {
  if (site.kind == SiteKind::kEmbed) return start >= 0;
  if (IsPerLayer(site.kind)) return site.layer < start;
  return false;  // final_norm, logits
}

// A weight element edit as a correction of a fused matrix's output (transformer.h's layout).
struct Correction {
  int64_t layer;
  LinearSite site;
  int64_t row, col;
  double delta;
};

Correction ToCorrection(const ModelConfig& c, const WeightEditPreview::Element& e) {
  const int64_t q_rows = c.n_heads * c.head_dim, kv_rows = c.n_kv_heads * c.head_dim;
  Correction out{e.layer, LinearSite::kQkv, e.row, e.col, e.edited - e.original};
  switch (e.module) {
    case WeightModule::kAttnQ:
      break;
    case WeightModule::kAttnK:
      out.row += q_rows;
      break;
    case WeightModule::kAttnV:
      out.row += q_rows + kv_rows;
      break;
    case WeightModule::kAttnO:
      out.site = LinearSite::kO;
      break;
    case WeightModule::kMlpGate:
      out.site = LinearSite::kGateUp;
      break;
    case WeightModule::kMlpUp:
      out.site = LinearSite::kGateUp;
      if (c.gated_mlp) out.row += c.d_ffn;
      break;
    case WeightModule::kMlpDown:
      out.site = LinearSite::kDown;
      break;
  }
  return out;
}

// One variant of a round: its own plan (its interventions, then its measurements' observers),
// applied to its rows of the batched passes, and its weight edits as corrections.
struct VariantState {
  int64_t index = 0;  // into the sweep's variants
  PassCollectors collectors;
  std::unique_ptr<RunPlan> plan;
  std::vector<Correction> corrections;
  std::vector<WeightEditPreview::Gamma> gammas;
  bool edits_weights = false;
};

// Variants [begin, end) of a round's states that share forward passes from block `start` on.
struct Group {
  int64_t start = 0;
  int64_t begin = 0, end = 0;
};

// The batched plan of one group for a window batch of `b` rows per variant: a dispatcher at every
// site where a member has hooks (each member's hooks see only its rows), and the members'
// attention-bias slots, weight corrections and norm gammas per row.
absl::StatusOr<std::unique_ptr<RunPlan>> GroupPlan(const Transformer& t, std::vector<VariantState>& states,
                                                   const Group& g, int64_t b, const std::vector<SiteId>& sites,
                                                   const std::function<bool()>& interrupt) {
  const ModelConfig& c = t.config();
  const int64_t n = g.end - g.begin;
  auto plan = std::make_unique<RunPlan>(c.n_layers);
  if (interrupt) plan->SetInterrupt(interrupt);
  std::vector<VariantState*> members;
  for (int64_t i = g.begin; i < g.end; ++i) members.push_back(&states[i]);

  std::vector<bool> batch_bias(c.n_layers, false);
  for (int64_t l = 0; l < c.n_layers; ++l) {
    for (VariantState* m : members) batch_bias[l] = batch_bias[l] || m->plan->attention_bias(l).has_value();
  }
  for (const SiteId& site : sites) {
    if (BeforeStart(site, g.start)) continue;
    bool any = false;
    for (VariantState* m : members) any = any || m->plan->HasHooks(site);
    if (!any) continue;
    const bool pattern_has_slot = site.kind == SiteKind::kAttnPattern && batch_bias[site.layer];
    plan->AddHook(site, [members, b, pattern_has_slot](const SiteId& s, at::Tensor& x) {
      for (size_t j = 0; j < members.size(); ++j) {
        const RunPlan& own = *members[j]->plan;
        if (!own.HasHooks(s)) continue;
        at::Tensor rows = x.narrow(0, static_cast<int64_t>(j) * b, b);
        // A variant without a bias slot sees the pattern it would have alone (the slot holds 0).
        if (pattern_has_slot && !own.attention_bias(s.layer).has_value()) rows = rows.narrow(-1, 0, rows.size(-1) - 1);
        at::Tensor value = rows;
        own.Apply(s, value);
        if (!value.is_same(rows)) rows.copy_(value);
      }
    });
  }

  const at::Device device = t.device();
  return TorchCall("building a sweep's batched pass", [&]() -> std::unique_ptr<RunPlan> {
    for (int64_t l = 0; l < c.n_layers; ++l) {
      if (!batch_bias[l]) continue;
      at::Tensor key = at::zeros({n, c.n_kv_heads, c.head_dim});  // [variants, kv, hd] float32
      at::Tensor value = at::zeros_like(key);
      at::Tensor rows = at::zeros({n}, at::kBool);
      for (int64_t j = 0; j < n; ++j) {
        const auto& bias = members[j]->plan->attention_bias(l);
        if (!bias.has_value()) continue;
        key[j].copy_(bias->key);
        value[j].copy_(bias->value);
        rows[j] = true;
      }
      plan->SetAttentionBias(l, AttentionBias{key.repeat_interleave(b, 0).to(device),
                                              value.repeat_interleave(b, 0).to(device),
                                              rows.repeat_interleave(b, 0).to(device)});
    }
    // Corrections of the same element by several members share one delta vector.
    std::map<std::tuple<int64_t, int, int64_t, int64_t>, std::vector<float>> deltas;
    for (int64_t j = 0; j < n; ++j) {
      for (const Correction& k : members[j]->corrections) {
        auto& d = deltas[{k.layer, static_cast<int>(k.site), k.row, k.col}];
        if (d.empty()) d.assign(n, 0.f);
        d[j] = static_cast<float>(k.delta);
      }
    }
    for (const auto& [key, d] : deltas) {
      const auto& [layer, site, row, col] = key;
      at::Tensor delta = at::tensor(d).repeat_interleave(b, 0).to(device);  // [n b] float32
      plan->AddLinearCorrection(layer, static_cast<LinearSite>(site), LinearCorrection{row, col, delta});
    }
    // Norm gammas: every row starts from the model's gamma; members with resets bring theirs.
    std::map<std::pair<int64_t, int>, at::Tensor> gammas;
    for (int64_t j = 0; j < n; ++j) {
      for (const WeightEditPreview::Gamma& gm : members[j]->gammas) {
        at::Tensor& all = gammas[{gm.layer, static_cast<int>(gm.norm)}];
        if (!all.defined()) {
          const NormWeights& w = gm.norm == NormSite::kFinal ? t.weights().final_norm
                                 : gm.norm == NormSite::kAttn ? t.weights().blocks[gm.layer].attn_norm
                                                              : t.weights().blocks[gm.layer].mlp_norm;
          all = w.weight.unsqueeze(0).repeat({n, 1});  // [variants, d]
        }
        all[j].copy_(gm.gamma);
      }
    }
    for (const auto& [key, all] : gammas) {
      plan->SetNormGamma(key.first, static_cast<NormSite>(key.second),
                         all.repeat_interleave(b, 0).unsqueeze(1));  // [n b, 1, d]
    }
    return std::move(plan);
  });
}

// A variant's own plan (its activation-level interventions, then its measurements' observers) and
// its weight edits as corrections. `means`: the dataset means of MEAN modes, or null.
absl::StatusOr<VariantState> MakeVariantState(const Model& model, const spec::Experiment& parent,
                                              const spec::Experiment& variant, int64_t index,
                                              int64_t seq_len, const internal::Means* means) {
  const ModelConfig& c = model.config();
  VariantState s;
  s.index = index;
  ASSIGN_OR_RETURN(s.collectors, internal::MakeCollectors(model, parent));
  s.plan = std::make_unique<RunPlan>(c.n_layers);
  RETURN_IF_ERROR(internal::AddActivationInterventions(c, variant.interventions, seq_len, means, *s.plan));
  s.collectors.Attach(*s.plan);
  WeightEditPreview preview(&model.transformer());
  for (const spec::Intervention& in : variant.interventions) {
    if (const auto* w = std::get_if<spec::WeightEdit>(&in)) {
      ASSIGN_OR_RETURN(WeightModule module, ParseWeightModule(w->module));
      RETURN_IF_ERROR(preview.EditElement(w->layer, module, w->row, w->col, internal::ToRuntime(w->op), w->value));
      s.edits_weights = true;
    } else if (const auto* n = std::get_if<spec::NormChannelReset>(&in)) {
      ASSIGN_OR_RETURN(NormSite norm, ParseNormSite(n->norm));
      RETURN_IF_ERROR(
          preview.ResetNormChannels(n->layer, norm, n->channels, internal::ToRuntime(n->mode), n->value));
      s.edits_weights = true;
    }
  }
  for (const auto& e : preview.elements()) {
    if (e.edited != e.original) s.corrections.push_back(ToCorrection(c, e));
  }
  s.gammas = preview.gammas();
  return s;
}

// Per-variant checks of a sweep (the parent's are Prepare's).
absl::Status CheckVariants(const Model& model, const std::vector<spec::Experiment>& variants, int64_t seq_len,
                           const RunLimits& limits) {
  if (variants.empty()) return absl::InvalidArgumentError("sweep: no variants");
  if (static_cast<int64_t>(variants.size()) > limits.max_sweep_variants) {
    return absl::InvalidArgumentError(absl::StrCat("sweep: ", variants.size(), " variants exceed the limit of ",
                                                   limits.max_sweep_variants));
  }
  const ModelConfig& c = model.config();
  for (size_t i = 0; i < variants.size(); ++i) {
    const spec::Experiment& v = variants[i];
    auto named = [&](const absl::Status& s) {
      return absl::Status(s.code(), absl::StrCat("sweep variant ", i, " (", v.variant_name, "): ", s.message()));
    };
    if (absl::Status s = internal::CheckInterventionValues(model.transformer().dtype(), v.interventions); !s.ok()) {
      return named(s);
    }
    RunPlan dry_run(c.n_layers);
    if (absl::Status s = internal::AddActivationInterventions(c, v.interventions, seq_len, nullptr, dry_run); !s.ok()) {
      return named(s);
    }
    if (absl::Status s = internal::CheckWeightEdits(model.transformer(), v.interventions); !s.ok()) return named(s);
  }
  return absl::OkStatus();
}

absl::StatusOr<Prepared> PrepareSweep(const Model& model, const spec::Experiment& parent,
                                      const std::vector<spec::Experiment>& variants,
                                      const std::filesystem::path& data_dir, const RunLimits& limits) {
  ASSIGN_OR_RETURN(Prepared prepared, internal::Prepare(model, parent, data_dir, limits));
  RETURN_IF_ERROR(CheckVariants(model, variants, prepared.options.seq_len, limits));
  const ModelConfig& c = model.config();
  const int64_t seq = prepared.options.seq_len;
  // Every variant's result holds the baseline's captures and its own.
  int64_t bytes = 0;
  for (const auto& cap : prepared.base.captures) {
    bytes += (1 + 2 * static_cast<int64_t>(variants.size())) * cap->ExpectedBytes(c, prepared.protocol.n_windows, seq);
  }
  if (bytes > limits.max_capture_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("capture: ", bytes, " bytes for the baseline and ", variants.size(),
                                                   " variants exceed the limit of ", limits.max_capture_bytes,
                                                   " bytes; capture fewer sites, positions or windows"));
  }
  // A pass holds variants_per_pass x batch_size windows: bounded like the passes the runner sizes.
  const int64_t window_tokens = prepared.options.batch_size * seq;
  if (parent.variants_per_pass * window_tokens > limits.max_pass_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sweep.variants_per_pass: ", parent.variants_per_pass, " variants x ", prepared.options.batch_size,
        " windows x ", seq, " tokens = ", parent.variants_per_pass * window_tokens,
        " tokens in one pass, more than the limit of ", limits.max_pass_tokens,
        " (lesiond --max-pass-tokens); lower variants_per_pass or eval.batch_size, or leave it 0"));
  }
  return prepared;
}

}  // namespace

int64_t FirstIntervenedLayer(const ModelConfig& c, const std::vector<spec::Intervention>& interventions) {
  int64_t first = c.n_layers;
  for (const spec::Intervention& in : interventions) {
    if (const auto* h = std::get_if<spec::HeadAblation>(&in)) {
      first = std::min(first, h->layer);
    } else if (const auto* w = std::get_if<spec::WeightEdit>(&in)) {
      first = std::min(first, w->layer);
    } else if (const auto* n = std::get_if<spec::NormChannelReset>(&in)) {
      if (n->norm != "final") first = std::min(first, n->layer);
    } else if (const auto* b = std::get_if<spec::AttentionBias>(&in)) {
      first = std::min(first, b->layer);
    } else if (const auto* a = std::get_if<spec::ActivationEdit>(&in)) {
      auto sites = ParseSitePattern(a->site, c.n_layers);
      if (!sites.ok()) continue;
      for (const SiteId& s : *sites) {
        first = std::min(first, s.kind == SiteKind::kEmbed ? int64_t{-1} : IsPerLayer(s.kind) ? s.layer : c.n_layers);
      }
    }
  }
  return first;
}

SweepGroups GroupSweep(const ModelConfig& c, const spec::Experiment& parent,
                       const std::vector<spec::Experiment>& variants, const RunLimits& limits) {
  SweepGroups out;
  const PerplexityOptions options = internal::EvalOptions(c, parent);
  const int64_t window_tokens = std::max<int64_t>(1, options.batch_size * options.seq_len);
  out.variants_per_pass = parent.variants_per_pass > 0 ? parent.variants_per_pass
                                                       : std::max<int64_t>(1, limits.max_pass_tokens / window_tokens);
  const int64_t n = static_cast<int64_t>(variants.size());
  std::vector<int64_t> starts(n), order(n);
  for (int64_t i = 0; i < n; ++i) {
    starts[i] = FirstIntervenedLayer(c, variants[i].interventions);
    order[i] = i;
  }
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return starts[a] < starts[b]; });
  // The variants of one start spread evenly over as few groups as the pass size allows.
  for (int64_t i = 0; i < n;) {
    int64_t j = i;
    while (j < n && starts[order[j]] == starts[order[i]]) ++j;
    const int64_t count = j - i;
    const int64_t n_groups = (count + out.variants_per_pass - 1) / out.variants_per_pass;
    for (int64_t k = 0; k < n_groups; ++k) {
      out.groups.emplace_back(order.begin() + i + count * k / n_groups, order.begin() + i + count * (k + 1) / n_groups);
      out.starts.push_back(starts[order[i]]);
    }
    i = j;
  }
  return out;
}

std::vector<std::vector<int64_t>> ShardGroups(const SweepGroups& groups, int64_t n_layers, int64_t n_shards) {
  std::vector<std::vector<int64_t>> shards(std::max<int64_t>(1, n_shards));
  const int64_t n = static_cast<int64_t>(groups.groups.size());
  // A group's work: its variants times the blocks they run, plus about two blocks' worth of head.
  std::vector<int64_t> cost(n), order(n);
  for (int64_t g = 0; g < n; ++g) {
    cost[g] = static_cast<int64_t>(groups.groups[g].size()) * (n_layers - std::max<int64_t>(0, groups.starts[g]) + 2);
    order[g] = g;
  }
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return cost[a] > cost[b]; });
  std::vector<int64_t> load(shards.size(), 0);
  for (int64_t g : order) {
    const size_t least = std::min_element(load.begin(), load.end()) - load.begin();
    shards[least].push_back(g);
    load[least] += cost[g];
  }
  for (auto& shard : shards) std::sort(shard.begin(), shard.end());
  return shards;
}

absl::Status ValidateSweep(const Model& model, const spec::Experiment& parent,
                           const std::vector<spec::Experiment>& variants, const std::filesystem::path& data_dir,
                           const RunLimits& limits) {
  return TorchCall("validating the sweep", [&]() -> absl::Status {
    return PrepareSweep(model, parent, variants, data_dir, limits).status();
  });
}

absl::StatusOr<result::Experiment> RunSweep(const Model& model, const spec::Experiment& parent,
                                            const std::vector<spec::Experiment>& variants,
                                            const std::filesystem::path& data_dir, const SweepControls& controls,
                                            const RunLimits& limits) {
  const auto start_time = std::chrono::steady_clock::now();
  if (!controls.on_variant) return absl::InvalidArgumentError("RunSweep needs an on_variant callback");
  const ModelConfig& c = model.config();
  const Transformer& t = model.transformer();
  ASSIGN_OR_RETURN(Prepared prepared, PrepareSweep(model, parent, variants, data_dir, limits));
  PassCollectors& base = prepared.base;
  ASSIGN_OR_RETURN(std::vector<WindowBatch> batches, MakeWindowBatches(t, prepared.ids, prepared.options, model.bos_id()));
  std::vector<int32_t> token_ids;
  for (const auto& tp : prepared.tokens) token_ids.push_back(tp.token_id);
  const int64_t n_batches = static_cast<int64_t>(batches.size());
  const int64_t n_variants = static_cast<int64_t>(variants.size());
  const std::vector<SiteId> sites = AllSites(c);
  const SweepGroups plan = GroupSweep(c, parent, variants, limits);
  std::vector<int64_t> run_groups = controls.only_groups;
  if (run_groups.empty()) {
    for (size_t g = 0; g < plan.groups.size(); ++g) run_groups.push_back(static_cast<int64_t>(g));
  }
  for (int64_t g : run_groups) {
    if (g < 0 || g >= static_cast<int64_t>(plan.groups.size())) {
      return absl::InvalidArgumentError(absl::StrCat("sweep: group ", g, " out of range: the sweep has ",
                                                     plan.groups.size(), " groups"));
    }
  }
  // Rounds: consecutive groups, at most max_round_variants variants each (a group is never split);
  // a round's variants are finished and reported together.
  std::vector<std::vector<int64_t>> rounds;
  int64_t in_round = 0;
  for (int64_t g : run_groups) {
    const int64_t size = static_cast<int64_t>(plan.groups[g].size());
    if (rounds.empty() || (in_round > 0 && in_round + size > limits.max_round_variants)) {
      rounds.emplace_back();
      in_round = 0;
    }
    rounds.back().push_back(g);
    in_round += size;
  }
  bool needs_means = false;
  for (int64_t g : run_groups) {
    for (int64_t v : plan.groups[g]) needs_means = needs_means || internal::NeedsMeans(variants[v].interventions);
  }

  const bool from_cache = controls.cached_baseline != nullptr && !needs_means;
  bool baseline_done = from_cache;
  result::Pass baseline;
  if (from_cache) baseline = *controls.cached_baseline;
  RETURN_IF_ERROR(TorchCall("sweep reducers", [&] {
    base.next_token = std::make_unique<NextTokenReducer>(token_ids, t.device());
  }));

  // Planned forward passes: the means' baseline pass, then per round and window batch one
  // baseline pass (unless every group of the round starts at the embedding and nothing else needs
  // it) and one pass per group.
  int64_t passes = 0, planned = needs_means ? n_batches : 0;
  for (size_t r = 0; r < rounds.size(); ++r) {
    bool any_prefix = false;
    for (int64_t g : rounds[r]) any_prefix = any_prefix || plan.starts[g] >= 0;
    const bool measures_baseline = r == 0 && !baseline_done && !needs_means;
    planned += n_batches * (static_cast<int64_t>(rounds[r].size()) +
                            (measures_baseline || any_prefix || prepared.needs_kl ? 1 : 0));
  }
  auto cancelled = [&] { return controls.cancelled && controls.cancelled(); };
  auto pass_done = [&] {
    ++passes;
    if (controls.progress) controls.progress(passes, std::max(planned, passes));
  };
  auto check_cancel = [&]() -> absl::Status {
    if (cancelled()) {
      return absl::CancelledError(absl::StrCat("sweep cancelled after ", passes, " of ", planned, " forward passes"));
    }
    return absl::OkStatus();
  };

  result::Experiment parent_result;
  parent_result.has_sweep = true;
  for (int64_t g : run_groups) {  // the largest pass this run made
    parent_result.sweep.variants_per_pass =
        std::max<int64_t>(parent_result.sweep.variants_per_pass, static_cast<int64_t>(plan.groups[g].size()));
  }
  parent_result.sweep.variants.resize(n_variants);

  // Layers whose attention pattern the measurements observe (computed explicitly there).
  std::vector<bool> observes_pattern(c.n_layers, false);
  {
    RunPlan probe(c.n_layers);
    base.Attach(probe);
    for (int64_t l = 0; l < c.n_layers; ++l) observes_pattern[l] = probe.HasHooks({SiteKind::kAttnPattern, l});
  }

  internal::Means means;
  RETURN_IF_ERROR(TorchCall("running the sweep", [&]() -> absl::Status {
    c10::InferenceMode guard;
    if (needs_means) {  // the dataset means first: the variants' passes depend on them
      std::vector<spec::Intervention> all;
      for (int64_t g : run_groups) {
        for (int64_t v : plan.groups[g]) {
          all.insert(all.end(), variants[v].interventions.begin(), variants[v].interventions.end());
        }
      }
      RunPlan means_plan(c.n_layers);
      if (controls.cancelled) means_plan.SetInterrupt(controls.cancelled);
      if (!baseline_done) base.Attach(means_plan);
      internal::AddMeanObservers(c, all, means, means_plan);
      for (const WindowBatch& batch : batches) {
        RETURN_IF_ERROR(check_cancel());
        ASSIGN_OR_RETURN(at::Tensor logits, t.Forward(batch.input, means_plan));
        if (!baseline_done) base.next_token->Add(logits, batch);
        pass_done();
      }
      if (!baseline_done) {
        ASSIGN_OR_RETURN(baseline, internal::FinishPass(base, t, prepared.protocol, prepared.tokens, *base.next_token, 0));
        baseline_done = true;
      }
    }

    for (const std::vector<int64_t>& round : rounds) {
      const auto round_start = std::chrono::steady_clock::now();
      // The round's variants with their own plans, group after group.
      std::vector<VariantState> states;
      std::vector<Group> groups;
      for (int64_t g : round) {
        groups.push_back({plan.starts[g], static_cast<int64_t>(states.size()),
                          static_cast<int64_t>(states.size() + plan.groups[g].size())});
        for (int64_t index : plan.groups[g]) {
          ASSIGN_OR_RETURN(VariantState state, MakeVariantState(model, parent, variants[index], index,
                                                                prepared.options.seq_len, needs_means ? &means : nullptr));
          states.push_back(std::move(state));
        }
      }
      NextTokenReducer reducer(token_ids, t.device(), static_cast<int64_t>(states.size()));

      // The baseline pass of every batch: the baseline's own measurements (once), what each
      // variant observes before its group's first layer, and the residual stream there.
      const bool measure_baseline = !baseline_done;
      RunPlan base_plan(c.n_layers);
      if (controls.cancelled) base_plan.SetInterrupt(controls.cancelled);
      if (measure_baseline) base.Attach(base_plan);
      // Every round's baseline passes take the attention path of the measured one, whichever
      // variants observe them, so a KL reference does not depend on how the sweep was cut.
      for (int64_t l = 0; l < c.n_layers; ++l) {
        if (observes_pattern[l]) base_plan.RequireExplicitAttention(l);
      }
      std::vector<int64_t> group_start_of(states.size());
      for (const Group& g : groups) {
        for (int64_t i = g.begin; i < g.end; ++i) group_start_of[i] = g.start;
      }
      for (const SiteId& site : sites) {
        std::vector<const RunPlan*> observers;
        for (size_t i = 0; i < states.size(); ++i) {
          if (BeforeStart(site, group_start_of[i]) && states[i].plan->HasHooks(site)) {
            observers.push_back(states[i].plan.get());
          }
        }
        if (observers.empty()) continue;
        base_plan.AddHook(site, [observers](const SiteId& s, at::Tensor& x) {
          for (const RunPlan* own : observers) {
            at::Tensor value = x;  // observers only: nothing before a variant's first layer edits it
            own->Apply(s, value);
          }
        });
      }
      std::map<int64_t, at::Tensor> saved;  // group start -> residual stream entering that block
      int64_t max_start = -1;
      for (const Group& g : groups) {
        if (g.start < 0 || saved.count(g.start)) continue;
        saved[g.start] = at::Tensor();
        max_start = std::max(max_start, g.start);
        const SiteId site = g.start == 0 ? SiteId{SiteKind::kEmbed, -1} : SiteId{SiteKind::kResidPost, g.start - 1};
        base_plan.AddHook(site, [&saved, at_start = g.start](const SiteId&, at::Tensor& x) { saved[at_start] = x; });
      }
      const bool full_baseline = measure_baseline || prepared.needs_kl;
      int64_t baseline_passes = 0;  // of this round, shared by its variants
      // Each group's batched plan, per batch size (only a short last batch differs).
      std::map<std::pair<size_t, int64_t>, std::unique_ptr<RunPlan>> group_plans;

      // A variant is finished, reported and (by the server) stored as soon as its group's pass over
      // the last window batch is done: its reducer rows and collectors are complete then, whatever
      // the round's later groups do, so a crash loses no finished group.
      auto finish_group = [&](const Group& g) -> absl::Status {
        const double round_seconds =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - round_start).count();
        for (int64_t i = g.begin; i < g.end; ++i) {
          VariantState& s = states[i];
          const spec::Experiment& v = variants[s.index];
          result::Experiment out;
          out.baseline = baseline;
          out.baseline_from_cache = from_cache;
          absl::StatusOr<result::Pass> pass;
          if (s.edits_weights && s.collectors.ReadsWeights()) {
            // Weight-reading measurements (super-weight values, norm gammas) see this variant's edits;
            // restored bit for bit before the round's next group runs.
            WeightEditSession edits(&t);
            RETURN_IF_ERROR(internal::ApplyWeightEdits(v.interventions, edits));
            pass = internal::FinishPass(s.collectors, t, prepared.protocol, prepared.tokens, reducer, i);
            RETURN_IF_ERROR(edits.Restore());
          } else {
            pass = internal::FinishPass(s.collectors, t, prepared.protocol, prepared.tokens, reducer, i);
          }
          if (!pass.ok()) return pass.status();
          out.intervened = *std::move(pass);
          if (prepared.needs_kl) {
            out.has_kl_divergence = true;
            out.kl_divergence =
                reducer.kl_sum()[i].item<double>() / static_cast<double>(prepared.protocol.n_tokens);
          }
          out.run = internal::RunInfoOf(model, v.spec_sha256);
          // The passes the variant took part in (its group's, and the baseline passes of its round,
          // shared with the round's other variants), and its share of the round's time so far.
          out.run.forward_passes = n_batches + baseline_passes;
          out.run.seconds = round_seconds / static_cast<double>(states.size());

          result::SweepVariant& row = parent_result.sweep.variants[s.index];
          row.name = v.variant_name;
          if (out.intervened.has_perplexity && out.baseline.has_perplexity) {
            row.has_perplexity = true;
            row.perplexity = out.intervened.perplexity.ppl;
            row.perplexity_delta_pct =
                100.0 * (out.intervened.perplexity.ppl - out.baseline.perplexity.ppl) / out.baseline.perplexity.ppl;
          }
          row.has_kl_divergence = out.has_kl_divergence;
          row.kl_divergence = out.kl_divergence;
          controls.on_variant(s.index, std::move(out));
        }
        return absl::OkStatus();
      };

      for (size_t bi = 0; bi < batches.size(); ++bi) {
        const WindowBatch& batch = batches[bi];
        const bool last_batch = bi + 1 == batches.size();
        RETURN_IF_ERROR(check_cancel());
        const int64_t b = batch.input.size(0);
        at::Tensor reference;
        if (full_baseline) {
          ASSIGN_OR_RETURN(at::Tensor logits, t.Forward(batch.input, base_plan));
          if (measure_baseline) base.next_token->Add(logits, batch);
          if (prepared.needs_kl) reference = logits;
          pass_done();
          ++baseline_passes;
          if (measure_baseline && last_batch) {  // complete: the variants finished below carry it
            ASSIGN_OR_RETURN(baseline,
                             internal::FinishPass(base, t, prepared.protocol, prepared.tokens, *base.next_token, 0));
            baseline_done = true;
          }
        } else if (max_start >= 0) {
          RETURN_IF_ERROR(t.ForwardPrefix(batch.input, max_start, base_plan).status());
          pass_done();
          ++baseline_passes;
        }  // else every group starts at the embedding: nothing to take from the baseline
        for (size_t gi = 0; gi < groups.size(); ++gi) {
          const Group& g = groups[gi];
          RETURN_IF_ERROR(check_cancel());
          const int64_t n = g.end - g.begin;
          std::unique_ptr<RunPlan>& group_plan = group_plans[{gi, b}];
          if (group_plan == nullptr) {
            ASSIGN_OR_RETURN(group_plan, GroupPlan(t, states, g, b, sites, controls.cancelled));
          }
          at::Tensor logits;  // [n b, s, vocab]: the group's variants one after the other
          if (g.start < 0) {
            ASSIGN_OR_RETURN(logits, t.Forward(n == 1 ? batch.input : batch.input.repeat({n, 1}), *group_plan));
          } else {
            const at::Tensor& x = saved.at(g.start);  // [b, s, d]
            ASSIGN_OR_RETURN(logits, t.ForwardFrom(n == 1 ? x : x.repeat({n, 1, 1}), g.start, *group_plan));
          }
          reducer.Add(logits, batch, reference, g.begin);
          pass_done();
          if (last_batch) RETURN_IF_ERROR(finish_group(g));
        }
        for (auto& [s, x] : saved) x = at::Tensor();
      }
    }    return absl::OkStatus();
  }));

  parent_result.baseline = std::move(baseline);
  parent_result.baseline_from_cache = from_cache;
  parent_result.run = internal::RunInfoOf(model, parent.spec_sha256);
  parent_result.run.forward_passes = passes;
  parent_result.run.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_time).count();
  return parent_result;
}

}  // namespace lesion::experiments
