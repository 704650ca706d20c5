// The boundary between LibTorch's exceptions and our statuses: running out of memory, on a GPU or
// on the CPU, is ResourceExhausted (a request the server refuses and survives), anything else
// Internal with the first line of torch's message.
#include "model/torch_util.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <gtest/gtest.h>

#include <fstream>
#include <string>

#include "common/testing/status_matchers.h"

namespace lesion::model {
namespace {

using ::lesion::matchers::StatusIs;

TEST(TorchCall, OutOfDeviceMemoryIsResourceExhausted) {
  absl::Status s = TorchCall("forward pass of gpt2", []() -> absl::Status {
    throw c10::OutOfMemoryError({__func__, __FILE__, static_cast<uint32_t>(__LINE__)},
                                "CUDA out of memory. Tried to allocate 110.43 GiB");
  });
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_EQ(s.message(), "forward pass of gpt2: out of memory on the device");
}

// Whether the kernel refuses an allocation far beyond its memory (vm.overcommit_memory 0 or 2);
// with 1 it grants it lazily, and nothing fails until the memory is touched.
bool KernelRefusesHugeAllocations() {
  std::ifstream setting("/proc/sys/vm/overcommit_memory");
  std::string mode;
  return static_cast<bool>(setting >> mode) && mode != "1";
}

TEST(TorchCall, OutOfCpuMemoryIsResourceExhausted) {
  if (!KernelRefusesHugeAllocations()) GTEST_SKIP() << "vm.overcommit_memory=1 grants any allocation";
  // 64 TiB: the allocator refuses at once (no memory is touched).
  absl::StatusOr<at::Tensor> t = TorchCall("allocating", [] { return at::empty({int64_t{1} << 46}, at::kByte); });
  EXPECT_EQ(t.status().code(), absl::StatusCode::kResourceExhausted) << t.status();
}

TEST(TorchCall, OtherErrorsAreInternalWithTheirFirstLine) {
  absl::StatusOr<at::Tensor> t = TorchCall("adding", [] { return at::ones({2, 3}) + at::ones({4, 5}); });
  EXPECT_THAT(t, StatusIs(absl::StatusCode::kInternal));
  EXPECT_EQ(t.status().message().find('\n'), absl::string_view::npos) << t.status();
  EXPECT_NE(t.status().message().find("adding failed inside LibTorch"), absl::string_view::npos) << t.status();
}

}  // namespace
}  // namespace lesion::model
