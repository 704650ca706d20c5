// ModelConfig: the architecture of a checkpoint, parsed from a Hugging Face config.json into one
// family-independent description that the single transformer implementation is parameterised by.
//
// Supported `architectures` (kSupportedArchitectures): GPT-2, LLaMA 2 and 3, Mistral, Qwen2, Qwen3,
// GPT-NeoX (Pythia), OPT, Phi-2, Phi-3, OLMo-2, Gemma-2 and Gemma-3 (text). Every setting is read
// from both the transformers 4 spelling (`rope_theta`, `rope_scaling`, `rotary_pct`,
// `partial_rotary_factor`, `rope_local_base_freq`, `sliding_window_pattern`) and the transformers 5
// spelling (`rope_parameters`, per layer type for Gemma-3, and `layer_types`). docs/architectures.md
// says what each family's peculiarities mean for the hook sites and the interventions.
//
// Value type; thread-compatible.
#ifndef LESION_MODEL_MODEL_CONFIG_H_
#define LESION_MODEL_MODEL_CONFIG_H_

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lesion::model {

// kLlama covers LLaMA, Mistral and Qwen2 (pre-norm, RMSNorm, SwiGLU, rotary).
enum class Family { kGpt2, kLlama, kGptNeox, kOpt, kPhi, kPhi3, kOlmo2, kGemma2, kGemma3, kQwen3 };
enum class NormKind { kLayerNorm, kRmsNorm };  // LayerNorm always with its bias here
// How a block's two branches meet the residual stream.
enum class BlockLayout {
  kSequential,          // x + attn(norm1 x), then + mlp(norm2 of that)
  kParallel,            // x + attn(norm1 x) + mlp(norm2 x)  (GPT-NeoX's use_parallel_residual)
  kParallelSharedNorm,  // x + attn(norm x) + mlp(norm x)   (Phi-2: one norm feeds both)
};
// RMSNorm of queries and keys before the rotary embedding.
enum class QkNorm {
  kNone,
  kPerHead,    // over each head's head_dim (Qwen3, Gemma-3)
  kFullWidth,  // over the whole projection, heads * head_dim (OLMo-2)
};
enum class Activation { kGeluTanh, kGelu, kSilu, kRelu };
enum class RopeScaling { kNone, kLinear, kLlama3 };

struct RopeConfig {
  double theta = 10000.0;
  RopeScaling scaling = RopeScaling::kNone;
  double factor = 1.0;                              // linear and llama3
  double low_freq_factor = 1.0;                     // llama3
  double high_freq_factor = 4.0;                    // llama3
  int64_t original_max_position_embeddings = 8192;  // llama3
};

struct ModelConfig {
  std::string architecture;  // as in config.json, e.g. "LlamaForCausalLM"
  Family family = Family::kLlama;
  int64_t n_layers = 0;
  int64_t d_model = 0;
  int64_t n_heads = 0;
  int64_t n_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t d_ffn = 0;
  int64_t vocab_size = 0;
  int64_t max_position_embeddings = 0;
  NormKind norm = NormKind::kRmsNorm;
  double norm_eps = 1e-5;
  Activation activation = Activation::kSilu;
  bool gated_mlp = true;  // SwiGLU: down(act(gate x) * up x); else down(act(up x))
  bool qkv_bias = false;
  bool o_bias = false;
  bool mlp_bias = false;
  bool tied_embeddings = false;
  bool learned_positions = false;  // GPT-2's wpe, OPT's embed_positions
  int64_t position_offset = 0;     // OPT: position p reads row p + 2 of its table
  std::optional<RopeConfig> rope;  // absent with learned positions
  // Rotary settings of the sliding-window layers when they differ (Gemma-3's local layers).
  std::optional<RopeConfig> sliding_rope;
  int64_t rotary_dim = 0;  // the leading dims of each head that rotate: head_dim, or fewer (partial rotary)
  BlockLayout block_layout = BlockLayout::kSequential;
  bool pre_norms = true;    // a norm before each branch (not OLMo-2)
  bool post_norms = false;  // a norm on each branch's output before the residual add (OLMo-2, Gemma-2/3)
  QkNorm qk_norm = QkNorm::kNone;
  // Gemma's norms scale by (1 + w): the loader stores the effective gamma 1 + w, which is what
  // norm resets and detectors address.
  bool norm_adds_one = false;
  double embed_scale = 1.0;               // Gemma: embeddings times sqrt(d_model), rounded to the dtype
  std::optional<double> attention_scale;  // default 1 / sqrt(head_dim); Gemma: query_pre_attn_scalar^-0.5
  std::optional<double> attn_softcap;     // scores become cap * tanh(scores / cap) (Gemma-2)
  std::optional<double> final_softcap;    // the same on the logits (Gemma-2)
  bool lm_head_bias = false;              // Phi-2
  // Per layer: attention restricted to the last `window` keys (Mistral, Qwen2/3, Phi-3 and Gemma's
  // sliding layers).
  std::vector<std::optional<int64_t>> sliding_window;
  std::optional<int32_t> bos_token_id;
  std::optional<int32_t> eos_token_id;
  std::string checkpoint_dtype;  // config's torch_dtype / dtype, "" if absent

  int64_t n_params() const;  // embeddings + blocks + final norm (+ untied head)
  // Whether a query at position q may attend to key k in `layer` (k <= q and inside the window).
  bool Attends(int64_t layer, int64_t q, int64_t k) const;
};

// Parses config.json text. InvalidArgument naming `source` and the field for malformed or
// unsupported configs (unknown architecture, missing field, inconsistent head counts, a size
// beyond CheckModelConfigBounds' limits).
absl::StatusOr<ModelConfig> ParseModelConfig(absl::string_view json_text, absl::string_view source);

// Sanity limits on a config's sizes, generous for any real model; a config beyond them is corrupt
// or hostile, and would make loading allocate without bound (2^31 layers, say).
inline constexpr int64_t kMaxLayers = 1024;
inline constexpr int64_t kMaxHeads = 1024;  // attention heads, and key/value heads
inline constexpr int64_t kMaxHeadDim = 16384;
inline constexpr int64_t kMaxDModel = 65536;
inline constexpr int64_t kMaxDFfn = int64_t{1} << 20;
inline constexpr int64_t kMaxVocab = int64_t{1} << 22;
inline constexpr int64_t kMaxPositions = int64_t{1} << 24;  // also rope's original_max_position_embeddings
inline constexpr int64_t kMaxPositionOffset = 16;           // OPT's is 2

// Checks every size of `config` against the limits above (and that it is positive), that the
// key/value heads divide the attention heads, that the rotary dims are even and within a head, and
// that sliding_window is empty or has one entry per layer. InvalidArgument naming `source`, the field
// (as config.json spells it for the config's family), its value and the limit. ParseModelConfig
// calls it before it allocates anything per layer; call it on configs built otherwise (from a GGUF
// file's metadata, say) before they size any allocation.
absl::Status CheckModelConfigBounds(const ModelConfig& config, absl::string_view source);

// Reads and parses `model_dir`/config.json. NotFound if the file is missing.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::filesystem::path& model_dir);

absl::string_view FamilyName(Family family);

// The config.json `architectures` names lesion loads, for messages and docs.
extern const char* const kSupportedArchitectures;

}  // namespace lesion::model

#endif  // LESION_MODEL_MODEL_CONFIG_H_
