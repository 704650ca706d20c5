// The fused log-sum-exp of next-token logits (next_token_kernels.h). Memory-bound: each row of
// logits is read once, in its own dtype, 16 bytes per load where the row allows it, and reduced in
// float32 with the online softmax normaliser (running max and sum of exp(x - max)).
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cmath>
#include <cstdint>

#include "model/cuda/next_token_kernels.h"

namespace lesion::model::cuda {
namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;

// A partial normaliser: the largest value seen and the sum of exp(x - m) over what was seen.
struct MaxSum {
  float m;
  float s;
};

__device__ __forceinline__ void Accumulate(MaxSum& a, float v) {
  if (v > a.m) {
    a.s = a.s * expf(a.m - v) + 1.f;  // expf(-inf) = 0 for the first value
    a.m = v;
  } else if (v == a.m) {
    a.s += 1.f;  // also +inf seen twice, where v - m would be NaN
  } else if (v != -INFINITY) {
    a.s += expf(v - a.m);
  }
}

__device__ __forceinline__ MaxSum Combine(MaxSum a, MaxSum b) {
  const float m = fmaxf(a.m, b.m);
  if (m == -INFINITY) return {m, 0.f};
  const float sa = a.m == m ? a.s : a.s * expf(a.m - m);
  const float sb = b.m == m ? b.s : b.s * expf(b.m - m);
  return {m, sa + sb};
}

__device__ __forceinline__ void WarpReduce(MaxSum& a, int& nan) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    const MaxSum other{__shfl_down_sync(0xffffffffu, a.m, offset), __shfl_down_sync(0xffffffffu, a.s, offset)};
    a = Combine(a, other);
    nan |= __shfl_down_sync(0xffffffffu, nan, offset);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    LogSumExpRowsKernel(const T* __restrict__ logits, int64_t row_stride, int64_t vocab, bool vectorized,
                        const int64_t* __restrict__ targets, float* __restrict__ lse,
                        float* __restrict__ target_logit) {
  constexpr int kPerLoad = 16 / sizeof(T);
  const int64_t row = blockIdx.x;
  const T* x = logits + row * row_stride;
  MaxSum acc{-INFINITY, 0.f};
  int nan = 0;
  int64_t tail = 0;
  if (vectorized) {
    const int64_t n_loads = vocab / kPerLoad;
    const uint4* xv = reinterpret_cast<const uint4*>(x);
    for (int64_t i = threadIdx.x; i < n_loads; i += kThreads) {
      const uint4 raw = xv[i];
      const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int k = 0; k < kPerLoad; ++k) {
        const float v = static_cast<float>(e[k]);
        nan |= isnan(v);
        Accumulate(acc, v);
      }
    }
    tail = n_loads * kPerLoad;
  }
  for (int64_t i = tail + threadIdx.x; i < vocab; i += kThreads) {
    const float v = static_cast<float>(x[i]);
    nan |= isnan(v);
    Accumulate(acc, v);
  }

  __shared__ MaxSum warp_acc[kWarps];
  __shared__ int warp_nan[kWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  WarpReduce(acc, nan);
  if (lane == 0) {
    warp_acc[warp] = acc;
    warp_nan[warp] = nan;
  }
  __syncthreads();
  if (warp != 0) return;
  acc = lane < kWarps ? warp_acc[lane] : MaxSum{-INFINITY, 0.f};
  nan = lane < kWarps ? warp_nan[lane] : 0;
  WarpReduce(acc, nan);
  if (lane == 0) {
    float result;
    if (nan) {
      result = NAN;
    } else if (isinf(acc.m)) {
      result = acc.m;  // all -inf, or a +inf logit
    } else {
      result = acc.m + logf(acc.s);
    }
    lse[row] = result;
    target_logit[row] = static_cast<float>(x[targets[row]]);
  }
}

}  // namespace

void LogSumExpRowsCuda(const at::Tensor& logits, const at::Tensor& targets, at::Tensor& lse, at::Tensor& target_logit) {
  TORCH_CHECK(logits.dim() == 2 && logits.stride(1) == 1, "logits must be [rows, vocab] with a contiguous last dim");
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == logits.size(0) && targets.scalar_type() == at::kLong,
              "targets must be [rows] int64");
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  if (rows == 0) return;
  const at::Tensor t = targets.contiguous();
  const c10::cuda::CUDAGuard guard(logits.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(logits.device().index());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "LogSumExpRowsCuda", [&] {
    const auto* data = logits.const_data_ptr<scalar_t>();
    const bool vectorized = reinterpret_cast<uintptr_t>(data) % 16 == 0 &&
                            (logits.stride(0) * static_cast<int64_t>(sizeof(scalar_t))) % 16 == 0;
    LogSumExpRowsKernel<scalar_t><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
        data, logits.stride(0), vocab, vectorized, t.const_data_ptr<int64_t>(), lse.data_ptr<float>(),
        target_logit.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace lesion::model::cuda
