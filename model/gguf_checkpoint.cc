#include "model/gguf_checkpoint.h"

#include <algorithm>
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

struct ArchitectureInfo {
  const char* hf_architecture;
  bool permuted_qk;  // llama.cpp's converter interleaved q/k rows for its rotary layout
};

std::optional<ArchitectureInfo> FindArchitecture(absl::string_view gguf_architecture) {
  if (gguf_architecture == "llama") return ArchitectureInfo{"LlamaForCausalLM", true};
  if (gguf_architecture == "qwen2") return ArchitectureInfo{"Qwen2ForCausalLM", false};
  if (gguf_architecture == "gpt2") return ArchitectureInfo{"GPT2LMHeadModel", false};
  return std::nullopt;
}

absl::StatusOr<std::string> GgufArchitecture(const GgufCheckpoint& checkpoint) {
  MetadataReader general(checkpoint, "general.");
  ASSIGN_OR_RETURN(std::optional<std::string> arch, general.OptionalString("architecture"));
  if (!arch.has_value()) return general.Error("general.architecture", "is missing");
  return *arch;
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

}  // namespace

bool IsGgufPath(const std::filesystem::path& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) return false;
  return absl::EndsWithIgnoreCase(path.filename().string(), ".gguf");
}

absl::StatusOr<std::string> GgufConfigJson(const GgufCheckpoint& checkpoint) {
  ASSIGN_OR_RETURN(const std::string arch, GgufArchitecture(checkpoint));
  const std::optional<ArchitectureInfo> info = FindArchitecture(arch);
  if (!info.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat(checkpoint.first().path().string(), ": GGUF architecture \"", arch,
                                                   "\" is not supported (supported: llama, qwen2, gpt2)"));
  }
  MetadataReader m(checkpoint, arch + ".");
  Json c = Json::object();
  c["architectures"] = Json::array({info->hf_architecture});
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
  if (arch == "gpt2") {
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
  } else {
    c["num_hidden_layers"] = layers;
    c["hidden_size"] = d_model;
    c["intermediate_size"] = d_ffn;
    c["num_attention_heads"] = heads;
    ASSIGN_OR_RETURN(std::optional<int64_t> kv_heads, m.OptionalInt("attention.head_count_kv"));
    c["num_key_value_heads"] = kv_heads.value_or(heads);
    c["max_position_embeddings"] = context;
    c["vocab_size"] = *vocab;
    ASSIGN_OR_RETURN(std::optional<double> eps, m.OptionalFloat("attention.layer_norm_rms_epsilon"));
    if (eps.has_value()) c["rms_norm_eps"] = *eps;
    ASSIGN_OR_RETURN(std::optional<double> theta, m.OptionalFloat("rope.freq_base"));
    if (theta.has_value()) c["rope_theta"] = *theta;
    if (arch == "llama") {
      // transformers takes llama's rotary width as its head_dim.
      ASSIGN_OR_RETURN(std::optional<int64_t> rope_dims, m.OptionalInt("rope.dimension_count"));
      if (rope_dims.has_value()) c["head_dim"] = *rope_dims;
    }
    ASSIGN_OR_RETURN(std::optional<std::string> scaling, m.OptionalString("rope.scaling.type"));
    if (scaling.has_value() && *scaling != "none") {
      ASSIGN_OR_RETURN(std::optional<double> factor, m.OptionalFloat("rope.scaling.factor"));
      if (*scaling != "linear" || !factor.has_value()) {
        return m.Error(m.Key("rope.scaling.type"),
                       absl::StrCat("\"", *scaling, "\" is not supported (only linear, with rope.scaling.factor)"));
      }
      c["rope_scaling"] = {{"rope_type", "linear"}, {"factor", *factor}};
    }
    if (checkpoint.FindTensor("rope_freqs.weight").has_value()) {
      return absl::InvalidArgumentError(absl::StrCat(
          checkpoint.first().path().string(),
          ": tensor \"rope_freqs.weight\" (llama.cpp's per-frequency rotary factors, as LLaMA 3.1 files carry) is "
          "not supported"));
    }
  }
  RETURN_IF_ERROR(AddTokenIds(checkpoint, c));
  return c.dump();
}

absl::StatusOr<ModelConfig> GgufModelConfig(const GgufCheckpoint& checkpoint) {
  ASSIGN_OR_RETURN(std::string json, GgufConfigJson(checkpoint));
  return ParseModelConfig(json, absl::StrCat(checkpoint.first().path().string(), " (metadata as config.json)"));
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
};

struct Mapped {
  GgufCheckpoint::Entry entry;
  Transform transform = Transform::kNone;
  int64_t rotary_heads = 0;  // for kUnpermuteRows
};

// The Hugging Face name of a GGUF tensor for `arch`, or nullopt.
std::optional<std::string> HfName(absl::string_view arch, absl::string_view name) {
  const bool gpt2 = arch == "gpt2";
  static const auto* kGlobal = new std::map<std::string, std::pair<std::string, std::string>, std::less<>>{
      // gguf name -> (llama-like name, gpt2 name)
      {"token_embd.weight", {"model.embed_tokens.weight", "transformer.wte.weight"}},
      {"position_embd.weight", {"", "transformer.wpe.weight"}},
      {"output_norm.weight", {"model.norm.weight", "transformer.ln_f.weight"}},
      {"output_norm.bias", {"", "transformer.ln_f.bias"}},
      {"output.weight", {"lm_head.weight", "lm_head.weight"}},
  };
  if (auto it = kGlobal->find(name); it != kGlobal->end()) {
    const std::string& hf = gpt2 ? it->second.second : it->second.first;
    if (hf.empty()) return std::nullopt;
    return hf;
  }
  // blk.N.<part>.<weight|bias>
  std::vector<absl::string_view> parts = absl::StrSplit(name, '.');
  int64_t layer = 0;
  if (parts.size() != 4 || parts[0] != "blk" || !absl::SimpleAtoi(parts[1], &layer) || layer < 0 ||
      (parts[3] != "weight" && parts[3] != "bias")) {
    return std::nullopt;
  }
  static const auto* kBlock = new std::map<std::string, std::pair<std::string, std::string>, std::less<>>{
      {"attn_norm", {"input_layernorm", "ln_1"}},
      {"attn_q", {"self_attn.q_proj", ""}},
      {"attn_k", {"self_attn.k_proj", ""}},
      {"attn_v", {"self_attn.v_proj", ""}},
      {"attn_qkv", {"", "attn.c_attn"}},
      {"attn_output", {"self_attn.o_proj", "attn.c_proj"}},
      {"ffn_norm", {"post_attention_layernorm", "ln_2"}},
      {"ffn_gate", {"mlp.gate_proj", ""}},
      {"ffn_up", {"mlp.up_proj", "mlp.c_fc"}},
      {"ffn_down", {"mlp.down_proj", "mlp.c_proj"}},
  };
  auto it = kBlock->find(parts[2]);
  if (it == kBlock->end()) return std::nullopt;
  const std::string& module = gpt2 ? it->second.second : it->second.first;
  if (module.empty()) return std::nullopt;
  return gpt2 ? absl::StrCat("transformer.h.", layer, ".", module, ".", parts[3])
              : absl::StrCat("model.layers.", layer, ".", module, ".", parts[3]);
}

class GgufTensors final : public CheckpointTensors {
 public:
  static absl::StatusOr<std::unique_ptr<CheckpointTensors>> Create(std::shared_ptr<const GgufCheckpoint> checkpoint,
                                                                   const ModelConfig& config) {
    ASSIGN_OR_RETURN(const std::string arch, GgufArchitecture(*checkpoint));
    const std::optional<ArchitectureInfo> info = FindArchitecture(arch);
    auto t = std::unique_ptr<GgufTensors>(new GgufTensors(checkpoint));
    for (const GgufCheckpoint::Entry& e : checkpoint->Tensors()) {
      const std::string& name = e.info->name;
      Mapped m{e};
      std::optional<std::string> hf = HfName(arch, name);
      if (hf.has_value() && info.has_value()) {
        if (info->permuted_qk && absl::StrContains(name, ".attn_q.")) {
          m.transform = Transform::kUnpermuteRows;
          m.rotary_heads = config.n_heads;
        } else if (info->permuted_qk && absl::StrContains(name, ".attn_k.")) {
          m.transform = Transform::kUnpermuteRows;
          m.rotary_heads = config.n_kv_heads;
        } else if (arch == "gpt2" && e.info->dims.size() == 2 &&
                   (absl::StrContains(name, ".attn_qkv.") || absl::StrContains(name, ".attn_output.") ||
                    absl::StrContains(name, ".ffn_up.") || absl::StrContains(name, ".ffn_down."))) {
          m.transform = Transform::kTranspose;
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
        case Transform::kUnpermuteRows: {
          // llama.cpp stored each head's rows as (dim, 2) pairs interleaved; transformers' loader
          // swaps the axes back: [heads, dim, 2, ...] -> [heads, 2, dim, ...].
          const int64_t rows = shape[0];
          const int64_t heads = m.rotary_heads;
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
