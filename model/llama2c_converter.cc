#include "model/llama2c_converter.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "model/safetensors/safetensors.h"
#include "model/tokenizer/tokenizer.h"
#include "nlohmann/json.hpp"

namespace lesion::model {
namespace {

struct Header {
  int32_t dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
};

// A named float32 tensor being assembled for the safetensors file.
struct Array {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float> data;
};

// llama2.c interleaved-pair rows -> HF rotate-half rows, per head: within a head, old row 2j + e
// (pair j, element e) becomes new row e * hd/2 + j.
std::vector<float> PermuteForRotateHalf(const float* w, int64_t n_heads, int64_t head_dim, int64_t cols) {
  std::vector<float> out(static_cast<size_t>(n_heads * head_dim * cols));
  const int64_t half = head_dim / 2;
  for (int64_t h = 0; h < n_heads; ++h) {
    for (int64_t j = 0; j < half; ++j) {
      for (int64_t e = 0; e < 2; ++e) {
        const float* src = w + (h * head_dim + 2 * j + e) * cols;
        float* dst = out.data() + (h * head_dim + e * half + j) * cols;
        std::memcpy(dst, src, sizeof(float) * cols);
      }
    }
  }
  return out;
}

}  // namespace

absl::Status ConvertLlama2cCheckpoint(const std::filesystem::path& checkpoint_bin,
                                      const std::filesystem::path& tokenizer_bin,
                                      const std::filesystem::path& out_dir) {
  ASSIGN_OR_RETURN(std::string bytes, ReadFile(checkpoint_bin));
  const std::string source = checkpoint_bin.string();
  if (bytes.size() < sizeof(Header)) {
    return absl::DataLossError(absl::StrCat(source, ": shorter than the 28-byte llama2.c header"));
  }
  Header h;
  std::memcpy(&h, bytes.data(), sizeof(Header));
  if (h.dim <= 0 || h.hidden_dim <= 0 || h.n_layers <= 0 || h.n_heads <= 0 || h.n_kv_heads <= 0 || h.vocab_size == 0 ||
      h.seq_len <= 0 || h.dim % h.n_heads != 0 || h.n_heads % h.n_kv_heads != 0 || (h.dim / h.n_heads) % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": inconsistent llama2.c header (dim ", h.dim,
                                                   ", hidden_dim ", h.hidden_dim, ", n_layers ", h.n_layers,
                                                   ", n_heads ", h.n_heads, ", n_kv_heads ", h.n_kv_heads,
                                                   ", vocab_size ", h.vocab_size, ", seq_len ", h.seq_len, ")"));
  }
  const bool shared_classifier = h.vocab_size > 0;
  const int64_t vocab = std::abs(h.vocab_size), dim = h.dim, hidden = h.hidden_dim, layers = h.n_layers,
                head_dim = h.dim / h.n_heads, kv_dim = h.dim / h.n_heads * h.n_kv_heads, seq_len = h.seq_len;
  const int64_t floats = vocab * dim + layers * (2 * dim + 2 * dim * dim + 2 * kv_dim * dim + 3 * dim * hidden) + dim +
                         seq_len * head_dim + (shared_classifier ? 0 : vocab * dim);
  const uint64_t expected = sizeof(Header) + static_cast<uint64_t>(floats) * sizeof(float);
  if (bytes.size() != expected) {
    return absl::DataLossError(absl::StrCat(source, ": ", bytes.size(), " bytes, but its header implies ", expected));
  }
  const float* p = reinterpret_cast<const float*>(bytes.data() + sizeof(Header));
  auto take = [&p](int64_t n) {
    const float* start = p;
    p += n;
    return start;
  };
  const float* embed = take(vocab * dim);
  const float* rms_att = take(layers * dim);
  const float* wq = take(layers * dim * dim);
  const float* wk = take(layers * kv_dim * dim);
  const float* wv = take(layers * kv_dim * dim);
  const float* wo = take(layers * dim * dim);
  const float* rms_ffn = take(layers * dim);
  const float* w1 = take(layers * hidden * dim);
  const float* w2 = take(layers * dim * hidden);
  const float* w3 = take(layers * hidden * dim);
  const float* rms_final = take(dim);
  const float* freq_real = take(seq_len * head_dim / 2);
  const float* freq_imag = take(seq_len * head_dim / 2);
  const float* wcls = shared_classifier ? nullptr : take(vocab * dim);

  // The HF config assumes rope theta 10000; prove the stored tables are exactly that.
  double worst = 0;
  for (int64_t pos = 0; pos < seq_len; ++pos) {
    for (int64_t i = 0; i < head_dim / 2; ++i) {
      const double freq = 1.0 / std::pow(10000.0, static_cast<double>(2 * i) / head_dim);
      worst = std::max({worst, std::abs(freq_real[pos * head_dim / 2 + i] - std::cos(pos * freq)),
                        std::abs(freq_imag[pos * head_dim / 2 + i] - std::sin(pos * freq))});
    }
  }
  if (worst > 1e-3) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": freq_cis tables are not theta=10000 rotary tables (max deviation ", worst,
                     "); this converter handles only the standard tables"));
  }

  std::vector<Array> arrays;
  auto copy = [](const float* src, int64_t n) { return std::vector<float>(src, src + n); };
  arrays.push_back({"model.embed_tokens.weight", {vocab, dim}, copy(embed, vocab * dim)});
  for (int64_t l = 0; l < layers; ++l) {
    const std::string pre = absl::StrCat("model.layers.", l, ".");
    arrays.push_back({pre + "input_layernorm.weight", {dim}, copy(rms_att + l * dim, dim)});
    arrays.push_back({pre + "self_attn.q_proj.weight",
                      {dim, dim},
                      PermuteForRotateHalf(wq + l * dim * dim, h.n_heads, head_dim, dim)});
    arrays.push_back({pre + "self_attn.k_proj.weight",
                      {kv_dim, dim},
                      PermuteForRotateHalf(wk + l * kv_dim * dim, h.n_kv_heads, head_dim, dim)});
    arrays.push_back({pre + "self_attn.v_proj.weight", {kv_dim, dim}, copy(wv + l * kv_dim * dim, kv_dim * dim)});
    arrays.push_back({pre + "self_attn.o_proj.weight", {dim, dim}, copy(wo + l * dim * dim, dim * dim)});
    arrays.push_back({pre + "post_attention_layernorm.weight", {dim}, copy(rms_ffn + l * dim, dim)});
    arrays.push_back({pre + "mlp.gate_proj.weight", {hidden, dim}, copy(w1 + l * hidden * dim, hidden * dim)});
    arrays.push_back({pre + "mlp.down_proj.weight", {dim, hidden}, copy(w2 + l * dim * hidden, dim * hidden)});
    arrays.push_back({pre + "mlp.up_proj.weight", {hidden, dim}, copy(w3 + l * hidden * dim, hidden * dim)});
  }
  arrays.push_back({"model.norm.weight", {dim}, copy(rms_final, dim)});
  if (wcls != nullptr) arrays.push_back({"lm_head.weight", {vocab, dim}, copy(wcls, vocab * dim)});

  ASSIGN_OR_RETURN(std::string tokenizer_model, Llama2cTokenizerBinToModelProto(tokenizer_bin));

  nlohmann::json config = {
      {"architectures", {"LlamaForCausalLM"}},
      {"model_type", "llama"},
      {"hidden_size", dim},
      {"intermediate_size", hidden},
      {"num_hidden_layers", layers},
      {"num_attention_heads", h.n_heads},
      {"num_key_value_heads", h.n_kv_heads},
      {"head_dim", head_dim},
      {"vocab_size", vocab},
      {"max_position_embeddings", seq_len},
      {"rms_norm_eps", 1e-5},
      {"rope_theta", 10000.0},
      {"hidden_act", "silu"},
      {"tie_word_embeddings", shared_classifier},
      {"attention_bias", false},
      {"mlp_bias", false},
      {"bos_token_id", 1},
      {"eos_token_id", 2},
      {"torch_dtype", "float32"},
      {"_lesion_converted_from", checkpoint_bin.filename().string()},
  };
  nlohmann::json tokenizer_config = {
      {"tokenizer_class", "LlamaTokenizer"},
      {"bos_token", "<s>"},
      {"eos_token", "</s>"},
      {"unk_token", "<unk>"},
      {"add_bos_token", true},
      {"add_eos_token", false},
      {"legacy", true},
  };

  std::vector<TensorToWrite> tensors;
  for (const Array& a : arrays) {
    tensors.push_back({a.name, DType::kF32, a.shape,
                       absl::Span<const std::byte>(reinterpret_cast<const std::byte*>(a.data.data()),
                                                   a.data.size() * sizeof(float))});
  }
  std::error_code ec;
  std::filesystem::create_directories(out_dir, ec);
  if (ec) {
    return absl::PermissionDeniedError(absl::StrCat("cannot create ", out_dir.string(), ": ", ec.message()));
  }
  RETURN_IF_ERROR(WriteSafetensors(out_dir / "model.safetensors", tensors, {{"format", "pt"}}));
  RETURN_IF_ERROR(WriteFileAtomically(out_dir / "tokenizer.model", tokenizer_model));
  RETURN_IF_ERROR(WriteFileAtomically(out_dir / "config.json", config.dump(2) + "\n"));
  RETURN_IF_ERROR(WriteFileAtomically(out_dir / "tokenizer_config.json", tokenizer_config.dump(2) + "\n"));
  return absl::OkStatus();
}

}  // namespace lesion::model
