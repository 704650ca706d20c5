// Saving named tensors as a safetensors file (captures, `lesion dump`). Thread-safe (no state).
#ifndef LESION_EXPERIMENTS_TENSOR_IO_H_
#define LESION_EXPERIMENTS_TENSOR_IO_H_

#include <ATen/ATen.h>

#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace lesion::experiments {

// Writes `tensors` (any device; converted to float32, contiguous, on the CPU) to `path`
// atomically, in the given order. InvalidArgument on duplicate names.
absl::Status SaveTensorsAsFloat32(const std::filesystem::path& path,
                                  const std::vector<std::pair<std::string, at::Tensor>>& tensors);

// Summary of a checkpoint directory from its config.json and safetensors headers alone: no weights
// are read, so it is instant even for large models.
struct CheckpointSummary {
  std::string dtype;      // dtype of the embedding in the files ("float32", "bfloat16", ...)
  int64_t n_params = 0;   // elements of all weight tensors in the files
  int64_t n_files = 0;
  uint64_t n_bytes = 0;   // bytes of tensor data
};
absl::StatusOr<CheckpointSummary> SummarizeCheckpoint(const std::filesystem::path& model_dir);

}  // namespace lesion::experiments

#endif  // LESION_EXPERIMENTS_TENSOR_IO_H_
