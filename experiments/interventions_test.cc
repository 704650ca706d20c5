#include "experiments/interventions.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/testing/status_matchers.h"
#include "experiments/weight_edits.h"
#include "model/model.h"

namespace lesion::experiments {
namespace {

using ::lesion::matchers::StatusIs;

std::unique_ptr<model::Model> LoadFixture(const char* name) {
  auto model = model::Model::Load(std::filesystem::path(LESION_SOURCE_DIR) / "tests/fixtures/models" / name, {});
  EXPECT_OK(model);
  return *std::move(model);
}

at::Tensor Logits(const model::Transformer& m, const model::RunPlan& plan) {
  at::Tensor ids = (at::arange(24, at::kLong).view({2, 12}) * 13) % m.config().vocab_size;
  auto logits = m.Forward(ids, plan);
  EXPECT_OK(logits);
  return logits->clone();
}

double MaxDiff(const at::Tensor& a, const at::Tensor& b) { return (a - b).abs().max().item<double>(); }

// Zeroing a head's slice of attn_z is the same function as zeroing the output projection's input
// columns of that head: an independent route to the same numbers.
TEST(HeadAblation, ZeroEqualsZeroingTheHeadsOutputProjectionColumns) {
  for (const char* name : {"llama2", "gpt2"}) {
    auto model = LoadFixture(name);
    const model::Transformer& m = model->transformer();
    const model::ModelConfig& c = m.config();
    model::RunPlan plan(c.n_layers);
    ASSERT_OK(AddHeadAblation(c, 1, {0, 2}, HeadAblationMode::kZero, 0, {}, plan));
    const at::Tensor ablated = Logits(m, plan);
    at::Tensor via_weights;
    {
      WeightEditSession edits(&m);
      for (int64_t h : {0, 2}) {
        for (int64_t row = 0; row < c.d_model; ++row) {
          for (int64_t col = h * c.head_dim; col < (h + 1) * c.head_dim; ++col) {
            ASSERT_OK(edits.EditElement(1, model::WeightModule::kAttnO, row, col, ElementOp::kZero, 0));
          }
        }
      }
      via_weights = Logits(m, model::RunPlan(c.n_layers));
    }
    EXPECT_LE(MaxDiff(ablated, via_weights), 1e-5) << name;
    EXPECT_GT(MaxDiff(ablated, Logits(m, model::RunPlan(c.n_layers))), 1e-3) << name << ": ablation had no effect";
  }
}

TEST(HeadAblation, ScaleAndMeanModes) {
  auto model = LoadFixture("mistral");
  const model::Transformer& m = model->transformer();
  const model::ModelConfig& c = m.config();
  model::RunPlan zero(c.n_layers), scale0(c.n_layers), scale1(c.n_layers), mean0(c.n_layers);
  ASSERT_OK(AddHeadAblation(c, 2, {3}, HeadAblationMode::kZero, 0, {}, zero));
  ASSERT_OK(AddHeadAblation(c, 2, {3}, HeadAblationMode::kScale, 0.0, {}, scale0));
  ASSERT_OK(AddHeadAblation(c, 2, {3}, HeadAblationMode::kScale, 1.0, {}, scale1));
  ASSERT_OK(AddHeadAblation(c, 2, {3}, HeadAblationMode::kMean, 0, at::zeros({c.n_heads, c.head_dim}), mean0));
  EXPECT_TRUE(at::equal(Logits(m, zero), Logits(m, scale0)));
  EXPECT_TRUE(at::equal(Logits(m, zero), Logits(m, mean0)));
  EXPECT_TRUE(at::equal(Logits(m, scale1), Logits(m, model::RunPlan(c.n_layers))));
}

TEST(ActivationEdit, EditsExactlyTheSelectedCells) {
  auto model = LoadFixture("qwen2");
  const model::Transformer& m = model->transformer();
  const model::ModelConfig& c = m.config();
  at::Tensor before, after;
  model::RunPlan observe(c.n_layers);
  observe.AddHook({model::SiteKind::kMlpIn, 1}, [&](const model::SiteId&, at::Tensor& x) { before = x.clone(); });
  Logits(m, observe);
  model::RunPlan plan(c.n_layers);
  ASSERT_OK(AddActivationEdit(c, {model::SiteKind::kMlpIn, 1}, {0, 5, 99}, {3, 7}, ActivationOp::kSet, 42.0, {}, plan));
  plan.AddHook({model::SiteKind::kMlpIn, 1}, [&](const model::SiteId&, at::Tensor& x) { after = x.clone(); });
  Logits(m, plan);
  at::Tensor expected = before.clone();
  for (int64_t p : {0, 5}) {
    for (int64_t d : {3, 7}) expected.select(1, p).select(1, d).fill_(42.0);
  }
  EXPECT_TRUE(at::equal(after, expected));  // position 99 is beyond the window: skipped
}

TEST(ActivationEdit, ZeroingTheLastResidualZeroesTheLogitsOfAnRmsNormModel) {
  auto model = LoadFixture("llama2");
  const model::ModelConfig& c = model->config();
  model::RunPlan plan(c.n_layers);
  ASSERT_OK(
      AddActivationEdit(c, {model::SiteKind::kResidPost, c.n_layers - 1}, {}, {}, ActivationOp::kZero, 0, {}, plan));
  EXPECT_EQ(Logits(model->transformer(), plan).abs().max().item<float>(), 0.0f);
  model::RunPlan identity(c.n_layers);
  ASSERT_OK(AddActivationEdit(c, {model::SiteKind::kAttnZ, 0}, {}, {}, ActivationOp::kScale, 1.0, {}, identity));
  EXPECT_TRUE(
      at::equal(Logits(model->transformer(), identity), Logits(model->transformer(), model::RunPlan(c.n_layers))));
}

// The vector ops against the same arithmetic done by hand on the site's unedited values.
TEST(ActivationEdit, SteeringProjectionAndPatchingEditTheSelectedRows) {
  auto model = LoadFixture("llama2");
  const model::Transformer& m = model->transformer();
  const model::ModelConfig& c = m.config();
  const model::SiteId site{model::SiteKind::kResidPost, 0};
  at::Tensor before;
  model::RunPlan observe(c.n_layers);
  observe.AddHook(site, [&](const model::SiteId&, at::Tensor& x) { before = x.clone(); });
  Logits(m, observe);
  auto edited = [&](const std::vector<int64_t>& positions, const std::vector<int64_t>& dims, ActivationOp op,
                    double value, const std::vector<float>& vector) {
    model::RunPlan plan(c.n_layers);
    at::Tensor after;
    EXPECT_OK(AddActivationEdit(c, site, positions, dims, op, value, {}, plan, vector));
    plan.AddHook(site, [&](const model::SiteId&, at::Tensor& x) { after = x.clone(); });
    Logits(m, plan);
    return after;
  };
  const int64_t d = c.d_model;
  std::vector<float> direction(d);
  for (int64_t i = 0; i < d; ++i) direction[i] = static_cast<float>((i % 7) - 3) / 4.0f;
  const at::Tensor v = at::tensor(direction);

  // ADD: alpha times the vector at positions 2 and 5 only.
  at::Tensor expected = before.clone();
  for (int64_t p : {2, 5}) expected.select(1, p).add_(v, 3.0);
  EXPECT_LT(MaxDiff(edited({2, 5}, {}, ActivationOp::kAdd, 3.0, direction), expected), 1e-5);

  // PROJECT_OUT: what remains is orthogonal to the direction, everywhere.
  at::Tensor projected = edited({}, {}, ActivationOp::kProjectOut, 0, direction);
  const at::Tensor u = v / v.norm();
  EXPECT_LT(projected.matmul(u).abs().max().item<double>(), 1e-4);
  expected = before - before.matmul(u).unsqueeze(-1) * u;
  EXPECT_LT(MaxDiff(projected, expected), 1e-5);

  // SET_VECTORS: one row per position, in the order given, over two dims; other cells untouched.
  at::Tensor patched = edited({4, 1}, {0, 9}, ActivationOp::kSetVectors, 0, {10, 11, -1, -2});
  expected = before.clone();
  expected.select(1, 4).select(1, 0).fill_(10);
  expected.select(1, 4).select(1, 9).fill_(11);
  expected.select(1, 1).select(1, 0).fill_(-1);
  expected.select(1, 1).select(1, 9).fill_(-2);
  EXPECT_TRUE(at::equal(patched, expected));
  // One row for every position.
  patched = edited({}, {3}, ActivationOp::kSetVectors, 0, {0.5});
  EXPECT_TRUE(at::equal(patched.select(2, 3), at::full_like(patched.select(2, 3), 0.5)));
}

// Positions are of the whole sequence: in cached decoding, where each pass holds a few of them,
// an edit lands where it lands in one pass over the sequence (and MEAN rows by that position).
TEST(ActivationEdit, PositionsMeanTheSameWhenDecodingThroughTheCache) {
  auto model = LoadFixture("llama2");
  const model::Transformer& m = model->transformer();
  const model::ModelConfig& c = m.config();
  const at::Tensor ids = (at::arange(12, at::kLong).view({1, 12}) * 7) % c.vocab_size;
  model::RunPlan plan(c.n_layers);
  const at::Tensor mean = at::randn({12, c.d_model});
  ASSERT_OK(AddActivationEdit(c, {model::SiteKind::kResidPost, 0}, {2, 8}, {1, 4}, ActivationOp::kSet, 5.0, {}, plan));
  ASSERT_OK(AddActivationEdit(c, {model::SiteKind::kMlpIn, 1}, {9}, {}, ActivationOp::kMean, 0, mean, plan));
  ASSERT_OK(AddActivationEdit(c, {model::SiteKind::kEmbed, -1}, {3, 10}, {}, ActivationOp::kSetVectors, 0, {}, plan,
                              std::vector<float>(2 * c.d_model, 0.25f)));
  const at::Tensor whole = *m.Forward(ids, plan);
  model::KvCache cache;
  std::vector<at::Tensor> parts;
  for (int64_t begin = 0; begin < 12; begin += begin == 0 ? 6 : 1) {
    const int64_t length = begin == 0 ? 6 : 1;
    plan.SetPositionOffset(begin);
    auto part = m.ForwardCached(ids.narrow(1, begin, length), plan, cache);
    ASSERT_OK(part);
    parts.push_back(*part);
  }
  EXPECT_LT(MaxDiff(at::cat(parts, 1), whole), 1e-5);
  EXPECT_GT(MaxDiff(whole, *m.Forward(ids, model::RunPlan(c.n_layers))), 1e-3) << "the edits change nothing";
}

TEST(ActivationEdit, VectorsOfTheWrongLengthAreRefusedWithTheWidth) {
  auto model = LoadFixture("llama2");
  const model::ModelConfig& c = model->config();
  model::RunPlan plan(c.n_layers);
  const model::SiteId site{model::SiteKind::kMlpIn, 1};
  absl::Status s = AddActivationEdit(c, site, {}, {}, ActivationOp::kAdd, 1, {}, plan, {1, 2});
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_NE(s.message().find(absl::StrCat("vector has 2 values, needs ", c.d_model)), std::string::npos) << s;
  s = AddActivationEdit(c, site, {}, {1, 2, 3}, ActivationOp::kProjectOut, 0, {}, plan, {0, 0, 0});
  EXPECT_NE(s.message().find("nonzero vector"), std::string::npos) << s;
  s = AddActivationEdit(c, site, {0, 1}, {1, 2}, ActivationOp::kSetVectors, 0, {}, plan, {1, 2, 3});
  EXPECT_NE(s.message().find("SET_VECTORS needs 2 values (one row for every position) or 4 (2 positions x 2)"),
            std::string::npos)
      << s;
  s = AddActivationEdit(c, site, {}, {}, ActivationOp::kSet, 1, {}, plan, {1});
  EXPECT_NE(s.message().find("vector is only for"), std::string::npos) << s;
  EXPECT_TRUE(plan.empty());
}

TEST(Interventions, InvalidArgumentsNameFieldAndValue) {
  auto model = LoadFixture("gpt2");
  const model::ModelConfig& c = model->config();
  model::RunPlan plan(c.n_layers);
  absl::Status head = AddHeadAblation(c, 0, {4}, HeadAblationMode::kZero, 0, {}, plan);
  EXPECT_THAT(head, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_NE(head.message().find("head 4 out of range"), std::string::npos) << head;
  EXPECT_NE(AddHeadAblation(c, 3, {0}, HeadAblationMode::kZero, 0, {}, plan).message().find("layer 3"),
            std::string::npos);
  EXPECT_EQ(AddHeadAblation(c, 0, {0}, HeadAblationMode::kMean, 0, {}, plan).code(),
            absl::StatusCode::kInvalidArgument);
  absl::Status dim = AddActivationEdit(c, {model::SiteKind::kMlpAct, 0}, {}, {128}, ActivationOp::kZero, 0, {}, plan);
  EXPECT_NE(dim.message().find("dim 128 out of range"), std::string::npos) << dim;
  EXPECT_EQ(AddActivationEdit(c, {model::SiteKind::kAttnPattern, 0}, {}, {}, ActivationOp::kZero, 0, {}, plan).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(AddActivationEdit(c, {model::SiteKind::kEmbed, -1}, {-1}, {}, ActivationOp::kZero, 0, {}, plan).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(plan.empty());
}

}  // namespace
}  // namespace lesion::experiments
