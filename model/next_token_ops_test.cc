// LogSumExpRows against a float64 reference: the ATen path everywhere, and the fused CUDA kernel
// (when this build has it and a GPU is present) on every dtype, strided rows, -inf and +inf.
#include "model/next_token_ops.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <limits>

namespace lesion::model {
namespace {

void ExpectMatchesReference(at::Device device, at::ScalarType dtype) {
  SCOPED_TRACE(device.str() + " " + std::string(c10::toString(dtype)));
  at::manual_seed(3);
  const int64_t rows = 37, vocab = 50257, stride = 50304;  // GPT-2's vocabulary in a padded head
  at::Tensor padded = (at::randn({rows, stride}) * 4).to(dtype);
  padded[3][17] = 40;  // one dominant logit
  padded[5].narrow(0, 0, vocab).fill_(-std::numeric_limits<double>::infinity());
  padded[5][11] = 2;                                          // all -inf but one
  at::Tensor logits = padded.to(device).narrow(1, 0, vocab);  // [rows, vocab], row stride 50304
  at::Tensor targets = at::randint(vocab, {rows}, at::kLong);
  targets[5] = 11;
  const RowLogSumExp got = LogSumExpRows(logits, targets.to(device));
  const at::Tensor ref = logits.cpu().to(at::kDouble);
  const at::Tensor ref_lse = at::logsumexp(ref, {1});
  const at::Tensor ref_target = ref.gather(1, targets.unsqueeze(1)).squeeze(1);
  EXPECT_LE((got.lse.cpu().to(at::kDouble) - ref_lse).abs().max().item<double>(), 2e-5);
  EXPECT_TRUE(at::equal(got.target_logit.cpu().to(at::kDouble), ref_target));

  // Edge rows: an all -inf row gives -inf, a +inf logit gives +inf, a NaN gives NaN.
  at::Tensor edge = at::zeros({3, 64}).to(dtype);
  edge[0].fill_(-std::numeric_limits<double>::infinity());
  edge[1][4] = std::numeric_limits<double>::infinity();
  edge[2][9] = std::numeric_limits<double>::quiet_NaN();
  const RowLogSumExp e = LogSumExpRows(edge.to(device), at::zeros({3}, at::kLong).to(device));
  const at::Tensor lse = e.lse.cpu();
  EXPECT_EQ(lse[0].item<float>(), -std::numeric_limits<float>::infinity());
  EXPECT_EQ(lse[1].item<float>(), std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(lse[2].item<float>()));
}

TEST(NextTokenOps, MatchesAFloat64Reference) {
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16, at::kHalf}) ExpectMatchesReference(at::kCPU, dtype);
}

TEST(NextTokenOps, FusedCudaKernelMatchesAFloat64Reference) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  EXPECT_TRUE(HasFusedCudaKernels()) << "a CUDA build without lesion's kernels (no nvcc at build time?)";
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
    ExpectMatchesReference(at::Device(at::kCUDA, 0), dtype);
  }
}

}  // namespace
}  // namespace lesion::model
