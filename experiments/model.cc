#include "experiments/model.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "experiments/weight_edits.h"

namespace lesion::experiments {

absl::StatusOr<std::unique_ptr<Model>> Model::Load(const std::filesystem::path& dir,
                                                   const LoadOptions& options) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) {
    return absl::NotFoundError(absl::StrCat("model directory not found: ", dir.string()));
  }
  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(dir));
  // The tokenizer is optional: a directory without one, or with one lesion cannot read, still
  // runs on token ids; commands that need text report the tokenizer's error.
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = LoadTokenizer(dir);
  ASSIGN_OR_RETURN(LoadedWeights weights, LoadCheckpointWeights(dir, config, options));
  ASSIGN_OR_RETURN(Transformer transformer, Transformer::Create(config, std::move(weights.weights)));
  ASSIGN_OR_RETURN(std::string fingerprint, WeightsFingerprint(transformer));
  return std::unique_ptr<Model>(new Model(dir, std::move(transformer), std::move(tokenizer),
                                          weights.checkpoint_dtype, std::move(fingerprint)));
}

absl::StatusOr<std::unique_ptr<Model>> Model::FromTransformer(const std::string& name, Transformer transformer) {
  ASSIGN_OR_RETURN(std::string fingerprint, WeightsFingerprint(transformer));
  const at::ScalarType dtype = transformer.dtype();
  return std::unique_ptr<Model>(new Model(name, std::move(transformer),
                                          absl::NotFoundError(absl::StrCat(name, " has no tokenizer")), dtype,
                                          std::move(fingerprint)));
}

absl::StatusOr<const Tokenizer*> Model::RequireTokenizer() const {
  if (tokenizer_ == nullptr && !absl::IsNotFound(tokenizer_error_)) {
    return absl::FailedPreconditionError(absl::StrCat("cannot use the tokenizer of ", dir_.string(), ": ",
                                                      tokenizer_error_.message()));
  }
  if (tokenizer_ == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        "model directory ", dir_.string(),
        " has no tokenizer (tokenizer.json, vocab.json + merges.txt, tokenizer.model or "
        "tokenizer.bin); pass token ids instead of text"));
  }
  return tokenizer_.get();
}

std::optional<int32_t> Model::bos_id() const {
  if (tokenizer_ != nullptr && tokenizer_->bos_id().has_value()) return tokenizer_->bos_id();
  return config().bos_token_id;
}

}  // namespace lesion::experiments
