// The sweep runner's contract: every variant's result equals running that variant alone with
// RunExperiment (every metric, capture and detector report), whatever shares its forward passes;
// the weights come back bit-identical; cancellation, cached baselines and validation behave like a
// single run's.
#include "experiments/sweep.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/testing/status_matchers.h"
#include "experiments/weight_edits.h"
#include "model/torch_util.h"

namespace lesion::experiments {
namespace {

using ::lesion::matchers::StatusIs;

const std::filesystem::path kRoot = LESION_SOURCE_DIR;

// LESION_TEST_DEVICE=cuda runs these on a GPU (the GPU host's job does).
std::unique_ptr<model::Model> LoadFixture(const std::string& name) {
  const std::filesystem::path dir =
      name == "stories260K" ? kRoot / "models/stories260K" : kRoot / "tests/fixtures/models" / name;
  model::LoadOptions options;
  if (const char* device = std::getenv("LESION_TEST_DEVICE")) {
    auto parsed = model::ParseDevice(device);
    EXPECT_OK(parsed);
    if (parsed.ok()) options.device = *parsed;
  }
  auto model = model::Model::Load(dir, options);
  EXPECT_OK(model);
  return *std::move(model);
}

// 150 token ids: 9 windows of 16 and a short last one, so batches of 3 windows end in a tail batch
// of another length.
std::string TokenIds(int64_t vocab) {
  std::vector<int64_t> ids;
  for (int64_t i = 0; i < 150; ++i) ids.push_back((i * 7919 + 13) % vocab);
  return absl::StrJoin(ids, ",");
}

std::string Floats(int n, double scale) {
  std::vector<std::string> v;
  for (int i = 0; i < n; ++i) v.push_back(absl::StrCat(scale * std::sin(1.7 * i + scale)));
  return absl::StrJoin(v, ",");
}

spec::Experiment Parse(const std::string& json) {
  auto e = spec::ParseExperimentJson(json);
  EXPECT_OK(e) << e.status() << "\n" << json;
  return *e;
}

std::vector<spec::Experiment> Expand(const model::Model& model, const spec::Experiment& parent) {
  const model::ModelConfig& c = model.config();
  auto variants = spec::ExpandSweep(parent, {c.n_layers, c.n_heads, c.d_model}, 1000);
  EXPECT_OK(variants);
  return *variants;
}

// Every number of a pass with a name, for comparing two passes value by value (captures by element).
std::vector<std::pair<std::string, double>> Flatten(const result::Experiment& e) {
  std::vector<std::pair<std::string, double>> out;
  auto add = [&](std::string name, double v) { out.emplace_back(std::move(name), v); };
  for (const auto* pass : {&e.baseline, &e.intervened}) {
    const std::string p = pass == &e.baseline ? "baseline." : "intervened.";
    const result::Pass& r = *pass;
    if (r.has_perplexity) add(p + "perplexity", r.perplexity.ppl);
    for (const auto& t : r.token_probabilities)
      add(absl::StrCat(p, "token_probability:", t.token_id), t.mean_probability);
    for (const auto& s : r.activation_stats) {
      for (size_t k = 0; k < s.mean_top.size(); ++k) add(absl::StrCat(p, "mean_top", k, ":", s.site), s.mean_top[k]);
      for (size_t k = 0; k < s.max_top.size(); ++k) add(absl::StrCat(p, "max_top", k, ":", s.site), s.max_top[k].value);
      add(p + "median:" + s.site, s.median);
      add(p + "mean_abs:" + s.site, s.mean_abs);
    }
    for (size_t k = 0; k < r.attention_sink.scores.size(); ++k)
      add(absl::StrCat(p, "sink", k), r.attention_sink.scores[k]);
    for (const auto& c : r.captures) {
      const float* f = reinterpret_cast<const float*>(c.data.data());
      for (size_t k = 0; k < c.data.size() / 4; ++k) add(absl::StrCat(p, "capture:", c.name, "[", k, "]"), f[k]);
    }
    for (const auto& m : r.massive_activations) {
      add(p + "massive_count:" + m.site, static_cast<double>(m.count));
      for (const auto& a : m.top) {
        add(absl::StrCat(p, "massive:", m.site, ":", a.sequence, ",", a.token, ",", a.dim), a.value);
      }
    }
    for (const auto& w : r.super_weights) {
      add(absl::StrCat(p, "super_weight:", w.layer, ",", w.row, ",", w.col), w.weight);
    }
    for (const auto& n : r.norm_outliers)
      add(absl::StrCat(p, "norm_outlier:", n.norm, n.layer, ",", n.channel), n.gamma);
    for (const auto& a : r.attention_outliers) {
      add(absl::StrCat(p, "attention_outlier:", a.layer, ",", a.head, ",", a.key_position), a.mass);
    }
  }
  if (e.has_kl_divergence) add("kl_divergence", e.kl_divergence);
  return out;
}

// Runs the sweep and each variant alone; every metric, capture and report must agree.
void ExpectSweepEqualsAlone(const model::Model& model, const spec::Experiment& parent, const RunLimits& limits,
                            double tolerance) {
  const std::vector<spec::Experiment> variants = Expand(model, parent);
  const std::string before = model::WeightsFingerprint(model.transformer()).value();
  std::map<int64_t, result::Experiment> got;
  SweepControls controls;
  int64_t last_progress = 0, planned = 0;
  controls.progress = [&](int64_t done, int64_t total) {
    EXPECT_EQ(done, last_progress + 1);
    last_progress = done;
    planned = total;
  };
  controls.on_variant = [&](int64_t i, result::Experiment r) {
    EXPECT_FALSE(got.count(i)) << "variant " << i << " reported twice";
    got[i] = std::move(r);
  };
  auto parent_result = RunSweep(model, parent, variants, kRoot / "data", controls, limits);
  ASSERT_OK(parent_result);
  EXPECT_EQ(last_progress, planned) << "progress ends at the planned number of passes";
  ASSERT_EQ(got.size(), variants.size());
  ASSERT_EQ(parent_result->sweep.variants.size(), variants.size());
  EXPECT_EQ(model::WeightsFingerprint(model.transformer()).value(), before) << "weights changed by the sweep";

  int64_t changed = 0, alone_passes = 0;
  for (size_t i = 0; i < variants.size(); ++i) {
    SCOPED_TRACE(absl::StrCat("variant ", i, " ", variants[i].variant_name));
    auto alone = RunExperiment(model, variants[i], kRoot / "data");
    ASSERT_OK(alone);
    alone_passes += alone->run.forward_passes;
    if (alone->intervened.perplexity.ppl != alone->baseline.perplexity.ppl) ++changed;
    const auto want = Flatten(*alone);
    const auto have = Flatten(got[i]);
    ASSERT_EQ(want.size(), have.size());
    double worst = 0;
    std::string worst_name;
    for (size_t k = 0; k < want.size(); ++k) {
      ASSERT_EQ(want[k].first, have[k].first);
      const double diff = std::abs(want[k].second - have[k].second) / std::max(1.0, std::abs(want[k].second));
      if (!(diff <= worst)) {  // NaN lands here too
        worst = diff;
        worst_name = want[k].first;
      }
    }
    EXPECT_LE(worst, tolerance) << "largest relative difference at " << worst_name << " of " << want.size()
                                << " numbers";
    EXPECT_EQ(got[i].run.spec_sha256, variants[i].spec_sha256);
    const auto& row = parent_result->sweep.variants[i];
    EXPECT_EQ(row.name, variants[i].variant_name);
    EXPECT_NEAR(row.perplexity, alone->intervened.perplexity.ppl, tolerance * alone->intervened.perplexity.ppl);
    if (getenv("LESION_TEST_VERBOSE"))
      std::cerr << variants[i].variant_name << " worst " << worst << " at " << worst_name << "\n";
  }
  EXPECT_GE(changed, static_cast<int64_t>(variants.size()) - 2) << "the variants must change the model";
  EXPECT_LT(parent_result->run.forward_passes, alone_passes) << "the sweep shares passes";
}

// Every kind of intervention, mixed in one sweep: variants with and without attention-bias slots,
// weight edits of every module (one element edited twice), norm resets of every norm and mode,
// activation edits from the embedding to the logits, MEAN modes, and a variant with nothing.
std::string EveryKindOfVariant(int kv_width, bool gated) {
  const std::string bias1 = absl::StrCat(R"({"attention_bias": {"layer": 1, "key": [)", Floats(kv_width, 0.8),
                                         R"(], "value": [)", Floats(kv_width, 1.5), "]}}");
  const std::string bias2 = absl::StrCat(R"({"attention_bias": {"layer": 1, "key": [)", Floats(kv_width, -0.3),
                                         R"(], "value": [)", Floats(kv_width, 0.4), "]}}");
  const std::string bias_last = absl::StrCat(R"({"attention_bias": {"layer": 2, "key": [)", Floats(kv_width, 2.0),
                                             R"(], "value": [)", Floats(kv_width, -1.0), "]}}");
  return absl::StrCat(R"({"variants": {"variants": [
    {"name": "none"},
    {"name": "head0", "interventions": [{"head_ablation": {"layer": 0, "heads": [1]}}]},
    {"name": "head2scale", "interventions": [{"head_ablation": {"layer": 2, "heads": [0, 3], "mode": "SCALE", "factor": 0.5}}]},
    {"name": "head1mean", "interventions": [{"head_ablation": {"layer": 1, "heads": [2], "mode": "MEAN"}}]},
    {"name": "bias1", "interventions": [)",
                      bias1, R"(]},
    {"name": "bias1head", "interventions": [)",
                      bias2, R"(, {"head_ablation": {"layer": 1, "heads": [0]}}]},
    {"name": "q", "interventions": [{"weight_edit": {"layer": 1, "module": "attn.q", "row": 5, "col": 7, "op": "SCALE", "value": 10}}]},
    {"name": "kv", "interventions": [{"weight_edit": {"layer": 0, "module": "attn.k", "row": 3, "col": 2, "op": "SET", "value": 0.7}},
                                     {"weight_edit": {"layer": 0, "module": "attn.v", "row": 1, "col": 60, "op": "ZERO"}}]},
    {"name": "o_twice", "interventions": [{"weight_edit": {"layer": 2, "module": "attn.o", "row": 10, "col": 20, "op": "SCALE", "value": 30}},
                                          {"weight_edit": {"layer": 2, "module": "attn.o", "row": 10, "col": 20, "op": "SCALE", "value": -0.5}}]},
    {"name": "mlp", "interventions": [{"weight_edit": {"layer": 1, "module": "mlp.up", "row": 9, "col": 1, "op": "SET", "value": 1.5}},
                                      {"weight_edit": {"layer": 1, "module": "mlp.down", "row": 30, "col": 6, "op": "ZERO"}}]},)",
                      gated ? R"(
    {"name": "gate", "interventions": [{"weight_edit": {"layer": 0, "module": "mlp.gate", "row": 8, "col": 8, "op": "SCALE", "value": -20}}]},)"
                            : "",
                      R"(
    {"name": "norm_attn", "interventions": [{"norm_channel_reset": {"layer": 1, "norm": "attn", "channels": [3, 40]}}]},
    {"name": "norm_mlp_mean", "interventions": [{"norm_channel_reset": {"layer": 2, "norm": "mlp", "channels": [7], "mode": "GAMMA_MEAN"}}]},
    {"name": "norm_final", "interventions": [{"norm_channel_reset": {"norm": "final", "channels": [0, 63], "mode": "VALUE", "value": 2.0}}]},
    {"name": "embed", "interventions": [{"activation_edit": {"site": "embed", "positions": [0], "dims": [1, 2], "op": "SET", "value": 3.0}}]},
    {"name": "resid_mid", "interventions": [{"activation_edit": {"site": "blocks.1.resid_mid", "dims": [5], "op": "SCALE", "value": 0.5}}]},
    {"name": "mlp_out_mean", "interventions": [{"activation_edit": {"site": "blocks.0.mlp_out", "positions": [0, 1], "op": "MEAN"}}]},
    {"name": "logits", "interventions": [{"activation_edit": {"site": "logits", "dims": [3], "op": "SET", "value": 0}}]},
    {"name": "combo", "interventions": [{"head_ablation": {"layer": 2, "heads": [1]}},
                                        {"weight_edit": {"layer": 1, "module": "mlp.down", "row": 2, "col": 3, "op": "SCALE", "value": 50}},
                                        {"norm_channel_reset": {"layer": 0, "norm": "mlp", "channels": [11]}}, )",
                      bias_last, "]}]}}");
}

spec::Experiment EveryKindSweep(const model::Model& model, const std::string& measurements, int variants_per_pass) {
  const model::ModelConfig& c = model.config();
  return Parse(absl::StrCat(R"({"name": "every-kind", "dataset": {"token_ids": {"ids": [)", TokenIds(c.vocab_size),
                            R"(]}}, "eval": {"seq_len": 16, "batch_size": 3},
      "measurements": )",
                            measurements, R"(, "sweep": {"axes": [)",
                            EveryKindOfVariant(c.n_kv_heads * c.head_dim, c.gated_mlp), R"(], "variants_per_pass": )",
                            variants_per_pass, "}}"));
}

constexpr char kAllMeasurements[] = R"([{"perplexity": {}}, {"kl_divergence": {}},
    {"token_probabilities": {"token_ids": [3, 7]}},
    {"activation_stats": {"sites": ["embed", "blocks.*.resid_post", "blocks.0.attn_in", "final_norm"]}},
    {"attention_sink": {}},
    {"capture": {"sites": ["blocks.0.resid_post", "blocks.2.attn_pattern", "logits"], "positions": [0, 5]}},
    {"massive_activations": {"sites": ["blocks.*.resid_post"], "min_magnitude": 0.5, "min_ratio": 2}},
    {"super_weights": {"min_ratio": 2}}, {"norm_outliers": {"min_z": 2}},
    {"attention_outliers": {"min_mass": 0.1}}])";

TEST(Sweep, EveryMeasurementOfEveryVariantEqualsRunningItAloneOnGqaLlama) {
  auto model = LoadFixture("llama2");
  RunLimits limits;
  limits.max_round_variants = 7;  // three rounds, groups of up to 4
  ExpectSweepEqualsAlone(*model, EveryKindSweep(*model, kAllMeasurements, 4), limits, 1e-5);
}

TEST(Sweep, EveryMeasurementOfEveryVariantEqualsRunningItAloneOnGpt2) {
  // GPT-2: LayerNorm with biases, learned positions, a non-gated MLP, untied-looking Conv1D weights.
  auto model = LoadFixture("gpt2");
  ExpectSweepEqualsAlone(*model, EveryKindSweep(*model, kAllMeasurements, 5), {}, 1e-5);
}

TEST(Sweep, FastAttentionPathWithBatchedCorrectionsEqualsRunningAlone) {
  // Without pattern observers the unbiased layers run through SDPA.
  auto model = LoadFixture("llama2");
  ExpectSweepEqualsAlone(
      *model,
      EveryKindSweep(
          *model,
          R"([{"perplexity": {}}, {"kl_divergence": {}}, {"activation_stats": {"sites": ["blocks.*.mlp_out"]}}])", 18),
      {}, 1e-5);
}

TEST(Sweep, SuperWeightScalesOnThePlantedModel) {
  // The planted super weight (layer 1 mlp.down [37, 91]) at several scales, one variant a pass or
  // all in one: the detector reports the weight as each variant leaves it.
  auto model = LoadFixture("planted");
  for (int per_pass : {1, 8}) {
    SCOPED_TRACE(per_pass);
    const spec::Experiment parent =
        Parse(absl::StrCat(R"({"dataset": {"token_ids": {"ids": [)", TokenIds(model->config().vocab_size),
                           R"(]}}, "eval": {"seq_len": 32, "batch_size": 2, "add_bos": true},
        "measurements": [{"perplexity": {}}, {"super_weights": {}}, {"massive_activations": {}}],
        "sweep": {"axes": [{"weight_values": {"layer": 1, "module": "mlp.down", "row": 37, "col": 91, "op": "SCALE",
                                              "values": [0, 0.5, 1, 2]}}], "variants_per_pass": )",
                           per_pass, "}}"));
    ExpectSweepEqualsAlone(*model, parent, {}, 1e-5);
  }
}

TEST(Sweep, AllSingleHeadAblationsOfStories) {
  // The GPT-2 study's sweep shape on the bundled model, from a named dataset with BOS windows.
  auto model = LoadFixture("stories260K");
  const spec::Experiment parent = Parse(R"({"name": "heads", "dataset": {"named": "tinystories-sample"},
      "eval": {"seq_len": 64, "batch_size": 4, "add_bos": true, "max_windows": 6},
      "measurements": [{"perplexity": {}}, {"attention_sink": {}}],
      "sweep": {"axes": [{"heads": {}}]}})");
  ExpectSweepEqualsAlone(*model, parent, {}, 1e-5);
}

TEST(Sweep, FirstIntervenedLayer) {
  auto model = LoadFixture("llama2");
  const model::ModelConfig& c = model->config();
  auto first = [&](const std::string& interventions) {
    return FirstIntervenedLayer(
        c, Parse(absl::StrCat(R"({"dataset": {"token_ids": {"ids": [1, 2]}}, "measurements": [{"perplexity": {}}],
                                  "interventions": )",
                              interventions, "}"))
               .interventions);
  };
  EXPECT_EQ(first("[]"), 3);
  EXPECT_EQ(
      first(R"([{"head_ablation": {"layer": 2, "heads": [0]}}, {"weight_edit": {"layer": 1, "module": "attn.o"}}])"),
      1);
  EXPECT_EQ(first(R"([{"norm_channel_reset": {"norm": "final", "channels": [1]}}])"), 3);
  EXPECT_EQ(first(R"([{"norm_channel_reset": {"layer": 2, "norm": "mlp", "channels": [1]}}])"), 2);
  EXPECT_EQ(first(R"([{"activation_edit": {"site": "embed"}}])"), -1);
  EXPECT_EQ(first(R"([{"activation_edit": {"site": "blocks.*.mlp_out"}}])"), 0);
  EXPECT_EQ(first(R"([{"activation_edit": {"site": "final_norm"}}])"), 3);
}

spec::Experiment HeadSweep(const model::Model& model, const std::string& measurements) {
  return Parse(absl::StrCat(R"({"dataset": {"token_ids": {"ids": [)", TokenIds(model.config().vocab_size),
                            R"(]}}, "eval": {"seq_len": 16, "batch_size": 3}, "measurements": )", measurements,
                            R"(, "sweep": {"axes": [{"heads": {}}], "variants_per_pass": 3}})"));
}

TEST(Sweep, CancelledBetweenPassesKeepsTheFinishedRoundsAndTheWeights) {
  auto model = LoadFixture("llama2");
  const spec::Experiment parent = HeadSweep(*model, R"([{"perplexity": {}}])");
  const auto variants = Expand(*model, parent);
  const std::string before = model::WeightsFingerprint(model->transformer()).value();
  RunLimits limits;
  limits.max_round_variants = 4;  // three rounds of 4
  int64_t seen = 0, reported = 0;
  SweepControls controls;
  controls.progress = [&](int64_t done, int64_t) { seen = done; };
  controls.cancelled = [&] { return reported >= 4; };
  controls.on_variant = [&](int64_t, result::Experiment) { ++reported; };
  auto r = RunSweep(*model, parent, variants, kRoot / "data", controls, limits);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled) << r.status();
  EXPECT_EQ(reported, 4) << "the first round finished, the second was stopped";
  EXPECT_EQ(model::WeightsFingerprint(model->transformer()).value(), before);
}

// Per-variant durability: a variant is reported once its group's passes are done, not when its
// whole round is (a regression: a 72-variant sweep in one round went from 0 to 72 done at once,
// so a stop mid-round lost every finished pass).
TEST(Sweep, VariantsAreReportedGroupByGroupWithinARound) {
  auto model = LoadFixture("llama2");
  const spec::Experiment parent = HeadSweep(*model, R"([{"perplexity": {}}])");
  const auto variants = Expand(*model, parent);
  std::vector<result::Experiment> whole(variants.size());
  SweepControls controls;
  controls.on_variant = [&](int64_t i, result::Experiment r) { whole[i] = std::move(r); };
  ASSERT_OK(RunSweep(*model, parent, variants, kRoot / "data", controls));

  std::map<int64_t, result::Experiment> early;  // one round (the default limits): stopped after a group
  controls.cancelled = [&] { return !early.empty(); };
  controls.on_variant = [&](int64_t i, result::Experiment r) { early.emplace(i, std::move(r)); };
  auto stopped = RunSweep(*model, parent, variants, kRoot / "data", controls);
  EXPECT_EQ(stopped.status().code(), absl::StatusCode::kCancelled) << stopped.status();
  const SweepGroups groups = GroupSweep(model->config(), parent, variants);
  ASSERT_GT(groups.groups.size(), 1u);
  ASSERT_EQ(early.size(), groups.groups.front().size()) << "the first group, of " << variants.size() << " variants";
  for (int64_t i : groups.groups.front()) EXPECT_TRUE(early.count(i)) << "variant " << i;
  for (const auto& [i, r] : early) {
    EXPECT_EQ(r.intervened.perplexity.mean_nll, whole[i].intervened.perplexity.mean_nll) << "variant " << i;
    EXPECT_EQ(r.baseline.perplexity.mean_nll, whole[i].baseline.perplexity.mean_nll);
  }
}

TEST(Sweep, ACachedBaselineServesEveryVariant) {
  auto model = LoadFixture("llama2");
  const spec::Experiment parent = HeadSweep(*model, R"([{"perplexity": {}}, {"attention_sink": {}}])");
  const auto variants = Expand(*model, parent);
  std::vector<result::Experiment> first(variants.size()), second(variants.size());
  SweepControls controls;
  controls.on_variant = [&](int64_t i, result::Experiment r) { first[i] = std::move(r); };
  auto fresh = RunSweep(*model, parent, variants, kRoot / "data", controls);
  ASSERT_OK(fresh);
  controls.cached_baseline = &fresh->baseline;
  controls.on_variant = [&](int64_t i, result::Experiment r) { second[i] = std::move(r); };
  auto cached = RunSweep(*model, parent, variants, kRoot / "data", controls);
  ASSERT_OK(cached);
  EXPECT_TRUE(cached->baseline_from_cache);
  for (size_t i = 0; i < variants.size(); ++i) {
    EXPECT_TRUE(second[i].baseline_from_cache);
    EXPECT_EQ(second[i].intervened.perplexity.mean_nll, first[i].intervened.perplexity.mean_nll);
    EXPECT_EQ(second[i].intervened.attention_sink.scores, first[i].intervened.attention_sink.scores);
  }
}

TEST(Sweep, ValidationNamesTheVariantAndBoundsTheCaptures) {
  auto model = LoadFixture("llama2");
  const spec::Experiment parent =
      Parse(absl::StrCat(R"({"dataset": {"token_ids": {"ids": [)", TokenIds(model->config().vocab_size),
                         R"(]}}, "measurements": [{"perplexity": {}}],
          "sweep": {"axes": [{"variants": {"variants": [{"name": "fine"},
              {"name": "bad", "interventions": [{"weight_edit": {"layer": 0, "module": "mlp.down", "row": 64}}]}]}}]}})"));
  const auto variants = Expand(*model, parent);
  absl::Status s = ValidateSweep(*model, parent, variants, kRoot / "data");
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_NE(s.message().find("sweep variant 1 (bad)"), std::string::npos) << s;

  // A variant's enums and numbers are checked like a single run's (the parser checks them too,
  // but variants may be built otherwise).
  auto heads = Expand(*model, HeadSweep(*model, R"([{"perplexity": {}}])"));
  std::get<spec::HeadAblation>(heads[2].interventions[0]).mode = static_cast<spec::HeadAblation::Mode>(99);
  s = ValidateSweep(*model, HeadSweep(*model, R"([{"perplexity": {}}])"), heads, kRoot / "data");
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_NE(s.message().find("sweep variant 2 (L0.H2): interventions[0].head_ablation: unknown mode 99"),
            std::string::npos)
      << s;

  RunLimits small_passes;
  small_passes.max_pass_tokens = 100;  // 3 variants x 3 windows x 16 tokens = 144
  s = ValidateSweep(*model, HeadSweep(*model, R"([{"perplexity": {}}])"),
                    Expand(*model, HeadSweep(*model, R"([{"perplexity": {}}])")), kRoot / "data", small_passes);
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_NE(s.message().find("= 144 tokens in one pass, more than the limit of 100"), std::string::npos) << s;

  const spec::Experiment captures = HeadSweep(*model, R"([{"capture": {"sites": ["logits"], "max_windows": 10}}])");
  RunLimits limits;
  limits.max_capture_bytes = 1 << 20;
  s = ValidateSweep(*model, captures, Expand(*model, captures), kRoot / "data", limits);
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_NE(s.message().find("12 variants"), std::string::npos) << s;
}

TEST(Sweep, GroupsHoldOneStartAndShardsBalanceTheWork) {
  auto model = LoadFixture("stories260K");  // 5 layers of 8 heads
  const spec::Experiment parent = Parse(R"({"dataset": {"named": "tinystories-sample"}, "eval": {"seq_len": 64},
      "measurements": [{"perplexity": {}}], "sweep": {"axes": [{"heads": {}}], "variants_per_pass": 3}})");
  const auto variants = Expand(*model, parent);
  const SweepGroups groups = GroupSweep(model->config(), parent, variants);
  EXPECT_EQ(groups.variants_per_pass, 3);
  ASSERT_EQ(groups.groups.size(), 15u) << "8 heads a layer in groups of at most 3: 3 + 3 + 2, five times";
  std::vector<int64_t> seen;
  for (size_t g = 0; g < groups.groups.size(); ++g) {
    EXPECT_EQ(groups.starts[g], static_cast<int64_t>(g / 3));
    EXPECT_GE(groups.groups[g].size(), 2u);
    for (int64_t v : groups.groups[g]) {
      EXPECT_EQ(FirstIntervenedLayer(model->config(), variants[v].interventions), groups.starts[g]);
      seen.push_back(v);
    }
  }
  std::sort(seen.begin(), seen.end());
  for (int64_t i = 0; i < 40; ++i) EXPECT_EQ(seen[i], i) << "every variant in exactly one group";

  const auto shards = ShardGroups(groups, model->config().n_layers, 2);
  ASSERT_EQ(shards.size(), 2u);
  auto work = [&](const std::vector<int64_t>& shard) {
    int64_t w = 0;
    for (int64_t g : shard) w += static_cast<int64_t>(groups.groups[g].size()) * (5 - groups.starts[g] + 2);
    return w;
  };
  EXPECT_EQ(shards[0].size() + shards[1].size(), groups.groups.size());
  EXPECT_LE(std::abs(work(shards[0]) - work(shards[1])), 7 * 3) << "within one group's work";
}

TEST(Sweep, ShardsRunOnTheirOwnGiveBitIdenticalResults) {
  // What the engine does with a model on two devices: each runs a shard of the groups. Every
  // variant's numbers must be exactly those of the whole sweep on one device.
  auto model = LoadFixture("llama2");
  const spec::Experiment parent = EveryKindSweep(*model, R"([{"perplexity": {}}, {"kl_divergence": {}},
      {"activation_stats": {"sites": ["blocks.*.resid_post"]}}, {"attention_sink": {}}])",
                                                 3);
  const auto variants = Expand(*model, parent);
  std::vector<result::Experiment> whole(variants.size()), sharded(variants.size());
  SweepControls controls;
  controls.on_variant = [&](int64_t i, result::Experiment r) { whole[i] = std::move(r); };
  ASSERT_OK(RunSweep(*model, parent, variants, kRoot / "data", controls));
  const auto shards = ShardGroups(GroupSweep(model->config(), parent, variants), model->config().n_layers, 2);
  int64_t reported = 0;
  for (const auto& shard : shards) {
    controls.only_groups = shard;
    controls.on_variant = [&](int64_t i, result::Experiment r) {
      sharded[i] = std::move(r);
      ++reported;
    };
    ASSERT_OK(RunSweep(*model, parent, variants, kRoot / "data", controls));
  }
  EXPECT_EQ(reported, static_cast<int64_t>(variants.size()));
  for (size_t i = 0; i < variants.size(); ++i) {
    SCOPED_TRACE(variants[i].variant_name);
    const auto a = Flatten(whole[i]), b = Flatten(sharded[i]);
    ASSERT_EQ(a.size(), b.size());
    for (size_t k = 0; k < a.size(); ++k) EXPECT_EQ(a[k].second, b[k].second) << a[k].first;
  }
}

}  // namespace
}  // namespace lesion::experiments
