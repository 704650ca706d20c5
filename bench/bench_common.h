// What lesion's benchmarks share: the random-weight shapes of bench/hf_anchor.py, device
// timing (median of repeated runs after a warm-up, with a device synchronize), peak device memory,
// and fatal error handling (a benchmark has no caller to return a status to).
#ifndef LESION_BENCH_BENCH_COMMON_H_
#define LESION_BENCH_BENCH_COMMON_H_

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/model.h"
#include "nlohmann/json.hpp"

namespace lesion::bench {

[[noreturn]] void Die(const absl::Status& status);

template <typename T>
T OrDie(absl::StatusOr<T> v) {
  if (!v.ok()) Die(v.status());
  return *std::move(v);
}

// The flags every benchmark takes, parsed with the benchmark's own: `--shape gpt2|llama7b` (random
// weights of GPT-2 small or LLaMA-2-7B) or `--model DIR`, `--device`, `--dtype`, `--seq` (0: 1024,
// LLaMA 4096, capped by the model's positions), `--tf32`; then the model loaded (seeded).
struct BenchSetup {
  std::string shape = "gpt2";  // or the model directory
  at::Device device = at::kCPU;
  at::ScalarType dtype = at::kFloat;
  bool tf32 = false;
  int64_t seq = 0;
  std::unique_ptr<model::Model> model;
  std::map<std::string, std::string> flags;  // the benchmark's own flags, by name ("--batch")
};
// Dies on an unknown flag or a missing value; `own_flags` are the benchmark's flags with values.
BenchSetup ParseAndLoad(int argc, char** argv, const std::set<std::string>& own_flags);
// A benchmark flag's integer value, or `fallback` when it was not given.
int64_t IntFlag(const BenchSetup& setup, const std::string& name, int64_t fallback);

// The start of a result line: what was measured and on what (impl, model, dtype, tf32, fused
// kernels, device, seq), as a JSON object the benchmark adds its numbers to.
nlohmann::json ResultLine(const BenchSetup& setup, const std::string& what);

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
