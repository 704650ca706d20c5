// CUDA kernels of experiments/, compiled only when LibTorch has CUDA (experiments/CMakeLists.txt).
// Callers reach them through the device-independent functions of next_token_ops.h, never directly.
#ifndef LESION_EXPERIMENTS_CUDA_NEXT_TOKEN_KERNELS_H_
#define LESION_EXPERIMENTS_CUDA_NEXT_TOKEN_KERNELS_H_

#include <ATen/ATen.h>

namespace lesion::experiments::cuda {

// lse[r] = log(sum_v exp(logits[r, v])), target_logit[r] = logits[r, targets[r]], in float32, one
// block per row on the current stream. `logits` [rows, vocab] float32 / bfloat16 / float16 with a
// contiguous last dim; `targets` [rows] int64; outputs [rows] float32, contiguous.
void LogSumExpRowsCuda(const at::Tensor& logits, const at::Tensor& targets, at::Tensor& lse,
                       at::Tensor& target_logit);

}  // namespace lesion::experiments::cuda

#endif  // LESION_EXPERIMENTS_CUDA_NEXT_TOKEN_KERNELS_H_
