#include "model/tokenizer/tokenizer.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "model/tokenizer/tokenizer_internal.h"
#include "nlohmann/json.hpp"

namespace lesion::model {
namespace {

struct ConfigIds {
  std::optional<int32_t> bos, eos, vocab_size;
};

// bos/eos ids and vocab size from config.json, where present and well-formed; a missing or
// malformed config.json is the model loader's to report, not the tokenizer's.
ConfigIds ReadConfigIds(const std::filesystem::path& dir) {
  ConfigIds ids;
  absl::StatusOr<std::string> text = ReadFile(dir / "config.json");
  if (!text.ok()) return ids;
  nlohmann::json json = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (!json.is_object()) return ids;
  auto get = [&](const char* key) -> std::optional<int32_t> {
    auto it = json.find(key);
    if (it == json.end()) return std::nullopt;
    const nlohmann::json* v = &*it;
    if (v->is_array() && !v->empty()) v = &(*v)[0];  // LLaMA 3: "eos_token_id": [128001, ...]
    if (!v->is_number_integer()) return std::nullopt;
    const int64_t value = v->get<int64_t>();
    if (value < std::numeric_limits<int32_t>::min() || value > std::numeric_limits<int32_t>::max()) {
      return std::nullopt;
    }
    return static_cast<int32_t>(value);
  };
  ids.bos = get("bos_token_id");
  ids.eos = get("eos_token_id");
  ids.vocab_size = get("vocab_size");
  return ids;
}

// Replaces the tokenizer's BOS/EOS with config.json's where it has them.
absl::Status ApplyConfigIds(const ConfigIds& config, const std::filesystem::path& dir, Tokenizer& tokenizer) {
  auto check = [&](const char* key, std::optional<int32_t> id) -> absl::Status {
    if (id.has_value() && (*id < 0 || *id >= tokenizer.vocab_size())) {
      return absl::InvalidArgumentError(absl::StrCat((dir / "config.json").string(), ": ", key, " ", *id,
                                                     " is out of range for the tokenizer's ", tokenizer.vocab_size(),
                                                     " ids"));
    }
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(check("bos_token_id", config.bos));
  RETURN_IF_ERROR(check("eos_token_id", config.eos));
  // Every tokenizer of this folder derives from TokenizerBase.
  auto& base = static_cast<tokenizer_internal::TokenizerBase&>(tokenizer);
  base.SetSpecialIds(config.bos.has_value() ? config.bos : base.bos_id(),
                     config.eos.has_value() ? config.eos : base.eos_id());
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::filesystem::path& dir) {
  std::error_code ec;
  auto has = [&](const char* name) { return std::filesystem::is_regular_file(dir / name, ec); };
  const ConfigIds config = ReadConfigIds(dir);
  std::unique_ptr<Tokenizer> tokenizer;
  // LLaMA 2 style directories carry a SentencePiece-flavoured tokenizer.json (Metaspace, byte
  // fallback) beside tokenizer.model: when tokenizer.json is not byte-level BPE, the
  // SentencePiece model is the one to use.
  absl::StatusOr<std::unique_ptr<Tokenizer>> from_json = absl::NotFoundError("no tokenizer.json");
  if (has("tokenizer.json")) {
    from_json = LoadTokenizerJson(dir / "tokenizer.json");
    if (!from_json.ok() && !has("tokenizer.model")) return from_json.status();
  }
  if (from_json.ok()) {
    tokenizer = *std::move(from_json);
  } else if (has("vocab.json") && has("merges.txt")) {
    ASSIGN_OR_RETURN(tokenizer, LoadByteLevelBpe(dir / "vocab.json", dir / "merges.txt"));
  } else if (has("tokenizer.model")) {
    ASSIGN_OR_RETURN(tokenizer, LoadSentencePieceModel(dir / "tokenizer.model"));
  } else if (has("tokenizer.bin")) {
    ASSIGN_OR_RETURN(tokenizer, LoadLlama2cTokenizer(dir / "tokenizer.bin", config.vocab_size));
  } else {
    return absl::NotFoundError(
        absl::StrCat("no tokenizer in ", dir.string(),
                     " (looked for tokenizer.json, vocab.json + merges.txt, tokenizer.model, tokenizer.bin)"));
  }
  RETURN_IF_ERROR(ApplyConfigIds(config, dir, *tokenizer));
  return tokenizer;
}

}  // namespace lesion::model
