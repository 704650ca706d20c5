#include "model/model.h"

#include <algorithm>
#include <regex>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "model/checkpoint_tensors.h"
#include "model/gguf/gguf.h"
#include "model/gguf_checkpoint.h"
#include "model/weight_addressing.h"

namespace lesion::model {

namespace {

// The GGUF checkpoint a directory without config.json holds: its one .gguf file, or the first of
// a split set. NotFound when there is none; InvalidArgument when there are several checkpoints.
absl::StatusOr<std::filesystem::path> GgufInDirectory(const std::filesystem::path& dir) {
  std::vector<std::filesystem::path> found;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    if (IsGgufPath(entry.path())) found.push_back(entry.path());
  }
  std::sort(found.begin(), found.end());
  // Splits of one checkpoint (NAME-00001-of-00003.gguf) count as one: GgufCheckpoint opens the rest.
  std::vector<std::filesystem::path> checkpoints;
  static const std::regex kLaterSplit(R"(.*-(\d{5})-of-\d{5}\.gguf)", std::regex::icase);
  for (const auto& p : found) {
    std::smatch match;
    const std::string name = p.filename().string();
    if (std::regex_match(name, match, kLaterSplit) && match[1] != "00001") continue;
    checkpoints.push_back(p);
  }
  if (checkpoints.empty()) {
    return absl::NotFoundError(absl::StrCat("model directory ", dir.string(),
                                            " has no config.json (a Hugging Face checkpoint) and no .gguf file"));
  }
  if (checkpoints.size() > 1) {
    std::vector<std::string> names;
    for (const auto& p : checkpoints) names.push_back(p.filename().string());
    return absl::InvalidArgumentError(absl::StrCat("model directory ", dir.string(), " holds several GGUF files (",
                                                   absl::StrJoin(names, ", "), "): name one of them"));
  }
  return checkpoints.front();
}

}  // namespace

absl::StatusOr<OpenedCheckpoint> OpenCheckpoint(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    return absl::NotFoundError(
        absl::StrCat("model not found: ", path.string(), " (give a model directory or a .gguf file)"));
  }
  OpenedCheckpoint opened;
  std::filesystem::path gguf_path;
  if (IsGgufPath(path)) {
    gguf_path = path;
  } else if (!std::filesystem::is_directory(path, ec)) {
    return absl::InvalidArgumentError(
        absl::StrCat("model ", path.string(), " is neither a directory nor a .gguf file"));
  } else if (!std::filesystem::exists(path / "config.json", ec)) {
    ASSIGN_OR_RETURN(gguf_path, GgufInDirectory(path));
  }
  if (gguf_path.empty()) {
    opened.path = path;
    ASSIGN_OR_RETURN(opened.config, LoadModelConfig(path));
    // The tokenizer is optional: a directory without one, or with one lesion cannot read, still
    // runs on token ids; commands that need text report the tokenizer's error.
    opened.tokenizer = LoadTokenizer(path);
    ASSIGN_OR_RETURN(opened.tensors, OpenSafetensorsTensors(path));
    return opened;
  }
  opened.path = gguf_path;
  ASSIGN_OR_RETURN(std::unique_ptr<GgufCheckpoint> file, GgufCheckpoint::Open(gguf_path));
  std::shared_ptr<const GgufCheckpoint> checkpoint = std::move(file);
  ASSIGN_OR_RETURN(opened.config, GgufModelConfig(*checkpoint));
  opened.tokenizer = LoadGgufFileTokenizer(*checkpoint);
  for (const auto& [key, value] : checkpoint->first().metadata()) opened.metadata.emplace_back(key, value.ToString());
  ASSIGN_OR_RETURN(opened.tensors, OpenGgufTensors(checkpoint, opened.config));
  return opened;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadCheckpointTokenizer(const std::filesystem::path& path) {
  std::error_code ec;
  std::filesystem::path gguf_path;
  if (IsGgufPath(path)) {
    gguf_path = path;
  } else if (std::filesystem::is_directory(path, ec) && !std::filesystem::exists(path / "config.json", ec)) {
    if (absl::StatusOr<std::filesystem::path> found = GgufInDirectory(path); found.ok()) gguf_path = *found;
  }
  if (gguf_path.empty()) return LoadTokenizer(path);
  ASSIGN_OR_RETURN(std::unique_ptr<GgufCheckpoint> checkpoint, GgufCheckpoint::Open(gguf_path));
  return LoadGgufFileTokenizer(*checkpoint);
}

absl::StatusOr<std::unique_ptr<Model>> Model::Load(const std::filesystem::path& path, const LoadOptions& options) {
  const auto check_cancelled = [&]() -> absl::Status {
    if (options.cancelled && options.cancelled()) {
      return absl::CancelledError(absl::StrCat("loading ", path.string(), " was cancelled"));
    }
    return absl::OkStatus();
  };
  ASSIGN_OR_RETURN(OpenedCheckpoint checkpoint, OpenCheckpoint(path));
  RETURN_IF_ERROR(check_cancelled());
  ASSIGN_OR_RETURN(LoadedWeights weights, LoadCheckpointWeights(*checkpoint.tensors, checkpoint.config, options));
  ASSIGN_OR_RETURN(Transformer transformer, Transformer::Create(checkpoint.config, std::move(weights.weights)));
  RETURN_IF_ERROR(check_cancelled());  // the fingerprint reads every weight once more
  ASSIGN_OR_RETURN(std::string fingerprint, WeightsFingerprint(transformer));
  auto model =
      std::unique_ptr<Model>(new Model(checkpoint.path, std::move(transformer), std::move(checkpoint.tokenizer),
                                       weights.checkpoint_dtype, std::move(fingerprint)));
  model->checkpoint_format_ = checkpoint.tensors->Format();
  model->dequantized_from_ = DequantizationNote(*checkpoint.tensors);
  return model;
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
    return absl::FailedPreconditionError(
        absl::StrCat("cannot use the tokenizer of ", dir_.string(), ": ", tokenizer_error_.message()));
  }
  if (tokenizer_ == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("model ", dir_.string(),
                     " has no tokenizer (tokenizer.json, vocab.json + merges.txt, tokenizer.model or "
                     "tokenizer.bin, or a GGUF file's tokenizer.ggml.tokens); pass token ids instead of text"));
  }
  return tokenizer_.get();
}

std::optional<int32_t> Model::bos_id() const {
  if (tokenizer_ != nullptr && tokenizer_->bos_id().has_value()) return tokenizer_->bos_id();
  return config().bos_token_id;
}

}  // namespace lesion::model
