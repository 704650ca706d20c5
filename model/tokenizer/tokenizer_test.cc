// Tokenizers against independent references, whose ids testdata/make_tokenizer_fixtures.py
// recorded: OpenAI's tiktoken (GPT-2), Hugging Face `tokenizers` (tokenizer.json files it wrote),
// Google's sentencepiece (stories260K).
#include "model/tokenizer/tokenizer.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <functional>
#include <iostream>
#include <limits>
#include <sstream>
#include <thread>

#include "absl/status/status.h"
#include "common/file_util.h"
#include "common/testing/status_matchers.h"
#include "model/tokenizer/tokenizer_internal.h"
#include "nlohmann/json.hpp"

namespace lesion::model {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;
using ::absl::StatusCode;

const fs::path kRoot = LESION_SOURCE_DIR;
const fs::path kGpt2 = kRoot / "models/gpt2-tokenizer";
const fs::path kStories = kRoot / "models/stories260K";
const fs::path kTestdata = kRoot / "model/tokenizer/testdata";

const Json& Fixtures() {
  static const Json* fixtures = [] {
    absl::StatusOr<std::string> text = ReadFile(kTestdata / "tokenizer_fixtures.json");
    EXPECT_OK(text);
    return new Json(Json::parse(text.ok() ? *text : "{}"));
  }();
  return *fixtures;
}

std::vector<int32_t> Ids(const Json& j) { return j.get<std::vector<int32_t>>(); }

std::string Slurp(const fs::path& path) {
  absl::StatusOr<std::string> text = ReadFile(path);
  EXPECT_OK(text);
  return text.ok() ? *text : "";
}

// sum over i of (i + 1) * ids[i], mod 2^61, as make_tokenizer_fixtures.py computes it.
uint64_t Checksum(const std::vector<int32_t>& ids) {
  const unsigned __int128 mod = uint64_t{1} << 61;
  unsigned __int128 sum = 0;
  for (size_t i = 0; i < ids.size(); ++i) sum = (sum + (i + 1) * static_cast<unsigned __int128>(ids[i])) % mod;
  return static_cast<uint64_t>(sum);
}

class TempDir {
 public:
  TempDir()
      : path_(fs::temp_directory_path() /
              ("lesion_tokenizer_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter_++))) {
    EXPECT_OK(RemoveTree(path_));
    fs::create_directories(path_);
  }
  ~TempDir() { (void)RemoveTree(path_); }
  const fs::path& path() const { return path_; }
  void Write(const std::string& name, std::string_view contents) const {
    absl::Status s = WriteFileAtomically(path_ / name, absl::string_view(contents.data(), contents.size()));
    EXPECT_OK(s);
  }

 private:
  static inline int counter_ = 0;
  fs::path path_;
};

std::unique_ptr<Tokenizer> MustLoad(const fs::path& dir) {
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok = LoadTokenizer(dir);
  EXPECT_OK(tok);
  return tok.ok() ? *std::move(tok) : nullptr;
}

// The status of loading a directory holding `files`.
absl::Status LoadStatus(const std::vector<std::pair<std::string, std::string>>& files) {
  TempDir dir;
  for (const auto& [name, contents] : files) dir.Write(name, contents);
  return LoadTokenizer(dir.path()).status();
}

// ---------------------------------------------------------------------------------------------
// Byte-level BPE

TEST(ByteLevelBpe, MatchesTiktokenOnTrickyStrings) {
  std::unique_ptr<Tokenizer> tok = MustLoad(kGpt2);
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->kind(), "byte_level_bpe");
  EXPECT_EQ(tok->vocab_size(), 50257);
  EXPECT_EQ(tok->bos_id(), std::nullopt);
  ASSERT_FALSE(Fixtures()["gpt2"]["cases"].empty());
  for (const Json& c : Fixtures()["gpt2"]["cases"]) {
    const std::string text = c["text"];
    absl::StatusOr<std::vector<int32_t>> ids = tok->Encode(text);
    ASSERT_OK(ids);
    EXPECT_EQ(*ids, Ids(c["ids"])) << text;
    absl::StatusOr<std::string> back = tok->Decode(*ids);
    ASSERT_OK(back);
    EXPECT_EQ(*back, text);
  }
}

TEST(ByteLevelBpe, EndOfTextIsOneTokenWhole) {
  std::unique_ptr<Tokenizer> tok = MustLoad(kGpt2);
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(*tok->Encode("a<|endoftext|>b"), (std::vector<int32_t>{64, 50256, 65}));
  EXPECT_EQ(*tok->Decode({64, 50256, 65}), "a<|endoftext|>b");
  EXPECT_EQ(*tok->Encode(" the"), (std::vector<int32_t>{262}));
}

TEST(ByteLevelBpe, DecodeReplacesSplitCharactersLikeTiktoken) {
  std::unique_ptr<Tokenizer> tok = MustLoad(kGpt2);
  ASSERT_NE(tok, nullptr);
  ASSERT_FALSE(Fixtures()["gpt2"]["decode_cases"].empty());
  for (const Json& c : Fixtures()["gpt2"]["decode_cases"]) {
    absl::StatusOr<std::string> text = tok->Decode(Ids(c["ids"]));
    ASSERT_OK(text);
    EXPECT_EQ(*text, c["text"].get<std::string>()) << c["ids"].dump();
  }
}

TEST(ByteLevelBpe, WikiText2TestIsExactly286221Gpt2Tokens) {
  std::unique_ptr<Tokenizer> tok = MustLoad(kGpt2);
  ASSERT_NE(tok, nullptr);
  const std::string text = Slurp(kRoot / "data/wikitext-2/wiki.test.raw");
  ASSERT_EQ(text.size(), 1290590u);
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<std::vector<int32_t>> ids = tok->Encode(text);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_OK(ids);
  // Information only, not a test: see the benchmark for timings.
  std::cout << "[ timing   ] encoded wiki.test.raw (" << text.size() << " bytes, " << ids->size() << " ids) in "
            << seconds * 1e3 << " ms (" << text.size() / seconds / 1e6 << " MB/s)\n";
  const Json& ref = Fixtures()["gpt2"]["wiki_test_raw"];
  ASSERT_EQ(ids->size(), 286221u);
  ASSERT_EQ(ids->size(), ref["n_ids"].get<size_t>());
  EXPECT_EQ(Checksum(*ids), ref["checksum"].get<uint64_t>());
  EXPECT_EQ(std::vector<int32_t>(ids->begin(), ids->begin() + 20), Ids(ref["first"]));
  EXPECT_EQ(std::vector<int32_t>(ids->end() - 20, ids->end()), Ids(ref["last"]));
  absl::StatusOr<std::string> back = tok->Decode(*ids);
  ASSERT_OK(back);
  EXPECT_TRUE(*back == text) << "decode(encode(wiki.test.raw)) differs from the text";
}

TEST(ByteLevelBpe, ConcurrentEncodesAgree) {
  std::unique_ptr<Tokenizer> tok = MustLoad(kGpt2);
  ASSERT_NE(tok, nullptr);
  const std::string text = Slurp(kRoot / "data/wikitext-2/wiki.test.raw").substr(0, 200000);
  const std::vector<int32_t> expected = *tok->Encode(text);
  std::vector<std::vector<int32_t>> results(4);
  std::vector<std::thread> threads;
  for (auto& r : results) {
    threads.emplace_back([&tok, &text, &r] { r = *tok->Encode(text); });
  }
  for (auto& t : threads) t.join();
  for (const auto& r : results) EXPECT_TRUE(r == expected);
}

// A piece of 100,000 letters is one pre-token; merging it must not be quadratic.
TEST(ByteLevelBpe, LongPieceRoundTrips) {
  std::unique_ptr<Tokenizer> tok = MustLoad(kGpt2);
  ASSERT_NE(tok, nullptr);
  std::string text;
  uint32_t state = 12345;
  for (int i = 0; i < 100000; ++i) {
    state = state * 1103515245 + 12345;
    text += static_cast<char>('a' + (state >> 16) % 26);
  }
  absl::StatusOr<std::vector<int32_t>> ids = tok->Encode(text);
  ASSERT_OK(ids);
  EXPECT_LT(ids->size(), text.size());
  EXPECT_EQ(*tok->Decode(*ids), text);
  // Pieces are encoded independently: "x x" gives the ids of "x" then those of " x".
  const std::string piece = text.substr(0, 1000);
  std::vector<int32_t> expected = *tok->Encode(piece);
  const std::vector<int32_t> second = *tok->Encode(" " + piece);
  expected.insert(expected.end(), second.begin(), second.end());
  EXPECT_EQ(*tok->Encode(piece + " " + piece), expected);
}

// A tokenizer.json holding GPT-2's vocabulary and merges must tokenize like vocab.json +
// merges.txt, with a plain ByteLevel pre-tokenizer and with LLaMA 3's form, Split (regex) +
// ByteLevel(use_regex=false).
TEST(ByteLevelBpe, TokenizerJsonFormsAgreeWithVocabAndMerges) {
  const std::string merges_text = Slurp(kGpt2 / "merges.txt");
  Json merges = Json::array();
  std::istringstream lines(merges_text);
  std::string line;
  std::getline(lines, line);  // #version
  while (std::getline(lines, line)) {
    if (line.empty()) continue;
    const size_t space = line.find(' ');
    merges.push_back({line.substr(0, space), line.substr(space + 1)});  // tokenizers >= 0.20 form
  }
  const std::string gpt2_regex = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
  Json plain = {
      {"model", {{"type", "BPE"}, {"vocab", Json::parse(Slurp(kGpt2 / "vocab.json"))}, {"merges", merges}}},
      {"normalizer", nullptr},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
      {"added_tokens", {{{"id", 50256}, {"content", "<|endoftext|>"}, {"special", true}, {"normalized", false}}}}};
  Json split = plain;
  split["pre_tokenizer"] = {
      {"type", "Sequence"},
      {"pretokenizers",
       {{{"type", "Split"}, {"pattern", {{"Regex", gpt2_regex}}}, {"behavior", "Isolated"}, {"invert", false}},
        {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}};
  for (const Json& form : {plain, split}) {
    TempDir dir;
    dir.Write("tokenizer.json", form.dump());
    std::unique_ptr<Tokenizer> tok = MustLoad(dir.path());
    ASSERT_NE(tok, nullptr);
    EXPECT_EQ(tok->vocab_size(), 50257);
    for (const Json& c : Fixtures()["gpt2"]["cases"]) {
      EXPECT_EQ(*tok->Encode(c["text"].get<std::string>()), Ids(c["ids"])) << c["text"];
    }
    EXPECT_EQ(*tok->Encode("a<|endoftext|>b"), (std::vector<int32_t>{64, 50256, 65}));
    EXPECT_EQ(*tok->Decode({64, 50256, 65}), "a<|endoftext|>b");
  }
}

// tokenizer.json files written by HF `tokenizers` (LLaMA 3 style with ignore_merges and special
// tokens, Qwen2 style with NFC, RoBERTa style with add_prefix_space and lstrip/rstrip tokens).
TEST(ByteLevelBpe, MatchesHfTokenizersOnTheirTokenizerJsons) {
  ASSERT_EQ(Fixtures()["hf_tokenizers"].size(), 3u);
  for (const Json& f : Fixtures()["hf_tokenizers"]) {
    const std::string file = f["file"];
    absl::StatusOr<std::unique_ptr<Tokenizer>> tok = LoadTokenizerJson(kTestdata / file);
    ASSERT_OK(tok);
    for (const Json& c : f["cases"]) {
      const std::string text = c["text"];
      absl::StatusOr<std::vector<int32_t>> ids = (*tok)->Encode(text);
      ASSERT_OK(ids);
      EXPECT_EQ(*ids, Ids(c["ids"])) << file << ": " << text;
      EXPECT_EQ(*(*tok)->Decode(*ids), c["decoded"].get<std::string>()) << file << ": " << text;
    }
  }
}

// Variants of the tokenizer.json files above (pre_tokenizer replaced, added_tokens appended, as
// make_tokenizer_fixtures.py's regressions() edits them) whose ids HF `tokenizers` recorded.
void ExpectHfVariantsMatch(absl::string_view base, absl::string_view key) {
  int checked = 0;
  for (const Json& v : Fixtures()["regressions"]["hf_tokenizers"]) {
    if (v["base"] != std::string(base) || !v.contains(std::string(key))) continue;
    Json j = Json::parse(Slurp(kTestdata / v["base"].get<std::string>()));
    if (v.contains("pre_tokenizer")) j["pre_tokenizer"] = v["pre_tokenizer"];
    if (v.contains("extra_added_tokens")) {
      for (const Json& a : v["extra_added_tokens"]) j["added_tokens"].push_back(a);
    }
    TempDir dir;
    dir.Write("tokenizer.json", j.dump());
    std::unique_ptr<Tokenizer> tok = MustLoad(dir.path());
    ASSERT_NE(tok, nullptr);
    for (const Json& c : v["cases"]) {
      const std::string text = c["text"];
      absl::StatusOr<std::vector<int32_t>> ids = tok->Encode(text);
      ASSERT_OK(ids);
      EXPECT_EQ(*ids, Ids(c["ids"])) << text;
      EXPECT_EQ(*tok->Decode(*ids), c["decoded"].get<std::string>()) << text;
      ++checked;
    }
    for (const Json& c : v["decode_cases"]) {
      absl::StatusOr<std::string> text = tok->Decode(Ids(c["ids"]));
      ASSERT_OK(text);
      EXPECT_EQ(*text, c["text"].get<std::string>()) << c["ids"].dump();
      ++checked;
    }
  }
  EXPECT_GT(checked, 0) << base << " " << key;
}

// Regexes such as \b and $ match empty at the end of the text; that must end the split (it read
// one byte past the text).
TEST(ByteLevelBpe, SplitRegexMatchingEmptyAtTheEndMatchesHf) {
  ExpectHfVariantsMatch("llama3_style_tokenizer.json", "pre_tokenizer");
}

// HF's ByteLevel decoder keeps an added token whole as UTF-8 if any of its characters stands for
// no byte ("<|\u00e9\u4e2d|>"), and maps it byte by byte only if all do ("<|\u00e9\u0100|>").
TEST(ByteLevelBpe, AddedTokensMixingByteMapCharactersDecodeLikeHf) {
  ExpectHfVariantsMatch("roberta_style_tokenizer.json", "extra_added_tokens");
}

// single_word tokens are discarded next to a word character of Rust's regex crate (marks, ZWJ,
// letters, decimal digits) but not next to U+00B2 or U+216B, which PCRE2's \w takes.
TEST(ByteLevelBpe, SingleWordUsesRustRegexWordCharacters) {
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok = LoadTokenizerJson(kTestdata / "llama3_style_tokenizer.json");
  ASSERT_OK(tok);
  int checked = 0;
  for (const Json& f : Fixtures()["hf_tokenizers"]) {
    if (f["file"] != "llama3_style_tokenizer.json") continue;
    for (const Json& c : f["cases"]) {
      const std::string text = c["text"];
      if (text.find("\u00b2hello") == std::string::npos) continue;
      EXPECT_EQ(*(*tok)->Encode(text), Ids(c["ids"])) << text;
      ++checked;
    }
  }
  EXPECT_EQ(checked, 1);
}

// SmolLM2's vocabulary lacks the tokens of 21 bytes. As in HF `tokenizers`, such a byte is
// dropped and its neighbours merge as if adjacent ("th\x04e" -> "the"), or becomes unk_token
// (runs fused with fuse_unk), or its <0xNN> tokens with byte_fallback (an unknown byte's unk
// token then waits for the next known byte, as HF emits it); a repeated merge takes its last rank.
// Loading such vocabularies failed ("lacks the token for byte 4").
TEST(ByteLevelBpe, VocabularyLackingByteTokensMatchesHf) {
  const Json& fixture = Fixtures()["missing_bytes"];
  ASSERT_EQ(fixture["variants"].size(), 6u);
  const Json base = Json::parse(Slurp(kTestdata / fixture["file"].get<std::string>()));
  for (const Json& v : fixture["variants"]) {
    Json j = base;
    for (const auto& [key, value] : v["patch"].items()) {
      if (key == "repeat_first_merge") {
        j["model"]["merges"].push_back(j["model"]["merges"][0]);
      } else {
        j["model"][key] = value;
      }
    }
    TempDir dir;
    dir.Write("tokenizer.json", j.dump());
    absl::StatusOr<std::unique_ptr<Tokenizer>> tok = LoadTokenizerJson(dir.path() / "tokenizer.json");
    ASSERT_OK(tok);
    ASSERT_FALSE(v["cases"].empty());
    for (const Json& c : v["cases"]) {
      const std::string text = c["text"];
      absl::StatusOr<std::vector<int32_t>> ids = (*tok)->Encode(text);
      ASSERT_OK(ids);
      EXPECT_EQ(*ids, Ids(c["ids"])) << v["patch"].dump() << ": " << Json(text).dump();
      EXPECT_EQ(*(*tok)->Decode(*ids), c["decoded"].get<std::string>())
          << v["patch"].dump() << ": " << Json(text).dump();
    }
  }
}

// GPT-2's own files without the token of byte 4 ("\u0104", id 191): "!\x04!" encodes as "!!".
TEST(ByteLevelBpe, DroppedByteLetsItsNeighboursMerge) {
  Json vocab = Json::parse(Slurp(kGpt2 / "vocab.json"));
  ASSERT_EQ(vocab.erase("\u0104"), 1u);
  TempDir dir;
  dir.Write("vocab.json", vocab.dump());
  dir.Write("merges.txt", Slurp(kGpt2 / "merges.txt"));
  std::unique_ptr<Tokenizer> tok = MustLoad(dir.path());
  ASSERT_NE(tok, nullptr);
  const std::vector<int32_t> bang_bang = *tok->Encode("!!");
  EXPECT_EQ(bang_bang.size(), 1u);
  EXPECT_EQ(*tok->Encode("!\x04!"), bang_bang);
  EXPECT_EQ(*tok->Encode("\x04"), std::vector<int32_t>{});
  EXPECT_EQ(*tok->Encode("a\x04"), *tok->Encode("a"));
  EXPECT_EQ(*tok->Encode(std::string(100, '\x04')), std::vector<int32_t>{});  // the heap path
  std::string with_drops, without;  // one piece of 120 bytes, merged with the heap
  for (int i = 0; i < 60; ++i) {
    with_drops += "!\x04";
    without += "!";
  }
  EXPECT_EQ(*tok->Encode(with_drops), *tok->Encode(without));
}

// ---------------------------------------------------------------------------------------------
// SentencePiece BPE

TEST(SentencePieceBpe, MatchesSentencepieceOnStories260K) {
  std::unique_ptr<Tokenizer> model = MustLoad(kStories);
  ASSERT_NE(model, nullptr);
  EXPECT_EQ(model->kind(), "sentencepiece_bpe");
  EXPECT_EQ(model->vocab_size(), 512);
  EXPECT_EQ(model->bos_id(), 1);
  EXPECT_EQ(model->eos_id(), 2);
  absl::StatusOr<std::unique_ptr<Tokenizer>> bin = LoadLlama2cTokenizer(kStories / "llama2c/tok512.bin", 512);
  ASSERT_OK(bin);
  absl::StatusOr<std::unique_ptr<Tokenizer>> bin_to_eof = LoadLlama2cTokenizer(kStories / "llama2c/tok512.bin", {});
  ASSERT_OK(bin_to_eof);
  EXPECT_EQ((*bin_to_eof)->vocab_size(), 512);
  ASSERT_FALSE(Fixtures()["stories260K"]["cases"].empty());
  for (const Json& c : Fixtures()["stories260K"]["cases"]) {
    const std::string text = c["text"];
    for (const Tokenizer* t : {model.get(), bin->get(), bin_to_eof->get()}) {
      absl::StatusOr<std::vector<int32_t>> ids = t->Encode(text);
      ASSERT_OK(ids);
      EXPECT_EQ(*ids, Ids(c["ids"])) << text;
      EXPECT_EQ(*t->Decode(*ids), c["decoded"].get<std::string>()) << text;
    }
  }
}

TEST(SentencePieceBpe, WikiText2TestMatchesSentencepiece) {
  std::unique_ptr<Tokenizer> tok = MustLoad(kStories);
  ASSERT_NE(tok, nullptr);
  const std::string text = Slurp(kRoot / "data/wikitext-2/wiki.test.raw");
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<std::vector<int32_t>> ids = tok->Encode(text);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_OK(ids);
  std::cout << "[ timing   ] encoded wiki.test.raw with stories260K's tokenizer (" << ids->size() << " ids) in "
            << seconds * 1e3 << " ms\n";
  const Json& ref = Fixtures()["stories260K"]["wiki_test_raw"];
  ASSERT_EQ(ids->size(), ref["n_ids"].get<size_t>());
  EXPECT_EQ(Checksum(*ids), ref["checksum"].get<uint64_t>());
  EXPECT_EQ(std::vector<int32_t>(ids->begin(), ids->begin() + 20), Ids(ref["first"]));
  EXPECT_EQ(std::vector<int32_t>(ids->end() - 20, ids->end()), Ids(ref["last"]));
}

// User-defined pieces stay whole; a piece with U+2581 inside ("zq\u2581zq") makes the tokenizer
// encode the text as a whole rather than word by word, which must give the same ids.
TEST(SentencePieceBpe, MatchesSentencepieceWithUserDefinedPieces) {
  const Json& variant = Fixtures()["stories260K"]["user_defined"];
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok =
      LoadSentencePieceModel(kTestdata / variant["file"].get<std::string>());
  ASSERT_OK(tok);
  EXPECT_EQ((*tok)->vocab_size(), 515);
  ASSERT_FALSE(variant["cases"].empty());
  for (const Json& c : variant["cases"]) {
    const std::string text = c["text"];
    absl::StatusOr<std::vector<int32_t>> ids = (*tok)->Encode(text);
    ASSERT_OK(ids);
    EXPECT_EQ(*ids, Ids(c["ids"])) << text;
    EXPECT_EQ(*(*tok)->Decode(*ids), c["decoded"].get<std::string>()) << text;
  }
}

TEST(SentencePieceBpe, GreedyStoryRoundTrips) {
  const std::string greedy =
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the park.";
  std::unique_ptr<Tokenizer> tok = MustLoad(kStories);
  ASSERT_NE(tok, nullptr);
  absl::StatusOr<std::vector<int32_t>> ids = tok->Encode(greedy);
  ASSERT_OK(ids);
  bool found = false;
  for (const Json& c : Fixtures()["stories260K"]["cases"]) {
    if (c["text"] == greedy) {
      found = true;
      EXPECT_EQ(*ids, Ids(c["ids"]));
    }
  }
  EXPECT_TRUE(found);
  EXPECT_EQ(*tok->Decode(*ids), greedy);
  std::vector<int32_t> with_bos_eos = {1};
  with_bos_eos.insert(with_bos_eos.end(), ids->begin(), ids->end());
  with_bos_eos.push_back(2);
  EXPECT_EQ(*tok->Decode(with_bos_eos), greedy);
}

TEST(SentencePieceBpe, DecodeMatchesSentencepiece) {
  std::unique_ptr<Tokenizer> tok = MustLoad(kStories);
  ASSERT_NE(tok, nullptr);
  ASSERT_FALSE(Fixtures()["stories260K"]["decode_cases"].empty());
  for (const Json& c : Fixtures()["stories260K"]["decode_cases"]) {
    absl::StatusOr<std::string> text = tok->Decode(Ids(c["ids"]));
    ASSERT_OK(text);
    EXPECT_EQ(*text, c["text"].get<std::string>()) << c["ids"].dump();
  }
}

// The converter's tokenizer.model is the one bundled with stories260K, which the fixture script
// checked with Python's sentencepiece against an independently built model.
TEST(SentencePieceBpe, ConvertedTokenizerBinIsTheBundledTokenizerModel) {
  absl::StatusOr<std::string> proto = Llama2cTokenizerBinToModelProto(kStories / "llama2c/tok512.bin");
  ASSERT_OK(proto);
  EXPECT_TRUE(*proto == Slurp(kStories / "tokenizer.model"));
  TempDir dir;
  dir.Write("tokenizer.model", *proto);
  std::unique_ptr<Tokenizer> tok = MustLoad(dir.path());
  ASSERT_NE(tok, nullptr);
  for (const Json& c : Fixtures()["stories260K"]["cases"]) {
    EXPECT_EQ(*tok->Encode(c["text"].get<std::string>()), Ids(c["ids"]));
  }
}

// Normalizer variants of stories260K's model (testdata/stories260K_*.model, written by
// make_tokenizer_fixtures.py) against Python's sentencepiece.
void ExpectSentencePieceVariantMatches(absl::string_view file) {
  int checked = 0;
  for (const Json& v : Fixtures()["regressions"]["sentencepiece"]) {
    if (v["file"] != std::string(file)) continue;
    absl::StatusOr<std::unique_ptr<Tokenizer>> tok = LoadSentencePieceModel(kTestdata / std::string(file));
    ASSERT_OK(tok);
    for (const Json& c : v["cases"]) {
      const std::string text = c["text"];
      absl::StatusOr<std::vector<int32_t>> ids = (*tok)->Encode(text);
      ASSERT_OK(ids);
      EXPECT_EQ(*ids, Ids(c["ids"])) << file << ": " << text;
      EXPECT_EQ(*(*tok)->Decode(*ids), c["decoded"].get<std::string>()) << file << ": " << text;
      ++checked;
    }
  }
  EXPECT_GT(checked, 0) << file;
}

// Without the dummy prefix the first U+2581 can be at byte 1 or 2 ("a b", "\u00e9 b"), which
// made the word split read before the text (std::out_of_range).
TEST(SentencePieceBpe, WithoutDummyPrefixMatchesSentencepiece) {
  ExpectSentencePieceVariantMatches("stories260K_no_dummy_prefix.model");
}

// Without byte fallback a run of unknown characters is one <unk> ("\u65e5\u672c" -> [410, 0]).
TEST(SentencePieceBpe, WithoutByteFallbackUnknownRunsAreOneUnk) {
  ExpectSentencePieceVariantMatches("stories260K_no_byte_fallback.model");
}

// remove_extra_whitespaces strips trailing U+2581 of the input too ("a\u2581" -> [261]).
TEST(SentencePieceBpe, RemoveExtraWhitespacesMatchesSentencepiece) {
  ExpectSentencePieceVariantMatches("stories260K_remove_extra_whitespaces.model");
}

// ---------------------------------------------------------------------------------------------
// LoadGgufTokenizer, against HF transformers' AutoTokenizer.from_pretrained(gguf_file=...) on GGUF
// files that testdata/make_gguf_tokenizer_fixtures.py wrote from the same data.

const Json& GgufFixtures() {
  static const Json* fixtures = [] {
    absl::StatusOr<std::string> text = ReadFile(kTestdata / "gguf_tokenizer_fixtures.json");
    EXPECT_OK(text);
    return new Json(Json::parse(text.ok() ? *text : "{}"));
  }();
  return *fixtures;
}

// GPT-2's tokens in id order and its merges, as a GGUF file of it holds them.
const GgufTokenizerMetadata& Gpt2Gguf() {
  static const GgufTokenizerMetadata* metadata = [] {
    auto* m = new GgufTokenizerMetadata;
    const Json vocab = Json::parse(Slurp(kGpt2 / "vocab.json"));
    m->tokens.resize(vocab.size());
    for (const auto& [token, id] : vocab.items()) m->tokens[id.get<size_t>()] = token;
    std::istringstream lines(Slurp(kGpt2 / "merges.txt"));
    std::string line;
    std::getline(lines, line);  // #version
    while (std::getline(lines, line)) {
      if (!line.empty()) m->merges.push_back(line);
    }
    m->token_types.assign(m->tokens.size(), 1);
    m->token_types[50256] = 3;
    return m;
  }();
  return *metadata;
}

GgufTokenizerMetadata StoriesGguf() {
  const Json& s = GgufFixtures()["stories260K"];
  GgufTokenizerMetadata m;
  m.model = "llama";
  m.architecture = "llama";
  m.tokens = s["tokens"].get<std::vector<std::string>>();
  m.scores = s["scores"].get<std::vector<float>>();
  m.token_types = s["token_types"].get<std::vector<int32_t>>();
  return m;
}

// The metadata of a fixture variant: its base with the variant's edits, as the script made it.
GgufTokenizerMetadata GgufVariant(const Json& v, bool llama) {
  GgufTokenizerMetadata m = llama ? StoriesGguf() : Gpt2Gguf();
  m.model = llama ? "llama" : "gpt2";
  m.architecture = v["architecture"];
  if (!llama) m.pre = v["pre"];
  if (v.contains("scores")) m.scores = v["scores"].get<std::vector<float>>();
  const Json& edits = v["edits"];
  if (edits.contains("set")) {
    for (const Json& e : edits["set"]) {
      m.tokens[e[0].get<size_t>()] = e[1];
      m.token_types[e[0].get<size_t>()] = e[2];
    }
  }
  if (edits.contains("append")) {
    for (const Json& e : edits["append"]) {
      m.tokens.push_back(e[0]);
      m.token_types.push_back(e[1]);
      if (!m.scores.empty()) m.scores.push_back(e[2]);
    }
  }
  if (llama) {
    m.merges = v["merges"].get<std::vector<std::string>>();
  } else if (v["merges"] != "file") {  // "scores=-id"
    m.merges.clear();
    for (size_t i = 0; i < m.tokens.size(); ++i) m.scores.push_back(-static_cast<float>(i));
  }
  const Json& ids = v["ids"];
  auto id = [&](const char* key) -> std::optional<int32_t> {
    return ids.contains(key) ? std::optional<int32_t>(ids[key].get<int32_t>()) : std::nullopt;
  };
  m.bos_id = id("bos_id");
  m.eos_id = id("eos_id");
  m.unk_id = id("unk_id");
  m.pad_id = id("pad_id");
  if (ids.contains("add_space_prefix")) m.add_space_prefix = ids["add_space_prefix"].get<bool>();
  return m;
}

void ExpectGgufVariantsMatchTransformers(bool llama) {
  const Json& variants = GgufFixtures()[llama ? "llama" : "gpt2"];
  ASSERT_EQ(variants.size(), 4u);
  for (const Json& v : variants) {
    const std::string name = v["name"];
    const GgufTokenizerMetadata m = GgufVariant(v, llama);
    absl::StatusOr<std::unique_ptr<Tokenizer>> loaded = LoadGgufTokenizer(m, name + ".gguf");
    ASSERT_OK(loaded);
    const Tokenizer& tok = **loaded;
    EXPECT_EQ(tok.kind(), llama ? "sentencepiece_bpe" : "byte_level_bpe") << name;
    EXPECT_EQ(tok.vocab_size(), v["id_bound"].get<int32_t>()) << name;
    EXPECT_EQ(tok.bos_id(), m.bos_id) << name;
    EXPECT_EQ(tok.eos_id(), m.eos_id) << name;
    for (const Json& c : v["cases"]) {
      const std::string text = c["text"];
      absl::StatusOr<std::vector<int32_t>> ids = tok.Encode(text);
      ASSERT_OK(ids);
      EXPECT_EQ(*ids, Ids(c["ids"])) << name << ": " << Json(text).dump();
      EXPECT_EQ(*tok.Decode(*ids), c["decoded"].get<std::string>()) << name << ": " << Json(text).dump();
    }
    for (const Json& c : v["decode_cases"]) {
      absl::StatusOr<std::string> text = tok.Decode(Ids(c["ids"]));
      ASSERT_OK(text);
      EXPECT_EQ(*text, c["text"].get<std::string>()) << name << ": " << c["ids"].dump();
    }
    // Every token transformers added is matched whole, with its id.
    for (const Json& a : v["added_tokens"]) {
      EXPECT_EQ(*tok.Encode(a[0].get<std::string>()), std::vector<int32_t>{a[1].get<int32_t>()}) << name << ": " << a;
    }
    if (v.contains("wiki_test_raw")) {
      const std::string wiki = Slurp(kRoot / "data/wikitext-2/wiki.test.raw");
      const auto start = std::chrono::steady_clock::now();
      absl::StatusOr<std::vector<int32_t>> ids = tok.Encode(wiki);
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      ASSERT_OK(ids);
      std::cout << "[ timing   ] " << name << ": encoded wiki.test.raw (" << ids->size() << " ids) in " << seconds * 1e3
                << " ms\n";
      const Json& ref = v["wiki_test_raw"];
      ASSERT_EQ(ids->size(), ref["n_ids"].get<size_t>()) << name;
      EXPECT_EQ(Checksum(*ids), ref["checksum"].get<uint64_t>()) << name;
      EXPECT_EQ(std::vector<int32_t>(ids->begin(), ids->begin() + 20), Ids(ref["first"])) << name;
      EXPECT_EQ(std::vector<int32_t>(ids->end() - 20, ids->end()), Ids(ref["last"])) << name;
      absl::StatusOr<std::string> decoded = tok.Decode(*ids);
      ASSERT_OK(decoded);
      EXPECT_EQ(decoded->size(), ref["decoded_bytes"].get<size_t>()) << name;
      const std::vector<int32_t> bytes(reinterpret_cast<const unsigned char*>(decoded->data()),
                                       reinterpret_cast<const unsigned char*>(decoded->data()) + decoded->size());
      EXPECT_EQ(Checksum(bytes), ref["decoded_checksum"].get<uint64_t>()) << name;
    }
  }
}

// GPT-2's vocabulary as GGUF "gpt2" models: pre "gpt-2" (plain ByteLevel), "llama-bpe" and "qwen2"
// (Split regexes), merges derived from scores; control, user-defined and added tokens, tokens
// spelled outside the byte alphabet, a token spelled twice.
TEST(GgufTokenizer, Gpt2VocabulariesMatchTransformers) { ExpectGgufVariantsMatchTransformers(false); }

// stories260K's SentencePiece vocabulary as GGUF "llama" models: HF's LlamaTokenizer, which
// differs from sentencepiece (leading spaces, added tokens, decoding).
TEST(GgufTokenizer, SentencePieceVocabulariesMatchTransformers) { ExpectGgufVariantsMatchTransformers(true); }

// Where HF's LlamaTokenizer and sentencepiece differ on the same vocabulary.
TEST(GgufTokenizer, LlamaModelsFollowTransformersNotSentencepiece) {
  absl::StatusOr<std::unique_ptr<Tokenizer>> gguf = LoadGgufTokenizer(
      [] {
        GgufTokenizerMetadata m = StoriesGguf();
        m.bos_id = 1;
        m.eos_id = 2;
        return m;
      }(),
      "stories.gguf");
  ASSERT_OK(gguf);
  std::unique_ptr<Tokenizer> sp = MustLoad(kStories);
  ASSERT_NE(sp, nullptr);
  EXPECT_EQ(*(*gguf)->Encode("Hello world"), *sp->Encode("Hello world"));
  EXPECT_EQ(*(*gguf)->Encode(" hi"), *sp->Encode("hi"));                      // no second U+2581
  EXPECT_EQ(*(*gguf)->Encode("<s>hi"), (std::vector<int32_t>{1, 415, 417}));  // "<s>" whole, "hi" without U+2581
  EXPECT_EQ(*(*gguf)->Decode({1, 270, 417}), "<s> hi");
  EXPECT_EQ(*sp->Decode({1, 270, 417}), "hi");
}

TEST(GgufTokenizer, UnsupportedBuildersAreUnimplemented) {
  GgufTokenizerMetadata m = StoriesGguf();
  for (const auto& [architecture, model] : std::vector<std::pair<std::string, std::string>>{{"gemma", "llama"},
                                                                                            {"gemma2", "llama"},
                                                                                            {"gemma3", "llama"},
                                                                                            {"phi3", "llama"},
                                                                                            {"t5", "t5"},
                                                                                            {"gemma4", "gemma4"}}) {
    m.architecture = architecture;
    m.model = model;
    absl::Status s = LoadGgufTokenizer(m, "model.gguf").status();
    EXPECT_EQ(s.code(), StatusCode::kUnimplemented) << s;
    EXPECT_NE(s.message().find("model.gguf"), std::string::npos) << s;
    EXPECT_NE(s.message().find(architecture), std::string::npos) << s;
    EXPECT_NE(s.message().find(model), std::string::npos) << s;
  }
  m.architecture = "gemma";  // gemma with a byte-level vocabulary goes through the usual builder
  m.model = "gpt2";
  m.tokens = {"a", "b", "ab"};
  m.scores.clear();
  m.token_types.clear();
  m.merges = {"a b"};
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok = LoadGgufTokenizer(m, "model.gguf");
  ASSERT_OK(tok);
  EXPECT_EQ(*(*tok)->Encode("aab"), (std::vector<int32_t>{0, 2}));
}

TEST(GgufTokenizer, InconsistentMetadataIsInvalidArgumentNamingTheSource) {
  GgufTokenizerMetadata base;
  base.architecture = "gpt2";
  base.model = "gpt2";
  base.tokens = {"a", "b", "ab"};
  base.merges = {"a b"};
  struct Case {
    std::string detail;
    std::function<void(GgufTokenizerMetadata&)> edit;
  };
  const std::vector<Case> cases = {
      {"\"bert\" is not supported", [](auto& m) { m.model = "bert"; }},
      {"tokenizer.ggml.pre \"llama-bpe\"",
       [](auto& m) {
         m.model = "llama";
         m.pre = "llama-bpe";
       }},
      {"tokenizer.ggml.tokens is empty",
       [](auto& m) {
         m.tokens.clear();
         m.merges.clear();
       }},
      {"scores has 2 entries for 3 tokens",
       [](auto& m) {
         m.scores = {0, 0};
       }},
      {"token_type has 1 entries", [](auto& m) { m.token_types = {1}; }},
      {"bos_token_id 3 is out of range", [](auto& m) { m.bos_id = 3; }},
      {"padding_token_id -1", [](auto& m) { m.pad_id = -1; }},
      {"token 1 has score NaN",
       [](auto& m) {
         m.scores = {0, std::numeric_limits<float>::quiet_NaN(), 0};
       }},
      {"token 2 is not valid UTF-8", [](auto& m) { m.tokens[2] = "a\xff"; }},
      {"merge 0 \"ab\" is not two tokens", [](auto& m) { m.merges = {"ab"}; }},
      {"merge 1 \"a  b\"",
       [](auto& m) {
         m.merges = {"a b", "a  b"};
       }},
      {"merge 0 (\"a\", \"c\") uses tokens that are not in the vocabulary", [](auto& m) { m.merges = {"a c"}; }},
      {"neither tokenizer.ggml.merges nor tokenizer.ggml.scores", [](auto& m) { m.merges.clear(); }},
  };
  for (const Case& c : cases) {
    GgufTokenizerMetadata m = base;
    c.edit(m);
    absl::Status s = LoadGgufTokenizer(m, "bad.gguf").status();
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << c.detail << ": " << s;
    EXPECT_NE(s.message().find("bad.gguf"), std::string::npos) << s;
    EXPECT_NE(s.message().find(c.detail), std::string::npos) << s;
  }
  absl::StatusOr<std::unique_ptr<Tokenizer>> ok = LoadGgufTokenizer(base, "bad.gguf");
  ASSERT_OK(ok);
  EXPECT_EQ(*(*ok)->Encode("abba"), (std::vector<int32_t>{2, 1, 0}));
}

// ---------------------------------------------------------------------------------------------
// LoadTokenizer

TEST(Tokenizer, LoadsTokenizerBinWithConfigVocabSize) {
  TempDir dir;
  dir.Write("tokenizer.bin", Slurp(kStories / "llama2c/tok512.bin"));
  dir.Write("config.json", R"({"vocab_size": 300, "bos_token_id": 1, "eos_token_id": 2})");
  std::unique_ptr<Tokenizer> tok = MustLoad(dir.path());
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->kind(), "sentencepiece_bpe");
  EXPECT_EQ(tok->vocab_size(), 300);  // the first 300 records only
}

TEST(Tokenizer, ConfigBosEosOverrideTheTokenizers) {
  TempDir dir;
  dir.Write("vocab.json", Slurp(kGpt2 / "vocab.json"));
  dir.Write("merges.txt", Slurp(kGpt2 / "merges.txt"));
  dir.Write("config.json", R"({"bos_token_id": 50256, "eos_token_id": [50256, 0]})");
  std::unique_ptr<Tokenizer> gpt2 = MustLoad(dir.path());
  ASSERT_NE(gpt2, nullptr);
  EXPECT_EQ(gpt2->bos_id(), 50256);
  EXPECT_EQ(gpt2->eos_id(), 50256);

  TempDir sp;
  sp.Write("tokenizer.model", Slurp(kStories / "tokenizer.model"));
  sp.Write("config.json", R"({"eos_token_id": 0})");
  std::unique_ptr<Tokenizer> stories = MustLoad(sp.path());
  ASSERT_NE(stories, nullptr);
  EXPECT_EQ(stories->bos_id(), 1);  // the model's own
  EXPECT_EQ(stories->eos_id(), 0);

  sp.Write("config.json", R"({"eos_token_id": 512})");
  absl::Status s = LoadTokenizer(sp.path()).status();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("config.json"), std::string::npos) << s;
}

// LLaMA 2 directories ship a SentencePiece-style tokenizer.json (Metaspace) beside
// tokenizer.model; the SentencePiece model is used.
TEST(Tokenizer, SentencePieceModelWinsOverAMetaspaceTokenizerJson) {
  TempDir dir;
  dir.Write("tokenizer.json", R"({"model": {"type": "BPE", "vocab": {}, "merges": []},
      "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581"}})");
  dir.Write("tokenizer.model", Slurp(kStories / "tokenizer.model"));
  std::unique_ptr<Tokenizer> tok = MustLoad(dir.path());
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->kind(), "sentencepiece_bpe");
  fs::remove(dir.path() / "tokenizer.model");
  absl::Status s = LoadTokenizer(dir.path()).status();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("Metaspace"), std::string::npos) << s;
}

TEST(Tokenizer, MissingFilesAreNotFound) {
  EXPECT_EQ(LoadTokenizer("/nonexistent/dir").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(LoadStatus({}).code(), StatusCode::kNotFound);
  EXPECT_EQ(LoadStatus({{"vocab.json", "{}"}}).code(), StatusCode::kNotFound);  // no merges.txt
  EXPECT_EQ(LoadStatus({{"config.json", "{}"}}).code(), StatusCode::kNotFound);
  absl::Status s = LoadByteLevelBpe(kGpt2 / "vocab.json", "/nonexistent/merges.txt").status();
  EXPECT_EQ(s.code(), StatusCode::kNotFound) << s;
  EXPECT_NE(s.message().find("/nonexistent/merges.txt"), std::string::npos) << s;
  EXPECT_EQ(LoadSentencePieceModel("/nonexistent/tokenizer.model").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(Llama2cTokenizerBinToModelProto("/nonexistent/tokenizer.bin").status().code(), StatusCode::kNotFound);
}

TEST(Tokenizer, MalformedJsonFilesAreInvalidArgumentNamingTheFile) {
  const std::string merges = "#version: 0.2\n";
  struct Case {
    std::vector<std::pair<std::string, std::string>> files;
    std::string file, detail;
  };
  const std::vector<Case> cases = {
      {{{"vocab.json", "{not json"}, {"merges.txt", merges}}, "vocab.json", "not valid JSON"},
      {{{"vocab.json", "[1, 2]"}, {"merges.txt", merges}}, "vocab.json", "JSON object"},
      {{{"vocab.json", R"({"a": "x"})"}, {"merges.txt", merges}}, "vocab.json", "not an integer"},
      {{{"vocab.json", Slurp(kGpt2 / "vocab.json")}, {"merges.txt", merges + "a b c\n"}}, "merges.txt", "line 2"},
      {{{"vocab.json", Slurp(kGpt2 / "vocab.json")}, {"merges.txt", merges + "zzzzq qqqqz\n"}},
       "merges.txt",
       "not in the vocabulary"},
      {{{"tokenizer.json", R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [], "unk_token": "<unk>"},
          "pre_tokenizer": {"type": "ByteLevel"}})"}},
       "tokenizer.json",
       "unk_token \"<unk>\" is not in the vocabulary"},
      {{{"tokenizer.json", "{\"model\": "}}, "tokenizer.json", "not valid JSON"},
      {{{"tokenizer.json", R"({"model": {"type": "WordPiece", "vocab": {}}})"}}, "tokenizer.json", "WordPiece"},
      {{{"tokenizer.json", R"({"model": {"type": "BPE", "vocab": {}, "merges": []}, "normalizer": {"type": "Lowercase"},
          "pre_tokenizer": {"type": "ByteLevel"}})"}},
       "tokenizer.json",
       "Lowercase"},
      {{{"tokenizer.json", R"({"model": {"type": "BPE", "vocab": {}, "merges": []},
          "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
             {"type": "Split", "pattern": {"Regex": "(unclosed"}, "behavior": "Isolated"}, {"type": "ByteLevel"}]}})"}},
       "tokenizer.json",
       "does not compile"},
      {{{"tokenizer.json", R"({"model": {"type": "BPE", "vocab": {}, "merges": [1]},
          "pre_tokenizer": {"type": "ByteLevel"}})"}},
       "tokenizer.json",
       "merges must be"},
  };
  for (const Case& c : cases) {
    absl::Status s = LoadStatus(c.files);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << c.file << ": " << s;
    EXPECT_NE(s.message().find(c.file), std::string::npos) << s;
    EXPECT_NE(s.message().find(c.detail), std::string::npos) << s;
  }
}

TEST(Tokenizer, MalformedBinaryFilesAreDataLossNamingTheFile) {
  const std::string bin = Slurp(kStories / "llama2c/tok512.bin");
  struct Case {
    std::vector<std::pair<std::string, std::string>> files;
    StatusCode code;
    std::string file;
  };
  const std::vector<Case> cases = {
      {{{"tokenizer.model", std::string("\xff\xff\xff garbage", 11)}}, StatusCode::kDataLoss, "tokenizer.model"},
      {{{"tokenizer.model", ""}}, StatusCode::kDataLoss, "tokenizer.model"},  // parses, but has no pieces
      {{{"tokenizer.bin", bin.substr(0, bin.size() / 2)}, {"config.json", R"({"vocab_size": 512})"}},
       StatusCode::kDataLoss,
       "tokenizer.bin"},
      {{{"tokenizer.bin", bin.substr(0, bin.size() - 3)}}, StatusCode::kDataLoss, "tokenizer.bin"},  // cut mid-record
      {{{"tokenizer.bin", bin.substr(0, 2)}}, StatusCode::kDataLoss, "tokenizer.bin"},
  };
  for (const Case& c : cases) {
    absl::Status s = LoadStatus(c.files);
    EXPECT_EQ(s.code(), c.code) << c.file << ": " << s;
    EXPECT_NE(s.message().find(c.file), std::string::npos) << s;
  }
  TempDir dir;
  dir.Write("tokenizer.bin", bin.substr(0, bin.size() - 3));
  absl::Status s = Llama2cTokenizerBinToModelProto(dir.path() / "tokenizer.bin").status();
  EXPECT_EQ(s.code(), StatusCode::kDataLoss) << s;
}

// An id indexes a table: a huge one must be rejected, not allocated (it threw bad_alloc).
TEST(Tokenizer, ImplausiblyLargeIdsAreInvalidArgument) {
  const std::string vocab = Slurp(kGpt2 / "vocab.json");
  for (const std::vector<std::pair<std::string, std::string>>& files :
       {std::vector<std::pair<std::string, std::string>>{
            {"tokenizer.json", R"({"model": {"type": "BPE", "vocab": {"zz": 2000000000}, "merges": []},
                                   "pre_tokenizer": {"type": "ByteLevel"}})"}},
        {{"tokenizer.json", R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
                                "pre_tokenizer": {"type": "ByteLevel"},
                                "added_tokens": [{"id": 2000000000, "content": "<x>"}]})"}},
        {{"vocab.json", vocab.substr(0, vocab.rfind('}')) + R"(, "zzq": 2000000000})"}, {"merges.txt", ""}}}) {
    absl::Status s = LoadStatus(files);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s;
    EXPECT_NE(s.message().find(files[0].first), std::string::npos) << s;
    EXPECT_NE(s.message().find("2000000000"), std::string::npos) << s;
  }
}

// Sequences nested 200,000 deep overflowed the stack of the recursive checks.
TEST(Tokenizer, DeeplyNestedSequencesAreInvalidArgument) {
  constexpr int kDepth = 200000;
  std::string pre, norm;
  for (int i = 0; i < kDepth; ++i) pre += R"({"type": "Sequence", "pretokenizers": [)";
  pre += R"({"type": "ByteLevel"})";
  for (int i = 0; i < kDepth; ++i) pre += "]}";
  for (int i = 0; i < kDepth; ++i) norm += R"({"type": "Sequence", "normalizers": [)";
  norm += R"({"type": "NFC"})";
  for (int i = 0; i < kDepth; ++i) norm += "]}";
  const std::string model = R"("model": {"type": "BPE", "vocab": {}, "merges": []})";
  const std::string byte_level = R"(, "pre_tokenizer": {"type": "ByteLevel"})";
  for (const std::string& json : {"{" + model + R"(, "pre_tokenizer": )" + pre + "}",
                                  "{" + model + byte_level + R"(, "normalizer": )" + norm + "}"}) {
    absl::Status s = LoadStatus({{"tokenizer.json", json}});
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s;
    EXPECT_NE(s.message().find("tokenizer.json"), std::string::npos) << s;
    EXPECT_NE(s.message().find("nest more than 64"), std::string::npos) << s;
  }
}

// A NaN score would break the merge order; it is corrupt data, reported with its record.
TEST(Tokenizer, NanScoresAreRejectedNamingTheRecord) {
  std::string bin = Slurp(kStories / "llama2c/tok512.bin");
  size_t pos = 4;
  for (int record = 0; record < 5; ++record) {  // to record 5
    int32_t len;
    std::memcpy(&len, bin.data() + pos + 4, 4);
    pos += 8 + len;
  }
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::memcpy(bin.data() + pos, &nan, 4);
  absl::Status s = LoadStatus({{"tokenizer.bin", bin}});
  EXPECT_EQ(s.code(), StatusCode::kDataLoss) << s;
  EXPECT_NE(s.message().find("tokenizer.bin"), std::string::npos) << s;
  EXPECT_NE(s.message().find("record 5"), std::string::npos) << s;
  // A ModelProto: pieces { piece: "a" score: NaN } trainer_spec { model_type: BPE }.
  const std::string proto("\x0a\x08\x0a\x01\x61\x15\x00\x00\xc0\x7f\x12\x02\x18\x02", 14);
  s = LoadStatus({{"tokenizer.model", proto}});
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("piece 0"), std::string::npos) << s;
}

TEST(Tokenizer, UnsupportedSentencePieceModelsAreInvalidArgument) {
  // A serialized ModelProto with one piece and trainer_spec.model_type = UNIGRAM (1):
  // pieces { piece: "a" } trainer_spec { model_type: 1 }.
  const std::string unigram("\x0a\x03\x0a\x01\x61\x12\x02\x18\x01", 9);
  absl::Status s = LoadStatus({{"tokenizer.model", unigram}});
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("tokenizer.model"), std::string::npos) << s;
}

TEST(SentencePieceBpe, AUserDefinedPieceEndingInsideACharacterDoesNotStallEncoding) {
  // pieces { "<unk>" UNKNOWN } { "a" NORMAL } { "\xe2\x96" USER_DEFINED } trainer_spec { BPE }:
  // the dummy prefix "\u2581" (e2 96 81) starts with the user-defined piece, which leaves the
  // scan at the continuation byte 0x81 (the fuzzer found a 2 GiB loop there).
  const std::string proto(
      "\x0a\x09\x0a\x05<unk>\x18\x02"
      "\x0a\x05\x0a\x01\x61\x18\x01"
      "\x0a\x06\x0a\x02\xe2\x96\x18\x04"
      "\x12\x02\x18\x02",
      30);
  TempDir dir;
  dir.Write("tokenizer.model", proto);
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok = LoadTokenizer(dir.path());
  ASSERT_OK(tok);
  absl::StatusOr<std::vector<int32_t>> ids = (*tok)->Encode("a a");
  ASSERT_OK(ids);
  EXPECT_EQ(ids->front(), 2) << "the user-defined piece first";
  for (int32_t id : *ids) EXPECT_TRUE(id >= 0 && id < 3) << id;
  EXPECT_OK((*tok)->Decode(*ids));
}

TEST(Tokenizer, InvalidUtf8AndBadIdsAreInvalidArgument) {
  for (const fs::path& dir : {kGpt2, kStories}) {
    std::unique_ptr<Tokenizer> tok = MustLoad(dir);
    ASSERT_NE(tok, nullptr);
    absl::Status s = tok->Encode("ok \xff\xfe bad").status();
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << dir;
    EXPECT_NE(s.message().find("byte 3"), std::string::npos) << s;
    EXPECT_EQ(tok->Encode("\xed\xa0\x80").status().code(), StatusCode::kInvalidArgument) << dir;  // surrogate
    s = tok->Decode({0, 1 << 30}).status();
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << dir;
    EXPECT_NE(s.message().find("1073741824"), std::string::npos) << s;
    EXPECT_EQ(tok->Decode({-1}).status().code(), StatusCode::kInvalidArgument) << dir;
    EXPECT_EQ(tok->Decode({tok->vocab_size()}).status().code(), StatusCode::kInvalidArgument) << dir;
    EXPECT_EQ(*tok->Encode(""), std::vector<int32_t>{});
    EXPECT_EQ(*tok->Decode({}), "");
  }
}

TEST(Utf8, RepairReplacesIllFormedSequences) {
  using tokenizer_internal::RepairUtf8;
  using tokenizer_internal::Utf8Repair;
  EXPECT_EQ(RepairUtf8("ok \xc3\xa9", Utf8Repair::kMaximalSubpart), "ok \xc3\xa9");
  EXPECT_EQ(RepairUtf8("\xe6\x97", Utf8Repair::kMaximalSubpart), "\xEF\xBF\xBD");
  EXPECT_EQ(RepairUtf8("\xe6\x97", Utf8Repair::kPerByte), "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(RepairUtf8("\xc0\xaf", Utf8Repair::kMaximalSubpart), "\xEF\xBF\xBD\xEF\xBF\xBD");  // overlong
  EXPECT_EQ(RepairUtf8("\xf4\x90\x80\x80", Utf8Repair::kMaximalSubpart),
            "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // above U+10FFFF
  EXPECT_EQ(RepairUtf8("a\xf0\x9f\x98z", Utf8Repair::kMaximalSubpart), "a\xEF\xBF\xBDz");
}

}  // namespace
}  // namespace lesion::model
