// Loading checkpoints: every malformed input gives a specific status naming the file and tensor.
#include "model/checkpoint_loader.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>

#include "common/file_util.h"
#include "common/testing/status_matchers.h"
#include "model/model.h"
#include "model/safetensors/safetensors.h"

namespace lesion::model {
namespace {

using ::lesion::matchers::StatusIs;

namespace fs = std::filesystem;

constexpr char kConfig[] = R"({"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 2,
  "hidden_size": 16, "intermediate_size": 24, "num_attention_heads": 4, "num_key_value_heads": 2,
  "vocab_size": 32, "max_position_embeddings": 64})";

// name -> shape of a valid checkpoint for kConfig.
std::map<std::string, std::vector<int64_t>> ValidShapes() {
  std::map<std::string, std::vector<int64_t>> shapes = {
      {"model.embed_tokens.weight", {32, 16}}, {"model.norm.weight", {16}}, {"lm_head.weight", {32, 16}}};
  for (int l = 0; l < 2; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    shapes[p + "input_layernorm.weight"] = {16};
    shapes[p + "post_attention_layernorm.weight"] = {16};
    shapes[p + "self_attn.q_proj.weight"] = {16, 16};
    shapes[p + "self_attn.k_proj.weight"] = {8, 16};
    shapes[p + "self_attn.v_proj.weight"] = {8, 16};
    shapes[p + "self_attn.o_proj.weight"] = {16, 16};
    shapes[p + "mlp.gate_proj.weight"] = {24, 16};
    shapes[p + "mlp.up_proj.weight"] = {24, 16};
    shapes[p + "mlp.down_proj.weight"] = {16, 24};
  }
  return shapes;
}

class CheckpointLoaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("lesion_loader_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()));
    (void)RemoveTree(dir_);
    fs::create_directories(dir_);
    ASSERT_OK(WriteFileAtomically(dir_ / "config.json", kConfig));
  }
  void TearDown() override { (void)RemoveTree(dir_); }

  void Write(const std::map<std::string, std::vector<int64_t>>& shapes, DType dtype = DType::kF32) {
    std::vector<std::vector<std::byte>> buffers;
    std::vector<TensorToWrite> tensors;
    for (const auto& [name, shape] : shapes) {
      int64_t n = 1;
      for (int64_t d : shape) n *= d;
      buffers.emplace_back(n * DTypeSize(dtype), std::byte{0x3c});
    }
    size_t i = 0;
    for (const auto& [name, shape] : shapes) {
      tensors.push_back({name, dtype, shape, absl::MakeConstSpan(buffers[i++])});
    }
    ASSERT_OK(WriteSafetensors(dir_ / "model.safetensors", tensors));
  }

  absl::Status Load() {
    auto config = LoadModelConfig(dir_);
    if (!config.ok()) return config.status();
    return LoadCheckpointWeights(dir_, *config, {}).status();
  }

  fs::path dir_;
};

TEST_F(CheckpointLoaderTest, LoadsAValidCheckpointInItsDtypeOrARequestedOne) {
  Write(ValidShapes(), DType::kBF16);
  auto config = LoadModelConfig(dir_);
  ASSERT_OK(config);
  auto as_is = LoadCheckpointWeights(dir_, *config, {});
  ASSERT_OK(as_is);
  EXPECT_EQ(as_is->weights.embed.scalar_type(), at::kBFloat16);
  EXPECT_EQ(as_is->checkpoint_dtype, at::kBFloat16);
  LoadOptions f32;
  f32.dtype = at::kFloat;
  auto converted = LoadCheckpointWeights(dir_, *config, f32);
  ASSERT_OK(converted);
  EXPECT_EQ(converted->weights.blocks[1].q.weight.scalar_type(), at::kFloat);
  // q/k/v are views of the fused matrix.
  EXPECT_EQ(converted->weights.blocks[0].k.weight.data_ptr<float>(),
            converted->weights.blocks[0].qkv.weight.data_ptr<float>() + 16 * 16);
}

TEST_F(CheckpointLoaderTest, MissingTensorNamesIt) {
  auto shapes = ValidShapes();
  shapes.erase("model.layers.1.mlp.up_proj.weight");
  Write(shapes);
  absl::Status s = Load();
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_NE(s.message().find("model.layers.1.mlp.up_proj.weight"), std::string::npos) << s;
  EXPECT_NE(s.message().find("model.safetensors"), std::string::npos) << s;
}

TEST_F(CheckpointLoaderTest, ExtraTensorNamesIt) {
  auto shapes = ValidShapes();
  shapes["model.layers.2.self_attn.q_proj.weight"] = {16, 16};
  Write(shapes);
  absl::Status s = Load();
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_NE(s.message().find("model.layers.2.self_attn.q_proj.weight"), std::string::npos) << s;
}

TEST_F(CheckpointLoaderTest, ShapeMismatchNamesTensorAndShapes) {
  auto shapes = ValidShapes();
  shapes["model.layers.0.self_attn.k_proj.weight"] = {16, 16};
  Write(shapes);
  absl::Status s = Load();
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_NE(s.message().find("k_proj"), std::string::npos) << s;
  EXPECT_NE(s.message().find("[16, 16]"), std::string::npos) << s;
  EXPECT_NE(s.message().find("[8, 16]"), std::string::npos) << s;
}

TEST_F(CheckpointLoaderTest, NonFloatWeightsAreRejected) {
  Write(ValidShapes(), DType::kI32);
  EXPECT_THAT(Load(), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_F(CheckpointLoaderTest, TruncatedFileIsDataLoss) {
  Write(ValidShapes());
  const auto size = fs::file_size(dir_ / "model.safetensors");
  fs::resize_file(dir_ / "model.safetensors", size - 10);
  absl::Status s = Load();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_NE(s.message().find("model.safetensors"), std::string::npos) << s;
}

TEST_F(CheckpointLoaderTest, MissingWeightsFileIsNotFound) {
  EXPECT_THAT(Load(), StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(CheckpointLoaderTest, UnknownArchitectureAndBadConfigAreInvalidArgument) {
  Write(ValidShapes());
  ASSERT_OK(WriteFileAtomically(dir_ / "config.json", R"({"architectures": ["T5Model"]})"));
  auto model = Model::Load(dir_, {});
  EXPECT_THAT(model, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_NE(model.status().message().find("T5Model"), std::string::npos);
  ASSERT_OK(WriteFileAtomically(dir_ / "config.json", "{ truncated"));
  EXPECT_EQ(Model::Load(dir_, {}).status().code(), absl::StatusCode::kInvalidArgument);
  fs::remove(dir_ / "config.json");
  EXPECT_EQ(Model::Load(dir_, {}).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Model::Load(dir_ / "nope", {}).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(CheckpointLoaderTest, AnUnreadableTokenizerDoesNotStopTheModel) {
  Write(ValidShapes());
  ASSERT_OK(WriteFileAtomically(dir_ / "tokenizer.model", "not a protobuf \xff"));
  auto model = Model::Load(dir_, {});
  ASSERT_OK(model);
  EXPECT_EQ((*model)->tokenizer(), nullptr);
  auto tok = (*model)->RequireTokenizer();
  EXPECT_THAT(tok, StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_NE(tok.status().message().find("tokenizer.model"), std::string::npos) << tok.status();
}

TEST_F(CheckpointLoaderTest, TiedCheckpointMayCarryACopyOfTheHead) {
  ASSERT_TRUE(
      WriteFileAtomically(dir_ / "config.json", std::string(kConfig).replace(1, 0, R"("tie_word_embeddings": true, )"))
          .ok());
  Write(ValidShapes());  // includes lm_head.weight
  EXPECT_OK(Load());
  auto shapes = ValidShapes();
  shapes.erase("lm_head.weight");
  Write(shapes);
  EXPECT_OK(Load());
}

}  // namespace
}  // namespace lesion::model
