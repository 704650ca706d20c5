#include "model/model_config.h"

#include <gtest/gtest.h>

#include <cmath>

#include "common/testing/status_matchers.h"

namespace lesion::model {
namespace {

using ::lesion::matchers::StatusIs;

TEST(ModelConfig, ParsesLlamaWithGqaAndLlama3Scaling) {
  auto c = ParseModelConfig(R"({"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 2,
      "hidden_size": 64, "intermediate_size": 96, "num_attention_heads": 4, "num_key_value_heads": 1,
      "vocab_size": 100, "rope_theta": 500000.0, "tie_word_embeddings": true,
      "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                       "high_freq_factor": 4.0, "original_max_position_embeddings": 32}})",
                            "config.json");
  ASSERT_OK(c);
  EXPECT_EQ(c->family, Family::kLlama);
  EXPECT_EQ(c->head_dim, 16);
  EXPECT_EQ(c->n_kv_heads, 1);
  ASSERT_TRUE(c->rope.has_value());
  EXPECT_EQ(c->rope->scaling, RopeScaling::kLlama3);
  EXPECT_EQ(c->rope->theta, 500000.0);
  EXPECT_EQ(c->rope->original_max_position_embeddings, 32);
  EXPECT_TRUE(c->tied_embeddings);
}

TEST(ModelConfig, ReadsTransformers5RopeParameters) {
  auto c = ParseModelConfig(R"({"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 1,
      "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "vocab_size": 10,
      "rope_parameters": {"rope_theta": 1234.0, "rope_type": "default"}})",
                            "config.json");
  ASSERT_OK(c);
  EXPECT_EQ(c->rope->theta, 1234.0);
  EXPECT_EQ(c->rope->scaling, RopeScaling::kNone);
}

TEST(ModelConfig, Gpt2Defaults) {
  auto c = ParseModelConfig(R"({"architectures": ["GPT2LMHeadModel"], "n_layer": 12, "n_embd": 768,
      "n_head": 12, "vocab_size": 50257, "n_positions": 1024})",
                            "config.json");
  ASSERT_OK(c);
  EXPECT_EQ(c->d_ffn, 3072);
  EXPECT_TRUE(c->tied_embeddings);
  EXPECT_EQ(c->norm, NormKind::kLayerNorm);
  EXPECT_EQ(c->activation, Activation::kGeluTanh);
  // GPT-2 small has 124,439,808 parameters (tied head).
  EXPECT_EQ(c->n_params(), 124439808);
}

TEST(ModelConfig, MistralWindowsEveryLayerQwen2OnlyWhenEnabled) {
  auto m = ParseModelConfig(R"({"architectures": ["MistralForCausalLM"], "num_hidden_layers": 2,
      "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "vocab_size": 10,
      "sliding_window": 8})",
                            "config.json");
  ASSERT_OK(m);
  EXPECT_EQ(m->sliding_window[1], 8);
  EXPECT_TRUE(m->Attends(0, 9, 2));
  EXPECT_FALSE(m->Attends(0, 9, 1));
  EXPECT_FALSE(m->Attends(0, 1, 2));
  auto q = ParseModelConfig(R"({"architectures": ["Qwen2ForCausalLM"], "num_hidden_layers": 2,
      "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "vocab_size": 10,
      "sliding_window": 8, "use_sliding_window": false})",
                            "config.json");
  ASSERT_OK(q);
  EXPECT_FALSE(q->sliding_window[0].has_value());
  EXPECT_TRUE(q->qkv_bias);
  EXPECT_FALSE(q->o_bias);
}

TEST(ModelConfig, RejectsBadInputWithTheField) {
  struct Case {
    const char* json;
    const char* needle;
  } cases[] = {
      {"not json", "not valid JSON"},
      {"[1, 2]", "JSON object"},
      {R"({"architectures": ["BertModel"]})", "BertModel"},
      {R"({"n_layer": 2})", "architectures"},
      {R"({"architectures": ["GPT2LMHeadModel"], "n_layer": "two"})", "n_layer"},
      {R"({"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 2, "hidden_size": 64,
           "intermediate_size": 9, "num_attention_heads": 4, "num_key_value_heads": 3,
           "vocab_size": 9})",
       "num_key_value_heads"},
      {R"({"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 2, "hidden_size": 64,
           "intermediate_size": 9, "num_attention_heads": 4, "vocab_size": 9,
           "rope_scaling": {"type": "yarn", "factor": 4}})",
       "yarn"},
      {R"({"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 0, "hidden_size": 64,
           "intermediate_size": 9, "num_attention_heads": 4, "vocab_size": 9})",
       "num_hidden_layers"},
  };
  for (const Case& c : cases) {
    auto parsed = ParseModelConfig(c.json, "dir/config.json");
    ASSERT_FALSE(parsed.ok()) << c.json;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << c.json;
    EXPECT_NE(parsed.status().message().find(c.needle), std::string::npos) << parsed.status();
    EXPECT_NE(parsed.status().message().find("dir/config.json"), std::string::npos);
  }
}

std::string LlamaConfig(const std::string& overrides) {
  return R"({"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 2, "hidden_size": 64,
             "intermediate_size": 96, "num_attention_heads": 4, "vocab_size": 100)" +
         overrides + "}";
}

// Regression: "num_hidden_layers": 2147483647 made parsing abort with std::bad_alloc (and 100M
// layers allocated 1.7 GB before failing): every size is bounded before anything is allocated.
TEST(ModelConfig, AbsurdSizesAreInvalidArgumentNamingFieldValueAndLimit) {
  struct Case {
    std::string json;
    const char* field;
    const char* value;
    const char* limit;
  } cases[] = {
      {LlamaConfig(R"(, "num_hidden_layers": 2147483647)"), "num_hidden_layers", "2147483647", "1024"},
      {LlamaConfig(R"(, "num_hidden_layers": 100000000, "sliding_window": 4)"), "num_hidden_layers", "100000000",
       "1024"},
      {LlamaConfig(R"(, "num_hidden_layers": 1025)"), "num_hidden_layers", "1025", "1024"},
      {LlamaConfig(R"(, "hidden_size": 131072, "head_dim": 16)"), "hidden_size", "131072", "65536"},
      {LlamaConfig(R"(, "num_attention_heads": 2048, "num_key_value_heads": 1, "head_dim": 16)"), "num_attention_heads",
       "2048", "1024"},
      {LlamaConfig(R"(, "head_dim": 32768)"), "head_dim", "32768", "16384"},
      {LlamaConfig(R"(, "intermediate_size": 9223372036854775807)"), "intermediate_size", "9223372036854775807",
       "1048576"},
      {LlamaConfig(R"(, "vocab_size": 4194305)"), "vocab_size", "4194305", "4194304"},
      {LlamaConfig(R"(, "max_position_embeddings": 16777217)"), "max_position_embeddings", "16777217", "16777216"},
      {LlamaConfig(R"(, "max_position_embeddings": 0)"), "max_position_embeddings", "0", "16777216"},
      {LlamaConfig(R"(, "rope_scaling": {"rope_type": "llama3", "factor": 8.0,
                       "original_max_position_embeddings": 9223372036854775807})"),
       "original_max_position_embeddings", "9223372036854775807", "16777216"},
      {R"({"architectures": ["GPT2LMHeadModel"], "n_layer": 2147483647, "n_embd": 64, "n_head": 4,
           "vocab_size": 100, "n_positions": 64})",
       "n_layer", "2147483647", "1024"},
      {R"({"architectures": ["GPT2LMHeadModel"], "n_layer": 2, "n_embd": 64, "n_head": 4,
           "vocab_size": 100, "n_positions": 1000000000})",
       "n_positions", "1000000000", "16777216"},
      {R"({"architectures": ["GPT2LMHeadModel"], "n_layer": 2, "n_embd": 64, "n_head": 4, "n_inner": 2000000,
           "vocab_size": 100, "n_positions": 64})",
       "n_inner", "2000000", "1048576"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<ModelConfig> parsed = ParseModelConfig(c.json, "dir/config.json");
    ASSERT_FALSE(parsed.ok()) << c.json;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << c.json;
    const std::string message(parsed.status().message());
    for (const char* needle : {"dir/config.json", c.field, c.value, c.limit}) {
      EXPECT_NE(message.find(needle), std::string::npos) << "no " << needle << " in: " << message;
    }
  }
}

TEST(ModelConfig, SizesAtTheLimitsParse) {
  auto c = ParseModelConfig(LlamaConfig(R"(, "num_hidden_layers": 1024, "vocab_size": 4194304,
                                           "max_position_embeddings": 16777216, "sliding_window": 8)"),
                            "config.json");
  ASSERT_OK(c);
  EXPECT_EQ(c->n_layers, kMaxLayers);
  EXPECT_EQ(c->sliding_window.size(), 1024u);
}

TEST(ModelConfig, CheckModelConfigBoundsOnABuiltConfig) {
  absl::StatusOr<ModelConfig> parsed = ParseModelConfig(LlamaConfig(""), "config.json");
  ASSERT_OK(parsed);
  const ModelConfig good = *parsed;
  EXPECT_OK(CheckModelConfigBounds(good, "model.gguf"));
  struct Case {
    int64_t ModelConfig::*field;
    int64_t value;
    const char* name;
  } cases[] = {
      {&ModelConfig::n_layers, kMaxLayers + 1, "num_hidden_layers"},
      {&ModelConfig::n_layers, 0, "num_hidden_layers"},
      {&ModelConfig::d_model, -1, "hidden_size"},
      {&ModelConfig::n_heads, kMaxHeads + 1, "num_attention_heads"},
      {&ModelConfig::n_kv_heads, 0, "num_key_value_heads"},
      {&ModelConfig::head_dim, kMaxHeadDim + 1, "head_dim"},
      {&ModelConfig::d_ffn, kMaxDFfn + 1, "intermediate_size"},
      {&ModelConfig::vocab_size, kMaxVocab + 1, "vocab_size"},
      {&ModelConfig::max_position_embeddings, kMaxPositions + 1, "max_position_embeddings"},
  };
  for (const Case& c : cases) {
    ModelConfig bad = good;
    bad.*c.field = c.value;
    bad.sliding_window.clear();
    const absl::Status status = CheckModelConfigBounds(bad, "model.gguf");
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.name << " " << c.value;
    EXPECT_NE(status.message().find(c.name), std::string::npos) << status;
    EXPECT_NE(status.message().find("model.gguf"), std::string::npos) << status;
  }
  ModelConfig uneven = good;
  uneven.n_kv_heads = 3;
  EXPECT_EQ(CheckModelConfigBounds(uneven, "model.gguf").code(), absl::StatusCode::kInvalidArgument);
  ModelConfig windows = good;
  windows.sliding_window.resize(1);
  EXPECT_EQ(CheckModelConfigBounds(windows, "model.gguf").code(), absl::StatusCode::kInvalidArgument);
}

TEST(ModelConfig, MissingFileIsNotFound) {
  auto c = LoadModelConfig("/nonexistent/model");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c, StatusIs(absl::StatusCode::kNotFound));
}

// The configs of published checkpoints: their parameter counts are what transformers reports.
TEST(ModelConfig, PythiaIsParallelWithAQuarterOfEachHeadRotating) {
  auto c = ParseModelConfig(R"({"architectures": ["GPTNeoXForCausalLM"], "hidden_size": 512,
      "num_hidden_layers": 6, "num_attention_heads": 8, "intermediate_size": 2048, "vocab_size": 50304,
      "max_position_embeddings": 2048, "rotary_pct": 0.25, "rotary_emb_base": 10000,
      "use_parallel_residual": true, "tie_word_embeddings": false, "hidden_act": "gelu", "layer_norm_eps": 1e-5})",
                            "pythia-70m/config.json");
  ASSERT_OK(c);
  EXPECT_EQ(c->family, Family::kGptNeox);
  EXPECT_EQ(c->block_layout, BlockLayout::kParallel);
  EXPECT_EQ(c->rotary_dim, 16);  // 0.25 of head_dim 64
  EXPECT_EQ(c->norm, NormKind::kLayerNorm);
  EXPECT_EQ(c->activation, Activation::kGelu);
  EXPECT_EQ(c->n_params(), 70426624);
}

TEST(ModelConfig, OptHasLearnedPositionsOffsetByTwo) {
  auto c = ParseModelConfig(R"({"architectures": ["OPTForCausalLM"], "hidden_size": 768, "num_hidden_layers": 12,
      "num_attention_heads": 12, "ffn_dim": 3072, "vocab_size": 50272, "max_position_embeddings": 2048,
      "do_layer_norm_before": true, "word_embed_proj_dim": 768, "activation_function": "relu"})",
                            "opt-125m/config.json");
  ASSERT_OK(c);
  EXPECT_EQ(c->family, Family::kOpt);
  EXPECT_TRUE(c->learned_positions);
  EXPECT_EQ(c->position_offset, 2);
  EXPECT_TRUE(c->tied_embeddings);
  EXPECT_EQ(c->n_params(), 125239296);
}

TEST(ModelConfig, PostNormOptIsRefusedByName) {
  auto c = ParseModelConfig(R"({"architectures": ["OPTForCausalLM"], "hidden_size": 1024, "num_hidden_layers": 24,
      "num_attention_heads": 16, "ffn_dim": 4096, "vocab_size": 50272, "do_layer_norm_before": false,
      "word_embed_proj_dim": 512})",
                            "opt-350m/config.json");
  EXPECT_THAT(c, StatusIs(absl::StatusCode::kInvalidArgument, testing::HasSubstr("do_layer_norm_before")));
}

TEST(ModelConfig, Phi2SharesItsNormAndBiasesItsHead) {
  auto c = ParseModelConfig(R"({"architectures": ["PhiForCausalLM"], "hidden_size": 2560, "num_hidden_layers": 32,
      "num_attention_heads": 32, "intermediate_size": 10240, "vocab_size": 51200, "partial_rotary_factor": 0.4,
      "hidden_act": "gelu_new", "tie_word_embeddings": false, "qk_layernorm": false})",
                            "phi-2/config.json");
  ASSERT_OK(c);
  EXPECT_EQ(c->block_layout, BlockLayout::kParallelSharedNorm);
  EXPECT_EQ(c->rotary_dim, 32);  // 0.4 of head_dim 80
  EXPECT_TRUE(c->lm_head_bias);
  EXPECT_EQ(c->n_params(), 2779683840);
}

TEST(ModelConfig, PartialRotaryIsReadFromTransformers5RopeParameters) {
  auto c = ParseModelConfig(R"({"architectures": ["PhiForCausalLM"], "hidden_size": 64, "num_hidden_layers": 1,
      "num_attention_heads": 4, "intermediate_size": 96, "vocab_size": 10,
      "rope_parameters": {"rope_type": "default", "rope_theta": 500.0, "partial_rotary_factor": 0.75}})",
                            "config.json");
  ASSERT_OK(c);
  EXPECT_EQ(c->rotary_dim, 12);
  EXPECT_EQ(c->rope->theta, 500.0);
}

TEST(ModelConfig, OddRotaryDimsAreRefused) {
  auto c = ParseModelConfig(R"({"architectures": ["GPTNeoXForCausalLM"], "hidden_size": 40, "num_hidden_layers": 1,
      "num_attention_heads": 4, "intermediate_size": 96, "vocab_size": 10, "rotary_pct": 0.3})",
                            "config.json");
  EXPECT_THAT(c, StatusIs(absl::StatusCode::kInvalidArgument, testing::HasSubstr("rotary_pct")));
}

TEST(ModelConfig, Qwen3HasPerHeadQkNorm) {
  auto c = ParseModelConfig(R"({"architectures": ["Qwen3ForCausalLM"], "hidden_size": 1024, "num_hidden_layers": 28,
      "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 3072,
      "vocab_size": 151936, "tie_word_embeddings": true, "rope_theta": 1000000, "use_sliding_window": false,
      "sliding_window": null, "max_window_layers": 28})",
                            "qwen3-0.6b/config.json");
  ASSERT_OK(c);
  EXPECT_EQ(c->family, Family::kQwen3);
  EXPECT_EQ(c->qk_norm, QkNorm::kPerHead);
  EXPECT_FALSE(c->sliding_window[0].has_value());
  EXPECT_EQ(c->n_params(), 596049920);
}

TEST(ModelConfig, Gemma2SoftCapsScalesAndAlternatesWindows) {
  auto c = ParseModelConfig(R"({"architectures": ["Gemma2ForCausalLM"], "hidden_size": 2304, "num_hidden_layers": 26,
      "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "intermediate_size": 9216,
      "vocab_size": 256000, "query_pre_attn_scalar": 256, "sliding_window": 4096,
      "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "hidden_act": "gelu_pytorch_tanh",
      "hidden_activation": "gelu_pytorch_tanh"})",
                            "gemma-2-2b/config.json");
  ASSERT_OK(c);
  EXPECT_TRUE(c->norm_adds_one);
  EXPECT_TRUE(c->post_norms);
  EXPECT_EQ(c->attn_softcap, 50.0);
  EXPECT_EQ(c->final_softcap, 30.0);
  EXPECT_DOUBLE_EQ(*c->attention_scale, 1.0 / 16);
  EXPECT_DOUBLE_EQ(c->embed_scale, std::sqrt(2304.0));
  EXPECT_EQ(c->sliding_window[0], 4096);  // layer 0 slides, layer 1 does not, ...
  EXPECT_FALSE(c->sliding_window[1].has_value());
  EXPECT_TRUE(c->tied_embeddings);
  EXPECT_EQ(c->n_params(), 2614341888);
}

TEST(ModelConfig, Gemma3LocalLayersHaveTheirOwnRotaryInBothSpellings) {
  // transformers 4: rope_theta + rope_scaling for the global layers, rope_local_base_freq, a pattern.
  auto v4 = ParseModelConfig(R"({"architectures": ["Gemma3ForCausalLM"], "hidden_size": 64, "num_hidden_layers": 6,
      "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 16, "intermediate_size": 96,
      "vocab_size": 10, "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "sliding_window": 512,
      "rope_scaling": {"rope_type": "linear", "factor": 8.0}, "sliding_window_pattern": 6})",
                             "config.json");
  // transformers 5: rope_parameters per layer type, layer_types.
  auto v5 = ParseModelConfig(R"({"architectures": ["Gemma3ForCausalLM"], "hidden_size": 64, "num_hidden_layers": 6,
      "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 16, "intermediate_size": 96,
      "vocab_size": 10, "sliding_window": 512,
      "layer_types": ["sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention",
                      "sliding_attention", "full_attention"],
      "rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
                          "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}})",
                             "config.json");
  for (const auto* c : {&v4, &v5}) {
    ASSERT_OK(*c);
    const ModelConfig& m = **c;
    EXPECT_EQ(m.qk_norm, QkNorm::kPerHead);
    EXPECT_EQ(m.rope->theta, 1e6);
    EXPECT_EQ(m.rope->scaling, RopeScaling::kLinear);
    EXPECT_EQ(m.rope->factor, 8.0);
    ASSERT_TRUE(m.sliding_rope.has_value());
    EXPECT_EQ(m.sliding_rope->theta, 1e4);
    EXPECT_EQ(m.sliding_rope->scaling, RopeScaling::kNone);
    for (int l = 0; l < 5; ++l) EXPECT_EQ(m.sliding_window[l], 512) << l;
    EXPECT_FALSE(m.sliding_window[5].has_value());
  }
}

TEST(ModelConfig, Olmo2HasPostNormsAndFullWidthQkNormButNoPreNorms) {
  auto c = ParseModelConfig(R"({"architectures": ["Olmo2ForCausalLM"], "hidden_size": 64, "num_hidden_layers": 2,
      "num_attention_heads": 4, "intermediate_size": 96, "vocab_size": 10, "rms_norm_eps": 1e-6})",
                            "config.json");
  ASSERT_OK(c);
  EXPECT_FALSE(c->pre_norms);
  EXPECT_TRUE(c->post_norms);
  EXPECT_EQ(c->qk_norm, QkNorm::kFullWidth);
}

TEST(ModelConfig, Phi3LongRopeIsRefusedByName) {
  auto c = ParseModelConfig(R"({"architectures": ["Phi3ForCausalLM"], "hidden_size": 64, "num_hidden_layers": 2,
      "num_attention_heads": 4, "intermediate_size": 96, "vocab_size": 10,
      "rope_scaling": {"type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}})",
                            "config.json");
  EXPECT_THAT(c, StatusIs(absl::StatusCode::kInvalidArgument, testing::HasSubstr("longrope")));
}

}  // namespace
}  // namespace lesion::model
