#include "model/torch_util.h"

#include <ATen/Context.h>
#include <c10/core/DeviceType.h>
#include <torch/version.h>

// at::accelerator's memory functions came with LibTorch 2.9.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 9)
#include <ATen/DeviceAccelerator.h>
#define LESION_ACCELERATOR_MEMORY_API 1
#endif

#include <iostream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "common/error_text.h"

namespace lesion::model {

absl::Status StatusFromTorchException(absl::string_view what, const std::exception& e) {
  if (dynamic_cast<const c10::OutOfMemoryError*>(&e) != nullptr) {
    return absl::ResourceExhaustedError(absl::StrCat(what, ": out of memory on the device"));
  }
  // The CPU allocator reports running out of memory as a plain c10::Error.
  if (absl::string_view(e.what()).find("DefaultCPUAllocator: can't allocate memory") != absl::string_view::npos) {
    return absl::ResourceExhaustedError(absl::StrCat(what, ": out of memory (CPU)"));
  }
  // Torch messages carry a C++ backtrace after the first line; keep the first line for the user.
  absl::string_view message = e.what();
  if (auto nl = message.find('\n'); nl != absl::string_view::npos) message = message.substr(0, nl);
  return absl::InternalError(absl::StrCat(what, " failed inside LibTorch: ", message));
}

absl::StatusOr<at::ScalarType> ParseDtype(absl::string_view name) {
  const std::string n = absl::AsciiStrToLower(name);
  if (n == "float32" || n == "fp32" || n == "f32" || n == "float") return at::kFloat;
  if (n == "bfloat16" || n == "bf16") return at::kBFloat16;
  if (n == "float16" || n == "fp16" || n == "f16" || n == "half") return at::kHalf;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown dtype ", QuoteForError(name), " (use float32, bfloat16 or float16)"));
}

absl::string_view DtypeName(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat:
      return "float32";
    case at::kBFloat16:
      return "bfloat16";
    case at::kHalf:
      return "float16";
    case at::kDouble:
      return "float64";
    default:
      return "unsupported";
  }
}

absl::StatusOr<at::Device> ParseDevice(absl::string_view name) {
  const std::string n = absl::AsciiStrToLower(name);
  if (n == "cpu") return at::Device(at::kCPU);
  if (n.rfind("cuda", 0) == 0) {
    int index = 0;
    if (n.size() > 4) {
      if (n[4] != ':' || !absl::SimpleAtoi(n.substr(5), &index) || index < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("bad device ", QuoteForError(name), " (use cpu, cuda or cuda:N)"));
      }
    }
    if (!at::hasCUDA()) {
      return absl::FailedPreconditionError(
          absl::StrCat("device ", QuoteForError(name), " asked for, but this build or machine has no CUDA"));
    }
    const int count = at::getNumGPUs();
    if (index >= count) {
      return absl::FailedPreconditionError(
          absl::StrCat("device ", QuoteForError(name), " asked for, but only ", count, " CUDA device(s) are present"));
    }
    return at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(index));
  }
  return absl::InvalidArgumentError(absl::StrCat("bad device ", QuoteForError(name), " (use cpu, cuda or cuda:N)"));
}

void ReleaseCachedMemory(at::Device device) {
#ifdef LESION_ACCELERATOR_MEMORY_API
  if (device.is_cuda()) at::accelerator::emptyCache();
#endif
}

int64_t PeakMemoryBytes(at::Device device) {
#ifdef LESION_ACCELERATOR_MEMORY_API
  if (device.is_cuda()) {
    const auto stats = at::accelerator::getDeviceStats(device.index());
    return stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)].peak;
  }
#endif
  return 0;
}

void AllowTf32() { at::globalContext().setFloat32MatmulPrecision("high"); }

bool Tf32Allowed() { return at::globalContext().float32MatmulPrecision() != at::Float32MatmulPrecision::HIGHEST; }

void SynchronizeDevice(at::Device device) {
#ifdef LESION_ACCELERATOR_MEMORY_API
  if (device.is_cuda()) at::accelerator::synchronizeDevice(device.index());
#endif
}

void ResetPeakMemory(at::Device device) {
#ifdef LESION_ACCELERATOR_MEMORY_API
  if (device.is_cuda()) at::accelerator::resetPeakStats(device.index());
#endif
}

}  // namespace lesion::model
