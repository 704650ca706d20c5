#include "model/gguf/gguf.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <initializer_list>
#include <iostream>
#include <iterator>
#include <limits>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "common/testing/scoped_test_dir.h"
#include "common/testing/status_matchers.h"
#include "model/gguf/dequantize.h"

namespace lesion::model {
namespace {

namespace fs = std::filesystem;
static_assert(std::endian::native == std::endian::little, "fixtures hold little-endian values");

const fs::path kTestdata = fs::path(LESION_SOURCE_DIR) / "model/gguf/testdata";

constexpr uint32_t kF32 = static_cast<uint32_t>(GgmlType::kF32);
constexpr uint32_t kQ4_0 = static_cast<uint32_t>(GgmlType::kQ4_0);
constexpr uint32_t kIQ2_XXS = static_cast<uint32_t>(GgmlType::kIQ2_XXS);

// ---------------------------------------------------------------------------------------------
// Helpers

std::string ReadBytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void WriteBytes(const fs::path& path, absl::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

std::vector<float> ReadFloats(const fs::path& path) {
  const std::string bytes = ReadBytes(path);
  std::vector<float> out(bytes.size() / sizeof(float));
  std::memcpy(out.data(), bytes.data(), out.size() * sizeof(float));
  return out;
}

std::vector<float> DecodeFloats(absl::Span<const std::byte> bytes) {
  std::vector<float> out(bytes.size() / sizeof(float));
  std::memcpy(out.data(), bytes.data(), out.size() * sizeof(float));
  return out;
}

uint32_t Bits(float f) { return std::bit_cast<uint32_t>(f); }

// Checks the code and that the message contains `path` (unless empty) and every one of `needles`.
void ExpectError(const absl::Status& status, absl::StatusCode code, const fs::path& path,
                 std::initializer_list<absl::string_view> needles = {}) {
  EXPECT_EQ(status.code(), code) << status;
  if (!path.empty()) {
    EXPECT_TRUE(absl::StrContains(status.message(), path.string()))
        << "message does not name " << path << ": " << status;
  }
  for (absl::string_view needle : needles) {
    EXPECT_TRUE(absl::StrContains(status.message(), needle)) << "message lacks \"" << needle << "\": " << status;
  }
}

// Little-endian encoders for building GGUF files by hand.
std::string U8(uint8_t v) { return std::string(1, static_cast<char>(v)); }
std::string U16(uint16_t v) { return {static_cast<char>(v & 0xFF), static_cast<char>(v >> 8)}; }
std::string U32(uint32_t v) {
  std::string s(4, '\0');
  for (int i = 0; i < 4; ++i) s[i] = static_cast<char>((v >> (8 * i)) & 0xFF);
  return s;
}
std::string U64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((v >> (8 * i)) & 0xFF);
  return s;
}
std::string Str(absl::string_view s) { return absl::StrCat(U64(s.size()), s); }
std::string F32Bytes(std::initializer_list<float> values) {
  std::string s;
  for (float f : values) s += U32(Bits(f));
  return s;
}
uint32_t VT(GgufValueType t) { return static_cast<uint32_t>(t); }

// Builds a GGUF image: header, key-value pairs, tensor infos, padding to the alignment, data.
class GgufBuilder {
 public:
  GgufBuilder& Version(uint32_t v) {
    version_ = v;
    return *this;
  }
  // A key with a raw value type number and raw value bytes.
  GgufBuilder& Kv(absl::string_view key, uint32_t type, absl::string_view value) {
    kvs_ += absl::StrCat(Str(key), U32(type), value);
    ++n_kv_;
    return *this;
  }
  GgufBuilder& KvString(absl::string_view key, absl::string_view value) {
    return Kv(key, VT(GgufValueType::kString), Str(value));
  }
  GgufBuilder& KvU32(absl::string_view key, uint32_t value) { return Kv(key, VT(GgufValueType::kUint32), U32(value)); }
  GgufBuilder& KvU16(absl::string_view key, uint16_t value) { return Kv(key, VT(GgufValueType::kUint16), U16(value)); }
  GgufBuilder& Alignment(uint32_t a) {
    alignment_ = a;
    return KvU32("general.alignment", a);
  }
  GgufBuilder& Tensor(absl::string_view name, std::vector<uint64_t> dims, uint32_t type, uint64_t offset) {
    infos_ += absl::StrCat(Str(name), U32(static_cast<uint32_t>(dims.size())));
    for (uint64_t d : dims) infos_ += U64(d);
    infos_ += absl::StrCat(U32(type), U64(offset));
    ++n_tensors_;
    return *this;
  }
  GgufBuilder& Data(absl::string_view data) {
    absl::StrAppend(&data_, data);
    return *this;
  }
  GgufBuilder& Counts(uint64_t n_tensors, uint64_t n_kv) {
    n_tensors_ = n_tensors;
    n_kv_ = n_kv;
    return *this;
  }
  std::string Build() const {
    std::string out = absl::StrCat("GGUF", U32(version_), U64(n_tensors_), U64(n_kv_), kvs_, infos_);
    if (!data_.empty()) {
      out.resize((out.size() + alignment_ - 1) / alignment_ * alignment_, '\0');
      out += data_;
    }
    return out;
  }

 private:
  uint32_t version_ = 3;
  uint64_t n_tensors_ = 0;
  uint64_t n_kv_ = 0;
  uint64_t alignment_ = 32;
  std::string kvs_;
  std::string infos_;
  std::string data_;
};

// A valid file: one key, one 4-element F32 tensor "w" = [1, 2, 3, 4].
GgufBuilder ValidBuilder() {
  GgufBuilder b;
  b.KvString("general.architecture", "llama").Tensor("w", {4}, kF32, 0).Data(F32Bytes({1, 2, 3, 4}));
  return b;
}

class GgufTest : public ::testing::Test {
 protected:
  // Writes `bytes` to bad.gguf in the temp dir and opens it.
  absl::Status OpenBytes(absl::string_view bytes) {
    WriteBytes(bad_path(), bytes);
    return GgufFile::Open(bad_path()).status();
  }
  fs::path bad_path() const { return dir_ / "bad.gguf"; }

  ScopedTestDir test_dir_{"gguf_test"};
  const fs::path& dir_ = test_dir_.path();
};

std::unique_ptr<GgufFile> OpenFixture(const std::string& name) {
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(kTestdata / name);
  EXPECT_OK(file);
  return file.ok() ? *std::move(file) : nullptr;
}

// ---------------------------------------------------------------------------------------------
// Types

TEST(GgmlTypeTest, TableMatchesGgufPy) {
  std::istringstream lines(ReadBytes(kTestdata / "quant_sizes.txt"));
  std::string name;
  uint32_t number;
  int64_t block, bytes;
  int rows = 0;
  while (lines >> name >> number >> block >> bytes) {
    ++rows;
    EXPECT_EQ(GgmlTypeName(number), name);
    EXPECT_TRUE(IsKnownGgmlType(number)) << name;
    absl::StatusOr<std::pair<int64_t, int64_t>> size = GgmlBlockSize(number);
    ASSERT_OK(size);
    EXPECT_EQ(size->first, block) << name;
    EXPECT_EQ(size->second, bytes) << name;
  }
  int known = 0;
  for (uint32_t t = 0; t < 256; ++t) known += IsKnownGgmlType(t) ? 1 : 0;
  EXPECT_EQ(rows, 34);
  EXPECT_EQ(known, rows) << "lesion knows a type that gguf-py does not, or vice versa";
}

TEST(GgmlTypeTest, Names) {
  EXPECT_EQ(GgmlTypeName(0), "F32");
  EXPECT_EQ(GgmlTypeName(3), "Q4_1");
  EXPECT_EQ(GgmlTypeName(12), "Q4_K");
  EXPECT_EQ(GgmlTypeName(16), "IQ2_XXS");
  EXPECT_EQ(GgmlTypeName(30), "BF16");
  EXPECT_EQ(GgmlTypeName(77), "unknown type 77");
  EXPECT_EQ(GgmlTypeName(4), "unknown type 4");  // Q4_2, removed from ggml
  EXPECT_EQ(GgmlTypeName(0xFFFFFFFF), "unknown type 4294967295");
  EXPECT_EQ(GgmlTypeName(static_cast<uint32_t>(GgmlType::kQ6_K)), "Q6_K");
}

TEST(GgmlTypeTest, CanDequantizeExactlyTheSupportedTypes) {
  const std::set<uint32_t> supported = {0, 1, 30, 8, 2, 3, 6, 7, 10, 11, 12, 13, 14};
  for (uint32_t t = 0; t < 100; ++t) {
    EXPECT_EQ(CanDequantize(t), supported.contains(t)) << GgmlTypeName(t);
  }
}

TEST(GgmlTypeTest, RowBytes) {
  EXPECT_EQ(*GgmlRowBytes(kF32, 3), 12u);
  EXPECT_EQ(*GgmlRowBytes(kF32, 0), 0u);
  EXPECT_EQ(*GgmlRowBytes(kQ4_0, 64), 36u);
  EXPECT_EQ(*GgmlRowBytes(static_cast<uint32_t>(GgmlType::kQ4_K), 512), 288u);
  EXPECT_EQ(*GgmlRowBytes(static_cast<uint32_t>(GgmlType::kQ6_K), 256), 210u);
  ExpectError(GgmlRowBytes(kQ4_0, 33).status(), absl::StatusCode::kInvalidArgument, {}, {"Q4_0", "33", "32"});
  ExpectError(GgmlRowBytes(77, 32).status(), absl::StatusCode::kInvalidArgument, {}, {"77"});
  ExpectError(GgmlRowBytes(kF32, -4).status(), absl::StatusCode::kInvalidArgument, {}, {"negative"});
  ExpectError(GgmlRowBytes(static_cast<uint32_t>(GgmlType::kF64), std::numeric_limits<int64_t>::max()).status(),
              absl::StatusCode::kInvalidArgument, {}, {"overflow"});
}

TEST(GgufValueTypeTest, Names) {
  EXPECT_EQ(GgufValueTypeName(GgufValueType::kUint8), "uint8");
  EXPECT_EQ(GgufValueTypeName(GgufValueType::kString), "string");
  EXPECT_EQ(GgufValueTypeName(GgufValueType::kFloat64), "float64");
}

// ---------------------------------------------------------------------------------------------
// Dequantization against gguf-py

// Asserts that `got` and `want` are the same bytes, printing the first difference.
void ExpectBitIdentical(const std::string& what, const std::vector<float>& got, const std::vector<float>& want) {
  ASSERT_EQ(got.size(), want.size()) << what;
  if (std::memcmp(got.data(), want.data(), got.size() * sizeof(float)) == 0) return;
  size_t differing = 0;
  size_t first = got.size();
  for (size_t i = 0; i < got.size(); ++i) {
    if (Bits(got[i]) != Bits(want[i])) {
      ++differing;
      first = std::min(first, i);
    }
  }
  ADD_FAILURE() << what << ": " << differing << " of " << got.size()
                << " elements differ from gguf-py; the first is index " << first << ": lesion "
                << absl::StrFormat("%.9g (0x%08x)", got[first], Bits(got[first])) << ", gguf-py "
                << absl::StrFormat("%.9g (0x%08x)", want[first], Bits(want[first]));
}

TEST(DequantizeTest, EveryTypeIsBitIdenticalToGgufPy) {
  std::unique_ptr<GgufFile> file = OpenFixture("types.gguf");
  ASSERT_NE(file, nullptr);
  std::set<uint32_t> types_checked;
  int tensors_checked = 0;
  for (const GgufTensorInfo& info : file->tensors()) {
    if (info.type == kIQ2_XXS || absl::EndsWith(info.name, "_nonfinite")) continue;
    std::vector<float> got(info.numel());
    const absl::Status status = DequantizeTensor(*file, info, absl::MakeSpan(got));
    ASSERT_OK(status);
    ExpectBitIdentical(absl::StrCat(info.name, " (", GgmlTypeName(info.type), ")"), got,
                       ReadFloats(kTestdata / "expected" / absl::StrCat(info.name, ".f32")));
    types_checked.insert(info.type);
    ++tensors_checked;
  }
  EXPECT_EQ(tensors_checked, 21);
  for (uint32_t t = 0; t < 64; ++t) {
    if (CanDequantize(t)) {
      EXPECT_TRUE(types_checked.contains(t)) << GgmlTypeName(t);
    }
  }
}

// Scales that are infinite, NaN (quiet and signalling, with payloads), zero or subnormal. The
// values are bit-identical too wherever they are not NaN; where they are, both are NaN (which NaN
// an operation on two NaNs returns is the hardware's and the compiler's operand order's choice).
TEST(DequantizeTest, NonFiniteScalesMatchGgufPy) {
  std::unique_ptr<GgufFile> file = OpenFixture("types.gguf");
  ASSERT_NE(file, nullptr);
  int tensors_checked = 0;
  for (const GgufTensorInfo& info : file->tensors()) {
    if (!absl::EndsWith(info.name, "_nonfinite")) continue;
    ++tensors_checked;
    std::vector<float> got(info.numel());
    ASSERT_OK(DequantizeTensor(*file, info, absl::MakeSpan(got)));
    const std::vector<float> want = ReadFloats(kTestdata / "expected" / absl::StrCat(info.name, ".f32"));
    ASSERT_EQ(got.size(), want.size());
    int nans = 0;
    int nan_payload_differences = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      if (std::isnan(want[i])) {
        ++nans;
        EXPECT_TRUE(std::isnan(got[i])) << info.name << "[" << i << "]";
        nan_payload_differences += Bits(got[i]) != Bits(want[i]) ? 1 : 0;
      } else {
        ASSERT_EQ(Bits(got[i]), Bits(want[i]))
            << info.name << "[" << i << "]: lesion " << got[i] << ", gguf-py " << want[i];
      }
    }
    EXPECT_GT(nans, 0) << info.name;
    if (nan_payload_differences > 0) {
      std::cout << info.name << ": " << nan_payload_differences << " of " << nans
                << " NaNs have another payload than gguf-py's\n";
    }
  }
  EXPECT_EQ(tensors_checked, 10);
}

uint64_t Fnv1a64(const std::vector<float>& values) {
  uint64_t h = 0xCBF29CE484222325ull;
  const auto* p = reinterpret_cast<const unsigned char*>(values.data());
  for (size_t i = 0; i < values.size() * sizeof(float); ++i) {
    h = (h ^ p[i]) * 0x100000001B3ull;
  }
  return h;
}

TEST(DequantizeTest, AllHalfAndBfloat16PatternsMatchNumpy) {
  std::string src;
  for (uint32_t h = 0; h < 65536; ++h) src += U16(static_cast<uint16_t>(h));
  const auto bytes = absl::Span<const std::byte>(reinterpret_cast<const std::byte*>(src.data()), src.size());
  std::istringstream hashes(ReadBytes(kTestdata / "half_hashes.txt"));
  std::string name, hex;
  int checked = 0;
  while (hashes >> name >> hex) {
    const uint32_t type = name == "F16" ? 1 : 30;
    std::vector<float> out(65536);
    ASSERT_OK(DequantizeToFloat(type, bytes, absl::MakeSpan(out)));
    EXPECT_EQ(absl::StrFormat("%016x", Fnv1a64(out)), hex) << name;
    ++checked;
  }
  EXPECT_EQ(checked, 2);
}

TEST(DequantizeTest, HalfToFloatEdgeCases) {
  EXPECT_EQ(Bits(HalfToFloat(0x0000)), 0x00000000u);
  EXPECT_EQ(Bits(HalfToFloat(0x8000)), 0x80000000u);
  EXPECT_EQ(Bits(HalfToFloat(0x3C00)), 0x3F800000u);  // 1
  EXPECT_EQ(Bits(HalfToFloat(0x0001)), 0x33800000u);  // 2^-24, smallest subnormal
  EXPECT_EQ(Bits(HalfToFloat(0x03FF)), 0x387FC000u);  // largest subnormal
  EXPECT_EQ(Bits(HalfToFloat(0x0400)), 0x38800000u);  // 2^-14, smallest normal
  EXPECT_EQ(Bits(HalfToFloat(0x7BFF)), 0x477FE000u);  // 65504
  EXPECT_EQ(Bits(HalfToFloat(0x7C00)), 0x7F800000u);
  EXPECT_EQ(Bits(HalfToFloat(0xFC00)), 0xFF800000u);
  EXPECT_EQ(Bits(HalfToFloat(0x7E00)), 0x7FC00000u);
  // HalfToFloat returns a float, whose signalling NaN the ABI may quiet; DequantizeToFloat writes
  // bits and keeps it, as numpy does.
  const std::string snan = U16(0x7C01);
  float out = 0;
  ASSERT_TRUE(DequantizeToFloat(1, absl::Span<const std::byte>(reinterpret_cast<const std::byte*>(snan.data()), 2),
                                absl::Span<float>(&out, 1))
                  .ok());
  EXPECT_EQ(Bits(out), 0x7F802000u);
}

absl::Span<const std::byte> AsBytes(absl::string_view s) {
  return absl::Span<const std::byte>(reinterpret_cast<const std::byte*>(s.data()), s.size());
}

TEST(DequantizeTest, UnsupportedTypeIsInvalidArgumentNamingIt) {
  const std::string src(66, '\0');
  std::vector<float> out(256);
  ExpectError(DequantizeToFloat(kIQ2_XXS, AsBytes(src), absl::MakeSpan(out)), absl::StatusCode::kInvalidArgument, {},
              {"IQ2_XXS", "supported: F32", "Q6_K"});
  ExpectError(DequantizeToFloat(77, AsBytes(src), absl::MakeSpan(out)), absl::StatusCode::kInvalidArgument, {},
              {"unknown type 77"});
  ExpectError(DequantizeToFloat(static_cast<uint32_t>(GgmlType::kQ8_K), AsBytes(src), absl::MakeSpan(out)),
              absl::StatusCode::kInvalidArgument, {}, {"Q8_K"});
}

TEST(DequantizeTest, SizeMismatchIsInvalidArgument) {
  const std::string src(18, '\0');
  std::vector<float> out(32);
  EXPECT_OK(DequantizeToFloat(kQ4_0, AsBytes(src), absl::MakeSpan(out)));
  ExpectError(DequantizeToFloat(kQ4_0, AsBytes(src).subspan(1), absl::MakeSpan(out)),
              absl::StatusCode::kInvalidArgument, {}, {"Q4_0", "18", "17"});
  ExpectError(DequantizeToFloat(kQ4_0, AsBytes(src), absl::MakeSpan(out).subspan(1)),
              absl::StatusCode::kInvalidArgument, {}, {"Q4_0", "31"});
  ExpectError(DequantizeToFloat(kF32, AsBytes(src), absl::MakeSpan(out)), absl::StatusCode::kInvalidArgument, {},
              {"F32"});
  EXPECT_OK(DequantizeToFloat(kF32, {}, {}));
}

TEST(DequantizeTest, TensorOfUnsupportedTypeNamesFileTensorAndType) {
  std::unique_ptr<GgufFile> file = OpenFixture("types.gguf");
  ASSERT_NE(file, nullptr);
  const GgufTensorInfo* info = file->FindTensor("iq2_xxs");
  ASSERT_NE(info, nullptr);
  EXPECT_EQ(info->type, kIQ2_XXS);
  EXPECT_EQ(info->n_bytes, 2u * 66u);
  EXPECT_EQ(file->Data(*info).size(), info->n_bytes);  // the bytes are there; only decoding fails
  std::vector<float> out(info->numel());
  ExpectError(
      DequantizeTensor(*file, *info, absl::MakeSpan(out)), absl::StatusCode::kInvalidArgument, file->path(),
      {"tensor \"iq2_xxs\" has type IQ2_XXS, which lesion cannot dequantize", "(supported: F32, F16, BF16, Q4_0"});
}

TEST(DequantizeTest, TensorOutputSizeMismatchIsInvalidArgument) {
  std::unique_ptr<GgufFile> file = OpenFixture("types.gguf");
  ASSERT_NE(file, nullptr);
  const GgufTensorInfo* info = file->FindTensor("q4_k_raw");
  ASSERT_NE(info, nullptr);
  std::vector<float> out(info->numel() - 1);
  ExpectError(DequantizeTensor(*file, *info, absl::MakeSpan(out)), absl::StatusCode::kInvalidArgument, file->path(),
              {"q4_k_raw", "512", "511"});
}

// ---------------------------------------------------------------------------------------------
// Reading the gguf-py fixtures

TEST(GgufFileTest, ReadsTensorInfosAndData) {
  std::unique_ptr<GgufFile> file = OpenFixture("types.gguf");
  ASSERT_NE(file, nullptr);
  EXPECT_EQ(file->version(), 3u);
  EXPECT_EQ(file->alignment(), 32u);
  EXPECT_EQ(file->data_offset() % 32, 0u);
  EXPECT_EQ(file->path(), kTestdata / "types.gguf");
  ASSERT_EQ(file->tensors().size(), 32u);
  EXPECT_EQ(file->tensors()[0].name, "f32");  // file order
  EXPECT_EQ(file->tensors()[1].name, "f32_3d");

  const GgufTensorInfo* t = file->FindTensor("f32_3d");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t, &file->tensors()[1]);
  EXPECT_EQ(t->dims, (std::vector<int64_t>{4, 3, 2}));
  EXPECT_EQ(t->shape(), (std::vector<int64_t>{2, 3, 4}));
  EXPECT_EQ(t->numel(), 24);
  EXPECT_EQ(t->type, kF32);
  EXPECT_EQ(t->n_bytes, 96u);
  EXPECT_EQ(t->offset % 32, 0u);
  const std::vector<float> values = DecodeFloats(file->Data(*t));
  ASSERT_EQ(values.size(), 24u);
  for (int i = 0; i < 24; ++i) EXPECT_EQ(values[i], 0.5f * static_cast<float>(i));

  const GgufTensorInfo* q = file->FindTensor("q6_k_raw");
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->dims, (std::vector<int64_t>{256, 2}));
  EXPECT_EQ(q->n_bytes, 420u);
  EXPECT_EQ(file->Data(*q).size(), 420u);
  EXPECT_EQ(file->FindTensor("absent"), nullptr);
  EXPECT_EQ(file->Find("absent"), nullptr);

  // Data() is the file's bytes at data_offset + offset.
  const std::string raw = ReadBytes(file->path());
  const absl::Span<const std::byte> data = file->Data(*q);
  EXPECT_EQ(std::memcmp(data.data(), raw.data() + file->data_offset() + q->offset, data.size()), 0);
}

TEST(GgufFileTest, MetadataScalars) {
  std::unique_ptr<GgufFile> file = OpenFixture("types.gguf");
  ASSERT_NE(file, nullptr);
  ASSERT_FALSE(file->metadata().empty());
  EXPECT_EQ(file->metadata()[0].first, "general.architecture");  // file order
  EXPECT_EQ(file->metadata()[1].first, "test.uint8");
  EXPECT_EQ(file->Find("general.architecture")->AsString(), "lesion-test");

  auto get = [&](absl::string_view key) -> const GgufValue& {
    const GgufValue* v = file->Find(key);
    EXPECT_NE(v, nullptr) << key;
    static const GgufValue kNone;
    return v != nullptr ? *v : kNone;
  };
  EXPECT_EQ(get("test.uint8").type(), GgufValueType::kUint8);
  EXPECT_EQ(get("test.uint8").AsInt(), 200);
  EXPECT_EQ(get("test.int8").AsInt(), -100);
  EXPECT_EQ(get("test.uint16").AsInt(), 60000);
  EXPECT_EQ(get("test.int16").AsInt(), -30000);
  EXPECT_EQ(get("test.uint32").AsInt(), 4000000000);
  EXPECT_EQ(get("test.int32").AsInt(), -2000000000);
  EXPECT_EQ(get("test.int64").AsInt(), -(int64_t{1} << 62));
  EXPECT_EQ(get("test.uint64_small").AsInt(), 12345);
  EXPECT_EQ(get("test.uint64").AsInt(), std::nullopt);  // above INT64_MAX
  EXPECT_EQ(get("test.uint64").AsFloat(), 18446744073709551615.0);
  EXPECT_EQ(get("test.int32").AsFloat(), -2e9);
  EXPECT_EQ(get("test.float32").type(), GgufValueType::kFloat32);
  EXPECT_EQ(get("test.float32").AsFloat(), static_cast<double>(0.1f));  // exact float32
  EXPECT_EQ(get("test.float64").AsFloat(), 0.1);
  EXPECT_EQ(get("test.float32").AsInt(), std::nullopt);
  EXPECT_EQ(get("test.bool").AsBool(), true);
  EXPECT_EQ(get("test.bool").AsInt(), std::nullopt);
  EXPECT_EQ(get("test.int8").AsBool(), std::nullopt);
  EXPECT_EQ(get("test.string").AsString(), "h\xc3\xa9llo \"w\xc3\xb6rld\"\n");
  EXPECT_EQ(get("test.string").AsInt(), std::nullopt);
  EXPECT_EQ(get("test.uint8").AsString(), std::nullopt);
  EXPECT_FALSE(get("test.uint8").is_array());
  EXPECT_EQ(get("test.uint8").size(), 0u);
  EXPECT_EQ(get("test.uint8").element_type(), GgufValueType::kUint8);
}

TEST(GgufFileTest, MetadataArrays) {
  std::unique_ptr<GgufFile> file = OpenFixture("types.gguf");
  ASSERT_NE(file, nullptr);
  const GgufValue* strings = file->Find("test.array.strings");
  ASSERT_NE(strings, nullptr);
  EXPECT_TRUE(strings->is_array());
  EXPECT_EQ(strings->type(), GgufValueType::kArray);
  EXPECT_EQ(strings->element_type(), GgufValueType::kString);
  EXPECT_EQ(strings->size(), 4u);
  EXPECT_EQ(strings->AsStringArray(), (std::vector<std::string>{"<unk>", "<s>", "h\xc3\xa9llo", ""}));
  EXPECT_EQ(strings->StringAt(2), "h\xc3\xa9llo");
  EXPECT_EQ(strings->StringAt(3), "");
  EXPECT_EQ(strings->StringAt(4), std::nullopt);
  EXPECT_EQ(strings->AsIntArray(), std::nullopt);
  EXPECT_EQ(strings->AsString(), std::nullopt);

  EXPECT_EQ(file->Find("test.array.int32")->AsIntArray(), (std::vector<int64_t>{1, -2, 3}));
  EXPECT_EQ(file->Find("test.array.int32")->element_type(), GgufValueType::kInt32);
  EXPECT_EQ(file->Find("test.array.uint8")->AsIntArray(), (std::vector<int64_t>{1, 255}));
  EXPECT_EQ(file->Find("test.array.int64")->AsIntArray(), (std::vector<int64_t>{-(int64_t{1} << 40), 7}));
  EXPECT_EQ(file->Find("test.array.uint64")->AsIntArray(), std::nullopt);  // 2^63
  EXPECT_EQ(file->Find("test.array.float32")->AsFloat32Array(), (std::vector<float>{0.5f, -1.25f, 3e-8f}));
  EXPECT_EQ(file->Find("test.array.float32")->AsIntArray(), std::nullopt);
  EXPECT_EQ(file->Find("test.array.float64")->AsFloat32Array(), std::nullopt);
  EXPECT_EQ(file->Find("test.array.float64")->element_type(), GgufValueType::kFloat64);
  EXPECT_EQ(file->Find("test.array.bool")->element_type(), GgufValueType::kBool);
  EXPECT_EQ(file->Find("test.array.bool")->AsIntArray(), std::nullopt);
  EXPECT_EQ(file->Find("test.array.bool")->AsBoolArray(), (std::vector<bool>{true, false}));
  EXPECT_EQ(file->Find("test.array.int32")->AsBoolArray(), std::nullopt);
  EXPECT_EQ(file->Find("test.array.long")->size(), 1000u);

  const GgufValue* nested = file->Find("test.array.nested");
  ASSERT_NE(nested, nullptr);
  EXPECT_EQ(nested->element_type(), GgufValueType::kArray);
  ASSERT_EQ(nested->ArrayElements().size(), 2u);
  EXPECT_EQ(nested->ArrayElements()[0].AsIntArray(), (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(nested->ArrayElements()[1].AsIntArray(), (std::vector<int64_t>{3}));
}

TEST(GgufFileTest, ValuesToString) {
  std::unique_ptr<GgufFile> file = OpenFixture("types.gguf");
  ASSERT_NE(file, nullptr);
  auto str = [&](absl::string_view key, size_t max_chars = 80) {
    const GgufValue* v = file->Find(key);
    return v != nullptr ? v->ToString(max_chars) : std::string("<absent>");
  };
  EXPECT_EQ(str("test.uint8"), "200");
  EXPECT_EQ(str("test.int8"), "-100");
  EXPECT_EQ(str("test.uint64"), "18446744073709551615");
  EXPECT_EQ(str("test.float32"), "0.1");
  EXPECT_EQ(str("test.float64"), "0.1");
  EXPECT_EQ(str("test.bool"), "true");
  EXPECT_EQ(str("test.string"), "\"h\xc3\xa9llo \\\"w\xc3\xb6rld\\\"\\n\"");
  EXPECT_EQ(str("test.string", 4), "\"h\xc3\xa9l...\" (16 bytes)");
  EXPECT_EQ(str("test.array.strings"), "[\"<unk>\", \"<s>\", \"h\xc3\xa9llo\", \"\"]");
  EXPECT_EQ(str("test.array.int32"), "[1, -2, 3]");
  EXPECT_EQ(str("test.array.float32"), "[0.5, -1.25, 3e-08]");
  EXPECT_EQ(str("test.array.bool"), "[true, false]");
  EXPECT_EQ(str("test.array.nested"), "[[1, 2], [3]]");
  EXPECT_EQ(str("test.array.long"), "[1000 int32 values]");
  EXPECT_EQ(str("test.array.strings", 10), "[4 strings]");
  EXPECT_EQ(str("test.array.bool", 5), "[2 bools]");
  EXPECT_EQ(str("test.array.nested", 5), "[2 arrays]");
}

TEST(GgufFileTest, ReadsVersion2) {
  std::unique_ptr<GgufFile> file = OpenFixture("v2.gguf");
  ASSERT_NE(file, nullptr);
  EXPECT_EQ(file->version(), 2u);
  EXPECT_EQ(file->alignment(), 64u);
  EXPECT_EQ(file->data_offset() % 64, 0u);
  EXPECT_EQ(file->Find("general.name")->AsString(), "version two");
  ASSERT_EQ(file->tensors().size(), 2u);
  const GgufTensorInfo* a = file->FindTensor("a");
  const GgufTensorInfo* b = file->FindTensor("b");
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(a->shape(), (std::vector<int64_t>{3, 5}));
  EXPECT_EQ(b->offset, 64u);  // a's 60 bytes padded to 64
  std::vector<float> got(15);
  ASSERT_OK(DequantizeTensor(*file, *a, absl::MakeSpan(got)));
  for (int i = 0; i < 15; ++i) EXPECT_EQ(got[i], 0.25f * static_cast<float>(i));
  EXPECT_EQ(DecodeFloats(file->Data(*b)), std::vector<float>(6, -1.5f));
}

// ---------------------------------------------------------------------------------------------
// Checkpoints

TEST(GgufCheckpointTest, OpensSplitSetFromEitherSplit) {
  for (const char* name : {"split-00001-of-00002.gguf", "split-00002-of-00002.gguf"}) {
    SCOPED_TRACE(name);
    absl::StatusOr<std::unique_ptr<GgufCheckpoint>> ckpt = GgufCheckpoint::Open(kTestdata / name);
    ASSERT_OK(ckpt);
    const GgufCheckpoint& c = **ckpt;
    ASSERT_EQ(c.files().size(), 2u);
    EXPECT_EQ(c.first().path(), kTestdata / "split-00001-of-00002.gguf");
    EXPECT_EQ(c.files()[1]->path(), kTestdata / "split-00002-of-00002.gguf");
    EXPECT_EQ(&c.first(), c.files()[0].get());
    ASSERT_NE(c.Find("general.name"), nullptr);
    EXPECT_EQ(c.Find("general.name")->AsString(), "split test");
    EXPECT_EQ(c.Find("split.count")->AsInt(), 2);
    EXPECT_EQ(c.files()[1]->Find("general.name"), nullptr);  // only split 1 has the model's keys

    std::vector<std::string> names;
    for (const GgufCheckpoint::Entry& e : c.Tensors()) names.push_back(e.info->name);
    EXPECT_EQ(names, (std::vector<std::string>{"token_embd.weight", "blk.0.attn_q.weight", "output.weight"}));
    const std::optional<GgufCheckpoint::Entry> out = c.FindTensor("output.weight");
    ASSERT_TRUE(out.has_value());
    EXPECT_EQ(out->file, c.files()[1].get());
    EXPECT_EQ(out->info->type, 1u);  // F16
    std::vector<float> values(8);
    ASSERT_OK(DequantizeTensor(*out->file, *out->info, absl::MakeSpan(values)));
    EXPECT_EQ(values, std::vector<float>(8, -3.0f));
    const std::optional<GgufCheckpoint::Entry> embd = c.FindTensor("token_embd.weight");
    ASSERT_TRUE(embd.has_value());
    EXPECT_EQ(embd->file, c.files()[0].get());
    EXPECT_EQ(DecodeFloats(embd->file->Data(*embd->info)), (std::vector<float>{0, 1, 2, 3, 4, 5, 6, 7}));
    EXPECT_FALSE(c.FindTensor("absent").has_value());
  }
}

TEST(GgufCheckpointTest, SingleFile) {
  absl::StatusOr<std::unique_ptr<GgufCheckpoint>> ckpt = GgufCheckpoint::Open(kTestdata / "types.gguf");
  ASSERT_OK(ckpt);
  EXPECT_EQ((*ckpt)->files().size(), 1u);
  EXPECT_EQ((*ckpt)->Tensors().size(), 32u);
  EXPECT_TRUE((*ckpt)->FindTensor("q8_0").has_value());
  EXPECT_EQ((*ckpt)->Find("test.uint8")->AsInt(), 200);
}

// A split of a set named m-0000i-of-0000n.gguf, with one F32 tensor per name given.
std::string SplitBytes(uint16_t no, uint16_t count, int32_t total_tensors, const std::vector<std::string>& tensors) {
  GgufBuilder b;
  b.KvU16("split.no", no).KvU16("split.count", count);
  b.Kv("split.tensors.count", VT(GgufValueType::kInt32), U32(static_cast<uint32_t>(total_tensors)));
  std::string data;
  for (size_t i = 0; i < tensors.size(); ++i) {
    b.Tensor(tensors[i], {8}, kF32, 32 * i);
    data += F32Bytes({1, 2, 3, 4, 5, 6, 7, 8});
  }
  b.Data(data);
  return b.Build();
}

TEST_F(GgufTest, CheckpointMissingSplitIsNotFound) {
  WriteBytes(dir_ / "m-00001-of-00003.gguf", SplitBytes(0, 3, 3, {"a"}));
  WriteBytes(dir_ / "m-00002-of-00003.gguf", SplitBytes(1, 3, 3, {"b"}));
  const fs::path missing = dir_ / "m-00003-of-00003.gguf";
  ExpectError(GgufCheckpoint::Open(dir_ / "m-00002-of-00003.gguf").status(), absl::StatusCode::kNotFound, missing,
              {"split 3 of 3"});
}

TEST_F(GgufTest, CheckpointOfHandWrittenSplits) {
  WriteBytes(dir_ / "m-00001-of-00002.gguf", SplitBytes(0, 2, 3, {"a", "b"}));
  WriteBytes(dir_ / "m-00002-of-00002.gguf", SplitBytes(1, 2, 3, {"c"}));
  absl::StatusOr<std::unique_ptr<GgufCheckpoint>> ckpt = GgufCheckpoint::Open(dir_ / "m-00001-of-00002.gguf");
  ASSERT_OK(ckpt);
  EXPECT_EQ((*ckpt)->Tensors().size(), 3u);
  EXPECT_EQ((*ckpt)->FindTensor("c")->file, (*ckpt)->files()[1].get());
}

TEST_F(GgufTest, CheckpointDuplicateTensorAcrossSplitsIsInvalidArgument) {
  WriteBytes(dir_ / "m-00001-of-00002.gguf", SplitBytes(0, 2, 2, {"a"}));
  WriteBytes(dir_ / "m-00002-of-00002.gguf", SplitBytes(1, 2, 2, {"a"}));
  ExpectError(GgufCheckpoint::Open(dir_ / "m-00001-of-00002.gguf").status(), absl::StatusCode::kInvalidArgument,
              dir_ / "m-00002-of-00002.gguf", {"\"a\"", "both"});
}

TEST_F(GgufTest, CheckpointSplitMetadataDisagreeingWithNameIsInvalidArgument) {
  WriteBytes(dir_ / "m-00001-of-00002.gguf", SplitBytes(0, 2, 2, {"a"}));
  WriteBytes(dir_ / "m-00002-of-00002.gguf", SplitBytes(1, 3, 2, {"b"}));  // says 3 splits
  ExpectError(GgufCheckpoint::Open(dir_ / "m-00001-of-00002.gguf").status(), absl::StatusCode::kInvalidArgument,
              dir_ / "m-00002-of-00002.gguf", {"split.count is 3"});
  // A split set's file renamed so that its name no longer says where the others are.
  WriteBytes(dir_ / "model.gguf", SplitBytes(0, 2, 2, {"a"}));
  ExpectError(GgufCheckpoint::Open(dir_ / "model.gguf").status(), absl::StatusCode::kInvalidArgument,
              dir_ / "model.gguf", {"-00001-of-00002.gguf"});
  WriteBytes(dir_ / "x-00002-of-00002.gguf", SplitBytes(0, 2, 2, {"a"}));  // split.no 0
  ExpectError(GgufCheckpoint::Open(dir_ / "x-00002-of-00002.gguf").status(), absl::StatusCode::kInvalidArgument,
              dir_ / "x-00002-of-00002.gguf", {"split.no 0"});
}

TEST_F(GgufTest, CheckpointBadSplitKeysAreInvalidArgument) {
  WriteBytes(dir_ / "m-00001-of-00002.gguf", SplitBytes(0, 2, 5, {"a"}));
  WriteBytes(dir_ / "m-00002-of-00002.gguf", SplitBytes(1, 2, 5, {"b"}));
  ExpectError(GgufCheckpoint::Open(dir_ / "m-00002-of-00002.gguf").status(), absl::StatusCode::kInvalidArgument,
              dir_ / "m-00001-of-00002.gguf", {"split.tensors.count is 5"});

  WriteBytes(dir_ / "n.gguf", SplitBytes(2, 2, 1, {"a"}));  // split.no out of range
  ExpectError(GgufCheckpoint::Open(dir_ / "n.gguf").status(), absl::StatusCode::kInvalidArgument, dir_ / "n.gguf",
              {"split.no is 2"});

  WriteBytes(dir_ / "s.gguf", GgufBuilder().KvString("split.count", "two").Build());
  ExpectError(GgufCheckpoint::Open(dir_ / "s.gguf").status(), absl::StatusCode::kInvalidArgument, dir_ / "s.gguf",
              {"split.count", "not an integer"});
}

TEST_F(GgufTest, CheckpointSplitCountOneIsSingleFile) {
  WriteBytes(dir_ / "whatever.gguf", SplitBytes(0, 1, 1, {"a"}));
  absl::StatusOr<std::unique_ptr<GgufCheckpoint>> ckpt = GgufCheckpoint::Open(dir_ / "whatever.gguf");
  ASSERT_OK(ckpt);
  EXPECT_EQ((*ckpt)->files().size(), 1u);
}

TEST_F(GgufTest, CheckpointMissingFileIsNotFound) {
  ExpectError(GgufCheckpoint::Open(dir_ / "nope.gguf").status(), absl::StatusCode::kNotFound, dir_ / "nope.gguf");
}

// ---------------------------------------------------------------------------------------------
// Hand-built files: valid corner cases

TEST_F(GgufTest, MinimalValidFile) {
  WriteBytes(bad_path(), ValidBuilder().Build());
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(bad_path());
  ASSERT_OK(file);
  EXPECT_EQ((*file)->Find("general.architecture")->AsString(), "llama");
  const GgufTensorInfo* w = (*file)->FindTensor("w");
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(DecodeFloats((*file)->Data(*w)), (std::vector<float>{1, 2, 3, 4}));
}

TEST_F(GgufTest, NoTensorsAndNoPaddingIsValid) {
  WriteBytes(bad_path(), GgufBuilder().KvString("k", "v").Build());
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(bad_path());
  ASSERT_OK(file);
  EXPECT_TRUE((*file)->tensors().empty());
  WriteBytes(bad_path(), GgufBuilder().Build());  // not even a key
  EXPECT_OK(GgufFile::Open(bad_path()));
}

TEST_F(GgufTest, EmptyTensorsAndScalarsAreValid) {
  WriteBytes(bad_path(),
             GgufBuilder().Tensor("empty", {0, 3}, kQ4_0, 0).Tensor("scalar", {}, kF32, 0).Data(F32Bytes({7})).Build());
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(bad_path());
  ASSERT_OK(file);
  const GgufTensorInfo* empty = (*file)->FindTensor("empty");
  EXPECT_EQ(empty->numel(), 0);
  EXPECT_EQ(empty->n_bytes, 0u);
  EXPECT_TRUE((*file)->Data(*empty).empty());
  EXPECT_OK(DequantizeTensor(**file, *empty, {}));
  const GgufTensorInfo* scalar = (*file)->FindTensor("scalar");
  EXPECT_EQ(scalar->numel(), 1);
  EXPECT_TRUE(scalar->shape().empty());
  EXPECT_EQ(DecodeFloats((*file)->Data(*scalar)), std::vector<float>{7});
}

TEST_F(GgufTest, UnknownTensorTypeIsListedButNotReadable) {
  for (uint32_t type : {77u, 4u, 31u}) {
    SCOPED_TRACE(type);
    WriteBytes(bad_path(), GgufBuilder().Tensor("odd", {16, 2}, type, 0).Data("xyz").Build());
    absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(bad_path());
    ASSERT_OK(file);
    const GgufTensorInfo* t = (*file)->FindTensor("odd");
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(t->type, type);
    EXPECT_EQ(t->n_bytes, 0u);
    EXPECT_TRUE((*file)->Data(*t).empty());
    std::vector<float> out(32);
    ExpectError(DequantizeTensor(**file, *t, absl::MakeSpan(out)), absl::StatusCode::kInvalidArgument, bad_path(),
                {"\"odd\"", absl::StrCat("unknown type ", type)});
  }
}

TEST_F(GgufTest, AlignmentKeyIsHonoured) {
  WriteBytes(
      bad_path(),
      GgufBuilder().Alignment(1).Tensor("a", {1}, kF32, 0).Tensor("b", {1}, kF32, 4).Data(F32Bytes({1, 2})).Build());
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(bad_path());
  ASSERT_OK(file);
  EXPECT_EQ((*file)->alignment(), 1u);
  EXPECT_EQ(DecodeFloats((*file)->Data(*(*file)->FindTensor("b"))), std::vector<float>{2});
}

TEST_F(GgufTest, NestedArraysUpToFourLevels) {
  // [[[[7]]]]: array of array of array of array of one uint8.
  std::string value = absl::StrCat(U32(VT(GgufValueType::kUint8)), U64(1), U8(7));
  for (int level = 0; level < 3; ++level) {
    value = absl::StrCat(U32(VT(GgufValueType::kArray)), U64(1), value);
  }
  WriteBytes(bad_path(), GgufBuilder().Kv("deep", VT(GgufValueType::kArray), value).Build());
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(bad_path());
  ASSERT_OK(file);
  EXPECT_EQ((*file)->Find("deep")->ToString(), "[[[[7]]]]");

  value = absl::StrCat(U32(VT(GgufValueType::kArray)), U64(1), value);  // a fifth level
  ExpectError(OpenBytes(GgufBuilder().Kv("deep", VT(GgufValueType::kArray), value).Build()),
              absl::StatusCode::kInvalidArgument, bad_path(), {"nested", "\"deep\""});
}

TEST_F(GgufTest, EmptyArraysStringsAndOddBools) {
  WriteBytes(bad_path(),
             GgufBuilder()
                 .Kv("floats", VT(GgufValueType::kArray), absl::StrCat(U32(VT(GgufValueType::kFloat32)), U64(0)))
                 .Kv("strings", VT(GgufValueType::kArray), absl::StrCat(U32(VT(GgufValueType::kString)), U64(0)))
                 .Kv("empty", VT(GgufValueType::kString), Str(""))
                 .Kv("bool2", VT(GgufValueType::kBool), U8(2))
                 .Build());
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(bad_path());
  ASSERT_OK(file);
  EXPECT_EQ((*file)->Find("floats")->AsFloat32Array(), std::vector<float>{});
  EXPECT_EQ((*file)->Find("floats")->ToString(), "[]");
  EXPECT_EQ((*file)->Find("strings")->AsStringArray(), std::vector<std::string>{});
  EXPECT_EQ((*file)->Find("empty")->AsString(), "");
  EXPECT_EQ((*file)->Find("empty")->ToString(), "\"\"");
  EXPECT_EQ((*file)->Find("bool2")->AsBool(), true);  // nonzero is true, as in C
}

// ---------------------------------------------------------------------------------------------
// Hand-built files: errors

TEST_F(GgufTest, MissingFileIsNotFound) {
  ExpectError(GgufFile::Open(dir_ / "absent.gguf").status(), absl::StatusCode::kNotFound, dir_ / "absent.gguf");
}

TEST_F(GgufTest, DirectoryAndDeviceAreInvalidArgument) {
  ExpectError(GgufFile::Open(dir_).status(), absl::StatusCode::kInvalidArgument, dir_, {"directory"});
  ExpectError(GgufFile::Open("/dev/null").status(), absl::StatusCode::kInvalidArgument, "/dev/null",
              {"character device"});
}

TEST_F(GgufTest, FifoIsInvalidArgumentAndDoesNotHang) {
  const fs::path fifo = dir_ / "pipe.gguf";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  auto result = std::async(std::launch::async, [&] { return GgufFile::Open(fifo).status(); });
  if (result.wait_for(std::chrono::seconds(20)) != std::future_status::ready) {
    // Unblock the reader (opening a FIFO read-write never blocks on Linux) so the test can end.
    const int fd = ::open(fifo.c_str(), O_RDWR);
    ADD_FAILURE() << "GgufFile::Open blocked on a FIFO";
    result.wait();
    ::close(fd);
    return;
  }
  ExpectError(result.get(), absl::StatusCode::kInvalidArgument, fifo, {"FIFO"});
  ExpectError(GgufCheckpoint::Open(fifo).status(), absl::StatusCode::kInvalidArgument, fifo);
}

TEST_F(GgufTest, EmptyFileIsDataLoss) {
  ExpectError(OpenBytes(""), absl::StatusCode::kDataLoss, bad_path());
  ExpectError(OpenBytes("GG"), absl::StatusCode::kDataLoss, bad_path());
}

TEST_F(GgufTest, BadMagicIsInvalidArgument) {
  std::string bytes = ValidBuilder().Build();
  bytes[3] = 'L';
  ExpectError(OpenBytes(bytes), absl::StatusCode::kInvalidArgument, bad_path(), {"not a GGUF file", "4747554c"});
  ExpectError(OpenBytes("x"), absl::StatusCode::kInvalidArgument, bad_path(), {"not a GGUF"});
  ExpectError(OpenBytes(absl::StrCat(U64(2), "{}")), absl::StatusCode::kInvalidArgument, bad_path(),
              {"not a GGUF"});  // a safetensors file
}

TEST_F(GgufTest, UnsupportedVersionsAreInvalidArgument) {
  ExpectError(OpenBytes(ValidBuilder().Version(1).Build()), absl::StatusCode::kInvalidArgument, bad_path(),
              {"GGUF version 1 is not supported"});
  ExpectError(OpenBytes(ValidBuilder().Version(4).Build()), absl::StatusCode::kInvalidArgument, bad_path(),
              {"GGUF version 4 is not supported"});
  ExpectError(OpenBytes(ValidBuilder().Version(0).Build()), absl::StatusCode::kInvalidArgument, bad_path(),
              {"version 0"});
  ExpectError(OpenBytes(ValidBuilder().Version(0x03000000).Build()), absl::StatusCode::kInvalidArgument, bad_path(),
              {"big-endian"});
}

// Truncating a valid file anywhere before the end of its last tensor's bytes is DataLoss; only
// the trailing padding may go.
void ExpectEveryTruncationIsDataLoss(const fs::path& source, const fs::path& scratch) {
  const std::string bytes = ReadBytes(source);
  absl::StatusOr<std::unique_ptr<GgufFile>> full = GgufFile::Open(source);
  ASSERT_OK(full);
  uint64_t end = 0;
  for (const GgufTensorInfo& t : (*full)->tensors()) {
    end = std::max(end, (*full)->data_offset() + t.offset + t.n_bytes);
  }
  ASSERT_GT(end, 0u);
  WriteBytes(scratch, bytes);
  int checked = 0;
  for (uint64_t size = bytes.size(); size-- > 0;) {
    ASSERT_EQ(::truncate(scratch.c_str(), static_cast<off_t>(size)), 0);
    const absl::Status status = GgufFile::Open(scratch).status();
    if (size >= end) {
      EXPECT_OK(status) << "truncated to " << size << " bytes: " << status;
    } else {
      ASSERT_EQ(status.code(), absl::StatusCode::kDataLoss)
          << source << " truncated to " << size << " bytes: " << status;
      ASSERT_TRUE(absl::StrContains(status.message(), scratch.string())) << status;
      ++checked;
    }
  }
  EXPECT_EQ(checked, static_cast<int>(end));
}

TEST_F(GgufTest, TruncationAtEveryOffsetIsDataLoss) {
  for (const char* name : {"types.gguf", "v2.gguf", "split-00001-of-00002.gguf"}) {
    SCOPED_TRACE(name);
    ExpectEveryTruncationIsDataLoss(kTestdata / name, dir_ / "truncated.gguf");
  }
}

TEST_F(GgufTest, HugeCountsAndLengthsAreDataLossWithoutAllocating) {
  const uint64_t kHuge = uint64_t{1} << 62;
  ExpectError(OpenBytes(GgufBuilder().Counts(0, kHuge).Build()), absl::StatusCode::kDataLoss, bad_path(),
              {"key-value pairs"});
  ExpectError(OpenBytes(GgufBuilder().Counts(kHuge, 0).Build()), absl::StatusCode::kDataLoss, bad_path(), {"tensors"});
  ExpectError(OpenBytes(GgufBuilder().Counts(~uint64_t{0}, ~uint64_t{0}).Build()), absl::StatusCode::kDataLoss,
              bad_path());
  // A key whose length is huge.
  ExpectError(OpenBytes(absl::StrCat("GGUF", U32(3), U64(0), U64(1), U64(kHuge), "k")), absl::StatusCode::kDataLoss,
              bad_path(), {"key"});
  // Arrays of every element type with a huge length.
  for (uint32_t element = 0; element < 13; ++element) {
    SCOPED_TRACE(element);
    const std::string value = absl::StrCat(U32(element), U64(kHuge), std::string(64, '\0'));
    ExpectError(OpenBytes(GgufBuilder().Kv("arr", VT(GgufValueType::kArray), value).Build()),
                absl::StatusCode::kDataLoss, bad_path(), {"\"arr\""});
  }
  // A string element of an array with a huge length.
  ExpectError(OpenBytes(GgufBuilder()
                            .Kv("arr", VT(GgufValueType::kArray),
                                absl::StrCat(U32(VT(GgufValueType::kString)), U64(2), Str("a"), U64(kHuge)))
                            .Build()),
              absl::StatusCode::kDataLoss, bad_path(), {"\"arr\"", "element 1"});
}

TEST_F(GgufTest, CountsAboveTheCapsAreInvalidArgument) {
  // A sparse file large enough that the counts pass the bytes-left check.
  const std::string header = GgufBuilder().Counts(0, (uint64_t{1} << 20) + 1).Build();
  WriteBytes(bad_path(), header);
  ASSERT_EQ(::truncate(bad_path().c_str(), 20 << 20), 0);
  ExpectError(GgufFile::Open(bad_path()).status(), absl::StatusCode::kInvalidArgument, bad_path(),
              {"1048577 key-value pairs"});
  WriteBytes(bad_path(), GgufBuilder().Counts((uint64_t{1} << 20) + 1, 0).Build());
  ASSERT_EQ(::truncate(bad_path().c_str(), 30 << 20), 0);
  ExpectError(GgufFile::Open(bad_path()).status(), absl::StatusCode::kInvalidArgument, bad_path(), {"1048577 tensors"});
}

TEST_F(GgufTest, UndefinedValueTypesAreInvalidArgument) {
  ExpectError(OpenBytes(GgufBuilder().Kv("k", 13, U32(0)).Build()), absl::StatusCode::kInvalidArgument, bad_path(),
              {"\"k\"", "13"});
  ExpectError(OpenBytes(GgufBuilder().Kv("arr", VT(GgufValueType::kArray), absl::StrCat(U32(99), U64(1))).Build()),
              absl::StatusCode::kInvalidArgument, bad_path(), {"\"arr\"", "99"});
}

TEST_F(GgufTest, DuplicateNamesAreInvalidArgument) {
  ExpectError(OpenBytes(GgufBuilder().KvString("k", "a").KvString("k", "b").Build()),
              absl::StatusCode::kInvalidArgument, bad_path(), {"duplicate key \"k\""});
  ExpectError(
      OpenBytes(GgufBuilder().Tensor("w", {1}, kF32, 0).Tensor("w", {1}, kF32, 32).Data(std::string(36, '\0')).Build()),
      absl::StatusCode::kInvalidArgument, bad_path(), {"duplicate tensor \"w\""});
}

TEST_F(GgufTest, BadAlignmentIsInvalidArgument) {
  for (uint32_t a : {0u, 3u, 48u, 0x80000001u}) {
    SCOPED_TRACE(a);
    ExpectError(OpenBytes(GgufBuilder().KvU32("general.alignment", a).Build()), absl::StatusCode::kInvalidArgument,
                bad_path(), {"general.alignment"});
  }
  ExpectError(
      OpenBytes(GgufBuilder().Kv("general.alignment", VT(GgufValueType::kUint64), U64(uint64_t{1} << 40)).Build()),
      absl::StatusCode::kInvalidArgument, bad_path(), {"general.alignment"});
  ExpectError(OpenBytes(GgufBuilder().KvString("general.alignment", "32").Build()), absl::StatusCode::kInvalidArgument,
              bad_path(), {"general.alignment", "string"});
}

TEST_F(GgufTest, BadTensorShapesAreInvalidArgument) {
  ExpectError(OpenBytes(GgufBuilder().Tensor("t", {1, 1, 1, 1, 1}, kF32, 0).Data("abcd").Build()),
              absl::StatusCode::kInvalidArgument, bad_path(), {"\"t\"", "5 dimensions"});
  ExpectError(OpenBytes(GgufBuilder().Tensor("t", {uint64_t{1} << 63}, kF32, 0).Build()),
              absl::StatusCode::kInvalidArgument, bad_path(), {"\"t\"", "negative"});
  ExpectError(OpenBytes(GgufBuilder().Tensor("t", {uint64_t{1} << 40, uint64_t{1} << 40}, kF32, 0).Build()),
              absl::StatusCode::kInvalidArgument, bad_path(), {"\"t\"", "overflow"});
  // 2^62 F32 elements: the element count fits, the byte count does not.
  ExpectError(OpenBytes(GgufBuilder().Tensor("t", {uint64_t{1} << 62}, kF32, 0).Build()),
              absl::StatusCode::kInvalidArgument, bad_path(), {"\"t\"", "overflow"});
  ExpectError(OpenBytes(GgufBuilder().Tensor("t", {33, 2}, kQ4_0, 0).Data("x").Build()),
              absl::StatusCode::kInvalidArgument, bad_path(), {"\"t\"", "Q4_0", "33", "32"});
  // The row length, not the element count, must be a multiple of the block size.
  ExpectError(OpenBytes(GgufBuilder().Tensor("t", {16, 2}, kQ4_0, 0).Data("x").Build()),
              absl::StatusCode::kInvalidArgument, bad_path(), {"\"t\"", "16"});
}

// Regression (found by fuzz/gguf_fuzzer): a 0 dim makes any shape empty, so Open accepts
// [2^62, 2^62, 0], but numel() multiplied the dims in order and overflowed int64 (undefined
// behaviour, which the UBSan build catches) before it reached the 0.
TEST_F(GgufTest, ZeroDimMakesHugeShapeEmpty) {
  WriteBytes(bad_path(), GgufBuilder().Tensor("t", {uint64_t{1} << 62, uint64_t{1} << 62, 0}, kF32, 0).Build());
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(bad_path());
  ASSERT_OK(file);
  ASSERT_EQ((*file)->tensors().size(), 1u);
  const GgufTensorInfo& t = (*file)->tensors()[0];
  EXPECT_EQ(t.numel(), 0);
  EXPECT_EQ(t.n_bytes, 0u);
  EXPECT_TRUE((*file)->Data(t).empty());
  std::vector<float> out;
  EXPECT_OK(DequantizeTensor(**file, t, absl::MakeSpan(out)));
}

TEST_F(GgufTest, BadTensorOffsetsAreRejected) {
  ExpectError(OpenBytes(GgufBuilder().Tensor("t", {4}, kF32, 4).Data(std::string(64, 0)).Build()),
              absl::StatusCode::kInvalidArgument, bad_path(), {"\"t\"", "offset 4", "alignment"});
  ExpectError(OpenBytes(GgufBuilder().Tensor("t", {4}, kF32, 32).Data(std::string(40, 0)).Build()),
              absl::StatusCode::kDataLoss, bad_path(), {"\"t\"", "past the end"});
  ExpectError(OpenBytes(GgufBuilder().Tensor("t", {4}, kF32, ~uint64_t{0} - 31).Data(std::string(64, 0)).Build()),
              absl::StatusCode::kDataLoss, bad_path(), {"\"t\""});
  ExpectError(OpenBytes(GgufBuilder().Tensor("t", {16}, kF32, 0).Data(std::string(63, 0)).Build()),
              absl::StatusCode::kDataLoss, bad_path(), {"\"t\"", "63 bytes"});
  // An unknown type's size is unknown, but its offset must still be inside the file.
  ExpectError(OpenBytes(GgufBuilder().Tensor("t", {4}, 77, 64).Data(std::string(32, 0)).Build()),
              absl::StatusCode::kDataLoss, bad_path(), {"\"t\"", "unknown type 77"});
}

TEST_F(GgufTest, OverlappingTensorsAreInvalidArgument) {
  ExpectError(
      OpenBytes(GgufBuilder().Tensor("a", {16}, kF32, 0).Tensor("b", {4}, kF32, 32).Data(std::string(64, 0)).Build()),
      absl::StatusCode::kInvalidArgument, bad_path(), {"\"a\"", "\"b\"", "overlap"});
  // Two names for the same bytes.
  ExpectError(
      OpenBytes(GgufBuilder().Tensor("a", {4}, kF32, 0).Tensor("b", {4}, kF32, 0).Data(std::string(16, 0)).Build()),
      absl::StatusCode::kInvalidArgument, bad_path(), {"overlap"});
}

TEST_F(GgufTest, ErrorsQuoteBinaryNamesSafely) {
  const std::string name = std::string("bad\n\x01\xff", 6) + std::string(500, 'x');
  const absl::Status status = OpenBytes(GgufBuilder().Tensor(name, {3}, kQ4_0, 0).Data("x").Build());
  ExpectError(status, absl::StatusCode::kInvalidArgument, bad_path(), {"\"bad\\n\\x01\\xffxxx", "...\" (506 bytes)"});
  EXPECT_LT(status.message().size(), 400u);
}

TEST_F(GgufTest, RandomCorruptionNeverCrashes) {
  const std::string original = ReadBytes(kTestdata / "types.gguf");
  std::mt19937_64 rng(1234);
  int opened = 0;
  for (int round = 0; round < 1500; ++round) {
    std::string bytes = original;
    // Corrupt the header region mostly: that is where the parser's decisions are.
    const size_t limit = round % 4 == 0 ? bytes.size() : 7000;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < flips; ++f) {
      const size_t at = rng() % limit;
      switch (rng() % 3) {
        case 0:
          bytes[at] = static_cast<char>(rng());
          break;
        case 1:
          bytes[at] ^= static_cast<char>(1 << (rng() % 8));
          break;
        default:
          bytes[at] = static_cast<char>(0xFF);
          break;
      }
    }
    if (round % 7 == 0) bytes.resize(rng() % bytes.size());
    WriteBytes(bad_path(), bytes);
    absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(bad_path());
    if (!file.ok()) {
      const absl::StatusCode code = file.status().code();
      EXPECT_TRUE(code == absl::StatusCode::kInvalidArgument || code == absl::StatusCode::kDataLoss) << file.status();
      continue;
    }
    ++opened;
    for (const GgufTensorInfo& info : (*file)->tensors()) {
      const absl::Span<const std::byte> data = (*file)->Data(info);
      EXPECT_EQ(data.size(), IsKnownGgmlType(info.type) ? info.n_bytes : 0u);
      if (CanDequantize(info.type) && info.numel() <= 4096) {
        std::vector<float> out(info.numel());
        EXPECT_OK(DequantizeTensor(**file, info, absl::MakeSpan(out)));
      }
    }
    for (const auto& [key, value] : (*file)->metadata()) (void)value.ToString();
  }
  EXPECT_GT(opened, 0);  // some corruptions hit only values and data
}

}  // namespace
}  // namespace lesion::model
