// BPE as Hugging Face `tokenizers` runs it: byte-level BPE (GPT-2, LLaMA 3, Qwen2), and the
// Metaspace form HF's LlamaTokenizer gives SentencePiece vocabularies (LoadGgufTokenizer).
// Encoding:
//   1. split off added tokens (leftmost-longest; tokens with normalized=false first, then the
//      others in the remaining text);
//   2. pre-tokenize the rest: with the model's regexes (PCRE2, Unicode properties), keeping the
//      text between matches as pieces too (Split behavior "Isolated"), or Metaspace;
//   3. map each byte (byte-level) or character (Metaspace) of a piece to its token, with HF's
//      byte fallback, unknown token and dropping of characters that have none, and merge adjacent
//      symbols, lowest merge rank first (leftmost on ties); long pieces with a heap over a linked
//      list, O(n log n) in their length.
// Pieces repeat a lot in text, so the ids of each piece are memoized for the duration of a call.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "model/tokenizer/tokenizer.h"
#include "model/tokenizer/tokenizer_internal.h"
#include "nlohmann/json.hpp"

namespace lesion::model {
namespace {

using Json = nlohmann::json;
using tokenizer_internal::AddedToken;
using tokenizer_internal::AppendUtf8;
using tokenizer_internal::DecodeUtf8;
using tokenizer_internal::FindInvalidUtf8;
using tokenizer_internal::IsUnicodeWhiteSpace;
using tokenizer_internal::kGpt2SplitPattern;
using tokenizer_internal::PreTokenizerStage;
using tokenizer_internal::ValidUtf8Length;

constexpr char kMetaspace[] = "\xE2\x96\x81";  // U+2581, HF Metaspace's replacement of spaces

// HF's single_word test uses the Rust regex crate's Unicode \w, which differs from PCRE2's
// (PCRE2 10.42: [\p{L}\p{N}_], so it takes U+00B2 but not U+0301).
constexpr char kRustWordChar[] = R"([\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\x{200C}\x{200D}])";
// Nesting limit of Sequence normalizers / pre-tokenizers (real files nest one or two deep).
constexpr int kMaxSequenceDepth = 64;

// Longer pieces are encoded without memoization (they rarely repeat).
constexpr size_t kMaxMemoizedPieceBytes = 256;
// Words of up to this many initial tokens are merged by scanning an array; longer ones with a heap.
constexpr size_t kShortWordSymbols = 32;

// GPT-2's bytes_to_unicode: printable bytes stand for themselves, the others map to U+0100 on.
const std::array<char32_t, 256>& ByteToCodePoint() {
  static const auto* table = [] {
    auto* t = new std::array<char32_t, 256>();
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      (*t)[b] = printable ? static_cast<char32_t>(b) : next++;
    }
    return t;
  }();
  return *table;
}

// The inverse: code point -> byte, -1 for code points that stand for no byte.
int CodePointToByte(char32_t cp) {
  static const auto* table = [] {
    auto* t = new std::array<int16_t, 0x144>();
    t->fill(-1);
    for (int b = 0; b < 256; ++b) (*t)[ByteToCodePoint()[b]] = static_cast<int16_t>(b);
    return t;
  }();
  return cp < table->size() ? (*table)[cp] : -1;
}

std::string ByteLevelForm(absl::string_view bytes) {
  std::string out;
  for (unsigned char c : bytes) AppendUtf8(ByteToCodePoint()[c], out);
  return out;
}

size_t PreviousCharStart(absl::string_view text, size_t pos) {
  size_t p = pos - 1;
  while (p > 0 && (static_cast<unsigned char>(text[p]) & 0xC0) == 0x80) --p;
  return p;
}

// PCRE2's \s (with UCP) also matches U+180E, which the regex engines of the references (Rust's
// regex in tiktoken, Oniguruma in tokenizers, Python's regex in GPT-2's encoder) do not: spell
// \s as Unicode White_Space. \S inside a class is rare in these patterns and left alone.
std::string WithUnicodeWhiteSpace(absl::string_view pattern) {
  constexpr absl::string_view kWhiteSpace = R"(\t-\r\x{85}\p{Z})";
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char e = pattern[++i];
      if (e == 'Q') {  // literal text up to \E
        const size_t end = pattern.find("\\E", i + 1);
        const size_t stop = end == absl::string_view::npos ? pattern.size() : end + 2;
        out.append(pattern.data() + i - 1, stop - (i - 1));
        i = stop - 1;
      } else if (e == 's') {
        absl::StrAppend(&out, in_class ? "" : "[", kWhiteSpace, in_class ? "" : "]");
      } else if (e == 'S' && !in_class) {
        absl::StrAppend(&out, "[^", kWhiteSpace, "]");
      } else {
        out += c;
        out += e;
      }
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      // A ']' right after '[' or '[^' is a literal.
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') out += pattern[++i];
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') out += pattern[++i];
      continue;
    }
    if (in_class && c == '[' && i + 1 < pattern.size() && pattern[i + 1] == ':') {  // [:alpha:]
      const size_t end = pattern.find(":]", i + 2);
      if (end != absl::string_view::npos) {
        out.append(pattern.data() + i, end + 2 - i);
        i = end + 1;
        continue;
      }
    }
    if (in_class && c == ']') in_class = false;
    out += c;
  }
  return out;
}

// A compiled PCRE2 pattern (UTF, Unicode properties, JIT when available). Matching uses
// caller-owned match data, so one Regex serves all threads.
class Regex {
 public:
  static absl::StatusOr<std::unique_ptr<Regex>> Compile(absl::string_view pattern, absl::string_view source) {
    const std::string rewritten = WithUnicodeWhiteSpace(pattern);
    int error = 0;
    PCRE2_SIZE offset = 0;
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(rewritten.data()), rewritten.size(),
                                     PCRE2_UTF | PCRE2_UCP, &error, &offset, nullptr);
    if (code == nullptr) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(error, message, sizeof(message));
      return absl::InvalidArgumentError(absl::StrCat(source, ": pre-tokenizer regex /", pattern,
                                                     "/ does not compile: ", reinterpret_cast<char*>(message)));
    }
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // the interpreter runs if JIT is unavailable
    return std::unique_ptr<Regex>(new Regex(code));
  }
  ~Regex() { pcre2_code_free(code_); }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Match data for one thread's calls.
  class MatchData {
   public:
    explicit MatchData(const Regex& regex) : md_(pcre2_match_data_create_from_pattern(regex.code_, nullptr)) {}
    ~MatchData() { pcre2_match_data_free(md_); }
    MatchData(const MatchData&) = delete;
    MatchData& operator=(const MatchData&) = delete;
    pcre2_match_data* get() const { return md_; }

   private:
    pcre2_match_data* md_;
  };

  // Calls fn(piece) for every non-empty match and every stretch between matches (as HF's Split,
  // empty matches only split), in order. `text` must be
  // valid UTF-8 (callers check it once). Internal if PCRE2 gives up (e.g. its match limit).
  template <typename Fn>
  absl::Status ForEachPiece(absl::string_view text, const MatchData& data, Fn&& fn) const {
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    size_t start = 0, emitted = 0;
    while (start < text.size()) {
      const int rc = pcre2_match(code_, subject, text.size(), start, PCRE2_NO_UTF_CHECK, data.get(), nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) return MatchError(rc, start);
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(data.get());
      if (ov[1] == ov[0]) {  // an empty match (\b, $, ...) splits there; move on by one character
        if (ov[0] > emitted) fn(text.substr(emitted, ov[0] - emitted));
        emitted = ov[0];
        if (ov[0] >= text.size()) break;
        start = ov[0] + std::max<size_t>(1, ValidUtf8Length(text, ov[0]));
        continue;
      }
      if (ov[0] > emitted) fn(text.substr(emitted, ov[0] - emitted));
      fn(text.substr(ov[0], ov[1] - ov[0]));
      start = emitted = ov[1];
    }
    if (emitted < text.size()) fn(text.substr(emitted));
    return absl::OkStatus();
  }

  // Whether the pattern matches all of `text`.
  bool FullMatch(absl::string_view text, const MatchData& data) const {
    return pcre2_match(code_, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), 0,
                       PCRE2_NO_UTF_CHECK | PCRE2_ANCHORED | PCRE2_ENDANCHORED, data.get(), nullptr) >= 0;
  }

 private:
  explicit Regex(pcre2_code* code) : code_(code) {}
  static absl::Status MatchError(int rc, size_t start) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(rc, message, sizeof(message));
    return absl::InternalError(
        absl::StrCat("pre-tokenizer regex failed at byte ", start, ": ", reinterpret_cast<char*>(message)));
  }
  pcre2_code* code_;
};

// Finds added tokens in text as HF's AddedVocabulary::find_matches does: leftmost-longest
// matches (scanning on after each one, like its Aho-Corasick automaton), single_word tokens
// discarded next to word characters, lstrip/rstrip widening a match over the whitespace beside
// it. Immutable after Create.
class AddedTokenMatcher {
 public:
  static absl::StatusOr<AddedTokenMatcher> Create(std::vector<AddedToken> tokens, absl::string_view source) {
    AddedTokenMatcher m;
    std::stable_sort(tokens.begin(), tokens.end(),
                     [](const AddedToken& a, const AddedToken& b) { return a.content.size() > b.content.size(); });
    m.tokens_ = std::move(tokens);
    for (uint32_t i = 0; i < m.tokens_.size(); ++i) {
      if (m.tokens_[i].content.empty()) continue;
      m.by_first_byte_[static_cast<unsigned char>(m.tokens_[i].content[0])].push_back(i);
      if (m.tokens_[i].single_word && m.word_ == nullptr) {
        ASSIGN_OR_RETURN(m.word_, Regex::Compile(kRustWordChar, source));
      }
    }
    return m;
  }
  bool empty() const { return tokens_.empty(); }

  // Calls on_text(piece) for the stretches between tokens (once with "" for an empty `text`)
  // and on_token(id) for each token, in order. `text` must be valid UTF-8.
  template <typename OnText, typename OnToken>
  void Split(absl::string_view text, OnText&& on_text, OnToken&& on_token) const {
    size_t start_offset = 0, search_from = 0;
    std::optional<Regex::MatchData> word_data;  // created at the first single_word match
    while (!tokens_.empty() && search_from < text.size()) {
      size_t start = text.size();
      const AddedToken* token = nullptr;
      for (size_t i = search_from; i < text.size() && token == nullptr; ++i) {
        for (uint32_t k : by_first_byte_[static_cast<unsigned char>(text[i])]) {
          if (absl::StartsWith(text.substr(i), tokens_[k].content)) {
            token = &tokens_[k];
            start = i;
            break;
          }
        }
      }
      if (token == nullptr) break;
      size_t stop = start + token->content.size();
      search_from = stop;
      if (token->single_word) {
        if (!word_data.has_value()) word_data.emplace(*word_);
        if (IsWordCharBefore(text, start, *word_data) || IsWordCharAt(text, stop, *word_data)) continue;
      }
      if (token->lstrip) {
        while (start > start_offset) {
          const size_t p = PreviousCharStart(text, start);
          if (!IsUnicodeWhiteSpace(DecodeUtf8(text, p, start - p))) break;
          start = p;
        }
      }
      if (token->rstrip) {
        while (stop < text.size()) {
          const size_t len = ValidUtf8Length(text, stop);
          if (!IsUnicodeWhiteSpace(DecodeUtf8(text, stop, len))) break;
          stop += len;
        }
        search_from = stop;
      }
      if (start_offset < start) on_text(text.substr(start_offset, start - start_offset));
      on_token(token->id);
      start_offset = stop;
    }
    if (start_offset < text.size() || text.empty()) on_text(text.substr(start_offset));
  }

 private:
  bool IsWordCharBefore(absl::string_view text, size_t pos, const Regex::MatchData& data) const {
    if (pos == 0) return false;
    const size_t p = PreviousCharStart(text, pos);
    return word_->FullMatch(text.substr(p, pos - p), data);
  }
  bool IsWordCharAt(absl::string_view text, size_t pos, const Regex::MatchData& data) const {
    return pos < text.size() && word_->FullMatch(text.substr(pos, ValidUtf8Length(text, pos)), data);
  }

  std::vector<AddedToken> tokens_;                        // longest first
  std::array<std::vector<uint32_t>, 256> by_first_byte_;  // indices into tokens_, longest first
  std::shared_ptr<const Regex> word_;                     // kRustWordChar; only if a token is single_word
};

// BPE as HF `tokenizers` runs it: added tokens split off, pre-tokenization (ByteLevel regex
// stages, or Metaspace), each word's characters mapped to tokens, then the adjacent pair of
// lowest merge rank merged (leftmost on ties) until no pair has a merge.
class HfBpe final : public tokenizer_internal::TokenizerBase {
 public:
  using Spec = tokenizer_internal::HfBpeSpec;
  using PreTokenizer = Spec::PreTokenizer;

  static absl::StatusOr<std::unique_ptr<Tokenizer>> Create(Spec spec) {
    auto tok = std::unique_ptr<HfBpe>(new HfBpe());
    const std::string& source = spec.source;
    tok->pre_tokenizer_ = spec.pre_tokenizer;
    tok->strip_decoded_space_ = spec.strip_decoded_space;
    tok->SetSpecialIds(spec.bos, spec.eos);
    if (spec.pre_tokenizer == PreTokenizer::kByteLevel) {
      for (const PreTokenizerStage& stage : spec.stages) {
        Stage s{stage.add_prefix_space, nullptr};
        if (!stage.pattern.empty()) {
          ASSIGN_OR_RETURN(s.regex, Regex::Compile(stage.pattern, source));
        }
        tok->stages_.push_back(std::move(s));
      }
    }
    // Ids index a table: bound them by the number of tokens, with room for gaps (real files
    // have few), so that a corrupt id cannot make it huge.
    const int64_t id_limit = (static_cast<int64_t>(spec.vocab.size()) + spec.added.size()) * 2 + 1024;
    int32_t max_id = -1;
    for (const auto& [piece, id] : spec.vocab) {
      if (id >= id_limit) {
        return absl::InvalidArgumentError(absl::StrCat(source, ": token \"", piece, "\" has id ", id,
                                                       ", implausibly large for ", spec.vocab.size(), " tokens"));
      }
      max_id = std::max(max_id, id);
    }
    for (const AddedToken& a : spec.added) {
      if (a.id >= id_limit) {
        return absl::InvalidArgumentError(absl::StrCat(source, ": added token \"", a.content, "\" has id ", a.id,
                                                       ", implausibly large for ", spec.vocab.size(), " tokens"));
      }
      max_id = std::max(max_id, a.id);
    }
    tok->decoded_.resize(max_id + 1);
    tok->byte_values_.assign(max_id + 1, kNoToken);
    for (const auto& [piece, id] : spec.vocab) tok->SetDecoded(id, piece);

    // How a character without a token is encoded.
    tok->byte_fallback_ = spec.byte_fallback;
    tok->fuse_unk_ = spec.fuse_unk;
    tok->fallback_ids_.fill(-1);
    if (spec.byte_fallback) {
      for (int b = 0; b < 256; ++b) {
        if (auto it = spec.vocab.find(absl::StrFormat("<0x%02X>", b)); it != spec.vocab.end()) {
          tok->fallback_ids_[b] = it->second;
        }
      }
    }
    std::optional<int32_t> unk_id;
    if (spec.unk_token.has_value()) {
      if (auto it = spec.vocab.find(*spec.unk_token); it != spec.vocab.end()) unk_id = it->second;
    }
    tok->unk_id_ = unk_id;
    bool needs_unk = spec.pre_tokenizer == PreTokenizer::kMetaspace;  // any character may lack a token
    if (spec.pre_tokenizer == PreTokenizer::kByteLevel) {
      for (int b = 0; b < 256; ++b) {
        const std::string form = ByteLevelForm(std::string(1, static_cast<char>(b)));
        CharSymbols& s = tok->byte_symbols_[b];
        if (auto it = spec.vocab.find(form); it != spec.vocab.end()) {
          s = {1, {it->second, -1}};
        } else if (tok->FallbackIds(form, s.ids)) {
          s.count = static_cast<int8_t>(form.size());
        } else {
          s.count = -1;
          needs_unk = true;
        }
      }
    } else {
      tok->ascii_ids_.fill(-1);
      for (int c = 0; c < 128; ++c) {
        if (auto it = spec.vocab.find(std::string(1, static_cast<char>(c))); it != spec.vocab.end()) {
          tok->ascii_ids_[c] = it->second;
        }
      }
    }
    if (needs_unk && spec.unk_token.has_value() && !unk_id.has_value()) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": unk_token \"", *spec.unk_token, "\" is not in the vocabulary"));
    }

    tok->merges_.reserve(spec.merges.size());
    for (size_t rank = 0; rank < spec.merges.size(); ++rank) {
      const auto& [a, b] = spec.merges[rank];
      auto ia = spec.vocab.find(a), ib = spec.vocab.find(b), im = spec.vocab.find(a + b);
      if (ia == spec.vocab.end() || ib == spec.vocab.end() || im == spec.vocab.end()) {
        return absl::InvalidArgumentError(absl::StrCat(source, ": merge ", rank, " (\"", a, "\", \"", b,
                                                       "\") uses tokens that are not in the vocabulary"));
      }
      // A repeated pair takes its last rank, as in HF's merge map.
      tok->merges_.insert_or_assign(PairKey(ia->second, ib->second), Merge{static_cast<int32_t>(rank), im->second});
    }
    std::vector<AddedToken> raw, normalized;
    for (AddedToken& a : spec.added) {
      tok->SetDecoded(a.id, a.content);
      (a.normalized ? normalized : raw).push_back(std::move(a));
    }
    ASSIGN_OR_RETURN(tok->raw_added_, AddedTokenMatcher::Create(std::move(raw), source));
    ASSIGN_OR_RETURN(tok->normalized_added_, AddedTokenMatcher::Create(std::move(normalized), source));
    tok->ignore_merges_ = spec.ignore_merges;
    if (spec.pre_tokenizer == PreTokenizer::kMetaspace) {
      // No merge can join "x" and "\u2581..." if no token has a U+2581 after another character
      // (sentencepiece's split_by_whitespace vocabularies) and U+2581 is a token (so that it
      // never becomes an unknown token that fuses with its neighbours).
      tok->metaspace_words_are_independent_ = spec.vocab.contains(kMetaspace) && !spec.ignore_merges;
      for (const auto& [piece, id] : spec.vocab) {
        const absl::string_view p(piece);
        for (size_t at = p.find(kMetaspace, 1); at != absl::string_view::npos; at = p.find(kMetaspace, at + 1)) {
          if (at < 3 || p.substr(at - 3, 3) != kMetaspace) tok->metaspace_words_are_independent_ = false;
        }
      }
    }
    if (spec.ignore_merges || spec.pre_tokenizer == PreTokenizer::kMetaspace) tok->vocab_ = std::move(spec.vocab);
    return std::unique_ptr<Tokenizer>(std::move(tok));
  }

  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view input) const override {
    const absl::string_view text(input.data(), input.size());
    if (const size_t bad = FindInvalidUtf8(text); bad != absl::string_view::npos) {
      return absl::InvalidArgumentError(absl::StrCat("text is not valid UTF-8 at byte ", bad));
    }
    EncodeState state(*this);
    state.ids.reserve(text.size() / 3 + 16);
    absl::Status status;
    auto on_token = [&](int32_t id) { state.ids.push_back(id); };
    auto on_plain_text = [&](absl::string_view piece) {
      if (!status.ok()) return;
      if (pre_tokenizer_ == PreTokenizer::kMetaspace) {
        // The pieces are views of `text`: the first one starts where the text does.
        EncodeMetaspaceWord(piece, /*first=*/piece.data() == text.data(), state);
      } else {
        status = EncodeStage(piece, 0, state);
      }
    };
    raw_added_.Split(
        text,
        [&](absl::string_view piece) {
          if (normalized_added_.empty()) {
            on_plain_text(piece);
          } else {
            normalized_added_.Split(piece, on_plain_text, on_token);
          }
        },
        on_token);
    RETURN_IF_ERROR(status);
    return std::move(state.ids);
  }

  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids) const override {
    std::string out;
    for (int32_t id : ids) {
      if (id < 0 || id >= static_cast<int32_t>(decoded_.size())) {
        return absl::InvalidArgumentError(
            absl::StrCat("token id ", id, " out of range: the vocabulary has ids 0..", decoded_.size() - 1));
      }
    }
    if (pre_tokenizer_ == PreTokenizer::kByteLevel) {
      for (int32_t id : ids) out += decoded_[id];
      return tokenizer_internal::RepairUtf8(out, tokenizer_internal::Utf8Repair::kMaximalSubpart);
    }
    // Replace, ByteFallback (a run of byte tokens that is not UTF-8 becomes one U+FFFD per
    // byte), Fuse, Strip.
    std::string bytes;
    auto flush = [&] {
      if (FindInvalidUtf8(bytes) == absl::string_view::npos) {
        out += bytes;
      } else {
        for (size_t i = 0; i < bytes.size(); ++i) out += "\xEF\xBF\xBD";
      }
      bytes.clear();
    };
    for (int32_t id : ids) {
      const int16_t byte = byte_values_[id];
      if (byte == kNoToken) continue;  // an id no token has: HF skips it
      if (byte >= 0) {
        bytes += static_cast<char>(byte);
        continue;
      }
      flush();
      out += decoded_[id];
    }
    flush();
    if (strip_decoded_space_ && !out.empty() && out[0] == ' ') out.erase(0, 1);
    return out;
  }

  int32_t vocab_size() const override { return static_cast<int32_t>(decoded_.size()); }
  std::string_view kind() const override {
    return pre_tokenizer_ == PreTokenizer::kByteLevel ? "byte_level_bpe" : "sentencepiece_bpe";
  }

 private:
  struct Stage {
    bool add_prefix_space;
    std::unique_ptr<const Regex> regex;  // null: no split
  };
  struct Merge {
    int32_t rank;
    int32_t id;
  };
  // The tokens one byte-level character starts as: count 1 (its token), 2 (the byte-fallback
  // tokens of its two UTF-8 bytes), or -1 (none: unk or dropped).
  struct CharSymbols {
    int8_t count = -1;
    std::array<int32_t, 2> ids{};
  };
  // byte_values_ of an id that is not a byte token; of an id that no token has.
  static constexpr int16_t kNotByte = -1, kNoToken = -2;

  // Per-call state: the output, the memo piece -> ids (a range of the output), and workspace.
  struct EncodeState {
    explicit EncodeState(const HfBpe& tok) {
      for (const Stage& s : tok.stages_) {
        match_data.push_back(s.regex ? std::make_unique<Regex::MatchData>(*s.regex) : nullptr);
      }
    }
    struct Symbol {
      int32_t id;  // -1 once merged into its left neighbour
      int32_t prev, next;
    };
    struct Candidate {
      int32_t rank, pos, left, right, merged;
      bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::vector<int32_t> ids;
    absl::flat_hash_map<std::string, std::pair<uint32_t, uint32_t>> memo;  // piece -> (offset, count)
    std::vector<std::unique_ptr<Regex::MatchData>> match_data;             // per stage
    std::vector<int32_t> initial;                                          // a word's tokens before merging
    std::vector<Symbol> symbols;
    std::vector<Candidate> heap;
  };

  HfBpe() = default;

  static uint64_t PairKey(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  // Records what token `id` (spelled `token`) decodes to.
  void SetDecoded(int32_t id, absl::string_view token) {
    if (pre_tokenizer_ == PreTokenizer::kByteLevel) {
      decoded_[id] = DecodeByteLevel(token);
      byte_values_[id] = kNotByte;
      return;
    }
    decoded_[id] = absl::StrReplaceAll(token, {{kMetaspace, " "}});
    byte_values_[id] = ByteFallbackValue(decoded_[id]);
  }

  // The bytes a token stands for: each character of its byte-level form mapped back to its byte.
  // As HF's ByteLevel decoder, a token with any character that stands for no byte (possible in
  // added tokens, e.g. "<|\u00e9\u4e2d|>") is kept whole as its UTF-8 text.
  static std::string DecodeByteLevel(absl::string_view form) {
    std::string out;
    for (size_t i = 0; i < form.size();) {
      const size_t len = ValidUtf8Length(form, i);
      const int byte = len == 0 ? -1 : CodePointToByte(DecodeUtf8(form, i, len));
      if (byte < 0) return std::string(form);
      out += static_cast<char>(byte);
      i += len;
    }
    return out;
  }

  // The byte of a token "<0xNN>" as HF's ByteFallback decoder reads it (Rust's u8::from_str_radix
  // of the two characters, which also takes "+N"), else kNotByte.
  static int16_t ByteFallbackValue(absl::string_view token) {
    if (token.size() != 6 || !absl::StartsWith(token, "<0x") || token[5] != '>') return kNotByte;
    auto digit = [](char c) {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      if (c >= 'A' && c <= 'F') return c - 'A' + 10;
      return -1;
    };
    const int hi = digit(token[3]), lo = digit(token[4]);
    if (token[3] == '+' && lo >= 0) return static_cast<int16_t>(lo);
    return hi >= 0 && lo >= 0 ? static_cast<int16_t>(hi * 16 + lo) : kNotByte;
  }

  // The byte-fallback tokens of the UTF-8 bytes of `character` into `ids` (which has room for
  // them); false if byte fallback is off or one of them is not in the vocabulary.
  template <typename Ids>
  bool FallbackIds(absl::string_view character, Ids& ids) const {
    if (!byte_fallback_ || character.size() > ids.size()) return false;
    for (size_t i = 0; i < character.size(); ++i) {
      ids[i] = fallback_ids_[static_cast<unsigned char>(character[i])];
      if (ids[i] < 0) return false;
    }
    return true;
  }

  absl::Status EncodeStage(absl::string_view piece, size_t stage_index, EncodeState& state) const {
    if (piece.empty()) return absl::OkStatus();
    if (stage_index == stages_.size()) {
      EncodePiece(piece, state);
      return absl::OkStatus();
    }
    const Stage& stage = stages_[stage_index];
    std::string prefixed;
    if (stage.add_prefix_space && piece[0] != ' ') {
      prefixed = absl::StrCat(" ", piece);
      piece = prefixed;
    }
    if (stage.regex == nullptr) return EncodeStage(piece, stage_index + 1, state);
    absl::Status status;
    RETURN_IF_ERROR(stage.regex->ForEachPiece(piece, *state.match_data[stage_index], [&](absl::string_view p) {
      if (status.ok()) status = EncodeStage(p, stage_index + 1, state);
    }));
    return status;
  }

  // Metaspace (prepend_scheme "first", split false): the stretch of text is one word.
  void EncodeMetaspaceWord(absl::string_view text, bool first, EncodeState& state) const {
    if (text.empty()) return;
    std::string word;
    word.reserve(text.size() + text.size() / 4 + 3);
    if (first && !absl::StartsWith(text, kMetaspace) && text[0] != ' ') word = kMetaspace;
    for (char c : text) {
      if (c == ' ') {
        word += kMetaspace;
      } else {
        word += c;
      }
    }
    if (!metaspace_words_are_independent_) {
      EncodePiece(word, state);
      return;
    }
    // The same ids, "\u2581word" by "\u2581word" (memoized): see metaspace_words_are_independent_.
    const absl::string_view all(word), space(kMetaspace);
    for (size_t begin = 0; begin < all.size();) {
      size_t end = begin;  // the next U+2581 that follows another character
      do {
        end = all.find(space, end + 1);
      } while (end != absl::string_view::npos && end >= begin + space.size() &&
               all.substr(end - space.size(), space.size()) == space);
      if (end == absl::string_view::npos) end = all.size();
      EncodePiece(all.substr(begin, end - begin), state);
      begin = end;
    }
  }

  void EncodePiece(absl::string_view piece, EncodeState& state) const {
    if (piece.size() > kMaxMemoizedPieceBytes) {
      MergePiece(piece, state);
      return;
    }
    if (auto it = state.memo.find(piece); it != state.memo.end()) {
      const auto [offset, count] = it->second;
      const size_t old = state.ids.size();
      state.ids.resize(old + count);
      std::copy(state.ids.begin() + offset, state.ids.begin() + offset + count, state.ids.begin() + old);
      return;
    }
    const size_t offset = state.ids.size();
    MergePiece(piece, state);
    state.memo.emplace(std::string(piece),
                       std::make_pair(static_cast<uint32_t>(offset), static_cast<uint32_t>(state.ids.size() - offset)));
  }

  // The tokens of a word's characters before merging, as HF's BPE::merge_word: a character's
  // token, else its bytes' fallback tokens, else the unknown token, else nothing. An unknown
  // character's token is held back until the next character that has a token (or the end), so
  // that with fuse_unk a run of them is one token; HF emits byte-fallback tokens without
  // releasing it, which is reproduced here.
  void InitialSymbols(absl::string_view piece, std::vector<int32_t>& out) const {
    out.clear();
    bool pending_unk = false;
    auto known = [&](int32_t id) {
      if (pending_unk) out.push_back(*unk_id_);
      pending_unk = false;
      out.push_back(id);
    };
    auto unknown = [&] {
      if (!unk_id_.has_value()) return;  // dropped
      if (pending_unk && !fuse_unk_) out.push_back(*unk_id_);
      pending_unk = true;
    };
    if (pre_tokenizer_ == PreTokenizer::kByteLevel) {
      for (unsigned char b : piece) {
        const CharSymbols& s = byte_symbols_[b];
        if (s.count == 1) {
          known(s.ids[0]);
        } else if (s.count > 1) {
          out.insert(out.end(), s.ids.begin(), s.ids.begin() + s.count);
        } else {
          unknown();
        }
      }
    } else {
      std::array<int32_t, 4> fallback;
      for (size_t i = 0; i < piece.size();) {
        const size_t len = std::max<size_t>(1, ValidUtf8Length(piece, i));
        const absl::string_view c = piece.substr(i, len);
        i += len;
        const unsigned char first = static_cast<unsigned char>(c[0]);
        if (first < 0x80 && ascii_ids_[first] >= 0) {
          known(ascii_ids_[first]);
        } else if (auto it = first < 0x80 ? vocab_.end() : vocab_.find(c); it != vocab_.end()) {
          known(it->second);
        } else if (FallbackIds(c, fallback)) {
          out.insert(out.end(), fallback.begin(), fallback.begin() + len);
        } else {
          unknown();
        }
      }
    }
    if (pending_unk) out.push_back(*unk_id_);
  }

  // BPE over one word: its initial tokens, then repeatedly the adjacent pair of lowest merge rank
  // (leftmost on ties) is merged. Stale heap entries are recognised by the ids they expected.
  void MergePiece(absl::string_view piece, EncodeState& state) const {
    if (pre_tokenizer_ == PreTokenizer::kByteLevel && piece.size() == 1) {
      const CharSymbols& s = byte_symbols_[static_cast<unsigned char>(piece[0])];
      if (s.count == 1) {
        state.ids.push_back(s.ids[0]);
        return;
      }
    }
    if (ignore_merges_) {
      auto it = pre_tokenizer_ == PreTokenizer::kByteLevel ? vocab_.find(ByteLevelForm(piece)) : vocab_.find(piece);
      if (it != vocab_.end()) {
        state.ids.push_back(it->second);
        return;
      }
    }
    InitialSymbols(piece, state.initial);
    const std::vector<int32_t>& initial = state.initial;
    if (initial.size() <= 1) {
      state.ids.insert(state.ids.end(), initial.begin(), initial.end());
      return;
    }
    if (initial.size() <= kShortWordSymbols) {
      MergeShortWord(initial, state);
      return;
    }
    auto& symbols = state.symbols;
    auto& heap = state.heap;
    symbols.clear();
    heap.clear();
    const int32_t n = static_cast<int32_t>(initial.size());
    for (int32_t i = 0; i < n; ++i) symbols.push_back({initial[i], i - 1, i + 1 < n ? i + 1 : -1});
    const auto greater = std::greater<EncodeState::Candidate>();
    auto push = [&](int32_t pos) {  // the pair (pos, its right neighbour)
      const int32_t next = symbols[pos].next;
      auto it = merges_.find(PairKey(symbols[pos].id, symbols[next].id));
      if (it == merges_.end()) return;
      heap.push_back({it->second.rank, pos, symbols[pos].id, symbols[next].id, it->second.id});
      std::push_heap(heap.begin(), heap.end(), greater);
    };
    for (int32_t i = 0; i + 1 < n; ++i) push(i);
    while (!heap.empty()) {
      std::pop_heap(heap.begin(), heap.end(), greater);
      const EncodeState::Candidate c = heap.back();
      heap.pop_back();
      EncodeState::Symbol& left = symbols[c.pos];
      if (left.id != c.left || left.next < 0 || symbols[left.next].id != c.right) continue;  // stale
      EncodeState::Symbol& right = symbols[left.next];
      left.id = c.merged;
      left.next = right.next;
      right.id = -1;
      if (left.next >= 0) symbols[left.next].prev = c.pos;
      if (left.prev >= 0) push(left.prev);
      if (left.next >= 0) push(c.pos);
    }
    for (int32_t i = 0; i >= 0; i = symbols[i].next) state.ids.push_back(symbols[i].id);
  }

  // MergePiece for short words (nearly all of them): the same merge order, found by scanning an
  // array of pair ranks, which is faster than a heap at this size.
  void MergeShortWord(absl::Span<const int32_t> initial, EncodeState& state) const {
    constexpr int32_t kNone = std::numeric_limits<int32_t>::max();
    std::array<int32_t, kShortWordSymbols> ids{}, ranks{}, merged{};
    int32_t n = static_cast<int32_t>(initial.size());
    std::copy(initial.begin(), initial.end(), ids.begin());
    auto update = [&](int32_t i) {  // the pair (i, i + 1)
      auto it = merges_.find(PairKey(ids[i], ids[i + 1]));
      ranks[i] = it == merges_.end() ? kNone : it->second.rank;
      if (it != merges_.end()) merged[i] = it->second.id;
    };
    for (int32_t i = 0; i + 1 < n; ++i) update(i);
    while (n > 1) {
      int32_t best = 0;
      for (int32_t i = 1; i + 1 < n; ++i) {
        if (ranks[i] < ranks[best]) best = i;
      }
      if (ranks[best] == kNone) break;
      ids[best] = merged[best];
      for (int32_t i = best + 1; i + 1 < n; ++i) {
        ids[i] = ids[i + 1];
        ranks[i] = ranks[i + 1];
        merged[i] = merged[i + 1];
      }
      --n;
      if (best + 1 < n) update(best);
      if (best > 0) update(best - 1);
    }
    state.ids.insert(state.ids.end(), ids.begin(), ids.begin() + n);
  }

  PreTokenizer pre_tokenizer_ = PreTokenizer::kByteLevel;
  std::vector<Stage> stages_;         // kByteLevel
  bool strip_decoded_space_ = false;  // kMetaspace
  // kMetaspace: whether a word may be encoded in pieces split before each U+2581 that follows
  // another character (the ids are the same when no merge can span such a split).
  bool metaspace_words_are_independent_ = false;
  std::vector<std::string> decoded_;             // id -> what it decodes to (bytes; "" for unused ids)
  std::vector<int16_t> byte_values_;             // id -> its byte if a "<0xNN>" token (kMetaspace), kNotByte, kNoToken
  std::array<CharSymbols, 256> byte_symbols_{};  // kByteLevel: byte -> its initial tokens
  std::array<int32_t, 128> ascii_ids_{};         // kMetaspace: ASCII character -> its token, or -1
  std::array<int32_t, 256> fallback_ids_{};      // byte -> its token "<0xNN>" (if byte_fallback), or -1
  bool byte_fallback_ = false;
  bool fuse_unk_ = false;
  std::optional<int32_t> unk_id_;
  absl::flat_hash_map<uint64_t, Merge> merges_;  // (left id, right id) -> rank and merged id
  AddedTokenMatcher raw_added_, normalized_added_;
  bool ignore_merges_ = false;
  absl::flat_hash_map<std::string, int32_t> vocab_;  // kept only for ignore_merges and kMetaspace
};

absl::Status ParseVocab(const Json& vocab, absl::string_view source, absl::flat_hash_map<std::string, int32_t>& out) {
  if (!vocab.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": the vocabulary must be a JSON object"));
  }
  out.reserve(vocab.size());
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    if (!it.value().is_number_integer()) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": the id of token \"", it.key(), "\" is not an integer"));
    }
    const int64_t id = it.value().get<int64_t>();
    if (id < 0 || id >= std::numeric_limits<int32_t>::max()) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": token \"", it.key(), "\" has id ", id, " out of range"));
    }
    out[it.key()] = static_cast<int32_t>(id);
  }
  return absl::OkStatus();
}

absl::StatusOr<Json> ParseJsonFile(const std::filesystem::path& path) {
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  Json json = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(path.string(), " is not valid JSON"));
  return json;
}

// The string field `key` of `object`, or `fallback` if it is absent or not a string.
std::string StringField(const Json& object, const char* key, const std::string& fallback = "") {
  auto it = object.find(key);
  return it != object.end() && it->is_string() ? it->get<std::string>() : fallback;
}

bool BoolField(const Json& object, const char* key, bool fallback) {
  auto it = object.find(key);
  return it != object.end() && it->is_boolean() ? it->get<bool>() : fallback;
}

// `literal` as a PCRE2 pattern.
std::string QuoteRegex(absl::string_view literal) {
  std::string out = "\\Q";
  for (size_t i = 0; i < literal.size(); ++i) {
    if (literal.substr(i, 2) == "\\E") {
      out += "\\E\\\\E\\Q";
      ++i;
    } else {
      out += literal[i];
    }
  }
  return out + "\\E";
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadByteLevelBpe(const std::filesystem::path& vocab_json,
                                                            const std::filesystem::path& merges_txt) {
  HfBpe::Spec spec;
  ASSIGN_OR_RETURN(Json vocab, ParseJsonFile(vocab_json));
  RETURN_IF_ERROR(ParseVocab(vocab, vocab_json.string(), spec.vocab));
  ASSIGN_OR_RETURN(std::string merges_text, ReadFile(merges_txt));
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(merges_text, '\n')) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty() || (line_no == 1 && absl::StartsWith(line, "#version"))) continue;
    std::vector<std::string> parts = absl::StrSplit(line, ' ');
    if (parts.size() != 2 || parts[0].empty() || parts[1].empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(merges_txt.string(), ": line ", line_no, " is not a merge \"a b\": \"", line, "\""));
    }
    spec.merges.emplace_back(std::move(parts[0]), std::move(parts[1]));
  }
  // HF's GPT-2 tokenizer treats <|endoftext|> in text as the special token.
  if (auto it = spec.vocab.find("<|endoftext|>"); it != spec.vocab.end()) {
    spec.added.push_back({"<|endoftext|>", it->second});
  }
  spec.source = absl::StrCat(vocab_json.string(), " + ", merges_txt.string());
  return HfBpe::Create(std::move(spec));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizerJson(const std::filesystem::path& path) {
  const std::string source = path.string();
  ASSIGN_OR_RETURN(Json json, ParseJsonFile(path));
  auto bad = [&](absl::string_view what) { return absl::InvalidArgumentError(absl::StrCat(source, ": ", what)); };
  if (!json.is_object()) return bad("not a JSON object");
  auto model = json.find("model");
  if (model == json.end() || !model->is_object()) return bad("has no \"model\" object");
  // Files of old tokenizers versions have no model.type; BPE is the only model with merges.
  const std::string type = StringField(*model, "type", model->contains("merges") ? "BPE" : "");
  if (type != "BPE") return bad(absl::StrCat("model type \"", type, "\" is not supported (only \"BPE\")"));
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (!StringField(*model, key).empty()) return bad(absl::StrCat("BPE with a ", key, " is not supported"));
  }

  HfBpe::Spec spec;
  spec.source = source;
  auto vocab = model->find("vocab");
  if (vocab == model->end()) return bad("the model has no vocab");
  RETURN_IF_ERROR(ParseVocab(*vocab, source, spec.vocab));
  auto merges = model->find("merges");
  if (merges == model->end() || !merges->is_array()) return bad("the model has no merges list");
  spec.merges.reserve(merges->size());
  for (const Json& m : *merges) {
    if (m.is_string()) {  // "a b" (tokenizers < 0.20)
      const std::string s = m.get<std::string>();
      const size_t space = s.find(' ', 1);
      if (space == std::string::npos || space + 1 == s.size()) {
        return bad(absl::StrCat("merge \"", s, "\" is not \"a b\""));
      }
      spec.merges.emplace_back(s.substr(0, space), s.substr(space + 1));
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {  // ["a", "b"]
      spec.merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
    } else {
      return bad("merges must be strings \"a b\" or pairs [\"a\", \"b\"]");
    }
  }
  spec.ignore_merges = BoolField(*model, "ignore_merges", false);
  spec.byte_fallback = BoolField(*model, "byte_fallback", false);
  spec.fuse_unk = BoolField(*model, "fuse_unk", false);
  if (auto unk = model->find("unk_token"); unk != model->end() && !unk->is_null()) {
    if (!unk->is_string()) return bad("model.unk_token must be a string or null");
    spec.unk_token = unk->get<std::string>();
  }

  // Normalizer: none, or NFC, accepted as is (the text is taken to be NFC already).
  std::function<absl::Status(const Json&, int)> check_normalizer = [&](const Json& n, int depth) -> absl::Status {
    if (n.is_null()) return absl::OkStatus();
    if (depth > kMaxSequenceDepth) {
      return bad(absl::StrCat("normalizer Sequences nest more than ", kMaxSequenceDepth, " deep"));
    }
    const std::string t = n.is_object() ? StringField(n, "type") : "";
    if (t == "NFC") return absl::OkStatus();
    if (t == "Sequence" && n.contains("normalizers") && n["normalizers"].is_array()) {
      for (const Json& inner : n["normalizers"]) RETURN_IF_ERROR(check_normalizer(inner, depth + 1));
      return absl::OkStatus();
    }
    return bad(absl::StrCat("normalizer \"", t, "\" is not supported (only none or NFC)"));
  };
  if (auto n = json.find("normalizer"); n != json.end()) RETURN_IF_ERROR(check_normalizer(*n, 0));

  // Pre-tokenizer: ByteLevel, or a Sequence of Splits and a ByteLevel (LLaMA 3, Qwen2).
  spec.stages.clear();
  bool byte_level = false;
  std::function<absl::Status(const Json&, int)> visit = [&](const Json& p, int depth) -> absl::Status {
    if (!p.is_object()) return bad("pre_tokenizer entries must be objects");
    if (depth > kMaxSequenceDepth) {
      return bad(absl::StrCat("pre_tokenizer Sequences nest more than ", kMaxSequenceDepth, " deep"));
    }
    const std::string t = StringField(p, "type");
    if (t == "Sequence") {
      auto list = p.find("pretokenizers");
      if (list == p.end() || !list->is_array()) return bad("Sequence pre_tokenizer without a \"pretokenizers\" list");
      for (const Json& q : *list) RETURN_IF_ERROR(visit(q, depth + 1));
    } else if (t == "ByteLevel") {
      if (byte_level) return bad("more than one ByteLevel pre_tokenizer");
      byte_level = true;
      spec.stages.push_back(
          {BoolField(p, "add_prefix_space", false), BoolField(p, "use_regex", true) ? kGpt2SplitPattern : ""});
    } else if (t == "Split") {
      if (byte_level) return bad("a Split pre_tokenizer after ByteLevel is not supported");
      auto pattern = p.find("pattern");
      std::string regex;
      if (pattern != p.end() && pattern->is_object() && pattern->contains("Regex") && (*pattern)["Regex"].is_string()) {
        regex = (*pattern)["Regex"].get<std::string>();
      } else if (pattern != p.end() && pattern->is_object() && pattern->contains("String") &&
                 (*pattern)["String"].is_string()) {
        regex = QuoteRegex((*pattern)["String"].get<std::string>());
      } else {
        return bad("Split pre_tokenizer needs a {\"Regex\": ...} or {\"String\": ...} pattern");
      }
      const std::string behavior = StringField(p, "behavior", "Isolated");
      if (behavior != "Isolated" || BoolField(p, "invert", false)) {
        return bad(absl::StrCat("Split pre_tokenizer with behavior \"", behavior,
                                "\" or invert=true is not supported (only Isolated)"));
      }
      spec.stages.push_back({false, regex});
    } else {
      return bad(absl::StrCat("pre_tokenizer type \"", t, "\" is not supported"));
    }
    return absl::OkStatus();
  };
  auto pre = json.find("pre_tokenizer");
  if (pre == json.end() || pre->is_null()) return bad("has no pre_tokenizer (byte-level BPE needs ByteLevel)");
  RETURN_IF_ERROR(visit(*pre, 0));
  if (!byte_level) return bad("only byte-level BPE (a ByteLevel pre_tokenizer) is supported");

  if (auto added = json.find("added_tokens"); added != json.end() && !added->is_null()) {
    if (!added->is_array()) return bad("added_tokens must be a list");
    for (const Json& a : *added) {
      if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() || !a.contains("content") ||
          !a["content"].is_string()) {
        return bad("added_tokens entries need an integer id and a string content");
      }
      const int64_t id = a["id"].get<int64_t>();
      if (id < 0 || id >= std::numeric_limits<int32_t>::max()) {
        return bad(absl::StrCat("added token id ", id, " out of range"));
      }
      const bool special = BoolField(a, "special", false);
      spec.added.push_back({a["content"].get<std::string>(), static_cast<int32_t>(id),
                            BoolField(a, "single_word", false), BoolField(a, "lstrip", false),
                            BoolField(a, "rstrip", false), BoolField(a, "normalized", !special)});
    }
  }
  return HfBpe::Create(std::move(spec));
}

namespace tokenizer_internal {

const char kGpt2SplitPattern[] = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

std::string ByteLevelSpelling(absl::string_view bytes) { return ByteLevelForm(bytes); }

bool IsInByteLevelAlphabet(absl::string_view token) {
  for (size_t i = 0; i < token.size();) {
    const size_t len = ValidUtf8Length(token, i);
    if (len == 0 || CodePointToByte(DecodeUtf8(token, i, len)) < 0) return false;
    i += len;
  }
  return true;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> CreateHfBpe(HfBpeSpec spec) { return HfBpe::Create(std::move(spec)); }

}  // namespace tokenizer_internal
}  // namespace lesion::model
