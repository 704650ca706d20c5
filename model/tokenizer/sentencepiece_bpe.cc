// SentencePiece BPE (LLaMA 2, llama2.c), as sentencepiece's bpe_model.cc encodes: spaces become
// U+2581 with a dummy prefix, the text is split into characters (user-defined pieces stay whole
// and never merge), and adjacent symbols are merged by the highest piece score (leftmost on ties)
// while the merged string is a piece; symbols that are not pieces fall back to byte pieces <0xNN>
// (or <unk>). llama2.c's run.c `encode` gives the same ids for its own vocabularies.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <queue>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "model/tokenizer/tokenizer.h"
#include "model/tokenizer/tokenizer_internal.h"
#include "proto/sentencepiece/sentencepiece_model.pb.h"

namespace lesion::model {
namespace {

using Piece = sentencepiece::ModelProto::SentencePiece;
using tokenizer_internal::FindInvalidUtf8;
using tokenizer_internal::ValidUtf8Length;

constexpr char kSpaceSymbol[] = "\xE2\x96\x81";  // U+2581

struct VocabEntry {
  std::string piece;
  float score = 0;
  Piece::Type type = Piece::NORMAL;
};

// The byte of a piece "<0xNN>", or -1.
int BytePieceValue(absl::string_view piece) {
  if (piece.size() != 6 || !absl::StartsWith(piece, "<0x") || piece[5] != '>') return -1;
  int value = 0;
  for (char c : piece.substr(3, 2)) {
    value *= 16;
    if (c >= '0' && c <= '9') {
      value += c - '0';
    } else if (c >= 'A' && c <= 'F') {
      value += c - 'A' + 10;
    } else if (c >= 'a' && c <= 'f') {
      value += c - 'a' + 10;
    } else {
      return -1;
    }
  }
  return value;
}

class SentencePieceBpe final : public tokenizer_internal::TokenizerBase {
 public:
  struct Spec {
    std::vector<VocabEntry> vocab;
    bool add_dummy_prefix = true;
    bool remove_extra_whitespaces = false;
    bool escape_whitespaces = true;
    bool byte_fallback = true;
    std::optional<int32_t> unk;
    std::string unk_surface = " \xE2\x81\x87 ";  // " ⁇ "
    std::string source;
  };

  static absl::StatusOr<std::unique_ptr<Tokenizer>> Create(Spec spec, std::optional<int32_t> bos,
                                                           std::optional<int32_t> eos) {
    auto tok = std::unique_ptr<SentencePieceBpe>(new SentencePieceBpe());
    tok->spec_ = std::move(spec);
    tok->SetSpecialIds(bos, eos);
    tok->byte_ids_.fill(-1);
    tok->byte_values_.assign(tok->spec_.vocab.size(), -1);
    for (int32_t id = 0; id < static_cast<int32_t>(tok->spec_.vocab.size()); ++id) {
      const VocabEntry& e = tok->spec_.vocab[id];
      if (e.type == Piece::BYTE) {
        const int byte = BytePieceValue(e.piece);
        if (byte < 0) {
          return absl::InvalidArgumentError(
              absl::StrCat(tok->spec_.source, ": byte piece ", id, " is \"", e.piece, "\", not <0xNN>"));
        }
        tok->byte_values_[id] = byte;
        if (tok->byte_ids_[byte] < 0) tok->byte_ids_[byte] = id;
      } else if (e.type == Piece::NORMAL || e.type == Piece::USER_DEFINED) {
        tok->ids_.try_emplace(e.piece, id);
        if (e.type == Piece::USER_DEFINED && !e.piece.empty()) {
          tok->user_defined_[static_cast<unsigned char>(e.piece[0])].push_back(e.piece);
        }
      }
    }
    // Pieces never contain U+2581 after another character (sentencepiece's split_by_whitespace;
    // "\u2581\u2581" is fine), so no merge crosses the start of a "\u2581word": words can be
    // encoded one by one, and repeated ones once.
    tok->words_are_independent_ = tok->spec_.escape_whitespaces;
    for (const auto& [piece, id] : tok->ids_) {
      const absl::string_view p(piece);
      for (size_t at = p.find(kSpaceSymbol, 1); at != absl::string_view::npos; at = p.find(kSpaceSymbol, at + 1)) {
        if (at < 3 || p.substr(at - 3, 3) != kSpaceSymbol) tok->words_are_independent_ = false;
      }
    }
    for (auto& list : tok->user_defined_) {  // longest first: PrefixMatch takes the longest
      std::stable_sort(list.begin(), list.end(),
                       [](const std::string& a, const std::string& b) { return a.size() > b.size(); });
    }
    return std::unique_ptr<Tokenizer>(std::move(tok));
  }

  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view input) const override {
    const absl::string_view text(input.data(), input.size());
    if (const size_t bad = FindInvalidUtf8(text); bad != absl::string_view::npos) {
      return absl::InvalidArgumentError(absl::StrCat("text is not valid UTF-8 at byte ", bad));
    }
    const std::string normalized = Normalize(text);
    std::vector<int32_t> ids;
    if (!words_are_independent_) {
      RETURN_IF_ERROR(EncodeSegment(normalized, ids));
      CollapseUnknownRuns(ids);
      return ids;
    }
    // Encode word by word ("\u2581word"), memoizing repeated words; see words_are_independent_.
    absl::flat_hash_map<std::string, std::pair<uint32_t, uint32_t>> memo;  // word -> (offset, count)
    const absl::string_view all(normalized);
    const absl::string_view space(kSpaceSymbol);
    size_t begin = 0;
    while (begin < all.size()) {
      size_t end = begin;  // the next U+2581 that follows something else
      do {
        end = all.find(space, end + 1);
        // (a U+2581 at byte 1 or 2, possible without the dummy prefix, follows no U+2581)
      } while (end != absl::string_view::npos && end >= space.size() &&
               all.substr(end - space.size(), space.size()) == space);
      if (end == absl::string_view::npos) end = all.size();
      const absl::string_view word = all.substr(begin, end - begin);
      if (auto it = memo.find(word); it != memo.end()) {
        const auto [offset, count] = it->second;
        const size_t old = ids.size();
        ids.resize(old + count);
        std::copy(ids.begin() + offset, ids.begin() + offset + count, ids.begin() + old);
      } else {
        const size_t offset = ids.size();
        RETURN_IF_ERROR(EncodeSegment(word, ids));
        memo.emplace(std::string(word),
                     std::make_pair(static_cast<uint32_t>(offset), static_cast<uint32_t>(ids.size() - offset)));
      }
      begin = end;
    }
    CollapseUnknownRuns(ids);
    return ids;
  }

  // As sentencepiece's SentencePieceProcessor::Decode: control pieces vanish, <unk> shows its
  // surface, runs of byte pieces become UTF-8 (one U+FFFD per byte that does not form it), and
  // the first piece loses the dummy-prefix space (with remove_extra_whitespaces, each leading
  // piece that is only that space vanishes).
  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids) const override {
    std::string out, bytes;
    auto flush_bytes = [&] {
      out += tokenizer_internal::RepairUtf8(bytes, tokenizer_internal::Utf8Repair::kPerByte);
      bytes.clear();
    };
    bool at_start = true;
    const bool strip_first_space = spec_.add_dummy_prefix || spec_.remove_extra_whitespaces;
    for (int32_t id : ids) {
      if (id < 0 || id >= static_cast<int32_t>(spec_.vocab.size())) {
        return absl::InvalidArgumentError(
            absl::StrCat("token id ", id, " out of range: the vocabulary has ids 0..", spec_.vocab.size() - 1));
      }
      const VocabEntry& e = spec_.vocab[id];
      if (e.type == Piece::BYTE) {
        bytes += static_cast<char>(byte_values_[id]);
        at_start = false;
        continue;
      }
      flush_bytes();
      if (e.type == Piece::CONTROL) continue;
      if (e.type == Piece::UNKNOWN) {
        out += spec_.unk_surface;
        at_start = false;
        continue;
      }
      absl::string_view piece = e.piece;
      if (at_start && strip_first_space) absl::ConsumePrefix(&piece, kSpaceSymbol);
      out += absl::StrReplaceAll(piece, {{kSpaceSymbol, " "}});
      // With remove_extra_whitespaces, sentencepiece strips every leading "\u2581" piece.
      at_start = at_start && spec_.remove_extra_whitespaces && piece.empty();
    }
    flush_bytes();
    return out;
  }

  int32_t vocab_size() const override { return static_cast<int32_t>(spec_.vocab.size()); }
  std::string_view kind() const override { return "sentencepiece_bpe"; }

 private:
  SentencePieceBpe() = default;

  // BPE over normalized text, appending to `ids`.
  absl::Status EncodeSegment(absl::string_view normalized, std::vector<int32_t>& ids) const {
    // Symbols are [begin, end) ranges of `normalized`, linked as a list.
    struct Symbol {
      size_t begin, end;
      int prev, next;
      bool frozen;  // a user-defined piece
      bool alive = true;
    };
    std::vector<Symbol> symbols;
    for (size_t i = 0; i < normalized.size();) {
      size_t len = UserDefinedPrefix(normalized.substr(i));
      const bool frozen = len > 0;
      // A user-defined piece may end inside a character (a model's pieces need not be valid
      // UTF-8): a byte that starts no character is a symbol of its own, so that the scan advances.
      if (!frozen) len = std::max<size_t>(1, ValidUtf8Length(normalized, i));
      const int n = static_cast<int>(symbols.size());
      symbols.push_back({i, i + len, n - 1, n + 1, frozen});
      i += len;
    }
    if (!symbols.empty()) symbols.back().next = -1;

    // Candidate merges ordered by score (highest first), then by position (leftmost first).
    struct Candidate {
      float score;
      int left, right;
      size_t length;  // byte length of the merged string when queued, to detect stale entries
      bool operator<(const Candidate& o) const { return score != o.score ? score < o.score : left > o.left; }
    };
    std::priority_queue<Candidate> queue;
    auto text_of = [&](int a, int b) { return normalized.substr(symbols[a].begin, symbols[b].end - symbols[a].begin); };
    auto push = [&](int a, int b) {
      if (a < 0 || b < 0 || symbols[a].frozen || symbols[b].frozen) return;
      auto it = ids_.find(text_of(a, b));
      if (it == ids_.end()) return;
      queue.push({spec_.vocab[it->second].score, a, b, symbols[b].end - symbols[a].begin});
    };
    for (int i = 0; i + 1 < static_cast<int>(symbols.size()); ++i) push(i, i + 1);
    while (!queue.empty()) {
      const Candidate c = queue.top();
      queue.pop();
      Symbol& left = symbols[c.left];
      if (!left.alive || left.next != c.right || !symbols[c.right].alive ||
          symbols[c.right].end - left.begin != c.length) {
        continue;  // a side was merged since this candidate was queued
      }
      Symbol& right = symbols[c.right];
      left.end = right.end;
      left.next = right.next;
      right.alive = false;
      if (right.next >= 0) symbols[right.next].prev = c.left;
      push(left.prev, c.left);
      push(c.left, left.next);
    }

    for (int i = symbols.empty() ? -1 : 0; i >= 0; i = symbols[i].next) {
      const absl::string_view s = text_of(i, i);
      if (auto it = ids_.find(s); it != ids_.end()) {
        ids.push_back(it->second);
      } else if (spec_.byte_fallback) {
        for (unsigned char b : s) {
          if (byte_ids_[b] < 0) {
            return absl::InvalidArgumentError(absl::StrFormat("\"%s\" cannot be encoded: %s has no byte piece <0x%02X>",
                                                              std::string(s), spec_.source, b));
          }
          ids.push_back(byte_ids_[b]);
        }
      } else if (spec_.unk.has_value()) {
        ids.push_back(*spec_.unk);
      } else {
        return absl::InvalidArgumentError(absl::StrCat("\"", s, "\" cannot be encoded: not in the vocabulary of ",
                                                       spec_.source, ", which has no <unk>"));
      }
    }
    return absl::OkStatus();
  }

  // As SentencePieceProcessor::Encode, a run of consecutive unknown pieces becomes one <unk>
  // (only <unk> symbols yield the unk id: it is not in ids_).
  void CollapseUnknownRuns(std::vector<int32_t>& ids) const {
    if (!spec_.unk.has_value()) return;
    const int32_t unk = *spec_.unk;
    ids.erase(std::unique(ids.begin(), ids.end(), [unk](int32_t a, int32_t b) { return a == unk && b == unk; }),
              ids.end());
  }

  // Length of the longest user-defined piece that `text` starts with, or 0.
  size_t UserDefinedPrefix(absl::string_view text) const {
    for (const std::string& p : user_defined_[static_cast<unsigned char>(text[0])]) {
      if (absl::StartsWith(text, p)) return p.size();
    }
    return 0;
  }

  // sentencepiece's normalizer.cc with the identity rule set. remove_extra_whitespaces drops
  // leading spaces and spaces after a space, then trailing space symbols, which include a
  // U+2581 of the input itself ("a\u2581" -> "\u2581a").
  std::string Normalize(absl::string_view text) const {
    if (text.empty()) return "";
    const bool rmws = spec_.remove_extra_whitespaces;
    const absl::string_view space = spec_.escape_whitespaces ? absl::string_view(kSpaceSymbol) : " ";
    if (rmws) {
      while (!text.empty() && text[0] == ' ') text.remove_prefix(1);
    }
    std::string out;
    out.reserve(text.size() + text.size() / 2 + 3);
    if (spec_.add_dummy_prefix) out.append(space.data(), space.size());
    bool prev_space = rmws;
    for (char c : text) {  // byte by byte: only ASCII ' ' is rewritten
      if (c != ' ') {
        out += c;
        prev_space = false;
      } else if (!prev_space) {
        out.append(space.data(), space.size());
        prev_space = rmws;
      }
    }
    if (rmws) {
      while (absl::EndsWith(out, space)) out.resize(out.size() - space.size());
    }
    return out;
  }

  Spec spec_;
  absl::flat_hash_map<std::string, int32_t> ids_;           // NORMAL and USER_DEFINED pieces
  std::array<int32_t, 256> byte_ids_{};                     // byte -> its <0xNN> piece, -1 if none
  std::vector<int> byte_values_;                            // id -> byte of a BYTE piece, else -1
  std::array<std::vector<std::string>, 256> user_defined_;  // by first byte, longest first
  bool words_are_independent_ = false;
};

// Reads llama2.c's tokenizer.bin: int32 max_token_length, then {float32 score, int32 len, bytes}.
absl::StatusOr<std::vector<VocabEntry>> ReadLlama2cVocab(const std::filesystem::path& path,
                                                         std::optional<int32_t> vocab_size) {
  ASSIGN_OR_RETURN(std::string bytes, ReadFile(path));
  const std::string source = path.string();
  if (vocab_size.has_value() && *vocab_size < 3) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": vocab_size ", *vocab_size, " is too small"));
  }
  size_t pos = 4;
  if (bytes.size() < pos) return absl::DataLossError(absl::StrCat(source, " is shorter than its 4-byte header"));
  std::vector<VocabEntry> vocab;
  while (vocab_size.has_value() ? static_cast<int32_t>(vocab.size()) < *vocab_size : pos < bytes.size()) {
    if (bytes.size() - pos < 8) {
      return absl::DataLossError(
          absl::StrCat(source, " is truncated: record ", vocab.size(), " is incomplete",
                       vocab_size.has_value() ? absl::StrCat(" (", *vocab_size, " expected)") : ""));
    }
    float score;
    int32_t len;
    std::memcpy(&score, bytes.data() + pos, 4);
    if (std::isnan(score)) {  // would break the merge order (NaN compares false with everything)
      return absl::DataLossError(absl::StrCat(source, " is corrupt: record ", vocab.size(), " has score NaN"));
    }
    std::memcpy(&len, bytes.data() + pos + 4, 4);
    pos += 8;
    if (len < 0 || static_cast<size_t>(len) > bytes.size() - pos) {
      return absl::DataLossError(absl::StrCat(source, " is truncated or corrupt: record ", vocab.size(), " has length ",
                                              len, " with ", bytes.size() - pos, " bytes left"));
    }
    VocabEntry e;
    e.piece = bytes.substr(pos, len);
    e.score = score;
    pos += len;
    const int32_t id = static_cast<int32_t>(vocab.size());
    if (id == 0) {
      e.type = Piece::UNKNOWN;
      e.piece = "<unk>";
    } else if (id == 1 || id == 2) {  // "\n<s>\n", "\n</s>\n" in llama2.c's files
      e.type = Piece::CONTROL;
      e.piece = id == 1 ? "<s>" : "</s>";
    } else if (BytePieceValue(e.piece) >= 0) {
      e.type = Piece::BYTE;
    } else {
      if (FindInvalidUtf8(e.piece) != absl::string_view::npos) {
        return absl::DataLossError(absl::StrCat(source, ": piece ", id, " is not valid UTF-8"));
      }
      // llama2.c stores U+2581 as a plain space.
      e.piece = absl::StrReplaceAll(e.piece, {{" ", kSpaceSymbol}});
    }
    vocab.push_back(std::move(e));
  }
  if (vocab.size() < 3) return absl::DataLossError(absl::StrCat(source, " holds fewer than 3 tokens"));
  return vocab;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadSentencePieceModel(const std::filesystem::path& path) {
  const std::string source = path.string();
  ASSIGN_OR_RETURN(std::string bytes, ReadFile(path));
  sentencepiece::ModelProto proto;
  if (!proto.ParseFromString(bytes)) {
    return absl::DataLossError(absl::StrCat(source, " is not a SentencePiece model (protobuf parse failed)"));
  }
  if (proto.pieces_size() == 0) return absl::DataLossError(absl::StrCat(source, " has no pieces"));
  const sentencepiece::TrainerSpec& trainer = proto.trainer_spec();
  const sentencepiece::NormalizerSpec& normalizer = proto.normalizer_spec();
  if (trainer.model_type() != sentencepiece::TrainerSpec::BPE) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": model type ", trainer.model_type(), " is not supported (only BPE = 2)"));
  }
  if (!normalizer.precompiled_charsmap().empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": normalizer \"", normalizer.name(), "\" is not supported (only identity)"));
  }
  if (trainer.treat_whitespace_as_suffix()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": treat_whitespace_as_suffix is not supported"));
  }
  SentencePieceBpe::Spec spec;
  spec.source = source;
  spec.vocab.reserve(proto.pieces_size());
  for (const Piece& p : proto.pieces()) {
    if (std::isnan(p.score())) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": piece ", spec.vocab.size(), " (\"", p.piece(), "\") has score NaN"));
    }
    spec.vocab.push_back({p.piece(), p.score(), p.type()});
  }
  spec.add_dummy_prefix = normalizer.add_dummy_prefix();
  spec.remove_extra_whitespaces = normalizer.remove_extra_whitespaces();
  spec.escape_whitespaces = normalizer.escape_whitespaces();
  spec.byte_fallback = trainer.byte_fallback();
  spec.unk_surface = trainer.unk_surface();
  const int32_t n = proto.pieces_size();
  auto id = [n](int32_t v) { return v >= 0 && v < n ? std::optional<int32_t>(v) : std::nullopt; };
  spec.unk = id(trainer.unk_id());
  return SentencePieceBpe::Create(std::move(spec), id(trainer.bos_id()), id(trainer.eos_id()));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadLlama2cTokenizer(const std::filesystem::path& path,
                                                                std::optional<int32_t> vocab_size) {
  SentencePieceBpe::Spec spec;
  ASSIGN_OR_RETURN(spec.vocab, ReadLlama2cVocab(path, vocab_size));
  spec.source = path.string();
  spec.unk = 0;
  return SentencePieceBpe::Create(std::move(spec), 1, 2);
}

absl::StatusOr<std::string> Llama2cTokenizerBinToModelProto(const std::filesystem::path& path) {
  ASSIGN_OR_RETURN(std::vector<VocabEntry> vocab, ReadLlama2cVocab(path, std::nullopt));
  sentencepiece::ModelProto proto;
  for (const VocabEntry& e : vocab) {
    Piece* p = proto.add_pieces();
    p->set_piece(e.piece);
    p->set_score(e.score);
    p->set_type(e.type);
  }
  // The fields set (and their order) fix the bytes of models/stories260K/tokenizer.model, which a
  // test compares with a fresh conversion.
  auto* trainer = proto.mutable_trainer_spec();
  trainer->set_model_type(sentencepiece::TrainerSpec::BPE);
  trainer->set_vocab_size(static_cast<int32_t>(vocab.size()));
  trainer->set_byte_fallback(true);
  trainer->set_unk_id(0);
  trainer->set_bos_id(1);
  trainer->set_eos_id(2);
  trainer->set_pad_id(-1);
  auto* normalizer = proto.mutable_normalizer_spec();
  normalizer->set_name("identity");
  normalizer->set_add_dummy_prefix(true);
  normalizer->set_remove_extra_whitespaces(false);
  normalizer->set_escape_whitespaces(true);
  std::string out;
  if (!proto.SerializeToString(&out)) return absl::InternalError("cannot serialize the SentencePiece model");
  return out;
}

}  // namespace lesion::model
