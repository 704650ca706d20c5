#include "model/gguf_checkpoint.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <optional>
#include <set>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"
#include "model/gguf/dequantize.h"
#include "model/torch_util.h"
#include "nlohmann/json.hpp"

namespace lesion::model {
namespace {

using Json = nlohmann::json;

// Reads metadata keys with type checks; every error names the file and key.
class MetadataReader {
 public:
  MetadataReader(const GgufCheckpoint& checkpoint, std::string prefix)
      : checkpoint_(checkpoint), prefix_(std::move(prefix)) {}

  absl::Status Error(absl::string_view key, absl::string_view what) const {
    return absl::InvalidArgumentError(
        absl::StrCat(checkpoint_.first().path().string(), ": metadata key \"", key, "\" ", what));
  }
  std::string Key(absl::string_view name) const { return absl::StrCat(prefix_, name); }
  bool Has(absl::string_view name) const { return checkpoint_.Find(Key(name)) != nullptr; }

  absl::StatusOr<int64_t> Int(absl::string_view name) const {
    const std::string key = Key(name);
    const GgufValue* v = checkpoint_.Find(key);
    if (v == nullptr) return Error(key, "is missing");
    std::optional<int64_t> i = v->AsInt();
    if (!i.has_value()) return Error(key, absl::StrCat("must be an integer, got ", v->ToString()));
    return *i;
  }
  absl::StatusOr<std::optional<int64_t>> OptionalInt(absl::string_view name) const {
    if (!Has(name)) return std::optional<int64_t>();
    ASSIGN_OR_RETURN(int64_t i, Int(name));
    return std::optional<int64_t>(i);
  }
  absl::StatusOr<std::optional<double>> OptionalFloat(absl::string_view name) const {
    const std::string key = Key(name);
    const GgufValue* v = checkpoint_.Find(key);
    if (v == nullptr) return std::optional<double>();
    std::optional<double> f = v->AsFloat();
    if (!f.has_value()) return Error(key, absl::StrCat("must be a number, got ", v->ToString()));
    return f;
  }
  absl::StatusOr<std::optional<std::string>> OptionalString(absl::string_view name) const {
    const std::string key = Key(name);
    const GgufValue* v = checkpoint_.Find(key);
    if (v == nullptr) return std::optional<std::string>();
    std::optional<absl::string_view> s = v->AsString();
    if (!s.has_value()) return Error(key, absl::StrCat("must be a string, got ", v->ToString()));
    return std::optional<std::string>(std::string(*s));
  }
  absl::StatusOr<std::optional<bool>> OptionalBool(absl::string_view name) const {
    const std::string key = Key(name);
    const GgufValue* v = checkpoint_.Find(key);
    if (v == nullptr) return std::optional<bool>();
    std::optional<bool> b = v->AsBool();
    if (!b.has_value()) return Error(key, absl::StrCat("must be true or false, got ", v->ToString()));
    return b;
  }

 private:
  const GgufCheckpoint& checkpoint_;
  std::string prefix_;
};

// The GGUF architectures lesion maps, by general.architecture.
enum class GgufArch { kLlama, kQwen2, kQwen3, kPhi3, kGemma2, kGemma3, kOlmo2, kGptNeox, kGpt2 };

struct ArchitectureInfo {
  GgufArch arch;
  const char* name;             // general.architecture
  const char* hf_architecture;  // config.json's architectures[0]
  // llama.cpp's converter interleaved q/k rows for its "normal" rotary layout; every other family
  // here uses llama.cpp's NeoX rotary (rotate-half, as transformers) and is stored unpermuted.
  bool permuted_qk;
};

constexpr ArchitectureInfo kArchitectures[] = {
    {GgufArch::kLlama, "llama", "LlamaForCausalLM", true},
    {GgufArch::kQwen2, "qwen2", "Qwen2ForCausalLM", false},
    {GgufArch::kQwen3, "qwen3", "Qwen3ForCausalLM", false},
    {GgufArch::kPhi3, "phi3", "Phi3ForCausalLM", false},
    {GgufArch::kGemma2, "gemma2", "Gemma2ForCausalLM", false},
    {GgufArch::kGemma3, "gemma3", "Gemma3ForCausalLM", false},
    {GgufArch::kOlmo2, "olmo2", "Olmo2ForCausalLM", false},
    {GgufArch::kGptNeox, "gptneox", "GPTNeoXForCausalLM", false},
    {GgufArch::kGpt2, "gpt2", "GPT2LMHeadModel", false},
};

std::optional<ArchitectureInfo> FindArchitecture(absl::string_view gguf_architecture) {
  for (const ArchitectureInfo& a : kArchitectures) {
    if (gguf_architecture == a.name) return a;
  }
  return std::nullopt;
}

std::string SupportedArchitectures() {
  std::vector<std::string> names;
  for (const ArchitectureInfo& a : kArchitectures) names.push_back(a.name);
  return absl::StrJoin(names, ", ");
}

bool IsGemma(GgufArch arch) { return arch == GgufArch::kGemma2 || arch == GgufArch::kGemma3; }

absl::StatusOr<std::string> GgufArchitecture(const GgufCheckpoint& checkpoint) {
  MetadataReader general(checkpoint, "general.");
  ASSIGN_OR_RETURN(std::optional<std::string> arch, general.OptionalString("architecture"));
  if (!arch.has_value()) return general.Error("general.architecture", "is missing");
  return *arch;
}

absl::StatusOr<ArchitectureInfo> SupportedArchitecture(const GgufCheckpoint& checkpoint) {
  ASSIGN_OR_RETURN(const std::string arch, GgufArchitecture(checkpoint));
  const std::optional<ArchitectureInfo> info = FindArchitecture(arch);
  if (!info.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat(checkpoint.first().path().string(), ": GGUF architecture \"", arch,
                                                   "\" is not supported (supported: ", SupportedArchitectures(), ")"));
  }
  return *info;
}

absl::Status FileError(const GgufCheckpoint& checkpoint, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(checkpoint.first().path().string(), ": ", what));
}

// The number of tokens the file's tokenizer has, if it has one.
std::optional<int64_t> TokenCount(const GgufCheckpoint& checkpoint) {
  const GgufValue* tokens = checkpoint.Find("tokenizer.ggml.tokens");
  if (tokens == nullptr || !tokens->is_array()) return std::nullopt;
  return static_cast<int64_t>(tokens->size());
}

// The row-major shape of a tensor of the file, if present.
std::optional<std::vector<int64_t>> TensorShape(const GgufCheckpoint& checkpoint, absl::string_view name) {
  std::optional<GgufCheckpoint::Entry> e = checkpoint.FindTensor(name);
  if (!e.has_value()) return std::nullopt;
  return e->info->shape();
}

absl::Status AddTokenIds(const GgufCheckpoint& checkpoint, Json& config) {
  MetadataReader tok(checkpoint, "tokenizer.ggml.");
  ASSIGN_OR_RETURN(std::optional<int64_t> bos, tok.OptionalInt("bos_token_id"));
  ASSIGN_OR_RETURN(std::optional<int64_t> eos, tok.OptionalInt("eos_token_id"));
  if (bos.has_value()) config["bos_token_id"] = *bos;
  if (eos.has_value()) config["eos_token_id"] = *eos;
  return absl::OkStatus();
}

// An integer key that must be positive.
absl::StatusOr<int64_t> PositiveInt(const MetadataReader& m, absl::string_view name) {
  ASSIGN_OR_RETURN(int64_t v, m.Int(name));
  if (v <= 0) return m.Error(m.Key(name), absl::StrCat("must be positive, got ", v));
  return v;
}

absl::StatusOr<double> RequiredFloat(const MetadataReader& m, absl::string_view name) {
  ASSIGN_OR_RETURN(std::optional<double> v, m.OptionalFloat(name));
  if (!v.has_value()) return m.Error(m.Key(name), "is missing");
  return *v;
}

// llama.cpp's per-head width: attention.key_length, else embedding_length / head_count. Values of
// another width (attention.value_length) have no counterpart in transformers' families.
absl::StatusOr<int64_t> HeadDim(const MetadataReader& m, int64_t d_model, int64_t heads) {
  ASSIGN_OR_RETURN(std::optional<int64_t> key_length, m.OptionalInt("attention.key_length"));
  ASSIGN_OR_RETURN(std::optional<int64_t> value_length, m.OptionalInt("attention.value_length"));
  const int64_t head_dim = key_length.value_or(d_model / heads);
  if (head_dim <= 0) return m.Error(m.Key("attention.key_length"), absl::StrCat("must be positive, got ", head_dim));
  if (value_length.has_value() && *value_length != head_dim) {
    return m.Error(m.Key("attention.value_length"),
                   absl::StrCat("is ", *value_length, " but keys are ", head_dim,
                                " wide: values of another width than keys are not supported"));
  }
  if (!key_length.has_value() && d_model % heads != 0) {
    return m.Error(m.Key("attention.head_count"),
                   absl::StrCat(heads, " does not divide embedding_length ", d_model, " (and there is no ",
                                m.Key("attention.key_length"), ")"));
  }
  return head_dim;
}

// rope.dimension_count (llama.cpp's n_rot, default the head width) as config.json's
// partial_rotary_factor, chosen so that transformers' int(head_dim * factor) gives it back.
absl::Status AddRotaryDims(const MetadataReader& m, int64_t head_dim, bool partial_allowed, Json& c) {
  ASSIGN_OR_RETURN(std::optional<int64_t> dims, m.OptionalInt("rope.dimension_count"));
  const int64_t rotary = dims.value_or(head_dim);
  if (rotary <= 0 || rotary > head_dim || rotary % 2 != 0) {
    return m.Error(m.Key("rope.dimension_count"),
                   absl::StrCat("is ", rotary, ": it must be even, positive and at most the head width ", head_dim));
  }
  if (rotary == head_dim) {
    c["partial_rotary_factor"] = 1.0;
    return absl::OkStatus();
  }
  if (!partial_allowed) {
    return m.Error(m.Key("rope.dimension_count"), absl::StrCat("is ", rotary, " of head width ", head_dim,
                                                               ": partial rotary is not supported for this family"));
  }
  double factor = static_cast<double>(rotary) / static_cast<double>(head_dim);
  if (static_cast<int64_t>(static_cast<double>(head_dim) * factor) != rotary) {
    factor = (static_cast<double>(rotary) + 0.5) / static_cast<double>(head_dim);
  }
  c["partial_rotary_factor"] = factor;
  return absl::OkStatus();
}

// rope.scaling.type and rope.scaling.factor as config.json's rope_scaling, or null. llama.cpp's
// default type is linear, a factor of 0 or 1 meaning none.
absl::StatusOr<Json> RopeScalingJson(const MetadataReader& m) {
  ASSIGN_OR_RETURN(std::optional<std::string> type, m.OptionalString("rope.scaling.type"));
  ASSIGN_OR_RETURN(std::optional<double> factor, m.OptionalFloat("rope.scaling.factor"));
  if (type.has_value() && *type == "none") return Json();
  if (type.has_value() && *type != "linear") {
    return m.Error(m.Key("rope.scaling.type"),
                   absl::StrCat("\"", *type, "\" is not supported (only linear, with rope.scaling.factor)"));
  }
  if (!factor.has_value() || *factor == 0.0 || *factor == 1.0) {
    if (type.has_value() && !factor.has_value()) {
      return m.Error(m.Key("rope.scaling.type"), "is linear but rope.scaling.factor is missing");
    }
    return Json();
  }
  if (*factor < 0) return m.Error(m.Key("rope.scaling.factor"), absl::StrCat("must be positive, got ", *factor));
  return Json{{"rope_type", "linear"}, {"factor", *factor}};
}

// Which layers attend through a sliding window: attention.sliding_window_pattern as a period (every
// period-th layer full, the others sliding; 0 all sliding, 1 none) or as one bool per layer, else
// `default_period`, as llama.cpp reads it.
absl::StatusOr<std::vector<bool>> SlidingLayers(const GgufCheckpoint& checkpoint, const MetadataReader& m,
                                                int64_t layers, int64_t default_period) {
  const std::string key = m.Key("attention.sliding_window_pattern");
  std::vector<bool> sliding(layers);
  const GgufValue* v = checkpoint.Find(key);
  if (v != nullptr && v->is_array()) {
    std::optional<std::vector<bool>> flags = v->AsBoolArray();
    if (!flags.has_value()) {
      if (std::optional<std::vector<int64_t>> ints = v->AsIntArray(); ints.has_value()) {
        flags.emplace();
        for (int64_t i : *ints) flags->push_back(i != 0);
      }
    }
    if (!flags.has_value() || static_cast<int64_t>(flags->size()) != layers) {
      return m.Error(key, absl::StrCat("must be a period or one flag per layer (", layers, "), got ", v->ToString()));
    }
    return *flags;
  }
  int64_t period = default_period;
  if (v != nullptr) {
    ASSIGN_OR_RETURN(period, m.Int("attention.sliding_window_pattern"));
    if (period < 0) return m.Error(key, absl::StrCat("must not be negative, got ", period));
  }
  for (int64_t l = 0; l < layers; ++l) sliding[l] = period == 0 || (period > 1 && l % period < period - 1);
  return sliding;
}

Json LayerTypes(const std::vector<bool>& sliding) {
  Json types = Json::array();
  for (bool s : sliding) types.push_back(s ? "sliding_attention" : "full_attention");
  return types;
}

// rope.freq_base_swa, the sliding layers' own base, where llama.cpp would read it but lesion can only
// give them the full layers' settings: refused unless it equals rope.freq_base.
absl::Status RequireOneRopeBase(const MetadataReader& m, double theta) {
  ASSIGN_OR_RETURN(std::optional<double> swa_theta, m.OptionalFloat("rope.freq_base_swa"));
  if (swa_theta.has_value() && *swa_theta != theta) {
    return m.Error(m.Key("rope.freq_base_swa"),
                   absl::StrCat("is ", *swa_theta, ", unlike rope.freq_base ", theta,
                                ": a separate rotary base for the sliding layers is not supported for this family"));
  }
  return absl::OkStatus();
}

// GPT-NeoX (Pythia): LayerNorms, parallel or sequential blocks, partial rotary, biases.
absl::Status GptNeoxConfig(const GgufCheckpoint& checkpoint, const MetadataReader& m, int64_t d_model, int64_t heads,
                           Json& c) {
  ASSIGN_OR_RETURN(std::optional<int64_t> kv_heads, m.OptionalInt("attention.head_count_kv"));
  if (kv_heads.has_value()) c["num_key_value_heads"] = *kv_heads;  // config parsing refuses GQA
  ASSIGN_OR_RETURN(c["layer_norm_eps"], RequiredFloat(m, "attention.layer_norm_epsilon"));
  ASSIGN_OR_RETURN(std::optional<bool> parallel, m.OptionalBool("use_parallel_residual"));
  if (!parallel.has_value()) return m.Error(m.Key("use_parallel_residual"), "is missing");
  c["use_parallel_residual"] = *parallel;
  // HF's attention_bias covers query_key_value and dense: either bias makes both required.
  c["attention_bias"] = checkpoint.FindTensor("blk.0.attn_qkv.bias").has_value() ||
                        checkpoint.FindTensor("blk.0.attn_output.bias").has_value();
  if (d_model % heads != 0) {
    return m.Error(m.Key("attention.head_count"), absl::StrCat(heads, " does not divide embedding_length ", d_model));
  }
  ASSIGN_OR_RETURN(std::optional<double> theta, m.OptionalFloat("rope.freq_base"));
  c["rope_theta"] = theta.value_or(10000.0);  // llama.cpp's default; the converter writes none
  ASSIGN_OR_RETURN(Json scaling, RopeScalingJson(m));
  if (!scaling.is_null()) c["rope_scaling"] = scaling;
  return AddRotaryDims(m, d_model / heads, /*partial_allowed=*/true, c);
}

// The settings of qwen3, phi3, olmo2, gemma2 and gemma3 past the sizes, as llama.cpp reads them.
absl::Status LlamaLikeConfig(const GgufCheckpoint& checkpoint, const MetadataReader& m, GgufArch arch, int64_t layers,
                             int64_t d_model, int64_t heads, Json& c) {
  if (layers > kMaxLayers) {  // before anything is sized by it
    return m.Error(m.Key("block_count"),
                   absl::StrCat("is ", layers, ", outside the sanity limits [1, ", kMaxLayers, "]"));
  }
  ASSIGN_OR_RETURN(c["rms_norm_eps"], RequiredFloat(m, "attention.layer_norm_rms_epsilon"));
  ASSIGN_OR_RETURN(const int64_t head_dim, HeadDim(m, d_model, heads));
  c["head_dim"] = head_dim;
  ASSIGN_OR_RETURN(std::optional<double> theta_key, m.OptionalFloat("rope.freq_base"));
  const double theta = theta_key.value_or(10000.0);  // llama.cpp's default
  ASSIGN_OR_RETURN(Json scaling, RopeScalingJson(m));
  ASSIGN_OR_RETURN(std::optional<int64_t> window, m.OptionalInt("attention.sliding_window"));
  if (window.has_value() && *window < 0) {
    return m.Error(m.Key("attention.sliding_window"), absl::StrCat("must not be negative, got ", *window));
  }
  if (arch != GgufArch::kGemma3) {
    c["rope_theta"] = theta;
    if (!scaling.is_null()) c["rope_scaling"] = scaling;
    RETURN_IF_ERROR(AddRotaryDims(m, head_dim, /*partial_allowed=*/true, c));
  }
  switch (arch) {
    case GgufArch::kQwen3:
      // llama.cpp runs Qwen3 without sliding windows (the released models use none).
      c["use_sliding_window"] = false;
      break;
    case GgufArch::kPhi3:
      // The converter writes the window (0: none, Phi-4); it applies to every layer, as in
      // transformers. (llama.cpp currently runs Phi-3 without it.)
      if (window.value_or(0) > 0) c["sliding_window"] = *window;
      if (checkpoint.FindTensor("rope_factors_long.weight").has_value() ||
          checkpoint.FindTensor("rope_factors_short.weight").has_value()) {
        return FileError(checkpoint,
                         "tensors \"rope_factors_long.weight\" / \"rope_factors_short.weight\" (Phi-3's longrope "
                         "rotary scaling, as the 128k-context models carry) are not supported");
      }
      break;
    case GgufArch::kOlmo2:
      // OLMo-3 files are olmo2 ones with sliding windows: three sliding layers to one full unless the
      // pattern says otherwise; llama.cpp gives the sliding layers unscaled rotary.
      if (window.value_or(0) > 0) {
        ASSIGN_OR_RETURN(std::vector<bool> sliding, SlidingLayers(checkpoint, m, layers, 4));
        c["sliding_window"] = *window;
        c["layer_types"] = LayerTypes(sliding);
        RETURN_IF_ERROR(RequireOneRopeBase(m, theta));
        if (!scaling.is_null()) {
          return m.Error(m.Key("rope.scaling.type"),
                         "with sliding windows (OLMo-3: the sliding layers unscaled) is not supported");
        }
      }
      break;
    case GgufArch::kGemma2: {
      // llama.cpp: window 4096 unless said, every other layer sliding from layer 0, soft-capping 50 and
      // 30 unless said; queries scaled by head_dim^-0.5, or (embedding_length / head_count)^-0.5 for
      // the 27B model (46 layers), for there is no query_pre_attn_scalar key.
      ASSIGN_OR_RETURN(std::vector<bool> sliding, SlidingLayers(checkpoint, m, layers, 2));
      c["sliding_window"] = window.value_or(4096);
      c["layer_types"] = LayerTypes(sliding);
      RETURN_IF_ERROR(RequireOneRopeBase(m, theta));
      for (auto [key, fallback] :
           {std::pair{"attn_logit_softcapping", 50.0}, std::pair{"final_logit_softcapping", 30.0}}) {
        ASSIGN_OR_RETURN(std::optional<double> cap, m.OptionalFloat(key));
        if (cap.value_or(fallback) <= 0) return m.Error(m.Key(key), absl::StrCat("must be positive, got ", *cap));
        c[key] = cap.value_or(fallback);
      }
      c["query_pre_attn_scalar"] = layers == 46 ? d_model / heads : head_dim;
      break;
    }
    case GgufArch::kGemma3: {
      // llama.cpp: no sliding window key (or 0) means none; otherwise five sliding layers to one full
      // unless the pattern says otherwise, the sliding ones with their own unscaled rotary (base 10000
      // unless rope.freq_base_swa). Final soft-capping only if given; no attention soft-capping.
      // Queries scale as Gemma-2's, the 27B model having 62 layers.
      std::vector<bool> sliding(layers, false);
      if (window.value_or(0) > 0) {
        ASSIGN_OR_RETURN(sliding, SlidingLayers(checkpoint, m, layers, 6));
        c["sliding_window"] = *window;
      }
      c["layer_types"] = LayerTypes(sliding);
      ASSIGN_OR_RETURN(std::optional<double> swa_theta, m.OptionalFloat("rope.freq_base_swa"));
      Json full = {{"rope_type", "default"}, {"rope_theta", theta}};
      if (!scaling.is_null()) full = {{"rope_type", "linear"}, {"rope_theta", theta}, {"factor", scaling["factor"]}};
      c["rope_parameters"] = {
          {"full_attention", full},
          {"sliding_attention", {{"rope_type", "default"}, {"rope_theta", swa_theta.value_or(10000.0)}}}};
      RETURN_IF_ERROR(AddRotaryDims(m, head_dim, /*partial_allowed=*/false, c));
      c.erase("partial_rotary_factor");
      ASSIGN_OR_RETURN(std::optional<double> cap, m.OptionalFloat("final_logit_softcapping"));
      if (cap.has_value() && *cap < 0) {
        return m.Error(m.Key("final_logit_softcapping"), absl::StrCat("must not be negative, got ", *cap));
      }
      if (cap.value_or(0) > 0) c["final_logit_softcapping"] = *cap;
      c["query_pre_attn_scalar"] = layers == 62 ? d_model / heads : head_dim;
      break;
    }
    default:
      break;
  }
  return absl::OkStatus();
}

}  // namespace

bool IsGgufPath(const std::filesystem::path& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) return false;
  return absl::EndsWithIgnoreCase(path.filename().string(), ".gguf");
}

absl::StatusOr<std::string> GgufConfigJson(const GgufCheckpoint& checkpoint) {
  ASSIGN_OR_RETURN(const ArchitectureInfo info, SupportedArchitecture(checkpoint));
  const std::string arch = info.name;
  MetadataReader m(checkpoint, arch + ".");
  Json c = Json::object();
  c["architectures"] = Json::array({info.hf_architecture});
  c["model_type"] = arch;
  // llama.cpp writes the output projection only when it is not the embedding matrix.
  const bool tied = !checkpoint.FindTensor("output.weight").has_value();
  c["tie_word_embeddings"] = tied;
  // The vocabulary size: the key, else the tokenizer's length (as transformers), else the
  // embedding's rows.
  ASSIGN_OR_RETURN(std::optional<int64_t> vocab, m.OptionalInt("vocab_size"));
  if (!vocab.has_value()) vocab = TokenCount(checkpoint);
  if (!vocab.has_value()) {
    if (auto shape = TensorShape(checkpoint, "token_embd.weight"); shape.has_value() && !shape->empty()) {
      vocab = (*shape)[0];
    }
  }
  if (!vocab.has_value()) return m.Error(m.Key("vocab_size"), "is missing and the file has no tokenizer.ggml.tokens");
  ASSIGN_OR_RETURN(int64_t layers, m.Int("block_count"));
  ASSIGN_OR_RETURN(int64_t d_model, m.Int("embedding_length"));
  ASSIGN_OR_RETURN(int64_t d_ffn, m.Int("feed_forward_length"));
  ASSIGN_OR_RETURN(int64_t heads, m.Int("attention.head_count"));
  ASSIGN_OR_RETURN(int64_t context, m.Int("context_length"));
  if (checkpoint.FindTensor("rope_freqs.weight").has_value()) {
    return FileError(checkpoint,
                     "tensor \"rope_freqs.weight\" (llama.cpp's per-frequency rotary factors, as LLaMA 3.1 files "
                     "carry) is not supported");
  }
  if (info.arch == GgufArch::kGpt2) {
    c["n_layer"] = layers;
    c["n_embd"] = d_model;
    c["n_inner"] = d_ffn;
    c["n_head"] = heads;
    c["n_positions"] = context;
    c["vocab_size"] = *vocab;
    ASSIGN_OR_RETURN(std::optional<double> eps, m.OptionalFloat("attention.layer_norm_epsilon"));
    if (eps.has_value()) c["layer_norm_epsilon"] = *eps;
    // GPT-2's learned positions fix how many there are.
    if (auto shape = TensorShape(checkpoint, "position_embd.weight"); shape.has_value() && !shape->empty()) {
      c["n_positions"] = (*shape)[0];
    }
    RETURN_IF_ERROR(AddTokenIds(checkpoint, c));
    return c.dump();
  }
  c["num_hidden_layers"] = layers;
  c["hidden_size"] = d_model;
  c["intermediate_size"] = d_ffn;
  c["num_attention_heads"] = heads;
  c["max_position_embeddings"] = context;
  c["vocab_size"] = *vocab;
  if (info.arch == GgufArch::kGptNeox) {
    ASSIGN_OR_RETURN(heads, PositiveInt(m, "attention.head_count"));
    RETURN_IF_ERROR(GptNeoxConfig(checkpoint, m, d_model, heads, c));
  } else if (info.arch == GgufArch::kLlama || info.arch == GgufArch::kQwen2) {
    ASSIGN_OR_RETURN(std::optional<int64_t> kv_heads, m.OptionalInt("attention.head_count_kv"));
    c["num_key_value_heads"] = kv_heads.value_or(heads);
    ASSIGN_OR_RETURN(std::optional<double> eps, m.OptionalFloat("attention.layer_norm_rms_epsilon"));
    if (eps.has_value()) c["rms_norm_eps"] = *eps;
    ASSIGN_OR_RETURN(std::optional<double> theta, m.OptionalFloat("rope.freq_base"));
    if (theta.has_value()) c["rope_theta"] = *theta;
    if (info.arch == GgufArch::kLlama) {
      // transformers takes llama's rotary width as its head_dim.
      ASSIGN_OR_RETURN(std::optional<int64_t> rope_dims, m.OptionalInt("rope.dimension_count"));
      if (rope_dims.has_value()) c["head_dim"] = *rope_dims;
    }
    ASSIGN_OR_RETURN(Json scaling, RopeScalingJson(m));
    if (!scaling.is_null()) c["rope_scaling"] = scaling;
  } else {
    ASSIGN_OR_RETURN(heads, PositiveInt(m, "attention.head_count"));
    ASSIGN_OR_RETURN(std::optional<int64_t> kv_heads, m.OptionalInt("attention.head_count_kv"));
    c["num_key_value_heads"] = kv_heads.value_or(heads);
    ASSIGN_OR_RETURN(layers, PositiveInt(m, "block_count"));
    RETURN_IF_ERROR(LlamaLikeConfig(checkpoint, m, info.arch, layers, d_model, heads, c));
  }
  RETURN_IF_ERROR(AddTokenIds(checkpoint, c));
  return c.dump();
}

absl::StatusOr<ModelConfig> GgufModelConfig(const GgufCheckpoint& checkpoint) {
  ASSIGN_OR_RETURN(std::string json, GgufConfigJson(checkpoint));
  ASSIGN_OR_RETURN(ModelConfig config, ParseModelConfig(json, absl::StrCat(checkpoint.first().path().string(),
                                                                           " (metadata as config.json)")));
  // llama.cpp's converter stored Gemma's norms as their effective gamma 1 + w already: the loader
  // takes them as they are, bit for bit, instead of adding one.
  config.norm_adds_one = false;
  return config;
}

absl::StatusOr<GgufTokenizerMetadata> GgufTokenizerMetadataOf(const GgufCheckpoint& checkpoint) {
  GgufTokenizerMetadata t;
  const std::string source = checkpoint.first().path().string();
  auto bad = [&](absl::string_view key, absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": metadata key \"", key, "\" ", what));
  };
  ASSIGN_OR_RETURN(t.architecture, GgufArchitecture(checkpoint));
  MetadataReader m(checkpoint, "tokenizer.ggml.");
  ASSIGN_OR_RETURN(std::optional<std::string> model, m.OptionalString("model"));
  ASSIGN_OR_RETURN(std::optional<std::string> pre, m.OptionalString("pre"));
  t.model = model.value_or("");
  t.pre = pre.value_or("");
  if (const GgufValue* v = checkpoint.Find("tokenizer.ggml.tokens"); v != nullptr) {
    std::optional<std::vector<std::string>> tokens = v->AsStringArray();
    if (!tokens.has_value()) return bad("tokenizer.ggml.tokens", "must be an array of strings");
    t.tokens = *std::move(tokens);
  }
  if (const GgufValue* v = checkpoint.Find("tokenizer.ggml.scores"); v != nullptr) {
    std::optional<std::vector<float>> scores = v->AsFloat32Array();
    if (!scores.has_value()) return bad("tokenizer.ggml.scores", "must be an array of float32");
    t.scores = *std::move(scores);
  }
  if (const GgufValue* v = checkpoint.Find("tokenizer.ggml.token_type"); v != nullptr) {
    std::optional<std::vector<int64_t>> types = v->AsIntArray();
    if (!types.has_value()) return bad("tokenizer.ggml.token_type", "must be an array of integers");
    t.token_types.reserve(types->size());
    for (int64_t type : *types) {
      if (type < INT32_MIN || type > INT32_MAX) return bad("tokenizer.ggml.token_type", "holds an out-of-range type");
      t.token_types.push_back(static_cast<int32_t>(type));
    }
  }
  if (const GgufValue* v = checkpoint.Find("tokenizer.ggml.merges"); v != nullptr) {
    std::optional<std::vector<std::string>> merges = v->AsStringArray();
    if (!merges.has_value()) return bad("tokenizer.ggml.merges", "must be an array of strings");
    t.merges = *std::move(merges);
  }
  auto id = [&](absl::string_view name, std::optional<int32_t>& out) -> absl::Status {
    ASSIGN_OR_RETURN(std::optional<int64_t> v, m.OptionalInt(name));
    if (!v.has_value()) return absl::OkStatus();
    if (*v < 0 || *v > INT32_MAX) return bad(m.Key(name), absl::StrCat("is out of range: ", *v));
    out = static_cast<int32_t>(*v);
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(id("bos_token_id", t.bos_id));
  RETURN_IF_ERROR(id("eos_token_id", t.eos_id));
  RETURN_IF_ERROR(id("unknown_token_id", t.unk_id));
  RETURN_IF_ERROR(id("padding_token_id", t.pad_id));
  ASSIGN_OR_RETURN(t.add_bos, m.OptionalBool("add_bos_token"));
  ASSIGN_OR_RETURN(t.add_eos, m.OptionalBool("add_eos_token"));
  ASSIGN_OR_RETURN(t.add_space_prefix, m.OptionalBool("add_space_prefix"));
  return t;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadGgufFileTokenizer(const GgufCheckpoint& checkpoint) {
  ASSIGN_OR_RETURN(GgufTokenizerMetadata metadata, GgufTokenizerMetadataOf(checkpoint));
  if (metadata.tokens.empty()) {
    return absl::NotFoundError(
        absl::StrCat(checkpoint.first().path().string(), " has no tokenizer (no tokenizer.ggml.tokens)"));
  }
  return LoadGgufTokenizer(metadata, checkpoint.first().path().string());
}

namespace {

// How a GGUF tensor becomes its Hugging Face counterpart.
enum class Transform {
  kNone,
  kUnpermuteRows,  // undo llama.cpp's interleaving of each rotary head's rows
  kTranspose,      // GPT-2: nn.Linear [out, in] back to Conv1D [in, out]
  kInterleaveQkv,  // GPT-NeoX: llama.cpp's [q; k; v] rows back to [heads, (q, k, v), head_dim]
};

struct Mapped {
  GgufCheckpoint::Entry entry;
  Transform transform = Transform::kNone;
  int64_t heads = 0;  // for kUnpermuteRows (rotary heads) and kInterleaveQkv
};

// Where a family's tensors live in Hugging Face's layout: the body's prefix, the layers' prefix and
// the global tensors' names.
struct HfLayout {
  const char* embed;
  const char* final_norm;
  const char* head;
  const char* layers;  // "model.layers." + N + "." + module
};

HfLayout LayoutOf(GgufArch arch) {
  switch (arch) {
    case GgufArch::kGpt2:
      return {"transformer.wte", "transformer.ln_f", "lm_head", "transformer.h."};
    case GgufArch::kGptNeox:
      return {"gpt_neox.embed_in", "gpt_neox.final_layer_norm", "embed_out", "gpt_neox.layers."};
    default:
      return {"model.embed_tokens", "model.norm", "lm_head", "model.layers."};
  }
}

// The Hugging Face module of a block tensor blk.N.<part> for `arch`, or nullptr if the family has
// no such tensor. llama.cpp names a norm by where it sits: ffn_norm is the MLP's pre-norm (Gemma's
// pre_feedforward_layernorm, everyone else's post_attention_layernorm), post_attention_norm the
// attention branch's post-norm (Gemma's and OLMo-2's post_attention_layernorm).
const char* HfBlockModule(GgufArch arch, absl::string_view part) {
  const bool gemma = IsGemma(arch);
  const bool qk_norm = arch == GgufArch::kQwen3 || arch == GgufArch::kGemma3 || arch == GgufArch::kOlmo2;
  const bool post_norms = gemma || arch == GgufArch::kOlmo2;
  switch (arch) {
    case GgufArch::kGpt2:
      if (part == "attn_norm") return "ln_1";
      if (part == "attn_qkv") return "attn.c_attn";
      if (part == "attn_output") return "attn.c_proj";
      if (part == "ffn_norm") return "ln_2";
      if (part == "ffn_up") return "mlp.c_fc";
      if (part == "ffn_down") return "mlp.c_proj";
      return nullptr;
    case GgufArch::kGptNeox:
      if (part == "attn_norm") return "input_layernorm";
      if (part == "attn_qkv") return "attention.query_key_value";
      if (part == "attn_output") return "attention.dense";
      if (part == "ffn_norm") return "post_attention_layernorm";
      if (part == "ffn_up") return "mlp.dense_h_to_4h";
      if (part == "ffn_down") return "mlp.dense_4h_to_h";
      return nullptr;
    case GgufArch::kPhi3:  // fused q/k/v and gate/up
      if (part == "attn_norm") return "input_layernorm";
      if (part == "attn_qkv") return "self_attn.qkv_proj";
      if (part == "attn_output") return "self_attn.o_proj";
      if (part == "ffn_norm") return "post_attention_layernorm";
      if (part == "ffn_up") return "mlp.gate_up_proj";
      if (part == "ffn_down") return "mlp.down_proj";
      return nullptr;
    default:
      break;
  }
  if (part == "attn_norm" && arch != GgufArch::kOlmo2) return "input_layernorm";
  if (part == "attn_q") return "self_attn.q_proj";
  if (part == "attn_k") return "self_attn.k_proj";
  if (part == "attn_v") return "self_attn.v_proj";
  if (part == "attn_output") return "self_attn.o_proj";
  if (part == "attn_q_norm" && qk_norm) return "self_attn.q_norm";
  if (part == "attn_k_norm" && qk_norm) return "self_attn.k_norm";
  if (part == "ffn_norm" && arch != GgufArch::kOlmo2)
    return gemma ? "pre_feedforward_layernorm" : "post_attention_layernorm";
  if (part == "post_attention_norm" && post_norms) return "post_attention_layernorm";
  if (part == "post_ffw_norm" && post_norms) return "post_feedforward_layernorm";
  if (part == "ffn_gate") return "mlp.gate_proj";
  if (part == "ffn_up") return "mlp.up_proj";
  if (part == "ffn_down") return "mlp.down_proj";
  return nullptr;
}

// The Hugging Face name of a GGUF tensor for `arch`, or nullopt.
std::optional<std::string> HfName(GgufArch arch, absl::string_view name) {
  const HfLayout layout = LayoutOf(arch);
  for (const char* suffix : {".weight", ".bias"}) {
    if (!absl::EndsWith(name, suffix)) continue;
    const absl::string_view stem = name.substr(0, name.size() - std::strlen(suffix));
    if (stem == "token_embd") return absl::StrCat(layout.embed, suffix);
    if (stem == "output_norm") return absl::StrCat(layout.final_norm, suffix);
    if (stem == "output") return absl::StrCat(layout.head, suffix);
    if (stem == "position_embd" && arch == GgufArch::kGpt2) return absl::StrCat("transformer.wpe", suffix);
  }
  // blk.N.<part>.<weight|bias>
  std::vector<absl::string_view> parts = absl::StrSplit(name, '.');
  int64_t layer = 0;
  if (parts.size() != 4 || parts[0] != "blk" || !absl::SimpleAtoi(parts[1], &layer) || layer < 0 ||
      (parts[3] != "weight" && parts[3] != "bias")) {
    return std::nullopt;
  }
  const char* module = HfBlockModule(arch, parts[2]);
  if (module == nullptr) return std::nullopt;
  return absl::StrCat(layout.layers, layer, ".", module, ".", parts[3]);
}

// The GGUF tensors a model of `config` reads (biases as the config says), checked up front so that
// a missing one is named as llama.cpp names it.
std::vector<std::string> RequiredTensors(GgufArch arch, const ModelConfig& c) {
  std::vector<std::string> names = {"token_embd.weight", "output_norm.weight"};
  const bool layer_norm = c.norm == NormKind::kLayerNorm;
  if (layer_norm) names.push_back("output_norm.bias");
  if (arch == GgufArch::kGpt2) names.push_back("position_embd.weight");
  if (!c.tied_embeddings) names.push_back("output.weight");
  std::vector<std::pair<std::string, bool>> block;  // part, has a bias
  const bool fused_qkv = arch == GgufArch::kGpt2 || arch == GgufArch::kGptNeox || arch == GgufArch::kPhi3;
  if (c.pre_norms) {
    block.push_back({"attn_norm", layer_norm});
    block.push_back({"ffn_norm", layer_norm});
  }
  if (c.post_norms) {
    block.push_back({"post_attention_norm", false});
    block.push_back({"post_ffw_norm", false});
  }
  if (c.qk_norm != QkNorm::kNone) {
    block.push_back({"attn_q_norm", false});
    block.push_back({"attn_k_norm", false});
  }
  if (fused_qkv) {
    block.push_back({"attn_qkv", c.qkv_bias});
  } else {
    for (const char* p : {"attn_q", "attn_k", "attn_v"}) block.push_back({p, c.qkv_bias});
  }
  block.push_back({"attn_output", c.o_bias});
  if (c.gated_mlp && arch != GgufArch::kPhi3) block.push_back({"ffn_gate", c.mlp_bias});
  block.push_back({"ffn_up", c.mlp_bias});
  block.push_back({"ffn_down", c.mlp_bias});
  for (int64_t l = 0; l < c.n_layers; ++l) {
    for (const auto& [part, bias] : block) {
      names.push_back(absl::StrCat("blk.", l, ".", part, ".weight"));
      if (bias) names.push_back(absl::StrCat("blk.", l, ".", part, ".bias"));
    }
  }
  return names;
}

class GgufTensors final : public CheckpointTensors {
 public:
  static absl::StatusOr<std::unique_ptr<CheckpointTensors>> Create(std::shared_ptr<const GgufCheckpoint> checkpoint,
                                                                   const ModelConfig& config) {
    ASSIGN_OR_RETURN(const ArchitectureInfo info, SupportedArchitecture(*checkpoint));
    for (const std::string& name : RequiredTensors(info.arch, config)) {
      if (!checkpoint->FindTensor(name).has_value()) {
        return FileError(*checkpoint, absl::StrCat("tensor \"", name, "\" is missing (a ", info.name, " model with ",
                                                   "this file's metadata has it; lesion reads it as \"",
                                                   HfName(info.arch, name).value_or(name), "\")"));
      }
    }
    auto t = std::unique_ptr<GgufTensors>(new GgufTensors(checkpoint));
    for (const GgufCheckpoint::Entry& e : checkpoint->Tensors()) {
      const std::string& name = e.info->name;
      Mapped m{e};
      std::optional<std::string> hf = HfName(info.arch, name);
      if (hf.has_value()) {
        if (info.permuted_qk && absl::StrContains(name, ".attn_q.")) {
          m.transform = Transform::kUnpermuteRows;
          m.heads = config.n_heads;
        } else if (info.permuted_qk && absl::StrContains(name, ".attn_k.")) {
          m.transform = Transform::kUnpermuteRows;
          m.heads = config.n_kv_heads;
        } else if (info.arch == GgufArch::kGpt2 && e.info->dims.size() == 2 &&
                   (absl::StrContains(name, ".attn_qkv.") || absl::StrContains(name, ".attn_output.") ||
                    absl::StrContains(name, ".ffn_up.") || absl::StrContains(name, ".ffn_down."))) {
          m.transform = Transform::kTranspose;
        } else if (info.arch == GgufArch::kGptNeox && absl::StrContains(name, ".attn_qkv.")) {
          m.transform = Transform::kInterleaveQkv;
          m.heads = config.n_heads;
        }
      }
      const std::string key = hf.value_or(name);
      if (!t->tensors_.emplace(key, m).second) {
        return absl::InvalidArgumentError(absl::StrCat(t->Files(), ": two tensors map to \"", key, "\""));
      }
      const std::string type = GgmlTypeName(e.info->type);
      ++t->types_[type];
      if (type != "F32" && type != "F16" && type != "BF16") t->quantized_ = true;
    }
    return std::unique_ptr<CheckpointTensors>(std::move(t));
  }

  std::vector<std::string> Names() const override {
    std::vector<std::string> names;
    for (const auto& [name, m] : tensors_) names.push_back(name);
    return names;
  }

  std::optional<Info> Find(const std::string& name) const override {
    auto it = tensors_.find(name);
    if (it == tensors_.end()) return std::nullopt;
    const GgufTensorInfo& t = *it->second.entry.info;
    std::vector<int64_t> shape = t.shape();
    if (it->second.transform == Transform::kTranspose) std::reverse(shape.begin(), shape.end());
    return Info{shape, GgmlTypeName(t.type), t.n_bytes};
  }

  absl::StatusOr<at::Tensor> ReadCpu(const std::string& name) const override {
    auto it = tensors_.find(name);
    if (it == tensors_.end()) return absl::NotFoundError(absl::StrCat("no tensor \"", name, "\" in ", Files()));
    const Mapped& m = it->second;
    const GgufTensorInfo& t = *m.entry.info;
    const std::vector<int64_t> shape = t.shape();
    auto error = [&](absl::string_view what) {
      return absl::InvalidArgumentError(absl::StrCat(m.entry.file->path().string(), ": tensor \"", t.name, "\" (type ",
                                                     GgmlTypeName(t.type), ") ", what));
    };
    if (!CanDequantize(t.type)) {
      return error(
          "cannot be dequantized: lesion reads F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and "
          "Q2_K to Q6_K");
    }
    return TorchCall(absl::StrCat("dequantizing ", t.name), [&]() -> absl::StatusOr<at::Tensor> {
      at::Tensor out = at::empty(shape, at::kFloat);  // row-major as stored
      absl::Status st =
          DequantizeToFloat(t.type, m.entry.file->Data(t), absl::Span<float>(out.data_ptr<float>(), out.numel()));
      if (!st.ok()) return error(st.message());
      switch (m.transform) {
        case Transform::kNone:
          return out;
        case Transform::kTranspose:
          return out.t().contiguous();
        case Transform::kInterleaveQkv: {
          // llama.cpp's converter regrouped GPT-NeoX's per-head [q, k, v] rows into [q; k; v];
          // Hugging Face's query_key_value interleaves them again: [3, heads, dim, ...] ->
          // [heads, 3, dim, ...].
          const int64_t rows = shape[0];
          const int64_t heads = m.heads;
          if (heads <= 0 || rows % (3 * heads) != 0) {
            return error(absl::StrCat("has ", rows, " rows, which are not q, k and v of ", heads, " heads"));
          }
          std::vector<int64_t> split = {3, heads, rows / heads / 3};
          split.insert(split.end(), shape.begin() + 1, shape.end());
          return out.reshape(split).transpose(0, 1).reshape(shape).contiguous();
        }
        case Transform::kUnpermuteRows: {
          // llama.cpp stored each head's rows as (dim, 2) pairs interleaved; transformers' loader
          // swaps the axes back: [heads, dim, 2, ...] -> [heads, 2, dim, ...].
          const int64_t rows = shape[0];
          const int64_t heads = m.heads;
          if (heads <= 0 || rows % (2 * heads) != 0) {
            return error(absl::StrCat("has ", rows, " rows, which ", heads, " rotary heads do not divide in pairs"));
          }
          std::vector<int64_t> split = {heads, rows / heads / 2, 2};
          split.insert(split.end(), shape.begin() + 1, shape.end());
          return out.reshape(split).transpose(1, 2).reshape(shape).contiguous();
        }
      }
      return out;
    });
  }

  std::string Files() const override {
    std::vector<std::string> names;
    for (const auto& f : checkpoint_->files()) names.push_back(f->path().string());
    return absl::StrJoin(names, ", ");
  }
  size_t FileCount() const override { return checkpoint_->files().size(); }
  at::ScalarType DefaultDtype() const override { return at::kFloat; }
  std::string Format() const override { return "gguf"; }
  std::map<std::string, int64_t> QuantizedTypes() const override {
    return quantized_ ? types_ : std::map<std::string, int64_t>{};
  }

 private:
  explicit GgufTensors(std::shared_ptr<const GgufCheckpoint> checkpoint) : checkpoint_(std::move(checkpoint)) {}

  std::shared_ptr<const GgufCheckpoint> checkpoint_;
  std::map<std::string, Mapped> tensors_;  // by Hugging Face name (or GGUF name if unmapped)
  std::map<std::string, int64_t> types_;   // stored type -> tensor count
  bool quantized_ = false;
};

}  // namespace

absl::StatusOr<std::unique_ptr<CheckpointTensors>> OpenGgufTensors(std::shared_ptr<const GgufCheckpoint> checkpoint,
                                                                   const ModelConfig& config) {
  return GgufTensors::Create(std::move(checkpoint), config);
}

}  // namespace lesion::model
