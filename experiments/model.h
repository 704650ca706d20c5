// Model: a checkpoint loaded for experiments: its config, its transformer on one device and its
// tokenizer (when the directory has one).
//
//   ASSIGN_OR_RETURN(std::unique_ptr<Model> model, Model::Load("models/stories260K", {}));
//   ASSIGN_OR_RETURN(at::Tensor logits, model->transformer().Forward(ids, RunPlan(n_layers)));
//
// Immutable after Load as far as callers go; Forward may run on any thread. Errors: see
// checkpoint_loader.h and tokenizer/tokenizer.h.
#ifndef LESION_EXPERIMENTS_MODEL_H_
#define LESION_EXPERIMENTS_MODEL_H_

#include <filesystem>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "experiments/checkpoint_loader.h"
#include "experiments/model_config.h"
#include "experiments/tokenizer/tokenizer.h"
#include "experiments/transformer.h"

namespace lesion::experiments {

class Model {
 public:
  static absl::StatusOr<std::unique_ptr<Model>> Load(const std::filesystem::path& dir,
                                                     const LoadOptions& options);
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
  const std::filesystem::path& dir() const { return dir_; }
  at::ScalarType checkpoint_dtype() const { return checkpoint_dtype_; }
  // BOS id from the tokenizer, else from config.json.
  std::optional<int32_t> bos_id() const;
  // Hex digest of every weight tensor's exact bits as loaded (dtype and device included in what
  // the bits are): two loads with the same fingerprint compute the same numbers.
  const std::string& fingerprint() const { return fingerprint_; }

 private:
  Model(std::filesystem::path dir, Transformer transformer,
        absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer, at::ScalarType checkpoint_dtype,
        std::string fingerprint)
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
  Transformer transformer_;
  std::unique_ptr<Tokenizer> tokenizer_;
  absl::Status tokenizer_error_;  // why tokenizer_ is null, if it is
  at::ScalarType checkpoint_dtype_;
  std::string fingerprint_;
};

}  // namespace lesion::experiments

#endif  // LESION_EXPERIMENTS_MODEL_H_
