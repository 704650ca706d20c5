#include "model/model_config.h"

#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace lesion::model {
namespace {

using Json = nlohmann::json;

// Reads config fields by name with type checks; never throws (nlohmann accessors are only called
// after the type is checked).
class ConfigReader {
 public:
  ConfigReader(const Json& json, absl::string_view source) : json_(json), source_(std::string(source)) {}

  absl::Status Error(absl::string_view field, absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": field \"", field, "\" ", what));
  }

  bool Has(absl::string_view key) const {
    auto it = json_.find(std::string(key));
    return it != json_.end() && !it->is_null();
  }

  absl::StatusOr<int64_t> Int(absl::string_view key) const {
    auto it = json_.find(std::string(key));
    if (it == json_.end() || it->is_null()) return Error(key, "is missing");
    if (!it->is_number_integer()) return Error(key, absl::StrCat("must be an integer, got ", it->dump()));
    return it->get<int64_t>();
  }
  absl::StatusOr<int64_t> Int(absl::string_view key, int64_t fallback) const {
    return Has(key) ? Int(key) : absl::StatusOr<int64_t>(fallback);
  }
  absl::StatusOr<int64_t> PositiveInt(absl::string_view key) const {
    ASSIGN_OR_RETURN(int64_t v, Int(key));
    if (v <= 0) return Error(key, absl::StrCat("must be positive, got ", v));
    return v;
  }
  absl::StatusOr<double> Number(absl::string_view key, double fallback) const {
    auto it = json_.find(std::string(key));
    if (it == json_.end() || it->is_null()) return fallback;
    if (!it->is_number()) return Error(key, absl::StrCat("must be a number, got ", it->dump()));
    double v = it->get<double>();
    if (!std::isfinite(v)) return Error(key, "must be finite");
    return v;
  }
  absl::StatusOr<bool> Bool(absl::string_view key, bool fallback) const {
    auto it = json_.find(std::string(key));
    if (it == json_.end() || it->is_null()) return fallback;
    if (!it->is_boolean()) return Error(key, absl::StrCat("must be true or false, got ", it->dump()));
    return it->get<bool>();
  }
  absl::StatusOr<std::string> String(absl::string_view key, std::string fallback) const {
    auto it = json_.find(std::string(key));
    if (it == json_.end() || it->is_null()) return fallback;
    if (!it->is_string()) return Error(key, absl::StrCat("must be a string, got ", it->dump()));
    return it->get<std::string>();
  }
  // bos/eos ids may be an int or a list of ints (LLaMA 3 instruct); the first is taken.
  absl::StatusOr<std::optional<int32_t>> TokenId(absl::string_view key) const {
    auto it = json_.find(std::string(key));
    if (it == json_.end() || it->is_null()) return std::optional<int32_t>();
    const Json* v = &*it;
    if (v->is_array()) {
      if (v->empty()) return std::optional<int32_t>();
      v = &(*v)[0];
    }
    if (!v->is_number_integer()) return Error(key, absl::StrCat("must be a token id, got ", it->dump()));
    return std::optional<int32_t>(v->get<int32_t>());
  }

 private:
  const Json& json_;
  std::string source_;  // owned: readers for nested objects get a composed name
};

absl::StatusOr<Activation> ParseActivation(const ConfigReader& r, absl::string_view key, absl::string_view name) {
  if (name == "gelu_new" || name == "gelu_pytorch_tanh" || name == "gelu_fast") {
    return Activation::kGeluTanh;
  }
  if (name == "gelu") return Activation::kGelu;
  if (name == "silu" || name == "swish") return Activation::kSilu;
  if (name == "relu") return Activation::kRelu;
  return r.Error(key, absl::StrCat("names an unsupported activation \"", name,
                                   "\" (supported: gelu_new, gelu_pytorch_tanh, gelu, silu, relu)"));
}

// One rotary settings object: {rope_type | type, rope_theta, factor, ...}. Starts from `rope` (the
// theta read elsewhere, say) and returns it with the object's settings.
absl::StatusOr<RopeConfig> ParseRopeObject(const Json& object, RopeConfig rope, absl::string_view field,
                                           absl::string_view source) {
  if (!object.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": field \"", field, "\" must be an object"));
  }
  ConfigReader s(object, absl::StrCat(source, " ", field));
  ASSIGN_OR_RETURN(rope.theta, s.Number("rope_theta", rope.theta));
  ASSIGN_OR_RETURN(std::string type, s.String("rope_type", ""));
  if (type.empty()) {
    ASSIGN_OR_RETURN(type, s.String("type", "default"));
  }
  if (type == "default") {
    rope.scaling = RopeScaling::kNone;
  } else if (type == "linear") {
    rope.scaling = RopeScaling::kLinear;
    ASSIGN_OR_RETURN(rope.factor, s.Number("factor", 1.0));
  } else if (type == "llama3") {
    rope.scaling = RopeScaling::kLlama3;
    ASSIGN_OR_RETURN(rope.factor, s.Number("factor", 8.0));
    ASSIGN_OR_RETURN(rope.low_freq_factor, s.Number("low_freq_factor", 1.0));
    ASSIGN_OR_RETURN(rope.high_freq_factor, s.Number("high_freq_factor", 4.0));
    ASSIGN_OR_RETURN(rope.original_max_position_embeddings, s.Int("original_max_position_embeddings", 8192));
    if (rope.high_freq_factor <= rope.low_freq_factor) {
      return s.Error("high_freq_factor", "must be larger than low_freq_factor");
    }
  } else {
    return s.Error("rope_type", absl::StrCat("\"", type, "\" is not supported (supported: default, linear, llama3)"));
  }
  if (rope.theta <= 0) return s.Error("rope_theta", "must be positive");
  if (rope.factor <= 0) return s.Error("factor", "must be positive");
  return rope;
}

// The config's rotary settings object: transformers 5's `rope_parameters`, else transformers 4's
// `rope_scaling`; null when neither is there.
const Json* RopeSettings(const Json& json, std::string* field) {
  for (const char* name : {"rope_parameters", "rope_scaling"}) {
    if (auto it = json.find(name); it != json.end() && !it->is_null()) {
      *field = name;
      return &*it;
    }
  }
  return nullptr;
}

// Rotary settings: transformers 5 writes `rope_parameters` {rope_theta, rope_type, ...};
// transformers 4 writes `rope_theta` and an optional `rope_scaling` {type|rope_type, ...}.
// `theta_key` is the family's transformers-4 name of the base (GPT-NeoX: rotary_emb_base).
absl::StatusOr<RopeConfig> ParseRope(const Json& json, const ConfigReader& r, absl::string_view source,
                                     double default_theta = 10000.0, absl::string_view theta_key = "rope_theta") {
  RopeConfig rope;
  ASSIGN_OR_RETURN(rope.theta, r.Number(theta_key, default_theta));
  std::string field;
  const Json* settings = RopeSettings(json, &field);
  if (settings == nullptr) {
    if (rope.theta <= 0) return r.Error(theta_key, "must be positive");
    return rope;
  }
  return ParseRopeObject(*settings, rope, field, source);
}

// The fraction of each head that rotates: top-level `partial_rotary_factor` (or GPT-NeoX's
// transformers-4 `rotary_pct`), or transformers 5's rope_parameters.partial_rotary_factor. Sets
// c.rotary_dim = int(head_dim * factor), as transformers computes it; it must come out even.
absl::Status ParsePartialRotary(const Json& json, const ConfigReader& r, double default_factor, ModelConfig& c) {
  double factor = default_factor;
  std::string field = "partial_rotary_factor";
  std::string settings_field;
  if (const Json* settings = RopeSettings(json, &settings_field); settings != nullptr && settings->is_object()) {
    ConfigReader s(*settings, "");
    if (s.Has("partial_rotary_factor")) {
      ASSIGN_OR_RETURN(factor, s.Number("partial_rotary_factor", factor));
      field = absl::StrCat(settings_field, ".partial_rotary_factor");
    }
  }
  for (const char* key : {"partial_rotary_factor", "rotary_pct"}) {
    if (r.Has(key)) {
      ASSIGN_OR_RETURN(factor, r.Number(key, factor));
      field = key;
    }
  }
  if (!(factor > 0 && factor <= 1)) return r.Error(field, absl::StrCat("must be in (0, 1], got ", factor));
  c.rotary_dim = static_cast<int64_t>(static_cast<double>(c.head_dim) * factor);
  if (c.rotary_dim < 2 || c.rotary_dim % 2 != 0) {
    return r.Error(field, absl::StrCat("gives ", c.rotary_dim, " rotary dims of head_dim ", c.head_dim,
                                       ": lesion needs an even, positive number"));
  }
  return absl::OkStatus();
}

// The sizes every family but GPT-2 spells the same way. `ffn_key` names the MLP width.
absl::Status ParseSizes(const ConfigReader& r, ModelConfig& c, absl::string_view ffn_key = "intermediate_size",
                        int64_t default_positions = 2048) {
  ASSIGN_OR_RETURN(c.n_layers, r.PositiveInt("num_hidden_layers"));
  ASSIGN_OR_RETURN(c.d_model, r.PositiveInt("hidden_size"));
  ASSIGN_OR_RETURN(c.n_heads, r.PositiveInt("num_attention_heads"));
  ASSIGN_OR_RETURN(c.n_kv_heads, r.Int("num_key_value_heads", c.n_heads));
  ASSIGN_OR_RETURN(c.d_ffn, r.PositiveInt(ffn_key));
  ASSIGN_OR_RETURN(c.vocab_size, r.PositiveInt("vocab_size"));
  ASSIGN_OR_RETURN(c.max_position_embeddings, r.Int("max_position_embeddings", default_positions));
  if (r.Has("head_dim")) {
    ASSIGN_OR_RETURN(c.head_dim, r.PositiveInt("head_dim"));
  } else {
    if (c.d_model % c.n_heads != 0) {
      return r.Error("num_attention_heads", absl::StrCat(c.n_heads, " does not divide hidden_size ", c.d_model));
    }
    c.head_dim = c.d_model / c.n_heads;
  }
  if (c.n_kv_heads <= 0 || c.n_heads % c.n_kv_heads != 0) {
    return r.Error("num_key_value_heads",
                   absl::StrCat(c.n_kv_heads, " must be positive and divide num_attention_heads ", c.n_heads));
  }
  c.rotary_dim = c.head_dim;
  return absl::OkStatus();
}

// Which layers attend through a sliding window: `default_sliding` per layer unless an explicit
// `layer_types` list (transformers 5) says otherwise; nothing without a `sliding_window` size.
absl::Status ParseSlidingWindows(const Json& json, const ConfigReader& r, std::vector<bool> sliding, ModelConfig& c) {
  c.sliding_window.assign(c.n_layers, std::nullopt);
  if (auto it = json.find("layer_types"); it != json.end() && !it->is_null()) {
    if (!it->is_array() || static_cast<int64_t>(it->size()) != c.n_layers) {
      return r.Error("layer_types", absl::StrCat("must list one type per layer (", c.n_layers, ")"));
    }
    for (int64_t l = 0; l < c.n_layers; ++l) {
      const Json& t = (*it)[l];
      if (!t.is_string()) return r.Error("layer_types", "must hold strings");
      const std::string s = t.get<std::string>();
      if (s != "sliding_attention" && s != "full_attention") {
        return r.Error("layer_types", absl::StrCat("has unsupported layer type \"", s, "\""));
      }
      sliding[l] = s == "sliding_attention";
    }
  }
  if (!r.Has("sliding_window")) return absl::OkStatus();
  ASSIGN_OR_RETURN(int64_t window, r.PositiveInt("sliding_window"));
  for (int64_t l = 0; l < c.n_layers; ++l) {
    if (sliding[l]) c.sliding_window[l] = window;
  }
  return absl::OkStatus();
}

// Qwen2 and Qwen3 window only with use_sliding_window, and only from max_window_layers on.
absl::StatusOr<std::vector<bool>> QwenSlidingLayers(const ConfigReader& r, int64_t n_layers) {
  ASSIGN_OR_RETURN(bool use_sliding, r.Bool("use_sliding_window", false));
  ASSIGN_OR_RETURN(int64_t max_window_layers, r.Int("max_window_layers", n_layers));
  std::vector<bool> sliding(n_layers);
  for (int64_t l = 0; l < n_layers; ++l) sliding[l] = use_sliding && l >= max_window_layers;
  return sliding;
}

absl::Status ParseGpt2(const ConfigReader& r, ModelConfig& c) {
  c.family = Family::kGpt2;
  ASSIGN_OR_RETURN(c.n_layers, r.PositiveInt("n_layer"));
  ASSIGN_OR_RETURN(c.d_model, r.PositiveInt("n_embd"));
  ASSIGN_OR_RETURN(c.n_heads, r.PositiveInt("n_head"));
  c.n_kv_heads = c.n_heads;
  ASSIGN_OR_RETURN(c.d_ffn, r.Int("n_inner", 4 * c.d_model));
  ASSIGN_OR_RETURN(c.vocab_size, r.PositiveInt("vocab_size"));
  ASSIGN_OR_RETURN(c.max_position_embeddings, r.PositiveInt("n_positions"));
  ASSIGN_OR_RETURN(c.norm_eps, r.Number("layer_norm_epsilon", 1e-5));
  ASSIGN_OR_RETURN(std::string act, r.String("activation_function", "gelu_new"));
  ASSIGN_OR_RETURN(c.activation, ParseActivation(r, "activation_function", act));
  ASSIGN_OR_RETURN(c.tied_embeddings, r.Bool("tie_word_embeddings", true));
  ASSIGN_OR_RETURN(bool scale_attn, r.Bool("scale_attn_weights", true));
  ASSIGN_OR_RETURN(bool by_layer_idx, r.Bool("scale_attn_by_inverse_layer_idx", false));
  if (!scale_attn || by_layer_idx) {
    return r.Error("scale_attn_weights",
                   "must be true and scale_attn_by_inverse_layer_idx false: other GPT-2 attention "
                   "scalings are not supported");
  }
  c.norm = NormKind::kLayerNorm;
  c.gated_mlp = false;
  c.qkv_bias = c.o_bias = c.mlp_bias = true;
  c.learned_positions = true;
  if (c.d_model % c.n_heads != 0) {
    return r.Error("n_head", absl::StrCat(c.n_heads, " does not divide n_embd ", c.d_model));
  }
  c.head_dim = c.d_model / c.n_heads;
  return absl::OkStatus();
}

// GPT-NeoX (Pythia): LayerNorms with biases, parallel residual by default, partial rotary (a
// quarter of each head unless said otherwise), GELU MLP, biases everywhere, untied embed_out.
absl::Status ParseGptNeox(const Json& json, const ConfigReader& r, absl::string_view source, ModelConfig& c) {
  c.family = Family::kGptNeox;
  RETURN_IF_ERROR(ParseSizes(r, c));
  RETURN_IF_ERROR(CheckModelConfigBounds(c, source));
  if (c.n_kv_heads != c.n_heads) return r.Error("num_key_value_heads", "GPT-NeoX has no grouped-query attention");
  ASSIGN_OR_RETURN(c.norm_eps, r.Number("layer_norm_eps", 1e-5));
  ASSIGN_OR_RETURN(std::string act, r.String("hidden_act", "gelu"));
  ASSIGN_OR_RETURN(c.activation, ParseActivation(r, "hidden_act", act));
  ASSIGN_OR_RETURN(c.tied_embeddings, r.Bool("tie_word_embeddings", false));
  ASSIGN_OR_RETURN(bool parallel, r.Bool("use_parallel_residual", true));
  ASSIGN_OR_RETURN(bool attention_bias, r.Bool("attention_bias", true));
  c.block_layout = parallel ? BlockLayout::kParallel : BlockLayout::kSequential;
  c.norm = NormKind::kLayerNorm;
  c.gated_mlp = false;
  c.qkv_bias = c.o_bias = attention_bias;
  c.mlp_bias = true;
  ASSIGN_OR_RETURN(c.rope,
                   ParseRope(json, r, source, 10000.0, r.Has("rotary_emb_base") ? "rotary_emb_base" : "rope_theta"));
  RETURN_IF_ERROR(ParsePartialRotary(json, r, 0.25, c));
  c.sliding_window.assign(c.n_layers, std::nullopt);
  return absl::OkStatus();
}

// OPT: pre-norm LayerNorms, learned positions offset by 2, ReLU MLP (fc1, fc2), biases, tied head.
// The post-norm variant (OPT-350m: do_layer_norm_before false, with its embedding projections) is
// refused.
absl::Status ParseOpt(const ConfigReader& r, absl::string_view source, ModelConfig& c) {
  c.family = Family::kOpt;
  RETURN_IF_ERROR(ParseSizes(r, c, "ffn_dim"));
  RETURN_IF_ERROR(CheckModelConfigBounds(c, source));
  if (c.n_kv_heads != c.n_heads) return r.Error("num_key_value_heads", "OPT has no grouped-query attention");
  ASSIGN_OR_RETURN(bool norm_before, r.Bool("do_layer_norm_before", true));
  ASSIGN_OR_RETURN(bool remove_final_norm, r.Bool("_remove_final_layer_norm", false));
  if (!norm_before || remove_final_norm) {
    return r.Error("do_layer_norm_before",
                   "false (post-norm OPT, as OPT-350m) is not supported: only pre-norm OPT checkpoints are");
  }
  ASSIGN_OR_RETURN(int64_t projection, r.Int("word_embed_proj_dim", c.d_model));
  if (projection != c.d_model) {
    return r.Error("word_embed_proj_dim", absl::StrCat(projection, " differs from hidden_size ", c.d_model,
                                                       ": OPT's embedding projections are not supported"));
  }
  ASSIGN_OR_RETURN(bool affine, r.Bool("layer_norm_elementwise_affine", true));
  if (!affine) return r.Error("layer_norm_elementwise_affine", "false is not supported");
  ASSIGN_OR_RETURN(std::string act, r.String("activation_function", "relu"));
  ASSIGN_OR_RETURN(c.activation, ParseActivation(r, "activation_function", act));
  ASSIGN_OR_RETURN(c.tied_embeddings, r.Bool("tie_word_embeddings", true));
  ASSIGN_OR_RETURN(bool bias, r.Bool("enable_bias", true));
  c.norm = NormKind::kLayerNorm;
  c.norm_eps = 1e-5;  // OPT's LayerNorms use torch's default
  c.gated_mlp = false;
  c.qkv_bias = c.o_bias = c.mlp_bias = bias;
  c.learned_positions = true;
  c.position_offset = 2;
  c.sliding_window.assign(c.n_layers, std::nullopt);
  return absl::OkStatus();
}

// Phi-2 (PhiForCausalLM): one LayerNorm feeding attention and MLP in parallel, partial rotary,
// GELU MLP (fc1, fc2), biases everywhere including the output head.
absl::Status ParsePhi(const Json& json, const ConfigReader& r, absl::string_view source, ModelConfig& c) {
  c.family = Family::kPhi;
  RETURN_IF_ERROR(ParseSizes(r, c));
  RETURN_IF_ERROR(CheckModelConfigBounds(c, source));
  ASSIGN_OR_RETURN(bool qk_layernorm, r.Bool("qk_layernorm", false));
  if (qk_layernorm) return r.Error("qk_layernorm", "true is not supported");
  ASSIGN_OR_RETURN(c.norm_eps, r.Number("layer_norm_eps", 1e-5));
  ASSIGN_OR_RETURN(std::string act, r.String("hidden_act", "gelu_new"));
  ASSIGN_OR_RETURN(c.activation, ParseActivation(r, "hidden_act", act));
  ASSIGN_OR_RETURN(c.tied_embeddings, r.Bool("tie_word_embeddings", false));
  c.block_layout = BlockLayout::kParallelSharedNorm;
  c.norm = NormKind::kLayerNorm;
  c.gated_mlp = false;
  c.qkv_bias = c.o_bias = c.mlp_bias = true;
  c.lm_head_bias = true;
  ASSIGN_OR_RETURN(c.rope, ParseRope(json, r, source));
  RETURN_IF_ERROR(ParsePartialRotary(json, r, 0.5, c));
  c.sliding_window.assign(c.n_layers, std::nullopt);
  return absl::OkStatus();
}

// Gemma-3's two rotary settings: its global (full-attention) layers and its local (sliding) layers.
// transformers 5 nests them in rope_parameters by layer type; transformers 4 writes rope_theta and
// rope_scaling for the global layers and rope_local_base_freq for the local ones.
absl::Status ParseGemma3Rope(const Json& json, const ConfigReader& r, absl::string_view source, ModelConfig& c) {
  RopeConfig global, local;
  ASSIGN_OR_RETURN(global.theta, r.Number("rope_theta", 1e6));
  ASSIGN_OR_RETURN(local.theta, r.Number("rope_local_base_freq", 10000.0));
  std::string field;
  const Json* settings = RopeSettings(json, &field);
  if (settings != nullptr && settings->is_object() &&
      (settings->contains("full_attention") || settings->contains("sliding_attention"))) {
    for (auto [type, rope] : {std::pair{"full_attention", &global}, std::pair{"sliding_attention", &local}}) {
      auto it = settings->find(type);
      if (it == settings->end() || it->is_null()) continue;
      ASSIGN_OR_RETURN(*rope, ParseRopeObject(*it, *rope, absl::StrCat(field, ".", type), source));
    }
  } else if (settings != nullptr) {
    ASSIGN_OR_RETURN(global, ParseRopeObject(*settings, global, field, source));
  }
  if (global.theta <= 0) return r.Error("rope_theta", "must be positive");
  if (local.theta <= 0) return r.Error("rope_local_base_freq", "must be positive");
  c.rope = global;
  c.sliding_rope = local;
  return absl::OkStatus();
}

// The pre-norm RMSNorm, SwiGLU, rotary families: LLaMA, Mistral, Qwen2, Qwen3, Phi-3, OLMo-2,
// Gemma-2 and Gemma-3, with what sets each apart.
absl::Status ParseLlamaLike(const Json& json, const ConfigReader& r, absl::string_view source, ModelConfig& c) {
  const std::string& arch = c.architecture;
  const bool gemma = arch == "Gemma2ForCausalLM" || arch == "Gemma3ForCausalLM";
  c.family = arch == "Qwen3ForCausalLM"    ? Family::kQwen3
             : arch == "Phi3ForCausalLM"   ? Family::kPhi3
             : arch == "Olmo2ForCausalLM"  ? Family::kOlmo2
             : arch == "Gemma2ForCausalLM" ? Family::kGemma2
             : arch == "Gemma3ForCausalLM" ? Family::kGemma3
                                           : Family::kLlama;
  RETURN_IF_ERROR(ParseSizes(r, c));
  // Every size is read: bound them before the per-layer vectors below are sized by n_layers.
  RETURN_IF_ERROR(CheckModelConfigBounds(c, source));
  ASSIGN_OR_RETURN(c.norm_eps, r.Number("rms_norm_eps", 1e-6));
  // Gemma names its activation hidden_activation (older configs also carry hidden_act).
  const char* act_key = gemma && r.Has("hidden_activation") ? "hidden_activation" : "hidden_act";
  ASSIGN_OR_RETURN(std::string act, r.String(act_key, gemma ? "gelu_pytorch_tanh" : "silu"));
  ASSIGN_OR_RETURN(c.activation, ParseActivation(r, act_key, act));
  ASSIGN_OR_RETURN(c.tied_embeddings, r.Bool("tie_word_embeddings", gemma));
  c.norm = NormKind::kRmsNorm;
  c.gated_mlp = true;
  ASSIGN_OR_RETURN(bool attention_bias, r.Bool("attention_bias", false));
  ASSIGN_OR_RETURN(c.mlp_bias, r.Bool("mlp_bias", false));
  if (arch == "Qwen2ForCausalLM") {
    c.qkv_bias = true;  // Qwen2 always has q/k/v biases and no o bias
    c.o_bias = false;
  } else {
    c.qkv_bias = c.o_bias = attention_bias;
  }

  std::vector<bool> sliding(c.n_layers, arch == "MistralForCausalLM" || arch == "Phi3ForCausalLM");
  if (arch == "Qwen2ForCausalLM" || arch == "Qwen3ForCausalLM") {
    ASSIGN_OR_RETURN(sliding, QwenSlidingLayers(r, c.n_layers));
  }
  if (gemma) {
    // transformers 4: Gemma-2 alternates from a sliding layer 0; Gemma-3 has one full layer in
    // every sliding_window_pattern (6).
    ASSIGN_OR_RETURN(int64_t pattern, r.Int("sliding_window_pattern", arch == "Gemma2ForCausalLM" ? 2 : 6));
    if (pattern < 1) return r.Error("sliding_window_pattern", "must be positive");
    for (int64_t l = 0; l < c.n_layers; ++l) sliding[l] = (l + 1) % pattern != 0;
  }
  RETURN_IF_ERROR(ParseSlidingWindows(json, r, std::move(sliding), c));

  if (arch == "Qwen3ForCausalLM") c.qk_norm = QkNorm::kPerHead;
  if (arch == "Olmo2ForCausalLM") {
    c.qk_norm = QkNorm::kFullWidth;
    c.pre_norms = false;
    c.post_norms = true;
  }
  if (gemma) {
    c.post_norms = true;
    c.norm_adds_one = true;
    c.embed_scale = std::sqrt(static_cast<double>(c.d_model));
    ASSIGN_OR_RETURN(double scalar, r.Number("query_pre_attn_scalar", 256.0));
    if (scalar <= 0) return r.Error("query_pre_attn_scalar", "must be positive");
    c.attention_scale = 1.0 / std::sqrt(scalar);
    for (auto [key, cap] : {std::pair{"attn_logit_softcapping", &c.attn_softcap},
                            std::pair{"final_logit_softcapping", &c.final_softcap}}) {
      if (!r.Has(key)) continue;
      ASSIGN_OR_RETURN(double v, r.Number(key, 0.0));
      if (v <= 0) return r.Error(key, "must be positive");
      *cap = v;
    }
  }
  if (arch == "Gemma3ForCausalLM") {
    c.qk_norm = QkNorm::kPerHead;
    RETURN_IF_ERROR(ParseGemma3Rope(json, r, source, c));
  } else {
    ASSIGN_OR_RETURN(RopeConfig rope, ParseRope(json, r, source));
    c.rope = rope;
    RETURN_IF_ERROR(ParsePartialRotary(json, r, 1.0, c));
  }
  return absl::OkStatus();
}
}  // namespace

absl::Status CheckModelConfigBounds(const ModelConfig& c, absl::string_view source) {
  const bool gpt2 = c.family == Family::kGpt2;
  struct Bound {
    absl::string_view field;  // as config.json spells it
    int64_t value;
    int64_t max;
  };
  const Bound bounds[] = {
      {gpt2 ? "n_layer" : "num_hidden_layers", c.n_layers, kMaxLayers},
      {gpt2 ? "n_embd" : "hidden_size", c.d_model, kMaxDModel},
      {gpt2 ? "n_head" : "num_attention_heads", c.n_heads, kMaxHeads},
      {gpt2 ? "n_head" : "num_key_value_heads", c.n_kv_heads, kMaxHeads},
      {"head_dim", c.head_dim, kMaxHeadDim},
      {gpt2                       ? "n_inner"
       : c.family == Family::kOpt ? "ffn_dim"
                                  : "intermediate_size",
       c.d_ffn, kMaxDFfn},
      {"vocab_size", c.vocab_size, kMaxVocab},
      {gpt2 ? "n_positions" : "max_position_embeddings", c.max_position_embeddings, kMaxPositions},
  };
  for (const Bound& b : bounds) {
    if (b.value < 1 || b.value > b.max) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": field \"", b.field, "\" is ", b.value,
                                                     ", outside the sanity limits [1, ", b.max, "]"));
    }
  }
  if (c.n_heads % c.n_kv_heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": ", c.n_kv_heads, " key/value heads do not divide ", c.n_heads, " attention heads"));
  }
  if (c.rope.has_value()) {
    const int64_t original = c.rope->original_max_position_embeddings;
    if (original < 1 || original > kMaxPositions) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": field \"original_max_position_embeddings\" is ",
                                                     original, ", outside the sanity limits [1, ", kMaxPositions, "]"));
    }
  }
  if (c.position_offset < 0 || c.position_offset > kMaxPositionOffset) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": learned positions offset by ", c.position_offset,
                                                   ", outside the sanity limits [0, ", kMaxPositionOffset, "]"));
  }
  if (c.rope.has_value() && c.rotary_dim != 0 && (c.rotary_dim < 2 || c.rotary_dim > c.head_dim || c.rotary_dim % 2)) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", c.rotary_dim, " rotary dims for head_dim ", c.head_dim,
                                                   " (must be even and at most head_dim)"));
  }
  if (!c.sliding_window.empty() && static_cast<int64_t>(c.sliding_window.size()) != c.n_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": ", c.sliding_window.size(), " sliding windows for ", c.n_layers, " layers"));
  }
  return absl::OkStatus();
}

const char* const kSupportedArchitectures =
    "GPT2LMHeadModel, LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, "
    "GPTNeoXForCausalLM, OPTForCausalLM, PhiForCausalLM, Phi3ForCausalLM, Olmo2ForCausalLM, Gemma2ForCausalLM, "
    "Gemma3ForCausalLM";

absl::string_view FamilyName(Family family) {
  switch (family) {
    case Family::kGpt2:
      return "gpt2";
    case Family::kLlama:
      return "llama";
    case Family::kGptNeox:
      return "gpt_neox";
    case Family::kOpt:
      return "opt";
    case Family::kPhi:
      return "phi";
    case Family::kPhi3:
      return "phi3";
    case Family::kOlmo2:
      return "olmo2";
    case Family::kGemma2:
      return "gemma2";
    case Family::kGemma3:
      return "gemma3";
    case Family::kQwen3:
      return "qwen3";
  }
  return "unknown";
}

int64_t ModelConfig::n_params() const {
  const int64_t q = n_heads * head_dim, kv = n_kv_heads * head_dim;
  const int64_t norm_params = norm == NormKind::kLayerNorm ? 2 * d_model : d_model;
  int64_t attn = d_model * (q + 2 * kv) + q * d_model;
  if (qkv_bias) attn += q + 2 * kv;
  if (o_bias) attn += d_model;
  if (qk_norm == QkNorm::kPerHead) attn += 2 * head_dim;
  if (qk_norm == QkNorm::kFullWidth) attn += q + kv;
  int64_t mlp = (gated_mlp ? 3 : 2) * d_model * d_ffn;
  if (mlp_bias) mlp += (gated_mlp ? 2 : 1) * d_ffn + d_model;
  const int64_t block_norms =
      (pre_norms ? (block_layout == BlockLayout::kParallelSharedNorm ? 1 : 2) : 0) + (post_norms ? 2 : 0);
  int64_t total = n_layers * (attn + mlp + block_norms * norm_params) + norm_params;
  total += vocab_size * d_model;
  if (!tied_embeddings) total += vocab_size * d_model;
  if (lm_head_bias) total += vocab_size;
  if (learned_positions) total += (max_position_embeddings + position_offset) * d_model;
  return total;
}

bool ModelConfig::Attends(int64_t layer, int64_t q, int64_t k) const {
  if (k > q) return false;
  const auto& w = sliding_window[layer];
  return !w.has_value() || q - k < *w;
}

absl::StatusOr<ModelConfig> ParseModelConfig(absl::string_view json_text, absl::string_view source) {
  Json json = Json::parse(json_text, /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat(source, " is not valid JSON"));
  }
  if (!json.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, " must hold a JSON object"));
  }
  ConfigReader r(json, source);
  ModelConfig c;
  auto arch = json.find("architectures");
  if (arch == json.end() || !arch->is_array() || arch->empty() || !(*arch)[0].is_string()) {
    return r.Error("architectures", "must be a non-empty list of architecture names");
  }
  c.architecture = (*arch)[0].get<std::string>();
  const std::string& a = c.architecture;
  if (a == "GPT2LMHeadModel") {
    RETURN_IF_ERROR(ParseGpt2(r, c));
  } else if (a == "GPTNeoXForCausalLM") {
    RETURN_IF_ERROR(ParseGptNeox(json, r, source, c));
  } else if (a == "OPTForCausalLM") {
    RETURN_IF_ERROR(ParseOpt(r, source, c));
  } else if (a == "PhiForCausalLM") {
    RETURN_IF_ERROR(ParsePhi(json, r, source, c));
  } else if (a == "LlamaForCausalLM" || a == "MistralForCausalLM" || a == "Qwen2ForCausalLM" ||
             a == "Qwen3ForCausalLM" || a == "Phi3ForCausalLM" || a == "Olmo2ForCausalLM" || a == "Gemma2ForCausalLM" ||
             a == "Gemma3ForCausalLM") {
    RETURN_IF_ERROR(ParseLlamaLike(json, r, source, c));
  } else {
    return absl::InvalidArgumentError(absl::StrCat(source, ": architecture \"", c.architecture,
                                                   "\" is not supported (supported: ", kSupportedArchitectures, ")"));
  }
  if (c.d_ffn <= 0) return r.Error("intermediate size", "must be positive");
  RETURN_IF_ERROR(CheckModelConfigBounds(c, source));  // before n_layers sizes anything
  if (c.sliding_window.empty()) c.sliding_window.assign(c.n_layers, std::nullopt);
  ASSIGN_OR_RETURN(c.bos_token_id, r.TokenId("bos_token_id"));
  ASSIGN_OR_RETURN(c.eos_token_id, r.TokenId("eos_token_id"));
  ASSIGN_OR_RETURN(c.checkpoint_dtype, r.String("torch_dtype", ""));
  if (c.checkpoint_dtype.empty()) {
    ASSIGN_OR_RETURN(c.checkpoint_dtype, r.String("dtype", ""));
  }
  return c;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::filesystem::path& model_dir) {
  const std::filesystem::path path = model_dir / "config.json";
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  return ParseModelConfig(text, path.string());
}

}  // namespace lesion::model
