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

// Rotary settings: transformers 5 writes `rope_parameters` {rope_theta, rope_type, ...};
// transformers 4 writes `rope_theta` and an optional `rope_scaling` {type|rope_type, ...}.
absl::StatusOr<RopeConfig> ParseRope(const Json& json, const ConfigReader& r, absl::string_view source) {
  RopeConfig rope;
  ASSIGN_OR_RETURN(rope.theta, r.Number("rope_theta", 10000.0));
  const Json* scaling = nullptr;
  std::string field = "rope_scaling";
  if (auto it = json.find("rope_parameters"); it != json.end() && !it->is_null()) {
    scaling = &*it;
    field = "rope_parameters";
  } else if (auto it2 = json.find("rope_scaling"); it2 != json.end() && !it2->is_null()) {
    scaling = &*it2;
  }
  if (scaling == nullptr) return rope;
  if (!scaling->is_object()) return r.Error(field, "must be an object");
  ConfigReader s(*scaling, absl::StrCat(source, " ", field));
  if (s.Has("rope_theta")) {
    ASSIGN_OR_RETURN(rope.theta, s.Number("rope_theta", rope.theta));
  }
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
  if (rope.theta <= 0) return r.Error("rope_theta", "must be positive");
  if (rope.factor <= 0) return s.Error("factor", "must be positive");
  return rope;
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

absl::Status ParseLlamaLike(const Json& json, const ConfigReader& r, absl::string_view source, ModelConfig& c) {
  c.family = Family::kLlama;
  ASSIGN_OR_RETURN(c.n_layers, r.PositiveInt("num_hidden_layers"));
  ASSIGN_OR_RETURN(c.d_model, r.PositiveInt("hidden_size"));
  ASSIGN_OR_RETURN(c.n_heads, r.PositiveInt("num_attention_heads"));
  ASSIGN_OR_RETURN(c.n_kv_heads, r.Int("num_key_value_heads", c.n_heads));
  ASSIGN_OR_RETURN(c.d_ffn, r.PositiveInt("intermediate_size"));
  ASSIGN_OR_RETURN(c.vocab_size, r.PositiveInt("vocab_size"));
  ASSIGN_OR_RETURN(c.max_position_embeddings, r.Int("max_position_embeddings", 2048));
  ASSIGN_OR_RETURN(c.norm_eps, r.Number("rms_norm_eps", 1e-6));
  ASSIGN_OR_RETURN(std::string act, r.String("hidden_act", "silu"));
  ASSIGN_OR_RETURN(c.activation, ParseActivation(r, "hidden_act", act));
  ASSIGN_OR_RETURN(c.tied_embeddings, r.Bool("tie_word_embeddings", false));
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
  if (c.head_dim % 2 != 0) return r.Error("head_dim", "must be even for rotary embeddings");
  // Every size is read: bound them before the per-layer vectors below are sized by n_layers.
  RETURN_IF_ERROR(CheckModelConfigBounds(c, source));
  ASSIGN_OR_RETURN(double partial, r.Number("partial_rotary_factor", 1.0));
  if (partial != 1.0) return r.Error("partial_rotary_factor", "other than 1.0 is not supported");
  ASSIGN_OR_RETURN(RopeConfig rope, ParseRope(json, r, source));
  c.rope = rope;
  c.norm = NormKind::kRmsNorm;
  c.gated_mlp = true;
  ASSIGN_OR_RETURN(bool attention_bias, r.Bool("attention_bias", false));
  ASSIGN_OR_RETURN(c.mlp_bias, r.Bool("mlp_bias", false));
  if (c.architecture == "Qwen2ForCausalLM") {
    c.qkv_bias = true;  // Qwen2 always has q/k/v biases and no o bias
    c.o_bias = false;
  } else {
    c.qkv_bias = c.o_bias = attention_bias;
  }

  // Sliding windows: Mistral windows every layer; Qwen2 only with use_sliding_window, from
  // max_window_layers on. An explicit `layer_types` list (transformers 5) takes precedence.
  c.sliding_window.assign(c.n_layers, std::nullopt);
  std::optional<int64_t> window;
  if (r.Has("sliding_window")) {
    ASSIGN_OR_RETURN(int64_t w, r.PositiveInt("sliding_window"));
    window = w;
  }
  if (!window) return absl::OkStatus();
  std::vector<bool> sliding(c.n_layers, c.architecture == "MistralForCausalLM");
  if (c.architecture == "Qwen2ForCausalLM") {
    ASSIGN_OR_RETURN(bool use_sliding, r.Bool("use_sliding_window", false));
    ASSIGN_OR_RETURN(int64_t max_window_layers, r.Int("max_window_layers", c.n_layers));
    for (int64_t l = 0; l < c.n_layers; ++l) sliding[l] = use_sliding && l >= max_window_layers;
  }
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
  for (int64_t l = 0; l < c.n_layers; ++l) {
    if (sliding[l]) c.sliding_window[l] = window;
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
      {gpt2 ? "n_inner" : "intermediate_size", c.d_ffn, kMaxDFfn},
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
  if (!c.sliding_window.empty() && static_cast<int64_t>(c.sliding_window.size()) != c.n_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": ", c.sliding_window.size(), " sliding windows for ", c.n_layers, " layers"));
  }
  return absl::OkStatus();
}

absl::string_view FamilyName(Family family) {
  switch (family) {
    case Family::kGpt2:
      return "gpt2";
    case Family::kLlama:
      return "llama";
  }
  return "unknown";
}

int64_t ModelConfig::n_params() const {
  const int64_t q = n_heads * head_dim, kv = n_kv_heads * head_dim;
  const int64_t norm_params = norm == NormKind::kLayerNorm ? 2 * d_model : d_model;
  int64_t attn = d_model * (q + 2 * kv) + q * d_model;
  if (qkv_bias) attn += q + 2 * kv;
  if (o_bias) attn += d_model;
  int64_t mlp = (gated_mlp ? 3 : 2) * d_model * d_ffn;
  if (mlp_bias) mlp += (gated_mlp ? 2 : 1) * d_ffn + d_model;
  int64_t total = n_layers * (attn + mlp + 2 * norm_params) + norm_params;
  total += vocab_size * d_model;
  if (!tied_embeddings) total += vocab_size * d_model;
  if (learned_positions) total += max_position_embeddings * d_model;
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
  if (c.architecture == "GPT2LMHeadModel") {
    RETURN_IF_ERROR(ParseGpt2(r, c));
  } else if (c.architecture == "LlamaForCausalLM" || c.architecture == "MistralForCausalLM" ||
             c.architecture == "Qwen2ForCausalLM") {
    RETURN_IF_ERROR(ParseLlamaLike(json, r, source, c));
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": architecture \"", c.architecture,
                     "\" is not supported (supported: GPT2LMHeadModel, LlamaForCausalLM, MistralForCausalLM, "
                     "Qwen2ForCausalLM)"));
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
