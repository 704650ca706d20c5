// What lesion's benchmarks share: the random-weight shapes of ../shared/bench/hf_anchor.py, device
// timing (median of repeated runs after a warm-up, with a device synchronize), peak device memory,
// and fatal error handling (a benchmark has no caller to return a status to).
#ifndef LESION_BENCH_BENCH_COMMON_H_
#define LESION_BENCH_BENCH_COMMON_H_

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "experiments/model.h"

namespace lesion::bench {

[[noreturn]] void Die(const absl::Status& status);

template <typename T>
T OrDie(absl::StatusOr<T> v) {
  if (!v.ok()) Die(v.status());
  return *std::move(v);
}

// "gpt2" (GPT-2 small) or "llama7b" (LLaMA-2-7B) with random weights on `device` in `dtype`, or
// the checkpoint in `model_dir` when that is given.
std::unique_ptr<experiments::Model> LoadBenchModel(const std::string& shape, const std::string& model_dir,
                                                   at::Device device, at::ScalarType dtype);

// `n` random token ids below `vocab`, from torch's seeded generator.
std::vector<int32_t> RandomIds(int64_t n, int64_t vocab);

void Synchronize(at::Device device);
// Peak device memory since the last ResetPeak (CUDA), or the process's peak RSS (CPU), in GiB.
double PeakMemoryGiB(at::Device device);
void ResetPeak(at::Device device);

// Allows TF32 tensor-core matrix products for float32 (process-wide, once, before any work).
void AllowTf32();

// Median seconds of `reps` runs after one warm-up.
template <typename Fn>
double Timed(at::Device device, int reps, Fn&& fn) {
  fn();
  Synchronize(device);
  std::vector<double> times;
  for (int i = 0; i < reps; ++i) {
    const auto start = std::chrono::steady_clock::now();
    fn();
    Synchronize(device);
    times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

}  // namespace lesion::bench

#endif  // LESION_BENCH_BENCH_COMMON_H_
