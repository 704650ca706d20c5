// SentencePiece BPE (LLaMA 2, llama2.c): spaces become U+2581 with a dummy prefix, the text is
// split into characters, and adjacent symbols are merged by the highest piece score (leftmost on
// ties) while the merged string is in the vocabulary; characters outside it fall back to byte
// pieces <0xNN>.
#include <array>
#include <cstdio>
#include <cstring>
#include <queue>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "experiments/tokenizer/tokenizer.h"
#include "proto/sentencepiece/sentencepiece_model.pb.h"

namespace lesion::experiments {
namespace {

using Piece = sentencepiece::ModelProto::SentencePiece;
constexpr char kSpace[] = "\xE2\x96\x81";  // U+2581

// Length of the UTF-8 character starting with byte `c`; 0 for a byte that cannot start one.
size_t Utf8Length(unsigned char c) {
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c < 0xE0) return 2;
  if (c >= 0xE0 && c < 0xF0) return 3;
  if (c >= 0xF0 && c < 0xF5) return 4;
  return 0;
}

struct VocabEntry {
  std::string piece;
  float score = 0;
  Piece::Type type = Piece::NORMAL;
};

class SentencePieceBpe final : public Tokenizer {
 public:
  struct Spec {
    std::vector<VocabEntry> vocab;
    bool add_dummy_prefix = true;
    bool remove_extra_whitespaces = false;
    bool byte_fallback = true;
    std::optional<int32_t> unk, bos, eos;
    std::string source;
  };

  static absl::StatusOr<std::unique_ptr<Tokenizer>> Create(Spec spec) {
    auto tok = std::unique_ptr<SentencePieceBpe>(new SentencePieceBpe());
    tok->spec_ = std::move(spec);
    tok->byte_ids_.fill(-1);
    for (int32_t id = 0; id < static_cast<int32_t>(tok->spec_.vocab.size()); ++id) {
      const VocabEntry& e = tok->spec_.vocab[id];
      if (e.type == Piece::BYTE) {
        unsigned int byte = 0;
        if (e.piece.size() != 6 || std::sscanf(e.piece.c_str(), "<0x%2X>", &byte) != 1) {
          return absl::InvalidArgumentError(
              absl::StrCat(tok->spec_.source, ": byte piece ", id, " is \"", e.piece, "\", not <0xNN>"));
        }
        tok->byte_ids_[byte] = id;
      } else if (e.type == Piece::NORMAL || e.type == Piece::USER_DEFINED) {
        tok->ids_.try_emplace(e.piece, id);
      }
    }
    return std::unique_ptr<Tokenizer>(std::move(tok));
  }

  absl::StatusOr<std::vector<int32_t>> Encode(absl::string_view text) const override {
    std::string normalized = Normalize(text);
    // Split into characters; symbols are [begin, end) ranges of `normalized`, linked as a list.
    struct Symbol {
      size_t begin, end;
      int prev, next;
      bool alive = true;
    };
    std::vector<Symbol> symbols;
    for (size_t i = 0; i < normalized.size();) {
      const size_t len = Utf8Length(static_cast<unsigned char>(normalized[i]));
      if (len == 0 || i + len > normalized.size()) {
        return absl::InvalidArgumentError(absl::StrCat("text is not valid UTF-8 near byte ", i));
      }
      const int n = static_cast<int>(symbols.size());
      symbols.push_back({i, i + len, n - 1, n + 1});
      i += len;
    }
    if (!symbols.empty()) symbols.back().next = -1;

    // Candidate merges ordered by score (highest first), then by position (leftmost first).
    struct Candidate {
      float score;
      int left, right;
      size_t length;  // byte length of the merged string when queued, to detect stale entries
      bool operator<(const Candidate& o) const {
        return score != o.score ? score < o.score : left > o.left;
      }
    };
    std::priority_queue<Candidate> queue;
    auto piece = [&](int a, int b) {
      return absl::string_view(normalized).substr(symbols[a].begin, symbols[b].end - symbols[a].begin);
    };
    auto push = [&](int a, int b) {
      if (a < 0 || b < 0) return;
      auto it = ids_.find(piece(a, b));
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
        continue;  // one side was merged since this candidate was queued
      }
      Symbol& right = symbols[c.right];
      left.end = right.end;
      left.next = right.next;
      right.alive = false;
      if (right.next >= 0) symbols[right.next].prev = c.left;
      push(left.prev, c.left);
      push(c.left, left.next);
    }

    std::vector<int32_t> ids;
    for (int i = symbols.empty() ? -1 : 0; i >= 0; i = symbols[i].next) {
      const absl::string_view s = piece(i, i);
      if (auto it = ids_.find(s); it != ids_.end()) {
        ids.push_back(it->second);
      } else if (spec_.byte_fallback) {
        for (unsigned char b : s) {
          if (byte_ids_[b] < 0) {
            return absl::InvalidArgumentError(absl::StrFormat("%s: no byte piece for 0x%02X", spec_.source, b));
          }
          ids.push_back(byte_ids_[b]);
        }
      } else if (spec_.unk.has_value()) {
        ids.push_back(*spec_.unk);
      } else {
        return absl::InvalidArgumentError(absl::StrCat("\"", s, "\" is not in the vocabulary of ", spec_.source));
      }
    }
    return ids;
  }

  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids) const override {
    std::string out;
    bool first = true;
    for (int32_t id : ids) {
      if (id < 0 || id >= static_cast<int32_t>(spec_.vocab.size())) {
        return absl::InvalidArgumentError(absl::StrCat("token id ", id, " out of range: vocabulary has ",
                                                       spec_.vocab.size(), " ids"));
      }
      const VocabEntry& e = spec_.vocab[id];
      if (e.type == Piece::CONTROL || e.type == Piece::UNKNOWN) {
        if (e.type == Piece::UNKNOWN) out += " \xE2\x81\x87 ";  // sentencepiece's rendering of <unk>
        continue;
      }
      if (e.type == Piece::BYTE) {
        unsigned int byte = 0;
        std::sscanf(e.piece.c_str(), "<0x%2X>", &byte);
        out += static_cast<char>(byte);
        first = false;
        continue;
      }
      std::string text = absl::StrReplaceAll(e.piece, {{kSpace, " "}});
      // The dummy prefix: the text's first space was added by Encode.
      if (first && spec_.add_dummy_prefix && !text.empty() && text[0] == ' ') text.erase(0, 1);
      out += text;
      first = false;
    }
    return out;
  }

  int32_t vocab_size() const override { return static_cast<int32_t>(spec_.vocab.size()); }
  std::optional<int32_t> bos_id() const override { return spec_.bos; }
  std::optional<int32_t> eos_id() const override { return spec_.eos; }
  absl::string_view kind() const override { return "sentencepiece_bpe"; }

 private:
  SentencePieceBpe() = default;

  std::string Normalize(absl::string_view text) const {
    std::string s(text);
    if (spec_.remove_extra_whitespaces) {
      std::string collapsed;
      for (char c : s) {
        if (c == ' ' && (collapsed.empty() || collapsed.back() == ' ')) continue;
        collapsed += c;
      }
      while (!collapsed.empty() && collapsed.back() == ' ') collapsed.pop_back();
      s = std::move(collapsed);
    }
    if (s.empty()) return s;
    if (spec_.add_dummy_prefix) s.insert(0, " ");
    return absl::StrReplaceAll(s, {{" ", kSpace}});
  }

  Spec spec_;
  absl::flat_hash_map<std::string, int32_t> ids_;  // NORMAL and USER_DEFINED pieces
  std::array<int32_t, 256> byte_ids_{};
};

// Reads llama2.c's tokenizer.bin: int32 max_token_length, then {float score, int32 len, bytes}.
absl::StatusOr<std::vector<VocabEntry>> ReadLlama2cVocab(const std::filesystem::path& path,
                                                         std::optional<int32_t> vocab_size) {
  ASSIGN_OR_RETURN(std::string bytes, ReadFile(path));
  const std::string source = path.string();
  size_t pos = 4;
  if (bytes.size() < pos) return absl::DataLossError(absl::StrCat(source, ": shorter than its 4-byte header"));
  std::vector<VocabEntry> vocab;
  while (pos < bytes.size() && (!vocab_size.has_value() || static_cast<int32_t>(vocab.size()) < *vocab_size)) {
    if (bytes.size() - pos < 8) {
      return absl::DataLossError(absl::StrCat(source, ": truncated in record ", vocab.size()));
    }
    float score;
    int32_t len;
    std::memcpy(&score, bytes.data() + pos, 4);
    std::memcpy(&len, bytes.data() + pos + 4, 4);
    pos += 8;
    if (len < 0 || static_cast<size_t>(len) > bytes.size() - pos) {
      return absl::DataLossError(absl::StrCat(source, ": record ", vocab.size(), " has bad length ", len));
    }
    VocabEntry e;
    e.piece = bytes.substr(pos, len);
    e.score = score;
    pos += len;
    const int32_t id = static_cast<int32_t>(vocab.size());
    if (id == 0) {
      e.type = Piece::UNKNOWN;
      e.piece = "<unk>";
    } else if (id == 1 || id == 2) {
      e.type = Piece::CONTROL;
      e.piece = id == 1 ? "<s>" : "</s>";
    } else if (e.piece.size() == 6 && e.piece.rfind("<0x", 0) == 0 && e.piece[5] == '>') {
      e.type = Piece::BYTE;
    } else {
      e.piece = absl::StrReplaceAll(e.piece, {{" ", kSpace}});
    }
    vocab.push_back(std::move(e));
  }
  if (vocab_size.has_value() && static_cast<int32_t>(vocab.size()) != *vocab_size) {
    return absl::DataLossError(absl::StrCat(source, ": holds ", vocab.size(), " tokens, config says ", *vocab_size));
  }
  if (vocab.size() < 3) return absl::DataLossError(absl::StrCat(source, ": fewer than 3 tokens"));
  return vocab;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadSentencePieceModel(const std::filesystem::path& path) {
  ASSIGN_OR_RETURN(std::string bytes, ReadFile(path));
  sentencepiece::ModelProto proto;
  if (!proto.ParseFromString(bytes)) {
    return absl::DataLossError(absl::StrCat(path.string(), " is not a valid SentencePiece model (protobuf parse failed)"));
  }
  if (proto.pieces_size() == 0) return absl::DataLossError(absl::StrCat(path.string(), " has no pieces"));
  if (proto.trainer_spec().model_type() != sentencepiece::TrainerSpec::BPE) {
    return absl::InvalidArgumentError(absl::StrCat(path.string(), ": model type ", proto.trainer_spec().model_type(),
                                                   " is not BPE; only SentencePiece BPE is supported"));
  }
  if (!proto.normalizer_spec().precompiled_charsmap().empty() && proto.normalizer_spec().name() != "identity") {
    return absl::InvalidArgumentError(absl::StrCat(path.string(), ": normalizer \"", proto.normalizer_spec().name(),
                                                   "\" is not supported (only identity)"));
  }
  SentencePieceBpe::Spec spec;
  spec.source = path.string();
  for (const Piece& p : proto.pieces()) spec.vocab.push_back({p.piece(), p.score(), p.type()});
  spec.add_dummy_prefix = proto.normalizer_spec().add_dummy_prefix();
  spec.remove_extra_whitespaces = proto.normalizer_spec().remove_extra_whitespaces();
  spec.byte_fallback = proto.trainer_spec().byte_fallback();
  const int32_t n = proto.pieces_size();
  auto id = [n](int32_t v) { return v >= 0 && v < n ? std::optional<int32_t>(v) : std::nullopt; };
  spec.unk = id(proto.trainer_spec().unk_id());
  spec.bos = id(proto.trainer_spec().bos_id());
  spec.eos = id(proto.trainer_spec().eos_id());
  return SentencePieceBpe::Create(std::move(spec));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadLlama2cTokenizer(const std::filesystem::path& path,
                                                               std::optional<int32_t> vocab_size) {
  SentencePieceBpe::Spec spec;
  ASSIGN_OR_RETURN(spec.vocab, ReadLlama2cVocab(path, vocab_size));
  spec.source = path.string();
  spec.unk = 0, spec.bos = 1, spec.eos = 2;
  return SentencePieceBpe::Create(std::move(spec));
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

}  // namespace lesion::experiments
