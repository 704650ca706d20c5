// Loads a checkpoint's tensors (a Hugging Face safetensors directory or a GGUF file, through
// CheckpointTensors) into TransformerWeights on a device, in the checkpoint's dtype or a requested
// one.
//
// Errors name the file and tensor: InvalidArgument for a checkpoint that does not match its config
// (missing, extra or mis-shaped tensors, non-float weights), FailedPrecondition for an unavailable
// device, ResourceExhausted when the weights do not fit, Cancelled when LoadOptions::cancelled said
// so; reading errors as CheckpointTensors. Thread-safe (no shared state).
#ifndef LESION_MODEL_CHECKPOINT_LOADER_H_
#define LESION_MODEL_CHECKPOINT_LOADER_H_

#include <ATen/ATen.h>

#include <filesystem>
#include <functional>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "model/checkpoint_tensors.h"
#include "model/model_config.h"
#include "model/transformer.h"

namespace lesion::model {

struct LoadOptions {
  at::Device device = at::Device(at::kCPU);
  std::optional<at::ScalarType> dtype;  // default: the checkpoint's floating dtype
  // Asked before each tensor is read (and by Model::Load between its steps): true abandons the load
  // with Cancelled, and what was read so far is freed. Empty: never. May be called from the loading
  // thread only; must return quickly.
  std::function<bool()> cancelled;
};

struct LoadedWeights {
  TransformerWeights weights;
  at::ScalarType checkpoint_dtype;  // dtype of the tensors as read (float32 for dequantized ones)
};

// Tensors some exporters save that are buffers, not weights: GPT-2's causal-mask `attn.bias` /
// `attn.masked_bias` and rotary `inv_freq`. Loading ignores them.
bool IsNonWeightBuffer(const std::string& name);

absl::StatusOr<LoadedWeights> LoadCheckpointWeights(const CheckpointTensors& checkpoint, const ModelConfig& config,
                                                    const LoadOptions& options);
// The same for a Hugging Face safetensors directory.
absl::StatusOr<LoadedWeights> LoadCheckpointWeights(const std::filesystem::path& model_dir, const ModelConfig& config,
                                                    const LoadOptions& options);

// Random weights for a config (normal(0, 0.02) matrices, unit norm gammas, zero biases), made
// directly on `device` in `dtype` from torch's global generator (seed it with at::manual_seed): for
// benchmarks, whose speed does not depend on weight values.
absl::StatusOr<TransformerWeights> MakeRandomWeights(const ModelConfig& config, at::Device device,
                                                     at::ScalarType dtype);

}  // namespace lesion::model

#endif  // LESION_MODEL_CHECKPOINT_LOADER_H_
