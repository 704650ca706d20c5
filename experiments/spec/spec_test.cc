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
