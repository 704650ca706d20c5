// Model: a checkpoint loaded for experiments: its config, its transformer on one device and its
// tokenizer (when the checkpoint has one). A checkpoint is a Hugging Face directory (config.json +
// safetensors) or a GGUF file (gguf_checkpoint.h), whose quantized weights are dequantized to
// float32 at load: experiments edit and measure those dequantized weights.
//
//   ASSIGN_OR_RETURN(std::unique_ptr<Model> model, Model::Load("models/stories260K", {}));
//   ASSIGN_OR_RETURN(std::unique_ptr<Model> smol, Model::Load("SmolLM2-135M-Instruct.Q4_1.gguf", {}));
//   ASSIGN_OR_RETURN(at::Tensor logits, model->transformer().Forward(ids, RunPlan(n_layers)));
//
// Immutable after Load as far as callers go; Forward may run on any thread. Errors: see
// checkpoint_loader.h and tokenizer/tokenizer.h.
#ifndef LESION_MODEL_MODEL_H_
#define LESION_MODEL_MODEL_H_

#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "model/checkpoint_loader.h"
#include "model/checkpoint_tensors.h"
#include "model/model_config.h"
#include "model/tokenizer/tokenizer.h"
#include "model/transformer.h"

namespace lesion::model {

// A checkpoint opened without loading its weights: its config, its tensors' names, shapes and
// stored types (read lazily), and its tokenizer. What `lesion inspect` shows; Model::Load loads it.
struct OpenedCheckpoint {
  std::filesystem::path path;  // the directory, or the GGUF file (the first split of a set)
  ModelConfig config;
  std::unique_ptr<CheckpointTensors> tensors;
  // The tokenizer, or why there is none (NotFound: the checkpoint has none).
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = absl::NotFoundError("no tokenizer");
  // GGUF metadata as text (key, value), tokenizer arrays summarised; empty for directories.
  std::vector<std::pair<std::string, std::string>> metadata;
};

// Opens `path`: a model directory (config.json + safetensors), a .gguf file, or a directory
// without config.json that holds one GGUF checkpoint (one file, or the splits of one).
// NotFound if it does not exist or holds no checkpoint; InvalidArgument for several GGUF files
// in one directory, and as ParseModelConfig / GgufModelConfig; file errors as SafetensorsCheckpoint
// / GgufCheckpoint.
absl::StatusOr<OpenedCheckpoint> OpenCheckpoint(const std::filesystem::path& path);

// The tokenizer alone: a GGUF checkpoint's (a .gguf file, or a directory holding one and no
// config.json), else LoadTokenizer(path) (a directory with tokenizer files and no weights will do).
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadCheckpointTokenizer(const std::filesystem::path& path);

class Model {
 public:
  // `path` as for OpenCheckpoint; errors as OpenCheckpoint and LoadCheckpointWeights.
  static absl::StatusOr<std::unique_ptr<Model>> Load(const std::filesystem::path& path, const LoadOptions& options);
  // A model built in memory (e.g. random weights of a benchmark's shape): no tokenizer, and
  // `name` stands where the directory would.
  static absl::StatusOr<std::unique_ptr<Model>> FromTransformer(const std::string& name, Transformer transformer);

  const ModelConfig& config() const { return transformer_.config(); }
  const Transformer& transformer() const { return transformer_; }
  // nullptr when the directory holds no usable tokenizer.
  const Tokenizer* tokenizer() const { return tokenizer_.get(); }
  // The tokenizer, or FailedPrecondition naming the directory when it has none, or the error its
  // tokenizer files gave (a model whose tokenizer lesion cannot read still runs on token ids).
  absl::StatusOr<const Tokenizer*> RequireTokenizer() const;
  // The directory or GGUF file it was loaded from (the name given to FromTransformer).
  const std::filesystem::path& dir() const { return dir_; }
  at::ScalarType checkpoint_dtype() const { return checkpoint_dtype_; }
  // "safetensors", "gguf", or "memory" for FromTransformer.
  const std::string& checkpoint_format() const { return checkpoint_format_; }
  // What was dequantized at load, e.g. "gguf F32 x61, Q4_1 x210, Q8_0 x1 dequantized to float32";
  // "" when the checkpoint stored floats.
  const std::string& dequantized_from() const { return dequantized_from_; }
  // BOS id from the tokenizer, else from config.json.
  std::optional<int32_t> bos_id() const;
  // Hex digest of every weight tensor's exact bits as loaded (dtype and device included in what
  // the bits are): two loads with the same fingerprint compute the same numbers.
  const std::string& fingerprint() const { return fingerprint_; }

 private:
  Model(std::filesystem::path dir, Transformer transformer, absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer,
        at::ScalarType checkpoint_dtype, std::string fingerprint)
      : dir_(std::move(dir)),
        transformer_(std::move(transformer)),
        checkpoint_dtype_(checkpoint_dtype),
        fingerprint_(std::move(fingerprint)) {
    if (tokenizer.ok()) {
      tokenizer_ = *std::move(tokenizer);
    } else {
      tokenizer_error_ = tokenizer.status();
    }
  }

  std::filesystem::path dir_;
  std::string checkpoint_format_ = "memory";
  std::string dequantized_from_;
  Transformer transformer_;
  std::unique_ptr<Tokenizer> tokenizer_;
  absl::Status tokenizer_error_;  // why tokenizer_ is null, if it is
  at::ScalarType checkpoint_dtype_;
  std::string fingerprint_;
};

}  // namespace lesion::model

#endif  // LESION_MODEL_MODEL_H_
