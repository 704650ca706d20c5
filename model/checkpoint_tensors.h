// CheckpointTensors: a checkpoint's weight tensors by their Hugging Face names, whatever the file
// format. The loader (checkpoint_loader.h) and `lesion inspect` read checkpoints only through it.
//
//   ASSIGN_OR_RETURN(std::unique_ptr<CheckpointTensors> tensors, OpenSafetensorsTensors(dir));
//   std::optional<CheckpointTensors::Info> info = tensors->Find("model.norm.weight");
//   ASSIGN_OR_RETURN(at::Tensor t, tensors->ReadCpu("model.norm.weight"));
//
// Two formats: a Hugging Face safetensors directory (tensors as stored), and a GGUF file
// (gguf_checkpoint.h: llama.cpp's names mapped to Hugging Face's, quantized tensors dequantized to
// float32 exactly as the `gguf` Python package does, llama.cpp's rotary row order undone).
//
// Thread-safety: implementations are immutable after creation; every method is const and
// thread-safe.
#ifndef LESION_MODEL_CHECKPOINT_TENSORS_H_
#define LESION_MODEL_CHECKPOINT_TENSORS_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace lesion::model {

class CheckpointTensors {
 public:
  struct Info {
    std::vector<int64_t> shape;  // row-major, nn.Linear [out, in] for matrices
    std::string storage_type;    // as stored: "F32", "BF16", "Q4_1", ...
    uint64_t stored_bytes = 0;   // bytes in the file
  };

  virtual ~CheckpointTensors() = default;

  // Every tensor name, sorted.
  virtual std::vector<std::string> Names() const = 0;
  virtual std::optional<Info> Find(const std::string& name) const = 0;
  // The tensor on the CPU in a floating dtype: its stored one, or float32 for dequantized ones.
  // InvalidArgument naming the tensor and file for integer or unsupported storage types.
  virtual absl::StatusOr<at::Tensor> ReadCpu(const std::string& name) const = 0;
  // The files read, for messages: "a.safetensors, b.safetensors".
  virtual std::string Files() const = 0;
  virtual size_t FileCount() const = 0;
  // The dtype weights load in unless one is asked for: the embedding's stored dtype for
  // safetensors, float32 for GGUF (dequantized values are float32).
  virtual at::ScalarType DefaultDtype() const = 0;
  // "safetensors" or "gguf".
  virtual std::string Format() const = 0;
  // For quantized checkpoints, how many tensors of each stored type there were, e.g.
  // {"F32": 61, "Q4_1": 210, "Q8_0": 1}; empty when every tensor is stored as a float type.
  virtual std::map<std::string, int64_t> QuantizedTypes() const = 0;
};

// The tensors of a Hugging Face safetensors directory (model.safetensors or a sharded index).
// Errors as SafetensorsCheckpoint::Open.
absl::StatusOr<std::unique_ptr<CheckpointTensors>> OpenSafetensorsTensors(const std::filesystem::path& dir);

// "Q4_1 x210, Q8_0 x1, F32 x61 dequantized to float32", or "" when nothing was quantized: what a
// result records about where its weights came from.
std::string DequantizationNote(const CheckpointTensors& tensors);

}  // namespace lesion::model

#endif  // LESION_MODEL_CHECKPOINT_TENSORS_H_
