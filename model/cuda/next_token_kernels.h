// CUDA kernels of model/, compiled only when LibTorch has CUDA (model/CMakeLists.txt).
// Callers reach them through the device-independent functions of next_token_ops.h, never directly.
#ifndef LESION_MODEL_CUDA_NEXT_TOKEN_KERNELS_H_
#define LESION_MODEL_CUDA_NEXT_TOKEN_KERNELS_H_

#include <ATen/ATen.h>

namespace lesion::model::cuda {

// lse[r] = log(sum_v exp(logits[r, v])), target_logit[r] = logits[r, targets[r]], in float32, one
// block per row on the current stream. `logits` [rows, vocab] float32 / bfloat16 / float16 with a
// contiguous last dim; `targets` [rows] int64; outputs [rows] float32, contiguous.
void LogSumExpRowsCuda(const at::Tensor& logits, const at::Tensor& targets, at::Tensor& lse, at::Tensor& target_logit);

}  // namespace lesion::model::cuda

#endif  // LESION_MODEL_CUDA_NEXT_TOKEN_KERNELS_H_
