#include "experiments/tensor_io.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "experiments/checkpoint_loader.h"
#include "experiments/safetensors/safetensors.h"
#include "experiments/torch_util.h"

namespace lesion::experiments {

absl::Status SaveTensorsAsFloat32(const std::filesystem::path& path,
                                  const std::vector<std::pair<std::string, at::Tensor>>& tensors) {
  std::vector<at::Tensor> host;  // keeps the converted tensors alive while writing
  absl::Status converted = TorchCall("converting tensors for saving", [&] {
    for (const auto& [name, t] : tensors) {
      host.push_back(t.detach().to(at::kCPU, at::kFloat).contiguous());
    }
  });
  RETURN_IF_ERROR(converted);
  std::vector<TensorToWrite> out;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = host[i];
    out.push_back({tensors[i].first, DType::kF32,
                   std::vector<int64_t>(t.sizes().begin(), t.sizes().end()),
                   absl::Span<const std::byte>(static_cast<const std::byte*>(t.data_ptr()),
                                               t.nbytes())});
  }
  return WriteSafetensors(path, out, {{"format", "pt"}, {"producer", "lesion"}});
}

absl::StatusOr<CheckpointSummary> SummarizeCheckpoint(const std::filesystem::path& model_dir) {
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsCheckpoint> checkpoint,
                   SafetensorsCheckpoint::Open(model_dir));
  CheckpointSummary summary;
  summary.n_files = static_cast<int64_t>(checkpoint->files().size());
  for (const std::string& name : checkpoint->TensorNames()) {
    const auto entry = checkpoint->Find(name);
    const TensorInfo& info = *entry->info;
    summary.n_bytes += info.data_end - info.data_begin;
    // Buffers such as GPT-2's causal mask or rotary inv_freq are not parameters.
    if (IsNonWeightBuffer(name)) continue;
    summary.n_params += info.numel();
    if (summary.dtype.empty() || name.find("embed_tokens") != std::string::npos ||
        name.find("wte") != std::string::npos) {
      switch (info.dtype) {
        case DType::kF32:
          summary.dtype = "float32";
          break;
        case DType::kBF16:
          summary.dtype = "bfloat16";
          break;
        case DType::kF16:
          summary.dtype = "float16";
          break;
        default:
          summary.dtype = std::string(DTypeName(info.dtype));
      }
    }
  }
  return summary;
}

}  // namespace lesion::experiments
