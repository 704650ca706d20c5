// Fuzzes the safetensors reader (model/safetensors/safetensors.h): the input is the file.
// Every tensor of a file that opens has its bytes read in full, so AddressSanitizer checks the
// ranges the header validation let through, and is found again by name.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>

#include "absl/status/statusor.h"
#include "fuzz/fuzz_file.h"
#include "model/safetensors/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using lesion::model::SafetensorsFile;
  using lesion::model::TensorInfo;
  static lesion::fuzz::MemoryFile file;
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> st = SafetensorsFile::Open(file.Write(data, size));
  if (!st.ok()) return 0;
  uint8_t sink = 0;
  for (const TensorInfo& t : (*st)->tensors()) {
    absl::Span<const std::byte> bytes = (*st)->Data(t);
    const uint64_t expected = static_cast<uint64_t>(t.numel()) * lesion::model::DTypeSize(t.dtype);
    if (bytes.size() != expected || (*st)->Find(t.name) != &t) {
      std::fprintf(stderr, "tensor %s: %zu bytes for %llu expected, or not found by name\n", t.name.c_str(),
                   bytes.size(), static_cast<unsigned long long>(expected));
      std::abort();
    }
    sink ^= lesion::fuzz::TouchBytes(bytes);
  }
  for (const auto& [key, value] : (*st)->metadata()) sink ^= static_cast<uint8_t>(key.size() + value.size());
  volatile uint8_t keep = sink;  // so the reads are not optimised away
  (void)keep;
  return 0;
}
