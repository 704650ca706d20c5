// Byte-level BPE (GPT-2, LLaMA 3, Qwen2): pre-tokenize with the model's regex (PCRE2, Unicode
// properties), map each byte to GPT-2's printable stand-in, then merge adjacent symbols by rank.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <functional>
#include <array>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/hash/hash.h"
#include "absl/strings/match.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "experiments/tokenizer/tokenizer.h"
#include "experiments/tokenizer/tokenizer_internal.h"
#include "nlohmann/json.hpp"

namespace lesion::experiments {
namespace {

using Json = nlohmann::json;

constexpr char kGpt2Pattern[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

void AppendUtf8(uint32_t cp, std::string& out) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// GPT-2's bytes_to_unicode: printable bytes stand for themselves, the others map to U+0100 on.
const std::array<std::string, 256>& ByteToUnicode() {
  static const auto* table = [] {
    auto* t = new std::array<std::string, 256>();
    int next = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      AppendUtf8(printable ? b : 256 + next++, (*t)[b]);
    }
    return t;
  }();
  return *table;
}

// A compiled PCRE2 pattern; matching allocates its own match data, so it is thread-safe.
class Regex {
 public:
  static absl::StatusOr<std::unique_ptr<Regex>> Compile(const std::string& pattern,
                                                        absl::string_view source) {
    int error = 0;
    PCRE2_SIZE offset = 0;
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                     PCRE2_UTF | PCRE2_UCP, &error, &offset, nullptr);
    if (code == nullptr) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(error, message, sizeof(message));
      return absl::InvalidArgumentError(absl::StrCat(source, ": pre-tokenizer regex does not compile at offset ",
                                                     offset, ": ", reinterpret_cast<char*>(message)));
    }
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter if JIT is absent
    return std::unique_ptr<Regex>(new Regex(code));
  }
  ~Regex() { pcre2_code_free(code_); }

  // Calls fn(piece) for every match, in order. InvalidArgument for invalid UTF-8.
  template <typename Fn>
  absl::Status ForEachMatch(absl::string_view text, Fn&& fn) const {
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(code_, nullptr);
    PCRE2_SIZE start = 0;
    uint32_t options = 0;
    absl::Status status;
    while (start < text.size()) {
      const int rc = pcre2_match(code_, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), start,
                                 options, md, nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) {
        status = rc <= PCRE2_ERROR_UTF8_ERR1 && rc >= PCRE2_ERROR_UTF8_ERR21
                     ? absl::InvalidArgumentError(absl::StrCat(
                           "text is not valid UTF-8 near byte ", pcre2_get_startchar(md)))
                     : absl::InternalError(absl::StrCat("regex match failed with code ", rc));
        break;
      }
      options = PCRE2_NO_UTF_CHECK;  // the whole subject was checked by the first call
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      if (ov[1] == ov[0]) {  // an empty match: step over one character
        ++start;
        while (start < text.size() && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) ++start;
        continue;
      }
      fn(text.substr(ov[0], ov[1] - ov[0]));
      start = ov[1];
    }
    pcre2_match_data_free(md);
    return status;
  }

 private:
  explicit Regex(pcre2_code* code) : code_(code) {}
  pcre2_code* code_;
};

struct PairHash {
  size_t operator()(uint64_t k) const { return absl::Hash<uint64_t>()(k); }
};

class ByteLevelBpe final : public Tokenizer {
 public:
  struct Spec {
    absl::flat_hash_map<std::string, int32_t> vocab;
    std::vector<std::pair<std::string, std::string>> merges;  // in rank order
    std::vector<std::pair<std::string, int32_t>> added;       // matched before pre-tokenizing
    std::string pattern = kGpt2Pattern;
    bool ignore_merges = false;  // LLaMA 3: a word that is in the vocabulary is one token
    std::string source;
  };

  static absl::StatusOr<std::unique_ptr<Tokenizer>> Create(Spec spec) {
    auto tok = std::unique_ptr<ByteLevelBpe>(new ByteLevelBpe());
    ASSIGN_OR_RETURN(tok->regex_, Regex::Compile(spec.pattern, spec.source));
    int32_t max_id = -1;
    for (const auto& [piece, id] : spec.vocab) max_id = std::max(max_id, id);
    for (const auto& [piece, id] : spec.added) max_id = std::max(max_id, id);
    tok->pieces_.resize(max_id + 1);
    for (const auto& [piece, id] : spec.vocab) {
      if (id < 0) return absl::InvalidArgumentError(absl::StrCat(spec.source, ": negative id ", id));
      tok->pieces_[id] = piece;
    }
    const auto& b2u = ByteToUnicode();
    for (int b = 0; b < 256; ++b) {
      auto it = spec.vocab.find(b2u[b]);
      if (it == spec.vocab.end()) {
        return absl::InvalidArgumentError(
            absl::StrCat(spec.source, ": vocabulary lacks the token for byte ", b));
      }
      tok->byte_ids_[b] = it->second;
      tok->unicode_to_byte_[b2u[b]] = static_cast<char>(b);
    }
    for (size_t rank = 0; rank < spec.merges.size(); ++rank) {
      const auto& [a, b] = spec.merges[rank];
      auto ia = spec.vocab.find(a), ib = spec.vocab.find(b), im = spec.vocab.find(a + b);
      if (ia == spec.vocab.end() || ib == spec.vocab.end() || im == spec.vocab.end()) {
        return absl::InvalidArgumentError(absl::StrCat(spec.source, ": merge ", rank + 1, " (\"", a,
                                                       "\", \"", b, "\") uses tokens not in the vocabulary"));
      }
      tok->merges_.try_emplace(Key(ia->second, ib->second), static_cast<int32_t>(rank), im->second);
    }
    for (const auto& [content, id] : spec.added) {
      tok->added_.push_back({content, id});
      tok->pieces_[id] = content;
      tok->special_ids_.insert(id);
    }
    // Longest added token first, so that overlapping ones match greedily.
    std::sort(tok->added_.begin(), tok->added_.end(),
              [](const auto& x, const auto& y) { return x.first.size() > y.first.size(); });
    if (spec.ignore_merges) tok->vocab_ = std::move(spec.vocab);
    tok->ignore_merges_ = spec.ignore_merges;
    return std::unique_ptr<Tokenizer>(std::move(tok));
  }

  absl::StatusOr<std::vector<int32_t>> Encode(absl::string_view text) const override {
    std::vector<int32_t> ids;
    absl::flat_hash_map<std::string, std::vector<int32_t>> cache;  // per call: repeated words
    size_t pos = 0;
    while (pos <= text.size()) {
      // The next added token, if any, splits the text.
      size_t next = text.size(), next_len = 0;
      int32_t next_id = -1;
      for (const auto& [content, id] : added_) {
        const size_t at = text.find(content, pos);
        if (at != absl::string_view::npos && (at < next || (at == next && content.size() > next_len))) {
          next = at, next_len = content.size(), next_id = id;
        }
      }
      RETURN_IF_ERROR(regex_->ForEachMatch(text.substr(pos, next - pos), [&](absl::string_view word) {
        auto [it, inserted] = cache.try_emplace(std::string(word));
        if (inserted) it->second = EncodeWord(word);
        ids.insert(ids.end(), it->second.begin(), it->second.end());
      }));
      if (next_id < 0) break;
      ids.push_back(next_id);
      pos = next + next_len;
    }
    return ids;
  }

  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids) const override {
    std::string out;
    for (int32_t id : ids) {
      if (id < 0 || id >= static_cast<int32_t>(pieces_.size())) {
        return absl::InvalidArgumentError(absl::StrCat("token id ", id, " out of range: vocabulary has ",
                                                       pieces_.size(), " ids"));
      }
      const std::string& piece = pieces_[id];
      if (special_ids_.contains(id)) {
        out += piece;
        continue;
      }
      // Map each UTF-8 character of the piece back to its byte.
      for (size_t i = 0; i < piece.size();) {
        size_t len = 1;
        const unsigned char c = piece[i];
        if (c >= 0xF0) len = 4;
        else if (c >= 0xE0) len = 3;
        else if (c >= 0xC0) len = 2;
        auto it = unicode_to_byte_.find(piece.substr(i, len));
        if (it != unicode_to_byte_.end()) out += it->second;
        i += len;
      }
    }
    return out;
  }

  int32_t vocab_size() const override { return static_cast<int32_t>(pieces_.size()); }
  std::optional<int32_t> bos_id() const override { return bos_; }
  std::optional<int32_t> eos_id() const override { return eos_; }
  absl::string_view kind() const override { return "byte_level_bpe"; }
  void SetSpecialIds(std::optional<int32_t> bos, std::optional<int32_t> eos) { bos_ = bos, eos_ = eos; }

 private:
  ByteLevelBpe() = default;
  static uint64_t Key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  // BPE over one pre-tokenized word: start from byte tokens, repeatedly merge the adjacent pair
  // of lowest rank (every occurrence, left to right), as GPT-2's reference does.
  std::vector<int32_t> EncodeWord(absl::string_view word) const {
    if (ignore_merges_) {
      std::string mapped;
      for (unsigned char c : word) mapped += ByteToUnicode()[c];
      if (auto it = vocab_.find(mapped); it != vocab_.end()) return {it->second};
    }
    std::vector<int32_t> symbols;
    symbols.reserve(word.size());
    for (unsigned char c : word) symbols.push_back(byte_ids_[c]);
    while (symbols.size() > 1) {
      int32_t best_rank = std::numeric_limits<int32_t>::max();
      for (size_t i = 0; i + 1 < symbols.size(); ++i) {
        auto it = merges_.find(Key(symbols[i], symbols[i + 1]));
        if (it != merges_.end() && it->second.first < best_rank) best_rank = it->second.first;
      }
      if (best_rank == std::numeric_limits<int32_t>::max()) break;
      std::vector<int32_t> merged;
      merged.reserve(symbols.size());
      for (size_t i = 0; i < symbols.size(); ++i) {
        if (i + 1 < symbols.size()) {
          auto it = merges_.find(Key(symbols[i], symbols[i + 1]));
          if (it != merges_.end() && it->second.first == best_rank) {
            merged.push_back(it->second.second);
            ++i;
            continue;
          }
        }
        merged.push_back(symbols[i]);
      }
      symbols = std::move(merged);
    }
    return symbols;
  }

  std::unique_ptr<Regex> regex_;
  std::vector<std::string> pieces_;  // id -> token string (GPT-2 unicode form, or added content)
  std::array<int32_t, 256> byte_ids_{};
  absl::flat_hash_map<std::string, char> unicode_to_byte_;
  absl::flat_hash_map<uint64_t, std::pair<int32_t, int32_t>, PairHash> merges_;  // -> (rank, id)
  std::vector<std::pair<std::string, int32_t>> added_;
  absl::flat_hash_set<int32_t> special_ids_;
  absl::flat_hash_map<std::string, int32_t> vocab_;  // kept only for ignore_merges
  bool ignore_merges_ = false;
  std::optional<int32_t> bos_, eos_;
};

absl::Status ParseVocab(const Json& vocab, absl::string_view source,
                        absl::flat_hash_map<std::string, int32_t>& out) {
  if (!vocab.is_object()) return absl::InvalidArgumentError(absl::StrCat(source, ": vocabulary must be a JSON object"));
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    if (!it.value().is_number_integer()) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": id of token \"", it.key(), "\" is not an integer"));
    }
    const int64_t id = it.value().get<int64_t>();
    if (id < 0 || id > std::numeric_limits<int32_t>::max()) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": id ", id, " out of range"));
    }
    out[it.key()] = static_cast<int32_t>(id);
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadByteLevelBpe(const std::filesystem::path& vocab_json,
                                                           const std::filesystem::path& merges_txt) {
  ByteLevelBpe::Spec spec;
  spec.source = vocab_json.string();
  ASSIGN_OR_RETURN(std::string vocab_text, ReadFile(vocab_json));
  Json vocab = Json::parse(vocab_text, nullptr, /*allow_exceptions=*/false);
  if (vocab.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(vocab_json.string(), " is not valid JSON"));
  RETURN_IF_ERROR(ParseVocab(vocab, vocab_json.string(), spec.vocab));
  ASSIGN_OR_RETURN(std::string merges_text, ReadFile(merges_txt));
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(merges_text, '\n')) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty() || (line_no == 1 && absl::StartsWith(line, "#version"))) continue;
    std::vector<std::string> parts = absl::StrSplit(line, ' ');
    if (parts.size() != 2) {
      return absl::InvalidArgumentError(
          absl::StrCat(merges_txt.string(), ": line ", line_no, " is not a merge \"a b\""));
    }
    spec.merges.emplace_back(parts[0], parts[1]);
  }
  if (auto it = spec.vocab.find("<|endoftext|>"); it != spec.vocab.end()) {
    spec.added.emplace_back("<|endoftext|>", it->second);
  }
  spec.source = absl::StrCat(vocab_json.string(), " + ", merges_txt.string());
  return ByteLevelBpe::Create(std::move(spec));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizerJson(const std::filesystem::path& path) {
  const std::string source = path.string();
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  Json json = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  auto bad = [&](absl::string_view what) { return absl::InvalidArgumentError(absl::StrCat(source, ": ", what)); };
  if (json.is_discarded() || !json.is_object()) return bad("not a JSON object");
  auto model = json.find("model");
  if (model == json.end() || !model->is_object()) return bad("has no \"model\" object");
  auto type = model->find("type");
  if (type == model->end() || !type->is_string() || type->get<std::string>() != "BPE") {
    return bad("only tokenizers with model type \"BPE\" are supported");
  }
  ByteLevelBpe::Spec spec;
  spec.source = source;
  auto vocab = model->find("vocab");
  if (vocab == model->end()) return bad("model has no vocab");
  RETURN_IF_ERROR(ParseVocab(*vocab, source, spec.vocab));
  auto merges = model->find("merges");
  if (merges == model->end() || !merges->is_array()) return bad("model has no merges list");
  for (const Json& m : *merges) {
    if (m.is_string()) {  // "a b"
      const std::string s = m.get<std::string>();
      const size_t space = s.find(' ', 1);
      if (space == std::string::npos) return bad(absl::StrCat("merge \"", s, "\" has no space"));
      spec.merges.emplace_back(s.substr(0, space), s.substr(space + 1));
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {  // ["a", "b"]
      spec.merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
    } else {
      return bad("merges must be strings \"a b\" or pairs [\"a\", \"b\"]");
    }
  }
  if (auto im = model->find("ignore_merges"); im != model->end() && im->is_boolean()) {
    spec.ignore_merges = im->get<bool>();
  }
  // Pre-tokenizer: ByteLevel (GPT-2 regex when use_regex), or a Sequence with a Split regex and
  // a ByteLevel without its own regex (LLaMA 3, Qwen2).
  auto pre = json.find("pre_tokenizer");
  bool byte_level = false;
  std::optional<std::string> split_pattern;
  bool byte_level_regex = true;
  std::function<absl::Status(const Json&)> visit = [&](const Json& p) -> absl::Status {
    if (!p.is_object()) return bad("pre_tokenizer entries must be objects");
    const std::string t = p.value("type", "");
    if (t == "Sequence") {
      auto list = p.find("pretokenizers");
      if (list == p.end() || !list->is_array()) return bad("Sequence pre_tokenizer without a list");
      for (const Json& q : *list) RETURN_IF_ERROR(visit(q));
    } else if (t == "ByteLevel") {
      byte_level = true;
      if (p.contains("use_regex") && p["use_regex"].is_boolean()) byte_level_regex = p["use_regex"].get<bool>();
      if (p.contains("add_prefix_space") && p["add_prefix_space"].is_boolean() && p["add_prefix_space"].get<bool>()) {
        return bad("ByteLevel add_prefix_space=true is not supported");
      }
    } else if (t == "Split") {
      auto pattern = p.find("pattern");
      if (pattern == p.end() || !pattern->is_object() || !pattern->contains("Regex") ||
          !(*pattern)["Regex"].is_string()) {
        return bad("Split pre_tokenizer needs a {\"Regex\": ...} pattern");
      }
      split_pattern = (*pattern)["Regex"].get<std::string>();
    } else {
      return bad(absl::StrCat("pre_tokenizer type \"", t, "\" is not supported"));
    }
    return absl::OkStatus();
  };
  if (pre == json.end() || pre->is_null()) return bad("has no pre_tokenizer (a ByteLevel one is required)");
  RETURN_IF_ERROR(visit(*pre));
  if (!byte_level) return bad("only byte-level BPE tokenizers (ByteLevel pre_tokenizer) are supported");
  if (split_pattern.has_value()) {
    spec.pattern = *split_pattern;
  } else if (!byte_level_regex) {
    return bad("ByteLevel with use_regex=false needs a Split pre_tokenizer");
  }
  if (auto added = json.find("added_tokens"); added != json.end() && added->is_array()) {
    for (const Json& a : *added) {
      if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() || !a.contains("content") ||
          !a["content"].is_string()) {
        return bad("added_tokens entries need an integer id and a string content");
      }
      spec.added.emplace_back(a["content"].get<std::string>(), a["id"].get<int32_t>());
    }
  }
  return ByteLevelBpe::Create(std::move(spec));
}

namespace tokenizer_internal {
void SetByteLevelSpecialIds(Tokenizer& tokenizer, std::optional<int32_t> bos, std::optional<int32_t> eos) {
  static_cast<ByteLevelBpe&>(tokenizer).SetSpecialIds(bos, eos);
}
}  // namespace tokenizer_internal

}  // namespace lesion::experiments
