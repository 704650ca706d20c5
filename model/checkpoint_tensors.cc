#include "model/checkpoint_tensors.h"

#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "model/safetensors/safetensors.h"
#include "model/torch_util.h"

namespace lesion::model {
namespace {

std::optional<at::ScalarType> TorchDtype(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return at::kFloat;
    case DType::kF16:
      return at::kHalf;
    case DType::kBF16:
      return at::kBFloat16;
    case DType::kF64:
      return at::kDouble;
    default:
      return std::nullopt;
  }
}

class SafetensorsTensors final : public CheckpointTensors {
 public:
  explicit SafetensorsTensors(std::unique_ptr<SafetensorsCheckpoint> checkpoint) : checkpoint_(std::move(checkpoint)) {}

  std::vector<std::string> Names() const override { return checkpoint_->TensorNames(); }

  std::optional<Info> Find(const std::string& name) const override {
    auto entry = checkpoint_->Find(name);
    if (!entry.has_value()) return std::nullopt;
    const TensorInfo& t = *entry->info;
    return Info{t.shape, std::string(DTypeName(t.dtype)), t.data_end - t.data_begin};
  }

  absl::StatusOr<at::Tensor> ReadCpu(const std::string& name) const override {
    auto entry = checkpoint_->Find(name);
    if (!entry.has_value()) return absl::NotFoundError(absl::StrCat("no tensor \"", name, "\" in ", Files()));
    const TensorInfo& info = *entry->info;
    const std::optional<at::ScalarType> dtype = TorchDtype(info.dtype);
    if (!dtype.has_value()) {
      return absl::InvalidArgumentError(absl::StrCat("tensor \"", info.name, "\" in ", entry->file->path().string(),
                                                     " has dtype ", std::string(DTypeName(info.dtype)),
                                                     "; weights must be F32, F16, BF16 or F64"));
    }
    absl::Span<const std::byte> bytes = entry->file->Data(info);
    return TorchCall(absl::StrCat("reading ", name), [&] {
      // The mapping may place a tensor at any byte offset; copy through an aligned buffer.
      at::Tensor cpu = at::empty(info.shape, at::TensorOptions().dtype(*dtype));
      std::memcpy(cpu.data_ptr(), bytes.data(), bytes.size());
      return cpu;
    });
  }

  std::string Files() const override {
    std::vector<std::string> names;
    for (const auto& f : checkpoint_->files()) names.push_back(f.string());
    return absl::StrJoin(names, ", ");
  }
  size_t FileCount() const override { return checkpoint_->files().size(); }

  at::ScalarType DefaultDtype() const override {
    for (const char* name :
         {"model.embed_tokens.weight", "embed_tokens.weight", "transformer.wte.weight", "wte.weight"}) {
      if (auto e = checkpoint_->Find(name); e.has_value()) {
        if (auto t = TorchDtype(e->info->dtype); t.has_value()) return *t;
      }
    }
    return at::kFloat;
  }
  std::string Format() const override { return "safetensors"; }
  std::map<std::string, int64_t> QuantizedTypes() const override { return {}; }

 private:
  std::unique_ptr<SafetensorsCheckpoint> checkpoint_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<CheckpointTensors>> OpenSafetensorsTensors(const std::filesystem::path& dir) {
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsCheckpoint> checkpoint, SafetensorsCheckpoint::Open(dir));
  return std::make_unique<SafetensorsTensors>(std::move(checkpoint));
}

std::string DequantizationNote(const CheckpointTensors& tensors) {
  const std::map<std::string, int64_t> types = tensors.QuantizedTypes();
  if (types.empty()) return "";
  std::vector<std::string> parts;
  for (const auto& [type, count] : types) parts.push_back(absl::StrCat(type, " x", count));
  return absl::StrCat(tensors.Format(), " ", absl::StrJoin(parts, ", "), " dequantized to float32");
}

}  // namespace lesion::model
