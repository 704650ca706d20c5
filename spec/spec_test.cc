#include "spec/spec.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <variant>
#include <vector>

#include "common/testing/status_matchers.h"
#include "proto/lesion/v1/experiment.pb.h"

namespace lesion::spec {
namespace {

using ::lesion::matchers::StatusIs;

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
  ASSERT_OK(e);
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
                     {"token_probabilities": {"tokens": [" the"]}}, {"kl_divergence": {}},
                     {"token_outputs": {"offset": 100}}]
  })");
  ASSERT_OK(e);
  const auto& m = std::get<MassiveActivations>(e->measurements[0]);
  EXPECT_EQ(m.sites, (std::vector<std::string>{"blocks.*.resid_post"}));
  EXPECT_EQ(m.min_magnitude, 100);
  EXPECT_EQ(m.min_ratio, 1000);
  EXPECT_EQ(std::get<SuperWeights>(e->measurements[1]).min_ratio, 100);
  EXPECT_EQ(std::get<NormOutliers>(e->measurements[2]).min_z, 8);
  EXPECT_EQ(std::get<AttentionOutliers>(e->measurements[3]).min_mass, 0.3);
  EXPECT_EQ(std::get<Capture>(e->measurements[4]).max_windows, 1);
  EXPECT_EQ(std::get<TokenProbabilities>(e->measurements[5]).tokens, (std::vector<std::string>{" the"}));
  const auto& outputs = std::get<TokenOutputs>(e->measurements[7]);
  EXPECT_EQ(outputs.top_k, 5);
  EXPECT_EQ(outputs.max_tokens, 4096);
  EXPECT_EQ(outputs.offset, 100);
  EXPECT_EQ(e->spec_sha256.size(), 64u);
}

TEST(ExperimentSpec, ProtoAndJsonFormsAgree) {
  const char* json = R"({"dataset": {"named": "tinystories-sample"}, "measurements": [{"perplexity": {}}]})";
  auto from_json = ParseExperimentJson(json);
  ASSERT_OK(from_json);
  EXPECT_EQ(ParseExperimentProto("\xff\xff garbage").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  // The baseline key ignores what only the intervened pass depends on, and nothing else.
  auto with_edit = ParseExperimentJson(R"({"name": "x", "tags": ["t"], "dataset": {"named": "tinystories-sample"},
      "interventions": [{"head_ablation": {"layer": 0, "heads": [1]}}], "measurements": [{"perplexity": {}}]})");
  ASSERT_OK(with_edit);
  EXPECT_EQ(with_edit->baseline_sha256, from_json->baseline_sha256);
  EXPECT_NE(with_edit->spec_sha256, from_json->spec_sha256);
  auto other_eval = ParseExperimentJson(
      R"({"dataset": {"named": "tinystories-sample"}, "eval": {"seq_len": 64}, "measurements": [{"perplexity": {}}]})");
  ASSERT_OK(other_eval);
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
      {R"({"dataset": {"text": "hi"}, "eval": {"seq_len": -4}, "measurements": [{"perplexity": {}}]})", "eval"},
      {R"({"dataset": {"text": "hi"}, "measurements": [{"massive_activations": {"min_ratio": -1}}]})",
       "measurements[0].massive_activations: min_ratio"},
      {R"({"dataset": {"text": "hi"}, "measurements": [{"attention_outliers": {"min_mass": 2}}]})",
       "min_mass is a probability"},
      {R"({"dataset": {"text": "hi"}, "measurements": [{"token_probabilities": {}}]})", "give token_ids or tokens"},
      {R"({"dataset": {"text": "hi"}, "measurements": [{"capture": {"sites": ["logits"], "positions": [-1]}}]})",
       "position -1"},
      {R"({"dataset": {"text": "hi"}, "measurements": [{"perplexity": {}}, {"perplexity": {}}]})", "asked for twice"},
  };
  for (const Case& c : cases) {
    auto e = ParseExperimentJson(c.json);
    ASSERT_FALSE(e.ok()) << c.json;
    EXPECT_THAT(e, StatusIs(absl::StatusCode::kInvalidArgument));
    EXPECT_NE(e.status().message().find(c.needle), std::string::npos) << e.status();
  }
}

Experiment ParseOrDie(const std::string& json) {
  auto e = ParseExperimentJson(json);
  EXPECT_OK(e);
  return *e;
}

std::string SweepSpec(const std::string& axes, const std::string& extra = "") {
  return R"({"name": "s", "tags": ["t"], "dataset": {"named": "tinystories-sample"}, "measurements": [{"perplexity": {}}],)" +
         extra + R"( "sweep": {"axes": )" + axes + "}}";
}

TEST(Sweep, ExpandsAGridLastAxisFastestWithTheSpecsOwnInterventionsFirst) {
  const Experiment parent = ParseOrDie(SweepSpec(
      R"([{"heads": {"layers": [0, 2], "heads": [1]}},
          {"weight_values": {"layer": 1, "module": "mlp.down", "row": 3, "col": 4, "op": "SCALE", "values": [0, 0.5]}}])",
      R"( "interventions": [{"norm_channel_reset": {"norm": "final", "channels": [0]}}],)"));
  EXPECT_TRUE(parent.has_sweep);
  auto variants = ExpandSweep(parent, {3, 4, 16}, 100);
  ASSERT_OK(variants);
  ASSERT_EQ(variants->size(), 4u);
  const char* names[] = {"L0.H1+x0", "L0.H1+x0.5", "L2.H1+x0", "L2.H1+x0.5"};
  for (size_t i = 0; i < 4; ++i) {
    const Experiment& v = (*variants)[i];
    EXPECT_EQ(v.variant_name, names[i]);
    EXPECT_EQ(v.name, std::string("s/") + names[i]);
    EXPECT_EQ(v.tags, std::vector<std::string>{"t"});
    EXPECT_FALSE(v.has_sweep);
    ASSERT_EQ(v.interventions.size(), 3u);
    EXPECT_TRUE(std::holds_alternative<NormChannelReset>(v.interventions[0])) << "the spec's own first";
    EXPECT_EQ(std::get<HeadAblation>(v.interventions[1]).layer, i < 2 ? 0 : 2);
    EXPECT_EQ(std::get<WeightEdit>(v.interventions[2]).value, i % 2 == 0 ? 0.0 : 0.5);
    EXPECT_EQ(v.baseline_sha256, parent.baseline_sha256) << "one baseline for the sweep";
    // A variant hashes exactly as the same spec submitted alone.
    auto alone = ParseExperimentJson(v.canonical_json);
    ASSERT_OK(alone);
    EXPECT_EQ(alone->spec_sha256, v.spec_sha256);
    EXPECT_FALSE(alone->has_sweep);
  }
  EXPECT_NE((*variants)[0].spec_sha256, (*variants)[1].spec_sha256);
}

// Regression (found by fuzz/spec_json_fuzzer): the JSON printer writes -0.0 as "-0", which the
// parser reads back as +0.0, so a spec holding a negative zero had a canonical JSON that hashed
// differently once re-read, and a sweep variant rerun alone from its spec got another hash.
TEST(ExperimentSpec, NegativeZerosAreCanonicalizedToZero) {
  const std::string with_signs = SweepSpec(
      R"([{"weight_values": {"layer": 1, "module": "mlp.down", "row": 3, "col": 4, "op": "SET", "values": [-0.0, 0.5]}}])",
      R"( "interventions": [{"weight_edit": {"module": "mlp.up", "op": "SET", "value": -0.0}},
                            {"attention_bias": {"key": [-0.0], "value": [1]}}],)");
  const std::string without = SweepSpec(
      R"([{"weight_values": {"layer": 1, "module": "mlp.down", "row": 3, "col": 4, "op": "SET", "values": [0, 0.5]}}])",
      R"( "interventions": [{"weight_edit": {"module": "mlp.up", "op": "SET", "value": 0}},
                            {"attention_bias": {"key": [0], "value": [1]}}],)");
  const Experiment e = ParseOrDie(with_signs);
  EXPECT_EQ(e.canonical_json, ParseOrDie(without).canonical_json);
  EXPECT_FALSE(std::signbit(std::get<WeightEdit>(e.interventions[0]).value));
  EXPECT_FALSE(std::signbit(std::get<AttentionBias>(e.interventions[1]).key[0]));
  auto again = ParseExperimentJson(e.canonical_json);
  ASSERT_OK(again);
  EXPECT_EQ(again->spec_sha256, e.spec_sha256);

  // The binary form, as lesiond receives it, canonicalizes the same way.
  lesion::v1::ExperimentSpec proto;
  proto.mutable_dataset()->set_text("hi");
  proto.add_measurements()->mutable_perplexity();
  proto.add_interventions()->mutable_weight_edit()->set_value(-0.0);
  auto from_proto = ParseExperimentProto(proto.SerializeAsString());
  ASSERT_OK(from_proto);
  auto reread = ParseExperimentJson(from_proto->canonical_json);
  ASSERT_OK(reread);
  EXPECT_EQ(reread->spec_sha256, from_proto->spec_sha256) << from_proto->canonical_json;

  auto variants = ExpandSweep(e, {3, 4, 16}, 100);
  ASSERT_OK(variants);
  for (const Experiment& v : *variants) {
    auto alone = ParseExperimentJson(v.canonical_json);
    ASSERT_OK(alone);
    EXPECT_EQ(alone->spec_sha256, v.spec_sha256) << v.canonical_json;
  }
}

TEST(Sweep, EmptyListsMeanEveryLayerHeadAndChannel) {
  auto heads = ExpandSweep(ParseOrDie(SweepSpec(R"([{"heads": {}}])")), {3, 4, 16}, 100);
  ASSERT_OK(heads);
  ASSERT_EQ(heads->size(), 12u);
  EXPECT_EQ(heads->back().variant_name, "L2.H3");
  auto channels =
      ExpandSweep(ParseOrDie(SweepSpec(R"([{"norm_channels": {"norm": "mlp", "layers": [1], "mode": "GAMMA_MEAN"}}])")),
                  {3, 4, 16}, 100);
  ASSERT_OK(channels);
  ASSERT_EQ(channels->size(), 16u);
  EXPECT_EQ((*channels)[5].variant_name, "mlp.L1.C5");
  auto final_norm =
      ExpandSweep(ParseOrDie(SweepSpec(R"([{"norm_channels": {"norm": "final", "channels": [2]}}])")), {3, 4, 16}, 100);
  ASSERT_OK(final_norm);
  EXPECT_EQ(final_norm->front().variant_name, "final.C2");
  auto listed =
      ExpandSweep(ParseOrDie(SweepSpec(R"([{"variants": {"variants": [{"name": "none"}, {}]}}])")), {3, 4, 16}, 100);
  ASSERT_OK(listed);
  EXPECT_EQ((*listed)[1].variant_name, "v1");
  EXPECT_TRUE((*listed)[0].interventions.empty());
}

TEST(Sweep, BadAxesAreInvalidArgumentNamingTheAxis) {
  auto error = [](const std::string& axes, int64_t max = 100) {
    absl::StatusOr<Experiment> parent = ParseExperimentJson(SweepSpec(axes));
    if (!parent.ok()) return parent.status();
    return ExpandSweep(*parent, {3, 4, 16}, max).status();
  };
  absl::Status s = error(R"([{"heads": {"layers": [3]}}])");
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_NE(s.message().find("sweep.axes[0].heads: layer 3 out of range: the model has 3 layers"), std::string::npos)
      << s;
  s = error(R"([{"heads": {}}, {"norm_channels": {"norm": "mlp", "channels": [16]}}])");
  EXPECT_NE(s.message().find("sweep.axes[1].norm_channels: channel 16 out of range"), std::string::npos) << s;
  EXPECT_NE(error(R"([{"norm_channels": {"norm": "ln"}}])").message().find("unknown norm"), std::string::npos);
  EXPECT_NE(error(R"([{"norm_channels": {"norm": "final", "layers": [1]}}])").message().find("no layers"),
            std::string::npos);
  EXPECT_NE(error(R"([{"variants": {"variants": [{"name": "a"}, {"name": "a"}]}}])").message().find("named \"a\""),
            std::string::npos);
  EXPECT_NE(error(R"([{"variants": {}}])").message().find("has no variants"), std::string::npos);
  EXPECT_NE(error(R"([{"weight_values": {"module": "mlp.up", "op": "SCALE"}}])").message().find("values"),
            std::string::npos);
  EXPECT_NE(
      error(R"([{"weight_values": {"module": "mlp.up", "op": "ZERO", "values": [1]}}])").message().find("no values"),
      std::string::npos);
  EXPECT_NE(error(R"([{"heads": {}}, {"heads": {}}])", 100)
                .message()
                .find("12 x 12 = 144 variants, more than the limit of 100"),
            std::string::npos);
  auto big = ParseExperimentJson(SweepSpec(R"([{"heads": {}}])"));
  ASSERT_OK(big);
  absl::Status bytes = ExpandSweep(*big, {3, 4, 16}, 100, /*max_spec_bytes=*/1000).status();
  EXPECT_THAT(bytes, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_NE(bytes.message().find("use a named dataset"), std::string::npos) << bytes;
  // A listed variant carries its own interventions, not its siblings': 40 patches of 1000 numbers
  // each take about 40 x 10 kB, not 40 x the 400 kB of the whole list.
  std::string variants;
  for (int v = 0; v < 40; ++v) {
    std::string vector;
    for (int i = 0; i < 1000; ++i) absl::StrAppend(&vector, i == 0 ? "" : ",", 0.123456 + v + i);
    absl::StrAppend(&variants, v == 0 ? "" : ",", R"({"interventions": [{"activation_edit": {"site": "embed", )",
                    R"("positions": [1], "op": "SET_VECTORS", "vector": [)", vector, "]}}]}");
  }
  auto patches = ParseExperimentJson(SweepSpec(absl::StrCat(R"([{"variants": {"variants": [)", variants, "]}}]")));
  ASSERT_OK(patches);
  EXPECT_GT(patches->canonical_json.size(), 300000u);
  auto expanded = ExpandSweep(*patches, {3, 4, 16}, 100, /*max_spec_bytes=*/int64_t{2} << 20);
  ASSERT_OK(expanded);
  EXPECT_EQ(expanded->size(), 40u);
  EXPECT_EQ(ParseExperimentJson(SweepSpec("[]")).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseExperimentJson(SweepSpec("[{}]")).status().code(), absl::StatusCode::kInvalidArgument);
  auto no_sweep = ParseExperimentJson(R"({"dataset": {"named": "x"}, "measurements": [{"perplexity": {}}]})");
  ASSERT_OK(no_sweep);
  EXPECT_EQ(ExpandSweep(*no_sweep, {3, 4, 16}, 10).status().code(), absl::StatusCode::kFailedPrecondition);
}

// A spec with `interventions` (a JSON list) and `extra` members.
std::string WithInterventions(const std::string& interventions, const std::string& extra = "") {
  return R"({"dataset": {"named": "tinystories-sample"}, "measurements": [{"perplexity": {}}],)" + extra +
         R"( "interventions": )" + interventions + "}";
}

// Checks the code and that the message contains every needle.
void ExpectInvalid(const absl::Status& status, std::vector<std::string> needles, const std::string& context) {
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << context << ": " << status;
  for (const std::string& needle : needles) {
    EXPECT_NE(status.message().find(needle), std::string::npos) << context << ": no " << needle << " in " << status;
  }
}

// Regression: proto3 enums are open, so an ablation mode or edit op of 99 (over gRPC, or as a JSON
// number) parsed and ran as if it were the default.
TEST(ExperimentSpec, UnknownEnumNumbersAreInvalidArgument) {
  const struct {
    const char* interventions;
    std::vector<std::string> needles;
  } json_cases[] = {
      {R"([{"head_ablation": {"layer": 0, "heads": [1], "mode": 99}}])",
       {"interventions[0].head_ablation: unknown mode 99 (known: ZERO, MEAN, SCALE)"}},
      {R"([{"weight_edit": {"module": "mlp.up", "op": -1}}])", {"interventions[0].weight_edit: unknown op -1"}},
      {R"([{"head_ablation": {"heads": [1]}}, {"norm_channel_reset": {"norm": "mlp", "channels": [0], "mode": 3}}])",
       {"interventions[1].norm_channel_reset: unknown mode 3 (known: ONE, GAMMA_MEAN, VALUE)"}},
      {R"([{"activation_edit": {"site": "embed", "op": 99}}])",
       {"interventions[0].activation_edit: unknown op 99 (known: ZERO, SET, SCALE, MEAN, ADD, PROJECT_OUT, "
        "SET_VECTORS)"}},
      {R"([{"activation_edit": {"site": "embed", "op": "ADD", "value": 2}}])",
       {"interventions[0].activation_edit: op ADD needs a vector"}},
      {R"([{"activation_edit": {"site": "embed", "op": "SCALE", "value": 2, "vector": [1, 2]}}])",
       {"interventions[0].activation_edit: op SCALE takes no vector (only ADD, PROJECT_OUT and SET_VECTORS do)"}},
      {R"([{"activation_edit": {"site": "embed", "op": "SET_VECTORS", "vector": [1, 1e30]}}])",
       {"interventions[0].activation_edit: vector[1]"}},
  };
  for (const auto& c : json_cases) {
    ExpectInvalid(ParseExperimentJson(WithInterventions(c.interventions)).status(), c.needles, c.interventions);
  }
  // The binary form, as lesiond receives it.
  lesion::v1::ExperimentSpec proto;
  proto.mutable_dataset()->set_named("tinystories-sample");
  proto.add_measurements()->mutable_perplexity();
  auto* edit = proto.add_interventions()->mutable_activation_edit();
  edit->set_site("embed");
  edit->set_op(static_cast<lesion::v1::ActivationEdit::Op>(99));
  ExpectInvalid(ParseExperimentProto(proto.SerializeAsString()).status(), {"unknown op 99"}, "binary");
  edit->set_op(lesion::v1::ActivationEdit::MEAN);
  EXPECT_OK(ParseExperimentProto(proto.SerializeAsString()));
  // Sweep axes, and the interventions of listed variants, are checked when the spec is parsed.
  const struct {
    const char* axes;
    const char* needle;
  } sweep_cases[] = {
      {R"([{"heads": {"mode": 7}}])", "sweep.axes[0].heads: unknown mode 7"},
      {R"([{"norm_channels": {"norm": "mlp", "mode": 7}}])", "sweep.axes[0].norm_channels: unknown mode 7"},
      {R"([{"weight_values": {"module": "mlp.up", "op": 7, "values": [1]}}])",
       "sweep.axes[0].weight_values: unknown op 7"},
      {R"([{"variants": {"variants": [{}, {"interventions": [{"weight_edit": {"op": 7}}]}]}}])",
       "sweep.axes[0].variants.variants[1].interventions[0].weight_edit: unknown op 7"},
  };
  for (const auto& c : sweep_cases) {
    ExpectInvalid(ParseExperimentJson(SweepSpec(c.axes)).status(), {c.needle}, c.axes);
  }
}

// Regression: SET 1e308 failed at run time with INTERNAL (it does not fit float32), and a factor of
// 1e308 or an attention-bias value of 3e38 ran to DONE with a NaN perplexity.
TEST(ExperimentSpec, NumbersThatOverflowTheForwardPassAreInvalidArgument) {
  const struct {
    const char* interventions;
    const char* needle;
  } cases[] = {
      {R"([{"head_ablation": {"heads": [1], "mode": "SCALE", "factor": 1e308}}])",
       "interventions[0].head_ablation: factor 1e+308 is larger in magnitude than the limit of 1e+15"},
      {R"([{"head_ablation": {"heads": [1], "mode": "SCALE", "factor": "NaN"}}])", "factor nan is not a finite number"},
      {R"([{"weight_edit": {"module": "mlp.up", "op": "SET", "value": 1e308}}])", "weight_edit: value 1e+308"},
      {R"([{"weight_edit": {"module": "mlp.up", "op": "SCALE", "value": "-Infinity"}}])",
       "weight_edit: value -inf is not a finite number"},
      {R"([{"norm_channel_reset": {"norm": "final", "channels": [0], "mode": "VALUE", "value": -1e16}}])",
       "norm_channel_reset: value -1e+16"},
      {R"([{"activation_edit": {"site": "embed", "op": "SET", "value": 1e308}}])", "activation_edit: value 1e+308"},
      {R"([{"attention_bias": {"key": [0, 1, 3e38], "value": [0, 0, 0]}}])", "attention_bias: key[2] 3e+38"},
      {R"([{"attention_bias": {"key": [0], "value": ["NaN"]}}])", "attention_bias: value[0] nan is not a finite"},
  };
  for (const auto& c : cases) {
    ExpectInvalid(ParseExperimentJson(WithInterventions(c.interventions)).status(), {c.needle}, c.interventions);
  }
  ExpectInvalid(ParseExperimentJson(SweepSpec(R"([{"heads": {"mode": "SCALE", "factor": 1e300}}])")).status(),
                {"sweep.axes[0].heads: factor 1e+300"}, "heads axis");
  ExpectInvalid(ParseExperimentJson(SweepSpec(R"([{"weight_values": {"module": "mlp.up", "op": "SET",
                                                    "values": [1, 2e16]}}])"))
                    .status(),
                {"sweep.axes[0].weight_values: values[1] 2e+16"}, "values axis");
  // Large but harmless numbers pass.
  EXPECT_TRUE(
      ParseExperimentJson(WithInterventions(R"([{"head_ablation": {"heads": [1], "mode": "SCALE", "factor": -1e15}},
      {"weight_edit": {"module": "mlp.up", "op": "SET", "value": 1e4}},
      {"attention_bias": {"key": [1e15], "value": [-1e15]}}])"))
          .ok());
}

// Regression: a 10 MB name and 100,000 tags were stored.
TEST(ExperimentSpec, NameAndTagsAreBounded) {
  const std::string huge(10 << 20, 'n');
  absl::Status s = ParseExperimentJson(WithInterventions("[]", R"("name": ")" + huge + R"(",)")).status();
  ExpectInvalid(s, {"name: \"nnnn", "(10485760 bytes) is longer than the limit of 256 bytes"}, "huge name");
  EXPECT_LT(s.message().size(), 300u) << "quotes at most 80 characters of the name";
  EXPECT_OK(ParseExperimentJson(WithInterventions("[]", R"("name": ")" + std::string(256, 'n') + R"(",)")));
  ExpectInvalid(ParseExperimentJson(WithInterventions("[]", R"("name": ")" + std::string(257, 'n') + R"(",)")).status(),
                {"(257 bytes) is longer than the limit of 256 bytes"}, "257-byte name");

  auto tags = [](int n, size_t length) {
    std::string out = R"("tags": [)";
    for (int i = 0; i < n; ++i) out += (i == 0 ? "\"" : ", \"") + std::string(length, 't') + "\"";
    return out + "],";
  };
  EXPECT_OK(ParseExperimentJson(WithInterventions("[]", tags(64, 128))));
  ExpectInvalid(ParseExperimentJson(WithInterventions("[]", tags(65, 1))).status(),
                {"tags: 65 tags, more than the limit of 64"}, "65 tags");
  ExpectInvalid(ParseExperimentJson(WithInterventions("[]", tags(100000, 1))).status(),
                {"tags: 100000 tags, more than the limit of 64"}, "100000 tags");
  ExpectInvalid(ParseExperimentJson(WithInterventions("[]", tags(2, 129))).status(),
                {"tags[0]: \"ttt", "(129 bytes) is longer than the limit of 128 bytes"}, "129-byte tag");

  // A sweep's variants are named "<sweep>/<variant>": bounded like any name.
  auto parent = ParseExperimentJson(R"({"name": ")" + std::string(252, 's') +
                                    R"(", "dataset": {"named": "x"}, "measurements": [{"perplexity": {}}],
                                         "sweep": {"axes": [{"heads": {}}]}})");
  ASSERT_OK(parent);
  ExpectInvalid(ExpandSweep(*parent, {3, 4, 16}, 100).status(),
                {"sweep variant 0 (L0.H0): name:", "is longer than the limit of 256 bytes"}, "variant name");
}

TEST(ExperimentSpec, PromptSetsTakeTextAndIdsAndRefuseWhatTheyCannotRun) {
  auto parse = [](const std::string& prompts, const std::string& eval = "{}") {
    return ParseExperimentJson(R"({"dataset": {"prompts": {"prompts": )" + prompts + R"(}}, "eval": )" + eval +
                               R"(, "measurements": [{"perplexity": {}}]})");
  };
  auto e = parse(R"([{"text": "The capital of France is"}, {"token_ids": {"ids": [1, 2, 3]}}])");
  ASSERT_OK(e);
  ASSERT_EQ(e->prompts.size(), 2u);
  EXPECT_EQ(e->prompts[0].text, "The capital of France is");
  EXPECT_EQ(e->prompts[1].token_ids, (std::vector<int32_t>{1, 2, 3}));
  EXPECT_TRUE(e->text.empty() && e->token_ids.empty() && e->named_dataset.empty());
  ExpectInvalid(parse("[]").status(), {"dataset.prompts: give at least one prompt"}, "no prompts");
  ExpectInvalid(parse(R"([{"text": "a"}, {}])").status(), {"dataset.prompts.prompts[1]: give text or token_ids"},
                "empty prompt");
  ExpectInvalid(parse(R"([{"text": ""}])").status(), {"prompts[0]: text is empty"}, "empty text");
  ExpectInvalid(parse(R"([{"token_ids": {"ids": []}}])").status(), {"prompts[0]: token_ids is empty"}, "no ids");
  ExpectInvalid(parse(R"([{"text": "a b"}])", R"({"stride": 2})").status(),
                {"eval.stride: a prompt set is one window per prompt: leave stride 0"}, "stride");
  std::string many = "[";
  for (int i = 0; i <= kMaxPrompts; ++i) many += i == 0 ? R"({"text": "a"})" : R"(, {"text": "a"})";
  ExpectInvalid(parse(many + "]").status(), {"16385 prompts, more than the limit of 16384"}, "too many prompts");
}

}  // namespace
}  // namespace lesion::spec
