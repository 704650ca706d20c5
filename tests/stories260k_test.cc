// The bundled model: the committed Hugging Face form of stories260K is exactly what the converter
// produces from the original llama2.c files, and it generates the known greedy story.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/file_util.h"
#include "common/testing/status_matchers.h"
#include "model/generation.h"
#include "model/llama2c_converter.h"
#include "model/model.h"
#include "model/perplexity.h"

namespace lesion::experiments {
namespace {

const std::filesystem::path kModel = std::filesystem::path(LESION_SOURCE_DIR) / "models/stories260K";

std::string Slurp(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST(Stories260K, GreedyDecodingFromBosTellsTheKnownStory) {
  auto model = model::Model::Load(kModel, {});
  ASSERT_OK(model);
  ASSERT_NE((*model)->tokenizer(), nullptr);
  ASSERT_EQ((*model)->bos_id(), 1);
  auto ids = model::GreedyGenerate((*model)->transformer(), {1}, 40, std::nullopt);
  ASSERT_OK(ids);
  auto text = (*model)->tokenizer()->Decode(*ids);
  ASSERT_OK(text);
  EXPECT_EQ(text->rfind("Once upon a time, there was a little girl named Lily. She loved to play "
                        "outside in the park.",
                        0),
            0u)
      << *text;
}

TEST(Stories260K, ConverterReproducesTheCommittedFilesByteForByte) {
  const auto out = std::filesystem::temp_directory_path() / "lesion_stories260k_convert_test";
  (void)RemoveTree(out);
  absl::Status status =
      model::ConvertLlama2cCheckpoint(kModel / "llama2c/stories260K.bin", kModel / "llama2c/tok512.bin", out);
  ASSERT_OK(status);
  for (const char* file : {"config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json"}) {
    EXPECT_EQ(Slurp(out / file), Slurp(kModel / file)) << file << " differs from the committed copy";
  }
  (void)RemoveTree(out);
}

TEST(Stories260K, ConverterRejectsTruncatedCheckpoint) {
  const auto dir = std::filesystem::temp_directory_path() / "lesion_stories260k_truncated";
  std::filesystem::create_directories(dir);
  std::string bytes = Slurp(kModel / "llama2c/stories260K.bin");
  ASSERT_GT(bytes.size(), 1000u);
  std::ofstream(dir / "bad.bin", std::ios::binary).write(bytes.data(), bytes.size() - 100);
  absl::Status status = model::ConvertLlama2cCheckpoint(dir / "bad.bin", kModel / "llama2c/tok512.bin", dir / "out");
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;
  EXPECT_FALSE(std::filesystem::exists(dir / "out" / "model.safetensors"));
  (void)RemoveTree(dir);
}

TEST(Stories260K, PerplexityOnStoryTextIsLow) {
  auto model = model::Model::Load(kModel, {});
  ASSERT_OK(model);
  auto ids =
      (*model)->tokenizer()->Encode(Slurp(std::filesystem::path(LESION_SOURCE_DIR) / "data/tinystories_sample.txt"));
  ASSERT_OK(ids);
  model::PerplexityOptions o;
  o.seq_len = 128;
  o.add_bos = true;
  auto r = model::EvaluatePerplexity((*model)->transformer(), *ids, o, 1, model::RunPlan(5));
  ASSERT_OK(r);
  // A 260K-parameter TinyStories model on TinyStories-style text: single digits, far from the
  // 512-token uniform baseline. A broken rotary permutation lands in the hundreds.
  EXPECT_LT(r->ppl, 10.0) << r->ppl;
  EXPECT_EQ(r->n_tokens, static_cast<int64_t>(ids->size()));
}

}  // namespace
}  // namespace lesion::experiments
