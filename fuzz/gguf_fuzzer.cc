// Fuzzes the GGUF reader (model/gguf/gguf.h) and dequantization (dequantize.h): the input is
// the file. Of a file that opens, every metadata value is printed and read through each accessor,
// and every tensor's bytes are read in full and, for a type lesion dequantizes, dequantized
// (tensors above kMaxElements elements are skipped to keep an input's work bounded).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "fuzz/fuzz_file.h"
#include "model/gguf/dequantize.h"
#include "model/gguf/gguf.h"

namespace {

using lesion::model::GgufValue;

constexpr int64_t kMaxElements = int64_t{1} << 16;

void ReadValue(const GgufValue& v, uint8_t& sink) {
  sink ^= static_cast<uint8_t>(v.ToString().size() + v.ToString(8).size());
  (void)v.AsInt();
  (void)v.AsFloat();
  (void)v.AsBool();
  (void)v.AsString();
  (void)v.AsStringArray();
  (void)v.AsIntArray();
  (void)v.AsFloat32Array();
  (void)v.StringAt(0);
  (void)v.StringAt(v.size());
  for (const GgufValue& e : v.ArrayElements()) ReadValue(e, sink);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using lesion::model::GgufFile;
  using lesion::model::GgufTensorInfo;
  static lesion::fuzz::MemoryFile file;
  absl::StatusOr<std::unique_ptr<GgufFile>> gguf = GgufFile::Open(file.Write(data, size));
  if (!gguf.ok()) return 0;
  uint8_t sink = 0;
  for (const auto& [key, value] : (*gguf)->metadata()) {
    if ((*gguf)->Find(key) != &value) {
      std::fprintf(stderr, "key %s not found by name\n", key.c_str());
      std::abort();
    }
    ReadValue(value, sink);
  }
  std::vector<float> out;
  for (const GgufTensorInfo& t : (*gguf)->tensors()) {
    absl::Span<const std::byte> bytes = (*gguf)->Data(t);
    sink ^= lesion::fuzz::TouchBytes(bytes);
    (void)t.shape();
    if (!lesion::model::CanDequantize(t.type) || t.numel() > kMaxElements) continue;
    out.assign(static_cast<size_t>(t.numel()), 0.0f);
    absl::Status s = lesion::model::DequantizeTensor(**gguf, t, absl::MakeSpan(out));
    if (!s.ok()) {
      std::fprintf(stderr, "tensor %s of a valid file does not dequantize: %s\n", t.name.c_str(), s.ToString().c_str());
      std::abort();
    }
  }
  volatile uint8_t keep = sink;  // so the reads are not optimised away
  (void)keep;
  return 0;
}
