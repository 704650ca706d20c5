#include "experiments/tokenizer/tokenizer.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "experiments/tokenizer/tokenizer_internal.h"
#include "nlohmann/json.hpp"

namespace lesion::experiments {
namespace {

struct ConfigIds {
  std::optional<int32_t> bos, eos, vocab_size;
};

// bos/eos/vocab size from config.json, if present and well-formed (its other errors are the
// model loader's to report).
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
    if (v->is_array() && !v->empty()) v = &(*v)[0];
    if (!v->is_number_integer()) return std::nullopt;
    return v->get<int32_t>();
  };
  ids.bos = get("bos_token_id");
  ids.eos = get("eos_token_id");
  ids.vocab_size = get("vocab_size");
  return ids;
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
  absl::StatusOr<std::unique_ptr<Tokenizer>> from_json = absl::NotFoundError("");
  if (has("tokenizer.json")) {
    from_json = LoadTokenizerJson(dir / "tokenizer.json");
    if (!from_json.ok() && !has("tokenizer.model")) return from_json.status();
  }
  if (from_json.ok()) {
    tokenizer = *std::move(from_json);
  } else if (has("vocab.json") && has("merges.txt")) {
    ASSIGN_OR_RETURN(tokenizer, LoadByteLevelBpe(dir / "vocab.json", dir / "merges.txt"));
  } else if (has("tokenizer.model")) {
    return LoadSentencePieceModel(dir / "tokenizer.model");
  } else if (has("tokenizer.bin")) {
    return LoadLlama2cTokenizer(dir / "tokenizer.bin", config.vocab_size);
  } else {
    return absl::NotFoundError(absl::StrCat(
        "no tokenizer in ", dir.string(),
        " (looked for tokenizer.json, vocab.json + merges.txt, tokenizer.model, tokenizer.bin)"));
  }
  tokenizer_internal::SetByteLevelSpecialIds(*tokenizer, config.bos, config.eos);
  return tokenizer;
}

}  // namespace lesion::experiments
