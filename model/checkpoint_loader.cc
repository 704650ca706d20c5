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

// A norm's gamma (and a LayerNorm's beta) under `name` ("...input_layernorm"); Gemma's (1 + w)
// norms are stored as their effective gamma 1 + w, computed in float32 as transformers does.
absl::StatusOr<NormWeights> LoadNorm(TensorSource& src, const ModelConfig& c, const std::string& name, int64_t width) {
  NormWeights n;
  ASSIGN_OR_RETURN(n.weight, src.Get(name + ".weight", {width}));
  if (c.norm_adds_one) n.weight = (n.weight.to(at::kFloat) + 1.0).to(n.weight.scalar_type());
  if (c.norm == NormKind::kLayerNorm) {
    ASSIGN_OR_RETURN(n.bias, src.Get(name + ".bias", {width}));
  }
  return n;
}

// A linear layer `name` [out, in], with its bias when `bias`.
absl::StatusOr<LinearWeights> LoadLinear(TensorSource& src, const std::string& name, int64_t out, int64_t in,
                                         bool bias) {
  LinearWeights w;
  ASSIGN_OR_RETURN(w.weight, src.Get(name + ".weight", {out, in}));
  if (bias) {
    ASSIGN_OR_RETURN(w.bias, src.Get(name + ".bias", {out}));
  }
  return w;
}

// Fuses q, k and v (or gate and up) row-wise into one matrix, biases likewise.
LinearWeights Fuse(std::initializer_list<LinearWeights> parts) {
  std::vector<at::Tensor> weights, biases;
  for (const LinearWeights& p : parts) {
    weights.push_back(p.weight);
    if (p.bias.defined()) biases.push_back(p.bias);
  }
  return {at::cat(weights, 0), biases.empty() ? at::Tensor() : at::cat(biases, 0)};
}

// The separate q_proj, k_proj and v_proj of `layer_prefix` + "self_attn.", fused into [q; k; v].
absl::StatusOr<LinearWeights> LoadSeparateQkv(TensorSource& src, const ModelConfig& c,
                                              const std::string& layer_prefix) {
  const int64_t d = c.d_model, q_dim = c.n_heads * c.head_dim, kv_dim = c.n_kv_heads * c.head_dim;
  const std::string p = layer_prefix + "self_attn.";
  ASSIGN_OR_RETURN(LinearWeights q, LoadLinear(src, p + "q_proj", q_dim, d, c.qkv_bias));
  ASSIGN_OR_RETURN(LinearWeights k, LoadLinear(src, p + "k_proj", kv_dim, d, c.qkv_bias));
  ASSIGN_OR_RETURN(LinearWeights v, LoadLinear(src, p + "v_proj", kv_dim, d, c.qkv_bias));
  return Fuse({q, k, v});
}

// GPT-NeoX (prefix gpt_neox.): query_key_value holds q, k and v interleaved per head, rows
// [heads, 3, head_dim]; they are regrouped into lesion's [q; k; v] at load.
absl::Status LoadGptNeox(TensorSource& src, const ModelConfig& c, TransformerWeights& w) {
  const int64_t d = c.d_model, f = c.d_ffn, hd = c.head_dim, heads = c.n_heads;
  ASSIGN_OR_RETURN(w.embed, src.Get("embed_in.weight", {c.vocab_size, d}));
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = absl::StrCat("layers.", l, ".");
    BlockWeights b;
    ASSIGN_OR_RETURN(b.attn_norm, LoadNorm(src, c, p + "input_layernorm", d));
    ASSIGN_OR_RETURN(b.mlp_norm, LoadNorm(src, c, p + "post_attention_layernorm", d));
    ASSIGN_OR_RETURN(LinearWeights qkv,
                     LoadLinear(src, p + "attention.query_key_value", 3 * heads * hd, d, c.qkv_bias));
    b.qkv.weight = qkv.weight.view({heads, 3, hd, d}).transpose(0, 1).reshape({3 * heads * hd, d});
    if (qkv.bias.defined()) b.qkv.bias = qkv.bias.view({heads, 3, hd}).transpose(0, 1).reshape({3 * heads * hd});
    ASSIGN_OR_RETURN(b.o, LoadLinear(src, p + "attention.dense", d, heads * hd, c.o_bias));
    ASSIGN_OR_RETURN(b.gate_up, LoadLinear(src, p + "mlp.dense_h_to_4h", f, d, true));
    ASSIGN_OR_RETURN(b.down, LoadLinear(src, p + "mlp.dense_4h_to_h", d, f, true));
    w.blocks.push_back(std::move(b));
  }
  ASSIGN_OR_RETURN(w.final_norm, LoadNorm(src, c, "final_layer_norm", d));
  return absl::OkStatus();
}

// OPT (prefix model.decoder.): learned positions with their offset rows, fc1/fc2 MLP.
absl::Status LoadOpt(TensorSource& src, const ModelConfig& c, TransformerWeights& w) {
  const int64_t d = c.d_model, f = c.d_ffn, q_dim = c.n_heads * c.head_dim;
  ASSIGN_OR_RETURN(w.embed, src.Get("embed_tokens.weight", {c.vocab_size, d}));
  ASSIGN_OR_RETURN(w.positions, src.Get("embed_positions.weight", {c.max_position_embeddings + c.position_offset, d}));
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = absl::StrCat("layers.", l, ".");
    BlockWeights b;
    ASSIGN_OR_RETURN(b.attn_norm, LoadNorm(src, c, p + "self_attn_layer_norm", d));
    ASSIGN_OR_RETURN(b.qkv, LoadSeparateQkv(src, c, p));
    ASSIGN_OR_RETURN(b.o, LoadLinear(src, p + "self_attn.out_proj", d, q_dim, c.o_bias));
    ASSIGN_OR_RETURN(b.mlp_norm, LoadNorm(src, c, p + "final_layer_norm", d));
    ASSIGN_OR_RETURN(b.gate_up, LoadLinear(src, p + "fc1", f, d, c.mlp_bias));
    ASSIGN_OR_RETURN(b.down, LoadLinear(src, p + "fc2", d, f, c.mlp_bias));
    w.blocks.push_back(std::move(b));
  }
  ASSIGN_OR_RETURN(w.final_norm, LoadNorm(src, c, "final_layer_norm", d));
  return absl::OkStatus();
}

// Phi-2 (prefix model.): one input_layernorm per block, dense output projection, fc1/fc2 MLP.
absl::Status LoadPhi(TensorSource& src, const ModelConfig& c, TransformerWeights& w) {
  const int64_t d = c.d_model, f = c.d_ffn, q_dim = c.n_heads * c.head_dim;
  ASSIGN_OR_RETURN(w.embed, src.Get("embed_tokens.weight", {c.vocab_size, d}));
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = absl::StrCat("layers.", l, ".");
    BlockWeights b;
    ASSIGN_OR_RETURN(b.attn_norm, LoadNorm(src, c, p + "input_layernorm", d));
    ASSIGN_OR_RETURN(b.qkv, LoadSeparateQkv(src, c, p));
    ASSIGN_OR_RETURN(b.o, LoadLinear(src, p + "self_attn.dense", d, q_dim, c.o_bias));
    ASSIGN_OR_RETURN(b.gate_up, LoadLinear(src, p + "mlp.fc1", f, d, c.mlp_bias));
    ASSIGN_OR_RETURN(b.down, LoadLinear(src, p + "mlp.fc2", d, f, c.mlp_bias));
    w.blocks.push_back(std::move(b));
  }
  ASSIGN_OR_RETURN(w.final_norm, LoadNorm(src, c, "final_layernorm", d));
  return absl::OkStatus();
}

// LLaMA and the families named like it (prefix model.): Mistral, Qwen2/3, Phi-3 (fused qkv_proj
// and gate_up_proj, already in lesion's row order), OLMo-2 and Gemma-2/3 (post-norms, QK-norms).
absl::Status LoadLlama(TensorSource& src, const ModelConfig& c, TransformerWeights& w) {
  const int64_t d = c.d_model, f = c.d_ffn;
  const int64_t q_dim = c.n_heads * c.head_dim, kv_dim = c.n_kv_heads * c.head_dim;
  const bool fused = c.family == Family::kPhi3;
  const bool gemma = c.family == Family::kGemma2 || c.family == Family::kGemma3;
  ASSIGN_OR_RETURN(w.embed, src.Get("embed_tokens.weight", {c.vocab_size, d}));
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = absl::StrCat("layers.", l, ".");
    BlockWeights b;
    if (c.pre_norms) {
      ASSIGN_OR_RETURN(b.attn_norm, LoadNorm(src, c, p + "input_layernorm", d));
      ASSIGN_OR_RETURN(b.mlp_norm,
                       LoadNorm(src, c, p + (gemma ? "pre_feedforward_layernorm" : "post_attention_layernorm"), d));
    }
    if (c.post_norms) {
      ASSIGN_OR_RETURN(b.attn_post_norm, LoadNorm(src, c, p + "post_attention_layernorm", d));
      ASSIGN_OR_RETURN(b.mlp_post_norm, LoadNorm(src, c, p + "post_feedforward_layernorm", d));
    }
    if (fused) {
      ASSIGN_OR_RETURN(b.qkv, LoadLinear(src, p + "self_attn.qkv_proj", q_dim + 2 * kv_dim, d, c.qkv_bias));
      ASSIGN_OR_RETURN(b.gate_up, LoadLinear(src, p + "mlp.gate_up_proj", 2 * f, d, c.mlp_bias));
    } else {
      ASSIGN_OR_RETURN(b.qkv, LoadSeparateQkv(src, c, p));
      ASSIGN_OR_RETURN(LinearWeights gate, LoadLinear(src, p + "mlp.gate_proj", f, d, c.mlp_bias));
      ASSIGN_OR_RETURN(LinearWeights up, LoadLinear(src, p + "mlp.up_proj", f, d, c.mlp_bias));
      b.gate_up = Fuse({gate, up});
    }
    if (c.qk_norm != QkNorm::kNone) {
      const bool per_head = c.qk_norm == QkNorm::kPerHead;
      ASSIGN_OR_RETURN(b.q_norm, LoadNorm(src, c, p + "self_attn.q_norm", per_head ? c.head_dim : q_dim));
      ASSIGN_OR_RETURN(b.k_norm, LoadNorm(src, c, p + "self_attn.k_norm", per_head ? c.head_dim : kv_dim));
    }
    ASSIGN_OR_RETURN(b.o, LoadLinear(src, p + "self_attn.o_proj", d, q_dim, c.o_bias));
    ASSIGN_OR_RETURN(b.down, LoadLinear(src, p + "mlp.down_proj", d, f, c.mlp_bias));
    w.blocks.push_back(std::move(b));
  }
  ASSIGN_OR_RETURN(w.final_norm, LoadNorm(src, c, "norm", d));
  return absl::OkStatus();
}

// Where a family's tensors live: the prefix of its body ("model." etc., optional in the file) and
// the name of its own output head.
struct FamilyLayout {
  const char* prefix;
  const char* lm_head;
  absl::Status (*load)(TensorSource&, const ModelConfig&, TransformerWeights&);
};

FamilyLayout LayoutOf(Family family) {
  switch (family) {
    case Family::kGpt2:
      return {"transformer.", "lm_head", LoadGpt2};
    case Family::kGptNeox:
      return {"gpt_neox.", "embed_out", LoadGptNeox};
    case Family::kOpt:
      return {"model.decoder.", "lm_head", LoadOpt};
    case Family::kPhi:
      return {"model.", "lm_head", LoadPhi};
    case Family::kLlama:
    case Family::kPhi3:
    case Family::kOlmo2:
    case Family::kGemma2:
    case Family::kGemma3:
    case Family::kQwen3:
      break;
  }
  return {"model.", "lm_head", LoadLlama};
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
      R"(((transformer\.)?h\.\d+\.attn\.(masked_)?bias)|((gpt_neox\.)?layers\.\d+\.attention\.(masked_)?bias)|)"
      R"(.*\.rotary_emb\.inv_freq)");
  return std::regex_match(name, kBuffers);
}

absl::StatusOr<LoadedWeights> LoadCheckpointWeights(const CheckpointTensors& checkpoint, const ModelConfig& config,
                                                    const LoadOptions& options) {
  const at::ScalarType dtype = options.dtype.value_or(checkpoint.DefaultDtype());
  const FamilyLayout layout = LayoutOf(config.family);
  const std::string head_name = absl::StrCat(layout.lm_head, ".weight");
  return TorchCall(absl::StrCat("loading ", checkpoint.Files()), [&]() -> absl::StatusOr<LoadedWeights> {
    // Weights are ordinary tensors (not inference tensors) so that interventions may edit them in
    // place and restore them; nothing here records autograd history.
    TensorSource src(checkpoint, layout.prefix, at::TensorOptions().dtype(dtype).device(options.device),
                     options.cancelled);
    LoadedWeights loaded;
    TransformerWeights& w = loaded.weights;
    RETURN_IF_ERROR(layout.load(src, config, w));
    // The output head: tied to the embedding, or its own weight; Phi-2's has a bias.
    if (config.tied_embeddings) {
      w.lm_head = w.embed;
    } else {
      ASSIGN_OR_RETURN(w.lm_head, src.Get(head_name, {config.vocab_size, config.d_model}));
    }
    if (config.lm_head_bias) {
      ASSIGN_OR_RETURN(w.lm_head_bias, src.Get(absl::StrCat(layout.lm_head, ".bias"), {config.vocab_size}));
    }
    for (BlockWeights& b : w.blocks) MakeViews(config, b);
    // A tied checkpoint may carry a copy of the head; buffers are never weights.
    std::vector<std::string> extra = src.Unconsumed([&](const std::string& name) {
      return IsNonWeightBuffer(name) || (config.tied_embeddings && name == head_name);
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
    auto norm = [&](int64_t width = 0) {
      width = width > 0 ? width : c.d_model;
      NormWeights n{at::ones({width}, options), at::Tensor()};
      if (c.norm == NormKind::kLayerNorm) n.bias = at::zeros({width}, options);
      return n;
    };
    auto bias = [&](bool present, int64_t n) { return present ? at::zeros({n}, options) : at::Tensor(); };
    const int64_t qkv_rows = (c.n_heads + 2 * c.n_kv_heads) * c.head_dim;
    TransformerWeights w;
    w.embed = matrix(c.vocab_size, c.d_model);
    if (c.learned_positions) w.positions = matrix(c.max_position_embeddings + c.position_offset, c.d_model);
    for (int64_t l = 0; l < c.n_layers; ++l) {
      BlockWeights b;
      if (c.pre_norms) {
        b.attn_norm = norm();
        if (c.block_layout != BlockLayout::kParallelSharedNorm) b.mlp_norm = norm();
      }
      if (c.post_norms) {
        b.attn_post_norm = norm();
        b.mlp_post_norm = norm();
      }
      if (c.qk_norm != QkNorm::kNone) {
        const bool per_head = c.qk_norm == QkNorm::kPerHead;
        b.q_norm = norm(per_head ? c.head_dim : c.n_heads * c.head_dim);
        b.k_norm = norm(per_head ? c.head_dim : c.n_kv_heads * c.head_dim);
      }
      b.qkv = {matrix(qkv_rows, c.d_model), bias(c.qkv_bias, qkv_rows)};
      b.o = {matrix(c.d_model, c.n_heads * c.head_dim), bias(c.o_bias, c.d_model)};
      const int64_t up_rows = (c.gated_mlp ? 2 : 1) * c.d_ffn;
      b.gate_up = {matrix(up_rows, c.d_model), bias(c.mlp_bias, up_rows)};
      b.down = {matrix(c.d_model, c.d_ffn), bias(c.mlp_bias, c.d_model)};
      MakeViews(c, b);
      w.blocks.push_back(std::move(b));
    }
    w.final_norm = norm();
    w.lm_head = c.tied_embeddings ? w.embed : matrix(c.vocab_size, c.d_model);
    w.lm_head_bias = bias(c.lm_head_bias, c.vocab_size);
    return w;
  });
}

}  // namespace lesion::model
