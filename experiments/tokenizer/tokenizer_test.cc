// Tokenizers against independent references (OpenAI's tiktoken, Google's sentencepiece), whose
// ids testdata/make_tokenizer_fixtures.py recorded.
#include "experiments/tokenizer/tokenizer.h"

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>

#include "common/file_util.h"
#include "nlohmann/json.hpp"

namespace lesion::experiments {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

const fs::path kRoot = LESION_SOURCE_DIR;
const fs::path kGpt2 = kRoot / "models/gpt2-tokenizer";
const fs::path kStories = kRoot / "models/stories260K";

Json Fixtures() {
  auto text = ReadFile(kRoot / "experiments/tokenizer/testdata/tokenizer_fixtures.json");
  EXPECT_TRUE(text.ok()) << text.status();
  return Json::parse(*text);
}

std::vector<int32_t> Ids(const Json& j) { return j.get<std::vector<int32_t>>(); }

class TempDir {
 public:
  TempDir() : path_(fs::temp_directory_path() / ("lesion_tok_" + std::to_string(counter_++) + "_" +
                                                   std::to_string(::getpid()))) {
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  const fs::path& path() const { return path_; }
  void Write(const std::string& name, const std::string& contents) const {
    std::ofstream(path_ / name, std::ios::binary) << contents;
  }

 private:
  static inline int counter_ = 0;
  fs::path path_;
};

TEST(ByteLevelBpe, MatchesTiktokenOnTrickyStrings) {
  auto tok = LoadTokenizer(kGpt2);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->kind(), "byte_level_bpe");
  EXPECT_EQ((*tok)->vocab_size(), 50257);
  for (const Json& c : Fixtures()["gpt2"]["cases"]) {
    const std::string text = c["text"];
    auto ids = (*tok)->Encode(text);
    ASSERT_TRUE(ids.ok()) << ids.status();
    EXPECT_EQ(*ids, Ids(c["ids"])) << text;
    auto back = (*tok)->Decode(*ids);
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(*back, text);
  }
}

TEST(ByteLevelBpe, WikiText2TestIsExactly286221Gpt2Tokens) {
  auto tok = LoadTokenizer(kGpt2);
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto text = ReadFile(kRoot / "data/wikitext-2/wiki.test.raw");
  ASSERT_TRUE(text.ok()) << text.status();
  const auto start = std::chrono::steady_clock::now();
  auto ids = (*tok)->Encode(*text);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_TRUE(ids.ok()) << ids.status();
  std::cout << "encoded wiki.test.raw (" << text->size() << " bytes) in " << seconds << " s\n";
  const Json ref = Fixtures()["gpt2"]["wiki_test_raw"];
  ASSERT_EQ(ids->size(), 286221u);
  ASSERT_EQ(ids->size(), ref["n_ids"].get<size_t>());
  uint64_t checksum = 0;
  const uint64_t mod = uint64_t{1} << 61;
  for (size_t i = 0; i < ids->size(); ++i) {
    checksum = (checksum + static_cast<unsigned __int128>(i + 1) * (*ids)[i] % mod) % mod;
  }
  EXPECT_EQ(checksum, ref["checksum"].get<uint64_t>());
  EXPECT_EQ(std::vector<int32_t>(ids->begin(), ids->begin() + 20), Ids(ref["first"]));
  EXPECT_EQ(std::vector<int32_t>(ids->end() - 20, ids->end()), Ids(ref["last"]));
}

// A tokenizer.json holding the same vocabulary and merges must tokenize identically, with a plain
// ByteLevel pre-tokenizer and with LLaMA 3's Split + ByteLevel(use_regex=false) form.
TEST(ByteLevelBpe, TokenizerJsonFormsAgreeWithVocabAndMerges) {
  auto vocab_text = ReadFile(kGpt2 / "vocab.json");
  auto merges_text = ReadFile(kGpt2 / "merges.txt");
  ASSERT_TRUE(vocab_text.ok() && merges_text.ok());
  Json merges = Json::array();
  std::istringstream lines(*merges_text);
  std::string line;
  std::getline(lines, line);  // #version
  while (std::getline(lines, line)) {
    if (!line.empty()) merges.push_back(line);
  }
  const std::string gpt2_regex =
      R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
  Json plain = {{"model", {{"type", "BPE"}, {"vocab", Json::parse(*vocab_text)}, {"merges", merges}}},
                {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
                {"added_tokens", {{{"id", 50256}, {"content", "<|endoftext|>"}, {"special", true}}}}};
  Json split = plain;
  split["pre_tokenizer"] = {
      {"type", "Sequence"},
      {"pretokenizers",
       {{{"type", "Split"}, {"pattern", {{"Regex", gpt2_regex}}}, {"behavior", "Isolated"}},
        {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}};
  auto reference = LoadTokenizer(kGpt2);
  ASSERT_TRUE(reference.ok());
  for (const Json& form : {plain, split}) {
    TempDir dir;
    dir.Write("tokenizer.json", form.dump());
    auto tok = LoadTokenizer(dir.path());
    ASSERT_TRUE(tok.ok()) << tok.status();
    for (const Json& c : Fixtures()["gpt2"]["cases"]) {
      EXPECT_EQ(*(*tok)->Encode(c["text"].get<std::string>()), Ids(c["ids"]));
    }
    // Added tokens are matched whole, before pre-tokenization.
    EXPECT_EQ(*(*tok)->Encode("a<|endoftext|>b"), (std::vector<int32_t>{64, 50256, 65}));
    EXPECT_EQ(*(*tok)->Decode({64, 50256, 65}), "a<|endoftext|>b");
  }
}

TEST(SentencePieceBpe, MatchesSentencepieceOnStories260K) {
  auto tok = LoadTokenizer(kStories);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->kind(), "sentencepiece_bpe");
  EXPECT_EQ((*tok)->bos_id(), 1);
  EXPECT_EQ((*tok)->eos_id(), 2);
  auto llama2c = LoadLlama2cTokenizer(kStories / "llama2c/tok512.bin", 512);
  ASSERT_TRUE(llama2c.ok()) << llama2c.status();
  for (const Json& c : Fixtures()["stories260K"]["cases"]) {
    const std::string text = c["text"];
    for (const Tokenizer* t : {tok->get(), llama2c->get()}) {
      auto ids = t->Encode(text);
      ASSERT_TRUE(ids.ok()) << ids.status();
      EXPECT_EQ(*ids, Ids(c["ids"])) << text;
      EXPECT_EQ(*t->Decode(*ids), c["decoded"].get<std::string>()) << text;
    }
  }
}

// LLaMA 2 directories ship a SentencePiece-style tokenizer.json (Metaspace) beside
// tokenizer.model; the SentencePiece model is used.
TEST(Tokenizer, SentencePieceModelWinsOverAMetaspaceTokenizerJson) {
  TempDir dir;
  dir.Write("tokenizer.json", R"({"model": {"type": "BPE", "vocab": {}, "merges": []},
      "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581"}})");
  dir.Write("tokenizer.model", *ReadFile(kStories / "tokenizer.model"));
  auto tok = LoadTokenizer(dir.path());
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->kind(), "sentencepiece_bpe");
  fs::remove(dir.path() / "tokenizer.model");
  EXPECT_EQ(LoadTokenizer(dir.path()).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(Tokenizer, ErrorsNameTheFile) {
  EXPECT_EQ(LoadTokenizer("/nonexistent/dir").status().code(), absl::StatusCode::kNotFound);
  {
    TempDir dir;
    dir.Write("vocab.json", "{not json");
    dir.Write("merges.txt", "#version: 0.2\n");
    auto s = LoadTokenizer(dir.path()).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find("vocab.json"), std::string::npos) << s;
  }
  {
    TempDir dir;
    dir.Write("tokenizer.json", R"({"model": {"type": "WordPiece", "vocab": {}}})");
    EXPECT_EQ(LoadTokenizer(dir.path()).status().code(), absl::StatusCode::kInvalidArgument);
  }
  {
    TempDir dir;
    dir.Write("tokenizer.model", std::string("\xff\xff\xff garbage", 11));
    auto s = LoadTokenizer(dir.path()).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
    EXPECT_NE(s.message().find("tokenizer.model"), std::string::npos) << s;
  }
  {
    TempDir dir;
    auto bin = ReadFile(kStories / "llama2c/tok512.bin");
    dir.Write("tokenizer.bin", bin->substr(0, bin->size() / 2));
    dir.Write("config.json", R"({"vocab_size": 512})");
    auto s = LoadTokenizer(dir.path()).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
    EXPECT_NE(s.message().find("tokenizer.bin"), std::string::npos) << s;
  }
}

TEST(Tokenizer, InvalidUtf8AndBadIdsAreInvalidArgument) {
  for (const fs::path& dir : {kGpt2, kStories}) {
    auto tok = LoadTokenizer(dir);
    ASSERT_TRUE(tok.ok());
    EXPECT_EQ((*tok)->Encode("ok \xff\xfe bad").status().code(), absl::StatusCode::kInvalidArgument) << dir;
    EXPECT_EQ((*tok)->Decode({0, 1 << 30}).status().code(), absl::StatusCode::kInvalidArgument) << dir;
    EXPECT_EQ((*tok)->Decode({-1}).status().code(), absl::StatusCode::kInvalidArgument) << dir;
  }
}

}  // namespace
}  // namespace lesion::experiments
