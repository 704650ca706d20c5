// The one reduction over the vocabulary that perplexity needs: per row of next-token logits, the
// log-sum-exp and the logit of the target, both in float32, so that
//   NLL = lse - logit[target]        and      p(t) = exp(logit[t] - lse).
// On CUDA this is one fused kernel that reads each row of logits once in its own dtype
// (model/cuda/next_token_kernels.cu, built when LibTorch has CUDA); elsewhere, and for CUDA
// builds without it, the same in ATen ops on a float32 copy. The two agree to float32 rounding.
//
// Throws like any ATen call (wrap callers in TorchCall). Thread-compatible, stateless.
#ifndef LESION_MODEL_NEXT_TOKEN_OPS_H_
#define LESION_MODEL_NEXT_TOKEN_OPS_H_

#include <ATen/ATen.h>

namespace lesion::model {

struct RowLogSumExp {
  at::Tensor lse;           // [rows] float32
  at::Tensor target_logit;  // [rows] float32
};

// `logits` [rows, vocab] in any float dtype with a contiguous last dim (rows may be strided, e.g.
// a view of vocab-padded logits); `targets` [rows] int64 in [0, vocab).
RowLogSumExp LogSumExpRows(const at::Tensor& logits, const at::Tensor& targets);

// True when the fused CUDA kernel is compiled into this build.
bool HasFusedCudaKernels();

}  // namespace lesion::model

#endif  // LESION_MODEL_NEXT_TOKEN_OPS_H_
