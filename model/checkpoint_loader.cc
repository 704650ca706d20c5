#include "model/checkpoint_loader.h"

#include <cstring>
#include <functional>
#include <regex>
#include <set>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "model/torch_util.h"

namespace lesion::model {
namespace {

std::string ShapeString(at::IntArrayRef shape) { return absl::StrCat("[", absl::StrJoin(shape, ", "), "]"); }

// Reads tensors by name from a checkpoint, converting to the target device and dtype, and records
// which names were consumed so that extra tensors can be reported.
class TensorSource {
 public:
  TensorSource(const CheckpointTensors& checkpoint, absl::string_view prefix, at::TensorOptions options,
               std::function<bool()> cancelled)
      : checkpoint_(checkpoint), prefix_(prefix), options_(options), cancelled_(std::move(cancelled)) {}

  // `name` without the model prefix ("model." / "transformer."), which is optional in the file.
  absl::StatusOr<at::Tensor> Get(const std::string& name, std::vector<int64_t> shape) {
    // Between tensors: the one place a load of any size passes often enough to stop promptly.
    if (cancelled_ && cancelled_()) {
      return absl::CancelledError(absl::StrCat("loading ", checkpoint_.Files(), " was cancelled"));
    }
    std::optional<std::string> stored = Lookup(name);
    if (!stored.has_value()) {
      return absl::InvalidArgumentError(absl::StrCat("checkpoint ", checkpoint_.Files(), " has no tensor \"", prefix_,
                                                     name, "\" (expected shape ", ShapeString(shape), ")"));
    }
    const CheckpointTensors::Info info = *checkpoint_.Find(*stored);
    consumed_.insert(*stored);
    if (info.shape != shape) {
      return absl::InvalidArgumentError(absl::StrCat("tensor \"", *stored, "\" in ", checkpoint_.Files(), " has shape ",
                                                     ShapeString(info.shape), " but the config implies ",
                                                     ShapeString(shape)));
    }
    ASSIGN_OR_RETURN(at::Tensor cpu, checkpoint_.ReadCpu(*stored));
    if (!source_dtype_.has_value()) source_dtype_ = cpu.scalar_type();
    return cpu.to(options_);
  }

  // Names in the checkpoint that no Get consumed and that are not known non-weight buffers.
  std::vector<std::string> Unconsumed(const std::function<bool(const std::string&)>& ignorable) const {
    std::vector<std::string> extra;
    for (const std::string& name : checkpoint_.Names()) {
      if (consumed_.count(name) == 0 && !ignorable(name)) extra.push_back(name);
    }
    return extra;
  }
  std::optional<at::ScalarType> source_dtype() const { return source_dtype_; }
  std::string Files() const { return checkpoint_.Files(); }

 private:
  std::optional<std::string> Lookup(const std::string& name) const {
    if (checkpoint_.Find(prefix_ + name).has_value()) return prefix_ + name;
    if (checkpoint_.Find(name).has_value()) return name;
    return std::nullopt;
  }

  const CheckpointTensors& checkpoint_;
  std::string prefix_;
  at::TensorOptions options_;
  std::function<bool()> cancelled_;
  std::set<std::string> consumed_;
  std::optional<at::ScalarType> source_dtype_;
};

absl::Status LoadGpt2(TensorSource& src, const ModelConfig& c, TransformerWeights& w) {
  const int64_t d = c.d_model, f = c.d_ffn;
  ASSIGN_OR_RETURN(w.embed, src.Get("wte.weight", {c.vocab_size, d}));
  ASSIGN_OR_RETURN(w.positions, src.Get("wpe.weight", {c.max_position_embeddings, d}));
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = absl::StrCat("h.", l, ".");
    BlockWeights b;
    ASSIGN_OR_RETURN(b.attn_norm.weight, src.Get(p + "ln_1.weight", {d}));
    ASSIGN_OR_RETURN(b.attn_norm.bias, src.Get(p + "ln_1.bias", {d}));
    // Conv1D stores [in, out]; transpose to nn.Linear's [out, in].
    ASSIGN_OR_RETURN(at::Tensor c_attn, src.Get(p + "attn.c_attn.weight", {d, 3 * d}));
    b.qkv.weight = c_attn.t().contiguous();
    ASSIGN_OR_RETURN(b.qkv.bias, src.Get(p + "attn.c_attn.bias", {3 * d}));
    ASSIGN_OR_RETURN(at::Tensor c_proj, src.Get(p + "attn.c_proj.weight", {d, d}));
    b.o.weight = c_proj.t().contiguous();
    ASSIGN_OR_RETURN(b.o.bias, src.Get(p + "attn.c_proj.bias", {d}));
    ASSIGN_OR_RETURN(b.mlp_norm.weight, src.Get(p + "ln_2.weight", {d}));
    ASSIGN_OR_RETURN(b.mlp_norm.bias, src.Get(p + "ln_2.bias", {d}));
    ASSIGN_OR_RETURN(at::Tensor c_fc, src.Get(p + "mlp.c_fc.weight", {d, f}));
    b.gate_up.weight = c_fc.t().contiguous();
    ASSIGN_OR_RETURN(b.gate_up.bias, src.Get(p + "mlp.c_fc.bias", {f}));
    ASSIGN_OR_RETURN(at::Tensor c_proj2, src.Get(p + "mlp.c_proj.weight", {f, d}));
    b.down.weight = c_proj2.t().contiguous();
    ASSIGN_OR_RETURN(b.down.bias, src.Get(p + "mlp.c_proj.bias", {d}));
    w.blocks.push_back(std::move(b));
  }
  ASSIGN_OR_RETURN(w.final_norm.weight, src.Get("ln_f.weight", {d}));
  ASSIGN_OR_RETURN(w.final_norm.bias, src.Get("ln_f.bias", {d}));
  return absl::OkStatus();
}

absl::Status LoadLlama(TensorSource& src, const ModelConfig& c, TransformerWeights& w) {
  const int64_t d = c.d_model, f = c.d_ffn;
  const int64_t q_dim = c.n_heads * c.head_dim, kv_dim = c.n_kv_heads * c.head_dim;
  ASSIGN_OR_RETURN(w.embed, src.Get("embed_tokens.weight", {c.vocab_size, d}));
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = absl::StrCat("layers.", l, ".");
    BlockWeights b;
    ASSIGN_OR_RETURN(b.attn_norm.weight, src.Get(p + "input_layernorm.weight", {d}));
    ASSIGN_OR_RETURN(at::Tensor q, src.Get(p + "self_attn.q_proj.weight", {q_dim, d}));
    ASSIGN_OR_RETURN(at::Tensor k, src.Get(p + "self_attn.k_proj.weight", {kv_dim, d}));
    ASSIGN_OR_RETURN(at::Tensor v, src.Get(p + "self_attn.v_proj.weight", {kv_dim, d}));
    b.qkv.weight = at::cat({q, k, v}, 0);
    if (c.qkv_bias) {
      ASSIGN_OR_RETURN(at::Tensor qb, src.Get(p + "self_attn.q_proj.bias", {q_dim}));
      ASSIGN_OR_RETURN(at::Tensor kb, src.Get(p + "self_attn.k_proj.bias", {kv_dim}));
      ASSIGN_OR_RETURN(at::Tensor vb, src.Get(p + "self_attn.v_proj.bias", {kv_dim}));
      b.qkv.bias = at::cat({qb, kb, vb}, 0);
    }
    ASSIGN_OR_RETURN(b.o.weight, src.Get(p + "self_attn.o_proj.weight", {d, q_dim}));
    if (c.o_bias) {
      ASSIGN_OR_RETURN(b.o.bias, src.Get(p + "self_attn.o_proj.bias", {d}));
    }
    ASSIGN_OR_RETURN(b.mlp_norm.weight, src.Get(p + "post_attention_layernorm.weight", {d}));
    ASSIGN_OR_RETURN(at::Tensor gate, src.Get(p + "mlp.gate_proj.weight", {f, d}));
    ASSIGN_OR_RETURN(at::Tensor up, src.Get(p + "mlp.up_proj.weight", {f, d}));
    b.gate_up.weight = at::cat({gate, up}, 0);
    ASSIGN_OR_RETURN(b.down.weight, src.Get(p + "mlp.down_proj.weight", {d, f}));
    if (c.mlp_bias) {
      ASSIGN_OR_RETURN(at::Tensor gb, src.Get(p + "mlp.gate_proj.bias", {f}));
      ASSIGN_OR_RETURN(at::Tensor ub, src.Get(p + "mlp.up_proj.bias", {f}));
      b.gate_up.bias = at::cat({gb, ub}, 0);
      ASSIGN_OR_RETURN(b.down.bias, src.Get(p + "mlp.down_proj.bias", {d}));
    }
    w.blocks.push_back(std::move(b));
  }
  ASSIGN_OR_RETURN(w.final_norm.weight, src.Get("norm.weight", {d}));
  return absl::OkStatus();
}

// q/k/v and gate/up become row views of the fused matrices.
void MakeViews(const ModelConfig& c, BlockWeights& b) {
  const int64_t q_dim = c.n_heads * c.head_dim, kv_dim = c.n_kv_heads * c.head_dim;
  auto rows = [](const at::Tensor& t, int64_t begin, int64_t n) {
    return t.defined() ? t.narrow(0, begin, n) : at::Tensor();
  };
  b.q = {rows(b.qkv.weight, 0, q_dim), rows(b.qkv.bias, 0, q_dim)};
  b.k = {rows(b.qkv.weight, q_dim, kv_dim), rows(b.qkv.bias, q_dim, kv_dim)};
  b.v = {rows(b.qkv.weight, q_dim + kv_dim, kv_dim), rows(b.qkv.bias, q_dim + kv_dim, kv_dim)};
  if (c.gated_mlp) {
    b.gate = {rows(b.gate_up.weight, 0, c.d_ffn), rows(b.gate_up.bias, 0, c.d_ffn)};
    b.up = {rows(b.gate_up.weight, c.d_ffn, c.d_ffn), rows(b.gate_up.bias, c.d_ffn, c.d_ffn)};
  } else {
    b.up = b.gate_up;
  }
}

}  // namespace

bool IsNonWeightBuffer(const std::string& name) {
  static const std::regex kBuffers(
      R"(((transformer\.)?h\.\d+\.attn\.(masked_)?bias)|((model\.)?layers\.\d+\.self_attn\.rotary_emb\.inv_freq))");
  return std::regex_match(name, kBuffers);
}

absl::StatusOr<LoadedWeights> LoadCheckpointWeights(const CheckpointTensors& checkpoint, const ModelConfig& config,
                                                    const LoadOptions& options) {
  const at::ScalarType dtype = options.dtype.value_or(checkpoint.DefaultDtype());
  const bool gpt2 = config.family == Family::kGpt2;
  return TorchCall(absl::StrCat("loading ", checkpoint.Files()), [&]() -> absl::StatusOr<LoadedWeights> {
    // Weights are ordinary tensors (not inference tensors) so that interventions may edit them in
    // place and restore them; nothing here records autograd history.
    TensorSource src(checkpoint, gpt2 ? "transformer." : "model.",
                     at::TensorOptions().dtype(dtype).device(options.device), options.cancelled);
    LoadedWeights loaded;
    TransformerWeights& w = loaded.weights;
    RETURN_IF_ERROR(gpt2 ? LoadGpt2(src, config, w) : LoadLlama(src, config, w));
    // The output head: tied to the embedding, or its own lm_head.weight.
    if (config.tied_embeddings) {
      w.lm_head = w.embed;
    } else {
      ASSIGN_OR_RETURN(w.lm_head, src.Get("lm_head.weight", {config.vocab_size, config.d_model}));
    }
    for (BlockWeights& b : w.blocks) MakeViews(config, b);
    // A tied checkpoint may carry a copy of the head; buffers are never weights.
    std::vector<std::string> extra = src.Unconsumed([&](const std::string& name) {
      return IsNonWeightBuffer(name) || (config.tied_embeddings && name == "lm_head.weight");
    });
    if (!extra.empty()) {
      if (extra.size() > 5) extra.resize(5), extra.push_back("...");
      return absl::InvalidArgumentError(absl::StrCat("checkpoint ", src.Files(), " has tensors that are not part of a ",
                                                     config.architecture,
                                                     " with this config: ", absl::StrJoin(extra, ", ")));
    }
    loaded.checkpoint_dtype = src.source_dtype().value_or(at::kFloat);
    return loaded;
  });
}

absl::StatusOr<LoadedWeights> LoadCheckpointWeights(const std::filesystem::path& model_dir, const ModelConfig& config,
                                                    const LoadOptions& options) {
  ASSIGN_OR_RETURN(std::unique_ptr<CheckpointTensors> checkpoint, OpenSafetensorsTensors(model_dir));
  return LoadCheckpointWeights(*checkpoint, config, options);
}

absl::StatusOr<TransformerWeights> MakeRandomWeights(const ModelConfig& c, at::Device device, at::ScalarType dtype) {
  return TorchCall("making random weights", [&]() -> absl::StatusOr<TransformerWeights> {
    const auto options = at::TensorOptions().dtype(dtype).device(device);
    auto matrix = [&](int64_t rows, int64_t cols) {
      return at::normal(0.0, 0.02, {rows, cols}, std::nullopt, options);  // [rows, cols]
    };
    auto norm = [&] {
      NormWeights n{at::ones({c.d_model}, options), at::Tensor()};
      if (c.norm == NormKind::kLayerNorm) n.bias = at::zeros({c.d_model}, options);
      return n;
    };
    auto bias = [&](bool present, int64_t n) { return present ? at::zeros({n}, options) : at::Tensor(); };
    const int64_t qkv_rows = (c.n_heads + 2 * c.n_kv_heads) * c.head_dim;
    TransformerWeights w;
    w.embed = matrix(c.vocab_size, c.d_model);
    if (c.learned_positions) w.positions = matrix(c.max_position_embeddings, c.d_model);
    for (int64_t l = 0; l < c.n_layers; ++l) {
      BlockWeights b;
      b.attn_norm = norm();
      b.qkv = {matrix(qkv_rows, c.d_model), bias(c.qkv_bias, qkv_rows)};
      b.o = {matrix(c.d_model, c.n_heads * c.head_dim), bias(c.o_bias, c.d_model)};
      b.mlp_norm = norm();
      const int64_t up_rows = (c.gated_mlp ? 2 : 1) * c.d_ffn;
      b.gate_up = {matrix(up_rows, c.d_model), bias(c.mlp_bias, up_rows)};
      b.down = {matrix(c.d_model, c.d_ffn), bias(c.mlp_bias, c.d_model)};
      MakeViews(c, b);
      w.blocks.push_back(std::move(b));
    }
    w.final_norm = norm();
    w.lm_head = c.tied_embeddings ? w.embed : matrix(c.vocab_size, c.d_model);
    return w;
  });
}

}  // namespace lesion::model
