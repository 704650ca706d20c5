// Saving named tensors as a safetensors file (captures, `lesion dump`). Thread-safe (no state).
#ifndef LESION_MODEL_TENSOR_IO_H_
#define LESION_MODEL_TENSOR_IO_H_

#include <ATen/ATen.h>

#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/checkpoint_tensors.h"

namespace lesion::model {

// Writes `tensors` (any device; converted to float32, contiguous, on the CPU) to `path`
// atomically, in the given order. InvalidArgument on duplicate names.
absl::Status SaveTensorsAsFloat32(const std::filesystem::path& path,
                                  const std::vector<std::pair<std::string, at::Tensor>>& tensors);

// Summary of a checkpoint from its config and tensor headers alone: no weights are read, so it is
// instant even for large models.
struct CheckpointSummary {
  struct Tensor {
    std::string name;          // Hugging Face name (GGUF tensors without one keep theirs)
    std::string storage_type;  // as stored: "F32", "BF16", "Q4_1", ...
    std::vector<int64_t> shape;
  };
  std::string dtype;             // the dtype weights load in by default ("float32", "bfloat16", ...)
  std::string format;            // "safetensors" | "gguf"
  std::string dequantized_from;  // DequantizationNote: "" unless quantized
  int64_t n_params = 0;          // elements of all weight tensors in the files
  int64_t n_files = 0;
  uint64_t n_bytes = 0;         // bytes of tensor data as stored
  std::vector<Tensor> tensors;  // sorted by name
};
CheckpointSummary SummarizeCheckpoint(const CheckpointTensors& tensors);

}  // namespace lesion::model

#endif  // LESION_MODEL_TENSOR_IO_H_
