#include "experiments/spec/spec.h"

#include <gtest/gtest.h>

namespace lesion::experiments::spec {
namespace {

TEST(ExperimentSpec, ParsesEveryKind) {
  auto e = ParseExperimentJson(R"({
    "name": "prune", "tags": ["sinks"],
    "dataset": {"named": "tinystories-sample"},
    "eval": {"seq_len": 128, "batch_size": 4, "add_bos": true},
    "interventions": [
      {"head_ablation": {"layer": 2, "heads": [1, 3], "mode": "SCALE", "factor": 0.5}},
      {"weight_edit": {"layer": 1, "module": "mlp.down", "row": 3, "col": 7, "op": "ZERO"}},
      {"norm_channel_reset": {"layer": 0, "norm": "mlp", "channels": [4], "mode": "GAMMA_MEAN"}},
      {"attention_bias": {"layer": 0, "key": [0.5, 1], "value": [1, 2]}},
      {"activation_edit": {"site": "blocks.1.resid_post", "positions": [0], "dims": [5], "op": "MEAN"}}
    ],
    "measurements": [{"perplexity": {}}, {"activation_stats": {"sites": ["blocks.*.resid_post"]}},
                     {"attention_sink": {}}]
  })");
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->named_dataset, "tinystories-sample");
  EXPECT_EQ(e->seq_len, 128);
  EXPECT_TRUE(e->add_bos);
  ASSERT_EQ(e->interventions.size(), 5u);
  const auto& h = std::get<HeadAblation>(e->interventions[0]);
  EXPECT_EQ(h.mode, HeadAblation::Mode::kScale);
  EXPECT_EQ(h.heads, (std::vector<int64_t>{1, 3}));
  EXPECT_EQ(std::get<NormChannelReset>(e->interventions[2]).mode, NormChannelReset::Mode::kGammaMean);
  EXPECT_EQ(std::get<ActivationEdit>(e->interventions[4]).op, ActivationEdit::Op::kMean);
  EXPECT_EQ(std::get<ActivationStats>(e->measurements[1]).top_k, 3);
  EXPECT_NE(e->canonical_json.find("\"head_ablation\""), std::string::npos);
}

TEST(ExperimentSpec, DetectorDefaultsAreThePapers) {
  auto e = ParseExperimentJson(R"({
    "dataset": {"text": "hi"},
    "measurements": [{"massive_activations": {}}, {"super_weights": {}}, {"norm_outliers": {}},
                     {"attention_outliers": {"layers": [1]}}, {"capture": {"sites": ["logits"]}},
                     {"token_probabilities": {"tokens": [" the"]}}, {"kl_divergence": {}}]
  })");
  ASSERT_TRUE(e.ok()) << e.status();
  const auto& m = std::get<MassiveActivations>(e->measurements[0]);
  EXPECT_EQ(m.sites, (std::vector<std::string>{"blocks.*.resid_post"}));
  EXPECT_EQ(m.min_magnitude, 100);
  EXPECT_EQ(m.min_ratio, 1000);
  EXPECT_EQ(std::get<SuperWeights>(e->measurements[1]).min_ratio, 100);
  EXPECT_EQ(std::get<NormOutliers>(e->measurements[2]).min_z, 8);
  EXPECT_EQ(std::get<AttentionOutliers>(e->measurements[3]).min_mass, 0.3);
  EXPECT_EQ(std::get<Capture>(e->measurements[4]).max_windows, 1);
  EXPECT_EQ(std::get<TokenProbabilities>(e->measurements[5]).tokens, (std::vector<std::string>{" the"}));
  EXPECT_EQ(e->spec_sha256.size(), 64u);
}

TEST(ExperimentSpec, ProtoAndJsonFormsAgree) {
  const char* json = R"({"dataset": {"named": "tinystories-sample"}, "measurements": [{"perplexity": {}}]})";
  auto from_json = ParseExperimentJson(json);
  ASSERT_TRUE(from_json.ok());
  EXPECT_EQ(ParseExperimentProto("\xff\xff garbage").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  // The baseline key ignores what only the intervened pass depends on, and nothing else.
  auto with_edit = ParseExperimentJson(R"({"name": "x", "tags": ["t"], "dataset": {"named": "tinystories-sample"},
      "interventions": [{"head_ablation": {"layer": 0, "heads": [1]}}], "measurements": [{"perplexity": {}}]})");
  ASSERT_TRUE(with_edit.ok());
  EXPECT_EQ(with_edit->baseline_sha256, from_json->baseline_sha256);
  EXPECT_NE(with_edit->spec_sha256, from_json->spec_sha256);
  auto other_eval = ParseExperimentJson(
      R"({"dataset": {"named": "tinystories-sample"}, "eval": {"seq_len": 64}, "measurements": [{"perplexity": {}}]})");
  ASSERT_TRUE(other_eval.ok());
  EXPECT_NE(other_eval->baseline_sha256, from_json->baseline_sha256);
}

TEST(ExperimentSpec, ErrorsNameTheField) {
  struct Case {
    const char* json;
    const char* needle;
  } cases[] = {
      {"{", "not valid"},
      {R"({"measurements": [{"perplexity": {}}]})", "dataset"},
      {R"({"dataset": {"text": "hi"}})", "measurements"},
      {R"({"dataset": {"text": "hi"}, "measurements": [{"perplexity": {}}], "bogus": 1})", "bogus"},
      {R"({"dataset": {"text": "hi"}, "measurements": [{"perplexity": {}}],
           "interventions": [{"head_ablation": {"layer": 1}}]})",
       "interventions[0].head_ablation"},
      {R"({"dataset": {"text": "hi"}, "measurements": [{"perplexity": {}}],
           "interventions": [{"weight_edit": {"op": "EXPLODE"}}]})",
       "EXPLODE"},
      {R"({"dataset": {"text": "hi"}, "eval": {"seq_len": -4}, "measurements": [{"perplexity": {}}]})",
       "eval"},
      {R"({"dataset": {"text": "hi"}, "measurements": [{"massive_activations": {"min_ratio": -1}}]})",
       "measurements[0].massive_activations: min_ratio"},
      {R"({"dataset": {"text": "hi"}, "measurements": [{"attention_outliers": {"min_mass": 2}}]})",
       "min_mass is a probability"},
      {R"({"dataset": {"text": "hi"}, "measurements": [{"token_probabilities": {}}]})",
       "give token_ids or tokens"},
      {R"({"dataset": {"text": "hi"}, "measurements": [{"capture": {"sites": ["logits"], "positions": [-1]}}]})",
       "position -1"},
      {R"({"dataset": {"text": "hi"}, "measurements": [{"perplexity": {}}, {"perplexity": {}}]})",
       "asked for twice"},
  };
  for (const Case& c : cases) {
    auto e = ParseExperimentJson(c.json);
    ASSERT_FALSE(e.ok()) << c.json;
    EXPECT_EQ(e.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(e.status().message().find(c.needle), std::string::npos) << e.status();
  }
}

}  // namespace
}  // namespace lesion::experiments::spec
