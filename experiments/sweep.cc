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
#include "experiments/spec_binding.h"
#include "experiments/weight_edits.h"
#include "model/torch_util.h"
#include "model/weight_addressing.h"

namespace lesion::experiments {
namespace {

using internal::PassCollectors;
using internal::Prepared;

// Every hook site of a model, in forward order.
std::vector<model::SiteId> AllSites(const model::ModelConfig& c) {
  std::vector<model::SiteId> sites = {{model::SiteKind::kEmbed, -1}};
  for (int64_t l = 0; l < c.n_layers; ++l) {
    for (int k = 0; k < model::kNumSiteKinds; ++k) {
      if (model::IsPerLayer(static_cast<model::SiteKind>(k))) sites.push_back({static_cast<model::SiteKind>(k), l});
    }
  }
  sites.push_back({model::SiteKind::kFinalNorm, -1});
  sites.push_back({model::SiteKind::kLogits, -1});
  return sites;
}

// Whether `site` is computed before block `start` (so, for a pass beginning there, by the baseline).
bool BeforeStart(const model::SiteId& site, int64_t start) {
  if (site.kind == model::SiteKind::kEmbed) return start >= 0;
  if (model::IsPerLayer(site.kind)) return site.layer < start;
  return false;  // final_norm, logits
}

// A weight element edit as a correction of a fused matrix's output (transformer.h's layout).
struct Correction {
  int64_t layer;
  model::LinearSite site;
  int64_t row, col;
  double delta;
};

Correction ToCorrection(const model::ModelConfig& c, const WeightEditPreview::Element& e) {
  const int64_t q_rows = c.n_heads * c.head_dim, kv_rows = c.n_kv_heads * c.head_dim;
  Correction out{e.layer, model::LinearSite::kQkv, e.row, e.col, e.edited - e.original};
  switch (e.module) {
    case model::WeightModule::kAttnQ:
      break;
    case model::WeightModule::kAttnK:
      out.row += q_rows;
      break;
    case model::WeightModule::kAttnV:
      out.row += q_rows + kv_rows;
      break;
    case model::WeightModule::kAttnO:
      out.site = model::LinearSite::kO;
      break;
    case model::WeightModule::kMlpGate:
      out.site = model::LinearSite::kGateUp;
      break;
    case model::WeightModule::kMlpUp:
      out.site = model::LinearSite::kGateUp;
      if (c.gated_mlp) out.row += c.d_ffn;
      break;
    case model::WeightModule::kMlpDown:
      out.site = model::LinearSite::kDown;
      break;
  }
  return out;
}

// One variant of a round: its own plan (its interventions, then its measurements' observers),
// applied to its rows of the batched passes, and its weight edits as corrections.
struct VariantState {
  int64_t index = 0;  // into the sweep's variants
  PassCollectors collectors;
  std::unique_ptr<model::RunPlan> plan;
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
absl::StatusOr<std::unique_ptr<model::RunPlan>> GroupPlan(const model::Transformer& t,
                                                          std::vector<VariantState>& states, const Group& g, int64_t b,
                                                          const std::vector<model::SiteId>& sites,
                                                          const std::function<bool()>& interrupt) {
  const model::ModelConfig& c = t.config();
  const int64_t n = g.end - g.begin;
  auto plan = std::make_unique<model::RunPlan>(c.n_layers);
  if (interrupt) plan->SetInterrupt(interrupt);
  std::vector<VariantState*> members;
  for (int64_t i = g.begin; i < g.end; ++i) members.push_back(&states[i]);

  std::vector<bool> batch_bias(c.n_layers, false);
  for (int64_t l = 0; l < c.n_layers; ++l) {
    for (VariantState* m : members) batch_bias[l] = batch_bias[l] || m->plan->attention_bias(l).has_value();
  }
  for (const model::SiteId& site : sites) {
    if (BeforeStart(site, g.start)) continue;
    bool any = false;
    for (VariantState* m : members) any = any || m->plan->HasHooks(site);
    if (!any) continue;
    const bool pattern_has_slot = site.kind == model::SiteKind::kAttnPattern && batch_bias[site.layer];
    plan->AddHook(site, [members, b, pattern_has_slot](const model::SiteId& s, at::Tensor& x) {
      for (size_t j = 0; j < members.size(); ++j) {
        const model::RunPlan& own = *members[j]->plan;
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
  return model::TorchCall("building a sweep's batched pass", [&]() -> std::unique_ptr<model::RunPlan> {
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
      plan->SetAttentionBias(
          l, model::AttentionBias{key.repeat_interleave(b, 0).to(device), value.repeat_interleave(b, 0).to(device),
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
      plan->AddLinearCorrection(layer, static_cast<model::LinearSite>(site), model::LinearCorrection{row, col, delta});
    }
    // Norm gammas: every row starts from the model's gamma; members with resets bring theirs.
    std::map<std::pair<int64_t, int>, at::Tensor> gammas;
    for (int64_t j = 0; j < n; ++j) {
      for (const WeightEditPreview::Gamma& gm : members[j]->gammas) {
        at::Tensor& all = gammas[{gm.layer, static_cast<int>(gm.norm)}];
        if (!all.defined()) {
          const model::NormWeights& w = *model::FindNorm(t.weights(), gm.layer, gm.norm);
          all = w.weight.unsqueeze(0).repeat({n, 1});  // [variants, width]
        }
        all[j].copy_(gm.gamma);
      }
    }
    for (const auto& [key, all] : gammas) {
      plan->SetNormGamma(key.first, static_cast<model::NormSite>(key.second),
                         all.repeat_interleave(b, 0).unsqueeze(1));  // [n b, 1, width]
    }
    return std::move(plan);
  });
}

// A variant's own plan (its activation-level interventions, then its measurements' observers) and
// its weight edits as corrections. `means`: the dataset means of MEAN modes, or null.
absl::StatusOr<VariantState> MakeVariantState(const model::Model& model, const spec::Experiment& parent,
                                              const spec::Experiment& variant, int64_t index,
                                              const model::PerplexityResult& layout, int64_t seq_len,
                                              const internal::Means* means) {
  const model::ModelConfig& c = model.config();
  VariantState s;
  s.index = index;
  ASSIGN_OR_RETURN(s.collectors, internal::MakeCollectors(model, parent, layout));
  s.plan = std::make_unique<model::RunPlan>(c.n_layers);
  RETURN_IF_ERROR(internal::AddActivationInterventions(c, variant.interventions, seq_len, means, *s.plan));
  s.collectors.Attach(*s.plan);
  WeightEditPreview preview(&model.transformer());
  for (const spec::Intervention& in : variant.interventions) {
    if (const auto* w = std::get_if<spec::WeightEdit>(&in)) {
      ASSIGN_OR_RETURN(model::WeightModule module, model::ParseWeightModule(w->module));
      RETURN_IF_ERROR(preview.EditElement(w->layer, module, w->row, w->col, w->op, w->value));
      s.edits_weights = true;
    } else if (const auto* n = std::get_if<spec::NormChannelReset>(&in)) {
      ASSIGN_OR_RETURN(model::NormSite norm, model::ParseNormSite(n->norm));
      RETURN_IF_ERROR(preview.ResetNormChannels(n->layer, norm, n->channels, n->mode, n->value));
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
absl::Status CheckVariants(const model::Model& model, const std::vector<spec::Experiment>& variants, int64_t seq_len,
                           int64_t window_tokens, const RunLimits& limits) {
  if (variants.empty()) return absl::InvalidArgumentError("sweep: no variants");
  if (static_cast<int64_t>(variants.size()) > limits.max_sweep_variants) {
    return absl::InvalidArgumentError(
        absl::StrCat("sweep: ", variants.size(), " variants exceed the limit of ", limits.max_sweep_variants));
  }
  const model::ModelConfig& c = model.config();
  for (size_t i = 0; i < variants.size(); ++i) {
    const spec::Experiment& v = variants[i];
    auto named = [&](const absl::Status& s) {
      return absl::Status(s.code(), absl::StrCat("sweep variant ", i, " (", v.variant_name, "): ", s.message()));
    };
    if (absl::Status s = internal::CheckInterventionValues(model.transformer().dtype(), v.interventions); !s.ok()) {
      return named(s);
    }
    model::RunPlan dry_run(c.n_layers);
    if (absl::Status s = internal::AddActivationInterventions(c, v.interventions, seq_len, nullptr, dry_run); !s.ok()) {
      return named(s);
    }
    if (absl::Status s = internal::CheckWeightEdits(model.transformer(), v.interventions); !s.ok()) return named(s);
    if (absl::Status s = internal::CheckEditPositions(v.interventions, window_tokens); !s.ok()) return named(s);
  }
  return absl::OkStatus();
}

absl::StatusOr<Prepared> PrepareSweep(const model::Model& model, const spec::Experiment& parent,
                                      const std::vector<spec::Experiment>& variants,
                                      const std::filesystem::path& data_dir, const RunLimits& limits) {
  ASSIGN_OR_RETURN(Prepared prepared, internal::Prepare(model, parent, data_dir, limits));
  RETURN_IF_ERROR(CheckVariants(model, variants, prepared.options.seq_len, prepared.window_tokens, limits));
  const model::ModelConfig& c = model.config();
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
  const int64_t output_bytes = (1 + static_cast<int64_t>(variants.size())) *
                               internal::TokenOutputBytes(prepared.base.token_outputs, prepared.protocol.n_tokens);
  if (output_bytes > limits.max_capture_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("token_outputs: ", output_bytes, " bytes for the baseline and ",
                                                   variants.size(), " variants exceed the limit of ",
                                                   limits.max_capture_bytes, " bytes; lower max_tokens or top_k"));
  }
  const int64_t prompt_bytes = (1 + static_cast<int64_t>(variants.size())) * internal::PromptRowBytes(prepared);
  if (prompt_bytes > limits.max_capture_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("dataset.prompts: the per-prompt rows of the baseline and ", variants.size(), " variants take ",
                     prompt_bytes, " bytes, more than the limit of ", limits.max_capture_bytes,
                     " bytes; give fewer prompts, variants or token_probabilities tokens"));
  }
  // A pass holds variants_per_pass x batch_size windows: bounded like the passes the runner sizes.
  const int64_t window_tokens = prepared.options.batch_size * seq;
  if (parent.variants_per_pass * window_tokens > limits.max_pass_tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("sweep.variants_per_pass: ", parent.variants_per_pass, " variants x ", prepared.options.batch_size,
                     " windows x ", seq, " tokens = ", parent.variants_per_pass * window_tokens,
                     " tokens in one pass, more than the limit of ", limits.max_pass_tokens,
                     " (lesiond --max-pass-tokens); lower variants_per_pass or eval.batch_size, or leave it 0"));
  }
  return prepared;
}

}  // namespace

int64_t FirstIntervenedLayer(const model::ModelConfig& c, const std::vector<spec::Intervention>& interventions) {
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
      auto sites = model::ParseSitePattern(a->site, c.n_layers);
      if (!sites.ok()) continue;
      for (const model::SiteId& s : *sites) {
        first = std::min(first, s.kind == model::SiteKind::kEmbed ? int64_t{-1}
                                : model::IsPerLayer(s.kind)       ? s.layer
                                                                  : c.n_layers);
      }
    }
  }
  return first;
}

SweepGroups GroupSweep(const model::ModelConfig& c, const spec::Experiment& parent,
                       const std::vector<spec::Experiment>& variants, const RunLimits& limits) {
  SweepGroups out;
  const model::PerplexityOptions options = internal::EvalOptions(c, parent);
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

absl::Status ValidateSweep(const model::Model& model, const spec::Experiment& parent,
                           const std::vector<spec::Experiment>& variants, const std::filesystem::path& data_dir,
                           const RunLimits& limits) {
  return model::TorchCall("validating the sweep", [&]() -> absl::Status {
    return PrepareSweep(model, parent, variants, data_dir, limits).status();
  });
}

namespace {

// Rounds: consecutive groups, at most `max_round_variants` variants each (a group is never split);
// a round's variants are finished and reported together.
std::vector<std::vector<int64_t>> PlanRounds(const SweepGroups& plan, const std::vector<int64_t>& run_groups,
                                             int64_t max_round_variants) {
  std::vector<std::vector<int64_t>> rounds;
  int64_t in_round = 0;
  for (int64_t g : run_groups) {
    const int64_t size = static_cast<int64_t>(plan.groups[g].size());
    if (rounds.empty() || (in_round > 0 && in_round + size > max_round_variants)) {
      rounds.emplace_back();
      in_round = 0;
    }
    rounds.back().push_back(g);
    in_round += size;
  }
  return rounds;
}

// One round being run: its variants with their own plans (group after group), the reducer of their
// NLL sums, and the baseline plan whose passes feed them. Built once per round and not moved after
// BuildBaselinePlan (the plan's hooks point into `saved`).
struct Round {
  std::chrono::steady_clock::time_point start;
  std::vector<VariantState> states;
  std::vector<Group> groups;
  std::unique_ptr<model::NextTokenReducer> reducer;
  std::unique_ptr<model::RunPlan> base_plan;
  std::map<int64_t, at::Tensor> saved;  // group start -> residual stream entering that block
  int64_t max_start = -1;               // the deepest block a group starts at; -1: all at the embedding
  bool measure_baseline = false;        // this round's baseline passes measure the baseline
  int64_t baseline_passes = 0;          // of this round, shared by its variants
  // Each group's batched plan, per batch size (only a short last batch differs).
  std::map<std::pair<size_t, int64_t>, std::unique_ptr<model::RunPlan>> group_plans;
};

// One call of RunSweep: what its rounds share (the prepared spec, the window batches, the baseline,
// progress and cancellation) and the steps of the run. Runs on the calling thread; torch may throw
// inside Run's steps, which RunSweep wraps in one TorchCall.
class SweepRun {
 public:
  SweepRun(const model::Model& model, const spec::Experiment& parent, const std::vector<spec::Experiment>& variants,
           const SweepControls& controls, Prepared prepared, std::vector<model::WindowBatch> batches, SweepGroups plan,
           std::vector<int64_t> run_groups, int64_t max_round_variants)
      : model_(model),
        c_(model.config()),
        t_(model.transformer()),
        parent_(parent),
        variants_(variants),
        controls_(controls),
        prepared_(std::move(prepared)),
        batches_(std::move(batches)),
        plan_(std::move(plan)),
        run_groups_(std::move(run_groups)),
        rounds_(PlanRounds(plan_, run_groups_, max_round_variants)),
        sites_(AllSites(c_)) {
    for (const auto& tp : prepared_.tokens) token_ids_.push_back(tp.token_id);
    for (int64_t g : run_groups_) {
      for (int64_t v : plan_.groups[g]) needs_means_ = needs_means_ || internal::NeedsMeans(variants_[v].interventions);
    }
    from_cache_ = controls_.cached_baseline != nullptr && !needs_means_;
    baseline_done_ = from_cache_;
    if (from_cache_) baseline_ = *controls_.cached_baseline;
    planned_ = PlannedPasses();
  }

  // The parent's result (see RunSweep); each variant's went to controls.on_variant as it finished.
  absl::StatusOr<result::Experiment> Run() {
    const auto start_time = std::chrono::steady_clock::now();
    RETURN_IF_ERROR(model::TorchCall("sweep reducers", [&] {
      prepared_.base.next_token = std::make_unique<model::NextTokenReducer>(
          token_ids_, t_.device(), 1, prepared_.base.token_outputs, PerWindowCount());
    }));
    parent_result_.has_sweep = true;
    for (int64_t g : run_groups_) {  // the largest pass this run made
      parent_result_.sweep.variants_per_pass =
          std::max<int64_t>(parent_result_.sweep.variants_per_pass, static_cast<int64_t>(plan_.groups[g].size()));
    }
    parent_result_.sweep.variants.resize(variants_.size());
    FindObservedPatterns();

    RETURN_IF_ERROR(model::TorchCall("running the sweep", [&]() -> absl::Status {
      c10::InferenceMode guard;
      if (needs_means_) RETURN_IF_ERROR(ComputeMeans());  // the variants' passes depend on them
      for (const std::vector<int64_t>& round : rounds_) RETURN_IF_ERROR(RunRound(round));
      return absl::OkStatus();
    }));

    parent_result_.baseline = std::move(baseline_);
    parent_result_.baseline_from_cache = from_cache_;
    parent_result_.run = internal::RunInfoOf(model_, parent_.spec_sha256);
    parent_result_.run.forward_passes = passes_;
    parent_result_.run.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_time).count();
    return std::move(parent_result_);
  }

 private:
  int64_t n_batches() const { return static_cast<int64_t>(batches_.size()); }

  // Windows whose sums the reducers keep apart: a prompt set's, for its per-prompt rows.
  int64_t PerWindowCount() const { return prepared_.protocol.prompt_set ? prepared_.protocol.n_windows : 0; }

  // The means' baseline pass, then per round and window batch one baseline pass (unless every
  // group of the round starts at the embedding and nothing else needs it) and one pass per group.
  int64_t PlannedPasses() const {
    int64_t planned = needs_means_ ? n_batches() : 0;
    for (size_t r = 0; r < rounds_.size(); ++r) {
      bool any_prefix = false;
      for (int64_t g : rounds_[r]) any_prefix = any_prefix || plan_.starts[g] >= 0;
      const bool measures_baseline = r == 0 && !baseline_done_ && !needs_means_;
      planned += n_batches() * (static_cast<int64_t>(rounds_[r].size()) +
                                (measures_baseline || any_prefix || prepared_.needs_kl ? 1 : 0));
    }
    return planned;
  }

  void PassDone() {
    ++passes_;
    if (controls_.progress) controls_.progress(passes_, std::max(planned_, passes_));
  }

  absl::Status CheckCancel() const {
    if (controls_.cancelled && controls_.cancelled()) {
      return absl::CancelledError(absl::StrCat("sweep cancelled after ", passes_, " of ", planned_, " forward passes"));
    }
    return absl::OkStatus();
  }

  // Layers whose attention pattern the measurements observe (computed explicitly there).
  void FindObservedPatterns() {
    observes_pattern_.assign(c_.n_layers, false);
    model::RunPlan probe(c_.n_layers);
    prepared_.base.Attach(probe);
    for (int64_t l = 0; l < c_.n_layers; ++l) {
      observes_pattern_[l] = probe.HasHooks({model::SiteKind::kAttnPattern, l});
    }
  }

  // The dataset means of MEAN modes over one baseline pass, which also measures the baseline
  // unless it came from the cache.
  absl::Status ComputeMeans() {
    std::vector<spec::Intervention> all;
    for (int64_t g : run_groups_) {
      for (int64_t v : plan_.groups[g]) {
        all.insert(all.end(), variants_[v].interventions.begin(), variants_[v].interventions.end());
      }
    }
    PassCollectors& base = prepared_.base;
    model::RunPlan means_plan(c_.n_layers);
    if (controls_.cancelled) means_plan.SetInterrupt(controls_.cancelled);
    if (!baseline_done_) base.Attach(means_plan);
    internal::AddMeanObservers(c_, all, means_, means_plan);
    for (const model::WindowBatch& batch : batches_) {
      RETURN_IF_ERROR(CheckCancel());
      ASSIGN_OR_RETURN(at::Tensor logits, t_.Forward(batch.input, means_plan));
      if (!baseline_done_) base.next_token->Add(logits, batch);
      PassDone();
    }
    if (!baseline_done_) {
      ASSIGN_OR_RETURN(baseline_,
                       internal::FinishPass(base, t_, prepared_.protocol, prepared_.tokens, *base.next_token, 0));
      baseline_done_ = true;
    }
    return absl::OkStatus();
  }

  // The round's variants with their own plans, group after group, and their reducer.
  absl::Status BuildVariants(const std::vector<int64_t>& round_groups, Round& round) {
    for (int64_t g : round_groups) {
      round.groups.push_back({plan_.starts[g], static_cast<int64_t>(round.states.size()),
                              static_cast<int64_t>(round.states.size() + plan_.groups[g].size())});
      for (int64_t index : plan_.groups[g]) {
        ASSIGN_OR_RETURN(VariantState state,
                         MakeVariantState(model_, parent_, variants_[index], index, prepared_.protocol,
                                          prepared_.options.seq_len, needs_means_ ? &means_ : nullptr));
        round.states.push_back(std::move(state));
      }
    }
    round.reducer =
        std::make_unique<model::NextTokenReducer>(token_ids_, t_.device(), static_cast<int64_t>(round.states.size()),
                                                  prepared_.base.token_outputs, PerWindowCount());
    return absl::OkStatus();
  }

  // The baseline plan of every batch of the round: the baseline's own measurements (once), what
  // each variant observes before its group's first layer, and the residual stream there.
  void BuildBaselinePlan(Round& round) {
    round.measure_baseline = !baseline_done_;
    round.base_plan = std::make_unique<model::RunPlan>(c_.n_layers);
    model::RunPlan& base_plan = *round.base_plan;
    if (controls_.cancelled) base_plan.SetInterrupt(controls_.cancelled);
    if (round.measure_baseline) prepared_.base.Attach(base_plan);
    // Every round's baseline passes take the attention path of the measured one, whichever
    // variants observe them, so a KL reference does not depend on how the sweep was cut.
    for (int64_t l = 0; l < c_.n_layers; ++l) {
      if (observes_pattern_[l]) base_plan.RequireExplicitAttention(l);
    }
    std::vector<int64_t> group_start_of(round.states.size());
    for (const Group& g : round.groups) {
      for (int64_t i = g.begin; i < g.end; ++i) group_start_of[i] = g.start;
    }
    for (const model::SiteId& site : sites_) {
      std::vector<const model::RunPlan*> observers;
      for (size_t i = 0; i < round.states.size(); ++i) {
        if (BeforeStart(site, group_start_of[i]) && round.states[i].plan->HasHooks(site)) {
          observers.push_back(round.states[i].plan.get());
        }
      }
      if (observers.empty()) continue;
      base_plan.AddHook(site, [observers](const model::SiteId& s, at::Tensor& x) {
        for (const model::RunPlan* own : observers) {
          at::Tensor value = x;  // observers only: nothing before a variant's first layer edits it
          own->Apply(s, value);
        }
      });
    }
    for (const Group& g : round.groups) {
      if (g.start < 0 || round.saved.count(g.start)) continue;
      round.saved[g.start] = at::Tensor();
      round.max_start = std::max(round.max_start, g.start);
      const model::SiteId site = g.start == 0 ? model::SiteId{model::SiteKind::kEmbed, -1}
                                              : model::SiteId{model::SiteKind::kResidPost, g.start - 1};
      base_plan.AddHook(site, [&saved = round.saved, at_start = g.start](const model::SiteId&, at::Tensor& x) {
        saved[at_start] = x;
      });
    }
  }

  absl::Status RunRound(const std::vector<int64_t>& round_groups) {
    Round round;
    round.start = std::chrono::steady_clock::now();
    RETURN_IF_ERROR(BuildVariants(round_groups, round));
    BuildBaselinePlan(round);
    const bool full_baseline = round.measure_baseline || prepared_.needs_kl;
    for (size_t bi = 0; bi < batches_.size(); ++bi) {
      const model::WindowBatch& batch = batches_[bi];
      const bool last_batch = bi + 1 == batches_.size();
      RETURN_IF_ERROR(CheckCancel());
      at::Tensor reference;
      if (full_baseline) {
        ASSIGN_OR_RETURN(at::Tensor logits, t_.Forward(batch.input, *round.base_plan));
        if (round.measure_baseline) prepared_.base.next_token->Add(logits, batch);
        if (prepared_.needs_kl) reference = logits;
        PassDone();
        ++round.baseline_passes;
        if (round.measure_baseline && last_batch) {  // complete: the variants finished below carry it
          ASSIGN_OR_RETURN(baseline_, internal::FinishPass(prepared_.base, t_, prepared_.protocol, prepared_.tokens,
                                                           *prepared_.base.next_token, 0));
          baseline_done_ = true;
        }
      } else if (round.max_start >= 0) {
        RETURN_IF_ERROR(t_.ForwardPrefix(batch.input, round.max_start, *round.base_plan).status());
        PassDone();
        ++round.baseline_passes;
      }  // else every group starts at the embedding: nothing to take from the baseline
      for (size_t gi = 0; gi < round.groups.size(); ++gi) {
        RETURN_IF_ERROR(CheckCancel());
        RETURN_IF_ERROR(RunGroupPass(round, gi, batch, reference));
        if (last_batch) RETURN_IF_ERROR(FinishGroup(round, round.groups[gi]));
      }
      for (auto& [start, x] : round.saved) x = at::Tensor();
    }
    return absl::OkStatus();
  }

  // One batched pass of group `gi` over `batch`, from the group's first block on.
  absl::Status RunGroupPass(Round& round, size_t gi, const model::WindowBatch& batch, const at::Tensor& reference) {
    const Group& g = round.groups[gi];
    const int64_t n = g.end - g.begin;
    const int64_t b = batch.input.size(0);
    std::unique_ptr<model::RunPlan>& group_plan = round.group_plans[{gi, b}];
    if (group_plan == nullptr) {
      ASSIGN_OR_RETURN(group_plan, GroupPlan(t_, round.states, g, b, sites_, controls_.cancelled));
    }
    at::Tensor logits;  // [n b, s, vocab]: the group's variants one after the other
    if (g.start < 0) {
      ASSIGN_OR_RETURN(logits, t_.Forward(n == 1 ? batch.input : batch.input.repeat({n, 1}), *group_plan));
    } else {
      const at::Tensor& x = round.saved.at(g.start);  // [b, s, d]
      ASSIGN_OR_RETURN(logits, t_.ForwardFrom(n == 1 ? x : x.repeat({n, 1, 1}), g.start, *group_plan));
    }
    round.reducer->Add(logits, batch, reference, g.begin);
    PassDone();
    return absl::OkStatus();
  }

  // A variant is finished, reported and (by the server) stored as soon as its group's pass over
  // the last window batch is done: its reducer rows and collectors are complete then, whatever
  // the round's later groups do, so a crash loses no finished group.
  absl::Status FinishGroup(Round& round, const Group& g) {
    const double round_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - round.start).count();
    for (int64_t i = g.begin; i < g.end; ++i) {
      VariantState& s = round.states[i];
      const spec::Experiment& v = variants_[s.index];
      result::Experiment out;
      out.baseline = baseline_;
      out.baseline_from_cache = from_cache_;
      absl::StatusOr<result::Pass> pass;
      if (s.edits_weights && s.collectors.ReadsWeights()) {
        // Weight-reading measurements (super-weight values, norm gammas) see this variant's edits;
        // restored bit for bit before the round's next group runs.
        WeightEditSession edits(&t_);
        RETURN_IF_ERROR(internal::ApplyWeightEdits(v.interventions, edits));
        pass = internal::FinishPass(s.collectors, t_, prepared_.protocol, prepared_.tokens, *round.reducer, i);
        RETURN_IF_ERROR(edits.Restore());
      } else {
        pass = internal::FinishPass(s.collectors, t_, prepared_.protocol, prepared_.tokens, *round.reducer, i);
      }
      if (!pass.ok()) return pass.status();
      out.intervened = *std::move(pass);
      if (prepared_.needs_kl) {
        out.has_kl_divergence = true;
        out.kl_divergence =
            round.reducer->kl_sum()[i].item<double>() / static_cast<double>(prepared_.protocol.n_tokens);
      }
      out.run = internal::RunInfoOf(model_, v.spec_sha256);
      // The passes the variant took part in (its group's, and the baseline passes of its round,
      // shared with the round's other variants), and its share of the round's time so far.
      out.run.forward_passes = n_batches() + round.baseline_passes;
      out.run.seconds = round_seconds / static_cast<double>(round.states.size());

      result::SweepVariant& row = parent_result_.sweep.variants[s.index];
      row.name = v.variant_name;
      if (out.intervened.has_perplexity && out.baseline.has_perplexity) {
        row.has_perplexity = true;
        row.perplexity = out.intervened.perplexity.ppl;
        row.perplexity_delta_pct =
            100.0 * (out.intervened.perplexity.ppl - out.baseline.perplexity.ppl) / out.baseline.perplexity.ppl;
      }
      row.has_kl_divergence = out.has_kl_divergence;
      row.kl_divergence = out.kl_divergence;
      controls_.on_variant(s.index, std::move(out));
    }
    return absl::OkStatus();
  }

  const model::Model& model_;
  const model::ModelConfig& c_;
  const model::Transformer& t_;
  const spec::Experiment& parent_;
  const std::vector<spec::Experiment>& variants_;
  const SweepControls& controls_;
  Prepared prepared_;
  const std::vector<model::WindowBatch> batches_;
  const SweepGroups plan_;
  const std::vector<int64_t> run_groups_;
  const std::vector<std::vector<int64_t>> rounds_;
  const std::vector<model::SiteId> sites_;
  std::vector<int32_t> token_ids_;
  std::vector<bool> observes_pattern_;
  bool needs_means_ = false;
  bool from_cache_ = false;
  bool baseline_done_ = false;
  result::Pass baseline_;
  internal::Means means_;
  int64_t passes_ = 0, planned_ = 0;
  result::Experiment parent_result_;
};

}  // namespace

absl::StatusOr<result::Experiment> RunSweep(const model::Model& model, const spec::Experiment& parent,
                                            const std::vector<spec::Experiment>& variants,
                                            const std::filesystem::path& data_dir, const SweepControls& controls,
                                            const RunLimits& limits) {
  if (!controls.on_variant) return absl::InvalidArgumentError("RunSweep needs an on_variant callback");
  ASSIGN_OR_RETURN(Prepared prepared, PrepareSweep(model, parent, variants, data_dir, limits));
  ASSIGN_OR_RETURN(std::vector<model::WindowBatch> batches,
                   model::MakeWindowBatches(model.transformer(), prepared.ids, prepared.options, model.bos_id()));
  SweepGroups plan = GroupSweep(model.config(), parent, variants, limits);
  std::vector<int64_t> run_groups = controls.only_groups;
  if (run_groups.empty()) {
    for (size_t g = 0; g < plan.groups.size(); ++g) run_groups.push_back(static_cast<int64_t>(g));
  }
  for (int64_t g : run_groups) {
    if (g < 0 || g >= static_cast<int64_t>(plan.groups.size())) {
      return absl::InvalidArgumentError(
          absl::StrCat("sweep: group ", g, " out of range: the sweep has ", plan.groups.size(), " groups"));
    }
  }
  SweepRun run(model, parent, variants, controls, std::move(prepared), std::move(batches), std::move(plan),
               std::move(run_groups), limits.max_round_variants);
  return run.Run();
}

}  // namespace lesion::experiments
