// The boundary between LibTorch (which throws) and our code (which returns absl::Status), plus the
// parsing of user-facing dtype and device names. Thread-safe (no state).
#ifndef LESION_MODEL_TORCH_UTIL_H_
#define LESION_MODEL_TORCH_UTIL_H_

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <string>
#include <type_traits>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace lesion::model {

// Maps a torch exception to a status: out-of-memory -> ResourceExhausted, anything else ->
// Internal. `what` names the operation ("forward pass of gpt2").
absl::Status StatusFromTorchException(absl::string_view what, const std::exception& e);

// The status type TorchCall returns for a callable returning R.
template <typename R>
struct TorchCallResult {
  using type = absl::StatusOr<R>;
};
template <>
struct TorchCallResult<void> {
  using type = absl::Status;
};
template <>
struct TorchCallResult<absl::Status> {
  using type = absl::Status;
};
template <typename T>
struct TorchCallResult<absl::StatusOr<T>> {
  using type = absl::StatusOr<T>;
};

// Runs `fn` (returning void, T, absl::Status or absl::StatusOr<T>) and turns any exception it
// throws into a status. Wrap each entry point that calls torch in one of these.
template <typename Fn>
auto TorchCall(absl::string_view what, Fn&& fn) -> typename TorchCallResult<std::invoke_result_t<Fn>>::type {
  using R = std::invoke_result_t<Fn>;
  try {
    if constexpr (std::is_void_v<R>) {
      fn();
      return absl::OkStatus();
    } else {
      return fn();
    }
  } catch (const std::exception& e) {
    return StatusFromTorchException(what, e);
  }
}

// "float32" | "bfloat16" | "float16" (also "fp32", "bf16", "fp16", "F32", "BF16", "F16").
absl::StatusOr<at::ScalarType> ParseDtype(absl::string_view name);
absl::string_view DtypeName(at::ScalarType dtype);  // "float32", "bfloat16", "float16"

// "cpu", "cuda", "cuda:1". FailedPrecondition when CUDA is asked for and not available, or the
// index is beyond the devices present.
absl::StatusOr<at::Device> ParseDevice(absl::string_view name);

// Device memory, through the accelerator API of LibTorch >= 2.9 (the one place that knows the
// version; older LibTorch: no-ops and 0). For the CPU: nothing to release, 0 bytes.
// Hands the caching allocator's unused blocks back (between experiments). Process-wide: every
// GPU's cache, whichever `device` is named (a no-op for the CPU).
void ReleaseCachedMemory(at::Device device);
// Peak bytes allocated on `device` since the last ResetPeakMemory.
int64_t PeakMemoryBytes(at::Device device);
void ResetPeakMemory(at::Device device);
// Float32 matrix products on TF32 tensor cores from now on, process-wide (call once, at startup);
// and whether they are (recorded in results).
void AllowTf32();
bool Tf32Allowed();

// Waits for the work queued on `device` (benchmarks' timers).
void SynchronizeDevice(at::Device device);

}  // namespace lesion::model

#endif  // LESION_MODEL_TORCH_UTIL_H_
