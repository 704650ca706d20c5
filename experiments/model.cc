#include "experiments/model.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace lesion::experiments {

absl::StatusOr<std::unique_ptr<Model>> Model::Load(const std::filesystem::path& dir,
                                                   const LoadOptions& options) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) {
    return absl::NotFoundError(absl::StrCat("model directory not found: ", dir.string()));
  }
  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(dir));
  // The tokenizer is optional (a weights-only directory still runs on token ids), but a present
  // and broken one is an error.
  std::unique_ptr<Tokenizer> tokenizer;
  absl::StatusOr<std::unique_ptr<Tokenizer>> loaded_tokenizer = LoadTokenizer(dir);
  if (loaded_tokenizer.ok()) {
    tokenizer = *std::move(loaded_tokenizer);
  } else if (!absl::IsNotFound(loaded_tokenizer.status())) {
    return loaded_tokenizer.status();
  }
  ASSIGN_OR_RETURN(LoadedWeights weights, LoadCheckpointWeights(dir, config, options));
  ASSIGN_OR_RETURN(Transformer transformer, Transformer::Create(config, std::move(weights.weights)));
  return std::unique_ptr<Model>(
      new Model(dir, std::move(transformer), std::move(tokenizer), weights.checkpoint_dtype));
}

absl::StatusOr<const Tokenizer*> Model::RequireTokenizer() const {
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
