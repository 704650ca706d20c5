#include "model/next_token_ops.h"

#include "model/cuda/next_token_kernels.h"

namespace lesion::model {

bool HasFusedCudaKernels() {
  // The one place that knows whether the CUDA kernels were built (CMake: LESION_CUDA_KERNELS).
#ifdef LESION_CUDA_KERNELS
  return true;
#else
  return false;
#endif
}

RowLogSumExp LogSumExpRows(const at::Tensor& logits, const at::Tensor& targets) {
  if (logits.is_cuda() && HasFusedCudaKernels()) {
    RowLogSumExp out;
    out.lse = at::empty({logits.size(0)}, logits.options().dtype(at::kFloat));
    out.target_logit = at::empty_like(out.lse);
    cuda::LogSumExpRowsCuda(logits, targets, out.lse, out.target_logit);
    return out;
  }
  const at::Tensor x = logits.to(at::kFloat);  // [rows, vocab]
  return {at::logsumexp(x, {-1}), x.gather(1, targets.unsqueeze(1)).squeeze(1)};
}

}  // namespace lesion::model
