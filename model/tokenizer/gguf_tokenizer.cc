// LoadGgufTokenizer: the tokenizer Hugging Face transformers builds from a GGUF file's metadata
// (transformers/integrations/gguf/gguf_tokenizer_mapping.py and the GPT2Tokenizer /
// LlamaTokenizer / TokenizersBackend constructors it goes through), as an HfBpeSpec.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/status_macros.h"
#include "model/tokenizer/tokenizer.h"
#include "model/tokenizer/tokenizer_internal.h"

namespace lesion::model {
namespace {

using tokenizer_internal::AddedToken;
using tokenizer_internal::HfBpeSpec;

// llama.cpp's token types.
constexpr int32_t kControl = 3;
constexpr int32_t kUserDefined = 4;

// transformers' GGUF_PRE_TOKENIZER_SPLITS: the Split regex of a tokenizer.ggml.pre.
constexpr char kLlama3Split[] = R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3})"
                                R"(| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr char kTekkenSplit[] = R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+)"
                                R"(|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*)"
                                R"(|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr char kGpt4oSplit[] =
    R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?)"
    R"(|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?)"
    R"(|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr char kQwen2Split[] =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*)"
    R"(|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr char kQwen35Split[] =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*)"
    R"(|\s*[\r\n]+|\s+(?!\S)|\s+)";

struct PreSplit {
  absl::string_view pre;
  const char* pattern;
};
constexpr PreSplit kPreSplits[] = {
    {"llama3", kLlama3Split},       {"llama-v3", kLlama3Split},
    {"llama-bpe", kLlama3Split},    {"falcon3", kLlama3Split},
    {"falcon-h1", kLlama3Split},    {"pixtral", kLlama3Split},
    {"midm-2.0", kLlama3Split},     {"lfm2", kLlama3Split},
    {"jina-v5-nano", kLlama3Split}, {"dbrx", kLlama3Split},
    {"smaug-bpe", kLlama3Split},    {"tekken", kTekkenSplit},
    {"qwen2", kQwen2Split},         {"deepseek-r1-qwen", kQwen2Split},
    {"kormo", kQwen2Split},         {"f2llmv2", kQwen2Split},
    {"megrez", kQwen2Split},        {"qwen35", kQwen35Split},
    {"gpt-4o", kGpt4oSplit},        {"llama4", kGpt4oSplit},
    {"kanana2", kGpt4oSplit},       {"talkie", kGpt4oSplit},
    {"minimax-m2", kGpt4oSplit},
};

const char* SplitPatternFor(absl::string_view pre) {
  for (const PreSplit& p : kPreSplits) {
    if (p.pre == pre) return p.pattern;
  }
  return nullptr;
}

// Python's len() of a valid UTF-8 string: its number of code points.
size_t CodePoints(absl::string_view s) {
  return static_cast<size_t>(
      std::count_if(s.begin(), s.end(), [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; }));
}

// transformers' generate_merges(vocab, vocab_scores) with vocab = {token: index} and
// vocab_scores = dict(zip(tokens, scores)): every split of a token into two tokens is a merge;
// the merges of one token are ordered by the ids of their parts, then all of them by (score,
// length of the left part, length of the right part), highest first, keeping that order on ties.
// Of tokens spelled alike, the first one's position and the last one's id and score count, as
// with Python dicts.
std::vector<std::pair<std::string, std::string>> GenerateMerges(const std::vector<std::string>& tokens,
                                                                const std::vector<float>& scores) {
  absl::flat_hash_map<absl::string_view, int32_t> index;      // token -> its last index
  std::vector<std::pair<absl::string_view, float>> by_first;  // distinct tokens, last score
  absl::flat_hash_map<absl::string_view, size_t> position;
  for (size_t i = 0; i < tokens.size(); ++i) {
    const absl::string_view t = tokens[i];
    index[t] = static_cast<int32_t>(i);
    auto [it, inserted] = position.try_emplace(t, by_first.size());
    if (inserted) {
      by_first.emplace_back(t, scores[i]);
    } else {
      by_first[it->second].second = scores[i];
    }
  }
  struct Candidate {
    absl::string_view left, right;
    float score;
    size_t left_len, right_len;
    int32_t left_id, right_id;
  };
  std::vector<Candidate> merges, local;
  for (const auto& [token, score] : by_first) {
    local.clear();
    for (size_t at = 1; at < token.size(); ++at) {
      if ((static_cast<unsigned char>(token[at]) & 0xC0) == 0x80) continue;  // inside a character
      const absl::string_view left = token.substr(0, at), right = token.substr(at);
      auto l = index.find(left), r = index.find(right);
      if (l == index.end() || r == index.end()) continue;
      local.push_back({left, right, score, CodePoints(left), CodePoints(right), l->second, r->second});
    }
    std::stable_sort(local.begin(), local.end(), [](const Candidate& a, const Candidate& b) {
      return a.left_id != b.left_id ? a.left_id < b.left_id : a.right_id < b.right_id;
    });
    merges.insert(merges.end(), local.begin(), local.end());
  }
  std::stable_sort(merges.begin(), merges.end(), [](const Candidate& a, const Candidate& b) {
    if (a.score != b.score) return a.score > b.score;
    if (a.left_len != b.left_len) return a.left_len > b.left_len;
    return a.right_len > b.right_len;
  });
  std::vector<std::pair<std::string, std::string>> out;
  out.reserve(merges.size());
  for (const Candidate& c : merges) out.emplace_back(std::string(c.left), std::string(c.right));
  return out;
}

// HF `tokenizers`' AddedVocabulary::add_tokens as transformers calls it: a token already added is
// not added again, one in the model's vocabulary takes its id, any other the next id after the
// model's vocabulary and the tokens added so far. Every GGUF added token is normalized=false.
class AddedTokens {
 public:
  explicit AddedTokens(const absl::flat_hash_map<std::string, int32_t>& vocab) : vocab_(vocab) {}

  void Add(const std::string& content) {
    if (content.empty() || ids_.contains(content)) return;
    int32_t id;
    const int32_t model_size = static_cast<int32_t>(vocab_.size());
    if (auto it = vocab_.find(content); it != vocab_.end()) {
      id = it->second;
    } else if (!max_id_.has_value()) {
      id = model_size;
    } else {
      id = *max_id_ >= model_size || model_size == 0 ? *max_id_ + 1 : model_size;
    }
    max_id_ = std::max(max_id_.value_or(id), id);
    ids_[content] = id;
    tokens_.push_back({content, id, /*single_word=*/false, /*lstrip=*/false, /*rstrip=*/false, /*normalized=*/false});
  }
  bool Contains(const std::string& content) const { return ids_.contains(content); }
  std::vector<AddedToken> Release() { return std::move(tokens_); }

 private:
  const absl::flat_hash_map<std::string, int32_t>& vocab_;
  absl::flat_hash_map<std::string, int32_t> ids_;
  std::optional<int32_t> max_id_;
  std::vector<AddedToken> tokens_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadGgufTokenizer(const GgufTokenizerMetadata& metadata,
                                                             absl::string_view source) {
  const GgufTokenizerMetadata& m = metadata;
  auto bad = [&](auto&&... parts) { return absl::InvalidArgumentError(absl::StrCat(source, ": ", parts...)); };
  const bool sentencepiece_architecture =
      m.architecture == "gemma" || m.architecture == "gemma2" || m.architecture == "gemma3" || m.architecture == "phi3";
  if ((m.model == "llama" && sentencepiece_architecture) || m.model == "t5" || m.model == "gemma4") {
    return absl::UnimplementedError(absl::StrCat(source, ": the tokenizer of architecture \"", m.architecture,
                                                 "\" with tokenizer.ggml.model \"", m.model,
                                                 "\" is not supported yet (transformers builds it its own way)"));
  }
  const bool byte_level = m.model == "gpt2";
  if (!byte_level && m.model != "llama") {
    return bad("tokenizer.ggml.model \"", m.model, "\" is not supported (only \"gpt2\" and \"llama\")");
  }
  const char* split = SplitPatternFor(m.pre);
  if (!byte_level && split != nullptr) {
    return bad("tokenizer.ggml.pre \"", m.pre, "\" (a byte-level pre-tokenizer) with tokenizer.ggml.model \"llama\"",
               " is not supported");
  }
  const size_t n = m.tokens.size();
  if (n == 0) return bad("tokenizer.ggml.tokens is empty");
  if (n >= static_cast<size_t>(std::numeric_limits<int32_t>::max() / 4)) return bad(n, " tokens are too many");
  if (!m.scores.empty() && m.scores.size() != n) {
    return bad("tokenizer.ggml.scores has ", m.scores.size(), " entries for ", n, " tokens");
  }
  if (!m.token_types.empty() && m.token_types.size() != n) {
    return bad("tokenizer.ggml.token_type has ", m.token_types.size(), " entries for ", n, " tokens");
  }
  for (size_t i = 0; i < n; ++i) {
    if (const size_t at = tokenizer_internal::FindInvalidUtf8(m.tokens[i]); at != absl::string_view::npos) {
      return bad("token ", i, " is not valid UTF-8 (byte ", at, ")");
    }
    if (!m.scores.empty() && std::isnan(m.scores[i])) return bad("token ", i, " has score NaN");
  }
  for (const auto& [key, id] : {std::pair<const char*, std::optional<int32_t>>{"bos_token_id", m.bos_id},
                                {"eos_token_id", m.eos_id},
                                {"unknown_token_id", m.unk_id},
                                {"padding_token_id", m.pad_id}}) {
    if (id.has_value() && (*id < 0 || static_cast<size_t>(*id) >= n)) {
      return bad("tokenizer.ggml.", key, " ", *id, " is out of range for ", n, " tokens");
    }
  }

  HfBpeSpec spec;
  spec.source = std::string(source);
  spec.bos = m.bos_id;
  spec.eos = m.eos_id;
  // transformers' byte_level_tokenizer spells every token that is not in the byte alphabet in it;
  // sentencepiece_tokenizer keeps them. Of tokens spelled alike the last one's id counts.
  spec.vocab.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    const std::string& t = m.tokens[i];
    spec.vocab.insert_or_assign(
        byte_level && !tokenizer_internal::IsInByteLevelAlphabet(t) ? tokenizer_internal::ByteLevelSpelling(t) : t,
        static_cast<int32_t>(i));
  }
  if (!m.merges.empty()) {
    spec.merges.reserve(m.merges.size());
    for (size_t i = 0; i < m.merges.size(); ++i) {
      const std::string& merge = m.merges[i];
      const size_t space = merge.find(' ');
      if (space == std::string::npos || merge.find(' ', space + 1) != std::string::npos) {
        return bad("merge ", i, " \"", merge, "\" is not two tokens \"a b\"");
      }
      spec.merges.emplace_back(merge.substr(0, space), merge.substr(space + 1));
    }
  } else if (!m.scores.empty()) {
    spec.merges = GenerateMerges(m.tokens, m.scores);
  } else {
    return bad("has neither tokenizer.ggml.merges nor tokenizer.ggml.scores to take merges from");
  }

  if (byte_level) {
    // GPT2Tokenizer: ByteLevel with GPT-2's regex; set_split_regex puts a Split before a
    // regex-less ByteLevel for the pre-tokenizers transformers knows.
    spec.pre_tokenizer = HfBpeSpec::PreTokenizer::kByteLevel;
    if (split != nullptr) {
      spec.stages = {{false, split}, {false, ""}};
    } else {
      spec.stages = {{false, tokenizer_internal::kGpt2SplitPattern}};
    }
  } else {
    // LlamaTokenizer: BPE(fuse_unk=True, byte_fallback=True) without an unk_token, Metaspace
    // (prepend_scheme "first", split=False) and its decoder with Strip, since add_prefix_space
    // is never passed to it (tokenizer.ggml.add_space_prefix is read but not used).
    spec.pre_tokenizer = HfBpeSpec::PreTokenizer::kMetaspace;
    spec.byte_fallback = true;
    spec.fuse_unk = true;
    spec.strip_decoded_space = true;
  }

  // Added tokens, in the order transformers adds them: the tokenizer class's default special
  // tokens (bos, eos, unk), then add_gguf_special_tokens's control and user-defined tokens, then
  // the special tokens the metadata names (bos, eos, unk, pad).
  AddedTokens added(spec.vocab);
  if (byte_level) {
    added.Add("<|endoftext|>");
  } else {
    for (const char* t : {"<s>", "</s>", "<unk>"}) added.Add(t);
  }
  const size_t typed = m.token_types.empty() ? 0 : n;
  for (size_t i = 0; i < typed; ++i) {
    if (m.token_types[i] == kControl && (!byte_level || tokenizer_internal::IsInByteLevelAlphabet(m.tokens[i]))) {
      added.Add(m.tokens[i]);
    }
  }
  for (size_t i = 0; i < typed; ++i) {
    const std::string& t = m.tokens[i];
    if (m.token_types[i] == kUserDefined && (spec.vocab.contains(t) || added.Contains(t))) added.Add(t);
  }
  for (const std::optional<int32_t>& id : {m.bos_id, m.eos_id, m.unk_id, m.pad_id}) {
    if (id.has_value()) added.Add(m.tokens[*id]);
  }
  spec.added = added.Release();
  return tokenizer_internal::CreateHfBpe(std::move(spec));
}

}  // namespace lesion::model
