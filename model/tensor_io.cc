#include "model/tensor_io.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "model/checkpoint_loader.h"
#include "model/safetensors/safetensors.h"
#include "model/torch_util.h"

namespace lesion::model {

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
    out.push_back({tensors[i].first, DType::kF32, std::vector<int64_t>(t.sizes().begin(), t.sizes().end()),
                   absl::Span<const std::byte>(static_cast<const std::byte*>(t.data_ptr()), t.nbytes())});
  }
  return WriteSafetensors(path, out, {{"format", "pt"}, {"producer", "lesion"}});
}

CheckpointSummary SummarizeCheckpoint(const CheckpointTensors& tensors) {
  CheckpointSummary summary;
  summary.format = tensors.Format();
  summary.dequantized_from = DequantizationNote(tensors);
  summary.n_files = static_cast<int64_t>(tensors.FileCount());
  summary.dtype = std::string(DtypeName(tensors.DefaultDtype()));
  for (const std::string& name : tensors.Names()) {
    const CheckpointTensors::Info info = *tensors.Find(name);
    summary.n_bytes += info.stored_bytes;
    summary.tensors.push_back({name, info.storage_type, info.shape});
    // Buffers such as GPT-2's causal mask or rotary inv_freq are not parameters.
    if (IsNonWeightBuffer(name)) continue;
    int64_t numel = 1;
    for (int64_t d : info.shape) numel *= d;
    summary.n_params += numel;
  }
  return summary;
}

}  // namespace lesion::model
