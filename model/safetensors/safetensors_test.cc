#include "model/safetensors/safetensors.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <bit>
#include <cctype>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <iostream>
#include <iterator>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/testing/fifo_watchdog.h"
#include "common/testing/scoped_test_dir.h"
#include "common/testing/status_matchers.h"

namespace lesion::model {
namespace {

namespace fs = std::filesystem;
static_assert(std::endian::native == std::endian::little, "fixtures hold little-endian values");

const fs::path kTestdata = fs::path(LESION_SOURCE_DIR) / "model/safetensors/testdata";

constexpr DType kAllDTypes[] = {DType::kF64, DType::kF32, DType::kF16, DType::kBF16, DType::kI64,    DType::kI32,
                                DType::kI16, DType::kI8,  DType::kU8,  DType::kBool, DType::kF8E4M3, DType::kF8E5M2};

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

std::string LengthPrefix(uint64_t n) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xFF);
  return out;
}

// A safetensors file from a literal header and data section.
std::string FileBytes(absl::string_view header, absl::string_view data = {}) {
  return absl::StrCat(LengthPrefix(header.size()), header, data);
}

template <typename T>
std::vector<T> DecodeAs(absl::Span<const std::byte> bytes) {
  std::vector<T> out(bytes.size() / sizeof(T));
  std::memcpy(out.data(), bytes.data(), out.size() * sizeof(T));
  return out;
}

absl::Span<const std::byte> AsBytes(absl::string_view s) {
  return absl::Span<const std::byte>(reinterpret_cast<const std::byte*>(s.data()), s.size());
}

// Checks the code and that the message contains the path and every one of `needles`.
void ExpectError(const absl::Status& status, absl::StatusCode code, const fs::path& path,
                 std::initializer_list<absl::string_view> needles = {}) {
  EXPECT_EQ(status.code(), code) << status;
  EXPECT_TRUE(absl::StrContains(status.message(), path.string())) << "message does not name " << path << ": " << status;
  for (absl::string_view needle : needles) {
    EXPECT_TRUE(absl::StrContains(status.message(), needle)) << "message lacks \"" << needle << "\": " << status;
  }
}

class SafetensorsTest : public ::testing::Test {
 protected:
  // Writes `bytes` to a file in the temp dir and opens it; returns the status and the path.
  absl::Status OpenBytes(absl::string_view bytes) {
    WriteBytes(bad_path(), bytes);
    return SafetensorsFile::Open(bad_path()).status();
  }
  // OpenBytes of a header whose single tensor "w" has the given entry and 16 data bytes.
  absl::Status OpenEntry(absl::string_view entry_json) {
    return OpenBytes(FileBytes(absl::StrCat(R"({"w":)", entry_json, "}"), std::string(16, 'x')));
  }
  fs::path bad_path() const { return dir_ / "bad.safetensors"; }

  // Writes a shard with tensors of 4 F32 elements each.
  void WriteShard(const std::string& file, const std::vector<std::string>& names) {
    static const std::string kData(16, '\1');
    std::vector<TensorToWrite> tensors;
    for (const std::string& name : names) {
      tensors.push_back({name, DType::kF32, {4}, AsBytes(kData)});
    }
    ASSERT_OK(WriteSafetensors(dir_ / file, tensors));
  }
  void WriteIndex(const std::string& json) { WriteBytes(dir_ / "model.safetensors.index.json", json); }

  ScopedTestDir test_dir_{"safetensors_test"};
  const fs::path& dir_ = test_dir_.path();
};

// ---------------------------------------------------------------------------------------------
// DType

TEST(DTypeTest, NamesRoundTrip) {
  for (DType d : kAllDTypes) {
    EXPECT_EQ(ParseDType(DTypeName(d)), d) << DTypeName(d);
  }
  EXPECT_EQ(DTypeName(DType::kBF16), "BF16");
  EXPECT_EQ(DTypeName(DType::kBool), "BOOL");
  EXPECT_EQ(DTypeName(DType::kF8E4M3), "F8_E4M3");
  EXPECT_EQ(DTypeName(DType::kF8E5M2), "F8_E5M2");
}

TEST(DTypeTest, ParseRejectsOtherSpellings) {
  for (absl::string_view name : {"", "f32", "F33", "FLOAT", "U16", "F8_E4M3FN", "F32 "}) {
    EXPECT_FALSE(ParseDType(name).has_value()) << name;
  }
}

TEST(DTypeTest, Sizes) {
  const std::map<DType, size_t> expected = {{DType::kF64, 8},  {DType::kF32, 4},    {DType::kF16, 2},
                                            {DType::kBF16, 2}, {DType::kI64, 8},    {DType::kI32, 4},
                                            {DType::kI16, 2},  {DType::kI8, 1},     {DType::kU8, 1},
                                            {DType::kBool, 1}, {DType::kF8E4M3, 1}, {DType::kF8E5M2, 1}};
  for (DType d : kAllDTypes) EXPECT_EQ(DTypeSize(d), expected.at(d)) << DTypeName(d);
}

TEST(TensorInfoTest, Numel) {
  EXPECT_EQ((TensorInfo{"s", DType::kF32, {}, 0, 4}).numel(), 1);
  EXPECT_EQ((TensorInfo{"e", DType::kF32, {2, 0, 3}, 0, 0}).numel(), 0);
  EXPECT_EQ((TensorInfo{"m", DType::kF32, {2, 3, 4}, 0, 96}).numel(), 24);
}

// ---------------------------------------------------------------------------------------------
// Writer -> reader

TEST_F(SafetensorsTest, RoundTripEveryDtypeAndShapeKind) {
  const std::vector<std::vector<int64_t>> shapes = {{2, 3}, {}, {0}, {2, 0, 3}, {5}};
  std::vector<std::string> buffers;  // owns the data the TensorToWrite spans point at
  std::vector<TensorToWrite> tensors;
  buffers.reserve(std::size(kAllDTypes) * shapes.size());
  for (DType d : kAllDTypes) {
    for (const auto& shape : shapes) {
      int64_t numel = 1;
      for (int64_t s : shape) numel *= s;
      std::string data(numel * DTypeSize(d), '\0');
      for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 37 + buffers.size());
      buffers.push_back(std::move(data));
      tensors.push_back(
          {absl::StrCat(DTypeName(d), "/", shape.size(), "d/", numel), d, shape, AsBytes(buffers.back())});
    }
  }
  const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"note", "héllo"}};
  const fs::path path = dir_ / "all.safetensors";
  ASSERT_OK(WriteSafetensors(path, tensors, metadata));

  // Layout: header padded with spaces to a multiple of 8.
  const std::string bytes = ReadBytes(path);
  uint64_t header_size = 0;
  std::memcpy(&header_size, bytes.data(), 8);
  EXPECT_EQ(header_size % 8, 0u);
  const std::string header = bytes.substr(8, header_size);
  EXPECT_EQ(header.front(), '{');
  EXPECT_EQ(header.substr(header.find_last_of('}') + 1).find_first_not_of(' '), std::string::npos);

  auto file = SafetensorsFile::Open(path);
  ASSERT_OK(file);
  EXPECT_EQ((*file)->path(), path);
  EXPECT_EQ((*file)->metadata(), metadata);
  ASSERT_EQ((*file)->tensors().size(), tensors.size());
  uint64_t expected_begin = 0;
  for (const TensorToWrite& t : tensors) {
    const TensorInfo* info = (*file)->Find(t.name);
    ASSERT_NE(info, nullptr) << t.name;
    EXPECT_EQ(info->name, t.name);
    EXPECT_EQ(info->dtype, t.dtype) << t.name;
    EXPECT_EQ(info->shape, t.shape) << t.name;
    EXPECT_EQ(info->data_begin, expected_begin) << t.name;  // laid out in the given order
    EXPECT_EQ(info->data_end, expected_begin + t.data.size()) << t.name;
    expected_begin += t.data.size();
    const absl::Span<const std::byte> data = (*file)->Data(*info);
    ASSERT_EQ(data.size(), t.data.size()) << t.name;
    EXPECT_EQ(std::memcmp(data.data(), t.data.data(), data.size()), 0) << t.name;
  }
  EXPECT_EQ(bytes.size(), 8 + header_size + expected_begin);
  EXPECT_EQ((*file)->Find("absent"), nullptr);
}

TEST_F(SafetensorsTest, TensorsAreInOffsetOrder) {
  const std::string a(4, 'a'), b(8, 'b'), c(2, 'c');
  const fs::path path = dir_ / "order.safetensors";
  ASSERT_TRUE(WriteSafetensors(path, {{"zeta", DType::kF32, {1}, AsBytes(a)},
                                      {"alpha", DType::kF64, {}, AsBytes(b)},
                                      {"mid", DType::kI16, {1}, AsBytes(c)}})
                  .ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_OK(file);
  std::vector<std::string> names;
  for (const TensorInfo& t : (*file)->tensors()) names.push_back(t.name);
  EXPECT_EQ(names, (std::vector<std::string>{"zeta", "alpha", "mid"}));
  EXPECT_EQ(DecodeAs<char>((*file)->Data(*(*file)->Find("alpha"))), std::vector<char>(8, 'b'));
}

TEST_F(SafetensorsTest, NoTensorsGivesZeroLengthDataSection) {
  const fs::path path = dir_ / "empty.safetensors";
  ASSERT_OK(WriteSafetensors(path, {}));
  EXPECT_EQ(ReadBytes(path), FileBytes("{}      "));
  auto file = SafetensorsFile::Open(path);
  ASSERT_OK(file);
  EXPECT_TRUE((*file)->tensors().empty());
  EXPECT_TRUE((*file)->metadata().empty());
}

TEST_F(SafetensorsTest, OnlyEmptyTensorsGivesZeroLengthDataSection) {
  const fs::path path = dir_ / "empties.safetensors";
  ASSERT_TRUE(WriteSafetensors(path, {{"a", DType::kF32, {0}, {}}, {"b", DType::kBF16, {3, 0}, {}}}).ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_OK(file);
  ASSERT_EQ((*file)->tensors().size(), 2u);
  for (const TensorInfo& t : (*file)->tensors()) {
    EXPECT_EQ(t.numel(), 0);
    EXPECT_TRUE((*file)->Data(t).empty());
  }
}

TEST_F(SafetensorsTest, WriterReplacesExistingFileAndLeavesNoTemporary) {
  const fs::path path = dir_ / "w.safetensors";
  const std::string one(4, '\1'), two(8, '\2');
  ASSERT_OK(WriteSafetensors(path, {{"x", DType::kF32, {1}, AsBytes(one)}}));
  ASSERT_OK(WriteSafetensors(path, {{"y", DType::kF32, {2}, AsBytes(two)}}));
  auto file = SafetensorsFile::Open(path);
  ASSERT_OK(file);
  EXPECT_EQ((*file)->Find("x"), nullptr);
  EXPECT_NE((*file)->Find("y"), nullptr);
  EXPECT_FALSE(fs::exists(dir_ / "w.safetensors.tmp"));
}

TEST_F(SafetensorsTest, WriterRejectsDuplicateNames) {
  const std::string d(4, '\0');
  const fs::path path = dir_ / "dup.safetensors";
  const absl::Status s =
      WriteSafetensors(path, {{"x", DType::kF32, {1}, AsBytes(d)}, {"x", DType::kI32, {1}, AsBytes(d)}});
  ExpectError(s, absl::StatusCode::kInvalidArgument, path, {"\"x\"", "duplicate"});
  EXPECT_FALSE(fs::exists(path));
}

TEST_F(SafetensorsTest, WriterRejectsSizeMismatch) {
  const std::string d(10, '\0');
  const fs::path path = dir_ / "size.safetensors";
  const absl::Status s = WriteSafetensors(path, {{"x", DType::kF32, {2, 2}, AsBytes(d)}});
  ExpectError(s, absl::StatusCode::kInvalidArgument, path, {"\"x\"", "16", "10"});
  EXPECT_FALSE(fs::exists(path));
  EXPECT_FALSE(fs::exists(dir_ / "size.safetensors.tmp"));
}

TEST_F(SafetensorsTest, WriterRejectsBadShapesNamesAndMetadata) {
  const fs::path path = dir_ / "bad.safetensors";
  const std::string d(4, '\0');
  ExpectError(WriteSafetensors(path, {{"x", DType::kF32, {-1}, {}}}), absl::StatusCode::kInvalidArgument, path,
              {"negative"});
  ExpectError(WriteSafetensors(path, {{"x", DType::kF64, {int64_t{1} << 62, 8}, {}}}),
              absl::StatusCode::kInvalidArgument, path, {"overflows"});
  ExpectError(WriteSafetensors(path, {{"__metadata__", DType::kF32, {1}, AsBytes(d)}}),
              absl::StatusCode::kInvalidArgument, path, {"reserved"});
  ExpectError(WriteSafetensors(path, {{"bad\xff", DType::kF32, {1}, AsBytes(d)}}), absl::StatusCode::kInvalidArgument,
              path, {"UTF-8"});
  ExpectError(WriteSafetensors(path, {}, {{"k", "\xc0\x80"}}), absl::StatusCode::kInvalidArgument, path, {"UTF-8"});
  EXPECT_FALSE(fs::exists(path));
}

TEST_F(SafetensorsTest, WriterMissingDirectoryIsNotFound) {
  const fs::path path = dir_ / "no_such_dir" / "x.safetensors";
  EXPECT_EQ(WriteSafetensors(path, {}).code(), absl::StatusCode::kNotFound);
}

// ---------------------------------------------------------------------------------------------
// Files written by the Python library (testdata/, from make_testdata.py)

TEST(PythonFixtureTest, ReadsEveryDtype) {
  const fs::path path = kTestdata / "python_dtypes.safetensors";
  auto opened = SafetensorsFile::Open(path);
  ASSERT_OK(opened);
  const SafetensorsFile& file = **opened;
  EXPECT_EQ(file.metadata(), (std::map<std::string, std::string>{{"format", "pt"}}));
  ASSERT_EQ(file.tensors().size(), 14u);
  for (size_t i = 1; i < file.tensors().size(); ++i) {
    EXPECT_LE(file.tensors()[i - 1].data_end, file.tensors()[i].data_begin);
  }

  auto get = [&](absl::string_view name, DType dtype, std::vector<int64_t> shape) -> absl::Span<const std::byte> {
    const TensorInfo* t = file.Find(name);
    EXPECT_NE(t, nullptr) << name;
    if (t == nullptr) return {};
    EXPECT_EQ(t->dtype, dtype) << name;
    EXPECT_EQ(t->shape, shape) << name;
    return file.Data(*t);
  };
  EXPECT_EQ(DecodeAs<double>(get("f64", DType::kF64, {2, 3})),
            (std::vector<double>{1.5, -2.0, 3.25, 0.0, 1e10, -1e-3}));
  std::vector<float> f32;
  for (int i = 0; i < 12; ++i) f32.push_back(i * 0.5f - 1.0f);
  EXPECT_EQ(DecodeAs<float>(get("f32", DType::kF32, {3, 4})), f32);
  EXPECT_EQ(DecodeAs<uint16_t>(get("f16", DType::kF16, {4})), (std::vector<uint16_t>{0x3C00, 0xC000, 0x3800, 0x7BFF}));
  EXPECT_EQ(DecodeAs<uint16_t>(get("bf16", DType::kBF16, {4})),
            (std::vector<uint16_t>{0x3F80, 0xC000, 0x3F00, 0x4040}));
  EXPECT_EQ(DecodeAs<int64_t>(get("i64", DType::kI64, {3})),
            (std::vector<int64_t>{-(int64_t{1} << 40), 0, int64_t{1} << 62}));
  EXPECT_EQ(DecodeAs<int32_t>(get("i32", DType::kI32, {2, 2})), (std::vector<int32_t>{-1, 2, 3, -4}));
  EXPECT_EQ(DecodeAs<int16_t>(get("i16", DType::kI16, {2})), (std::vector<int16_t>{-32768, 32767}));
  EXPECT_EQ(DecodeAs<int8_t>(get("i8", DType::kI8, {3})), (std::vector<int8_t>{-128, 127, 0}));
  EXPECT_EQ(DecodeAs<uint8_t>(get("u8", DType::kU8, {3})), (std::vector<uint8_t>{0, 255, 7}));
  EXPECT_EQ(DecodeAs<uint8_t>(get("bool", DType::kBool, {3})), (std::vector<uint8_t>{1, 0, 1}));
  EXPECT_EQ(DecodeAs<uint8_t>(get("f8_e4m3", DType::kF8E4M3, {4})), (std::vector<uint8_t>{0x38, 0xC0, 0x30, 0x7E}));
  EXPECT_EQ(DecodeAs<uint8_t>(get("f8_e5m2", DType::kF8E5M2, {4})), (std::vector<uint8_t>{0x3C, 0xC0, 0x38, 0x7B}));
  EXPECT_EQ(DecodeAs<float>(get("scalar", DType::kF32, {})), (std::vector<float>{42.0f}));
  EXPECT_EQ(file.Find("scalar")->numel(), 1);
  EXPECT_TRUE(get("empty", DType::kF32, {0, 3}).empty());
  EXPECT_EQ(file.Find("empty")->numel(), 0);
}

// Rewriting the Python file's tensors in its own order reproduces it byte for byte: same header
// JSON, same padding, same data layout.
TEST_F(SafetensorsTest, WriterOutputIsByteIdenticalToPython) {
  const fs::path original = kTestdata / "python_dtypes.safetensors";
  auto file = SafetensorsFile::Open(original);
  ASSERT_OK(file);
  std::vector<TensorToWrite> tensors;
  for (const TensorInfo& t : (*file)->tensors()) {
    tensors.push_back({t.name, t.dtype, t.shape, (*file)->Data(t)});
  }
  const fs::path copy = dir_ / "copy.safetensors";
  ASSERT_OK(WriteSafetensors(copy, tensors, (*file)->metadata()));
  EXPECT_EQ(ReadBytes(copy), ReadBytes(original));
}

TEST(PythonFixtureTest, ReadsShardedCheckpoint) {
  const fs::path dir = kTestdata / "sharded";
  auto checkpoint = SafetensorsCheckpoint::Open(dir);
  ASSERT_OK(checkpoint);
  EXPECT_EQ((*checkpoint)->TensorNames(),
            (std::vector<std::string>{"model.embed_tokens.weight", "model.layers.0.mlp.weight",
                                      "model.layers.1.mlp.weight", "model.norm.weight"}));
  EXPECT_EQ((*checkpoint)->files(), (std::vector<fs::path>{dir / "model-00001-of-00002.safetensors",
                                                           dir / "model-00002-of-00002.safetensors"}));

  auto embed = (*checkpoint)->Find("model.embed_tokens.weight");
  ASSERT_TRUE(embed.has_value());
  EXPECT_EQ(embed->file->path().filename(), "model-00001-of-00002.safetensors");
  EXPECT_EQ(embed->info->shape, (std::vector<int64_t>{3, 4}));
  EXPECT_EQ(DecodeAs<float>(embed->file->Data(*embed->info)),
            (std::vector<float>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}));

  auto norm = (*checkpoint)->Find("model.norm.weight");
  ASSERT_TRUE(norm.has_value());
  EXPECT_EQ(norm->file->path().filename(), "model-00002-of-00002.safetensors");
  EXPECT_EQ(DecodeAs<float>(norm->file->Data(*norm->info)), (std::vector<float>{1, 1, 1, 1}));
  EXPECT_FALSE((*checkpoint)->Find("model.absent").has_value());
}

// ---------------------------------------------------------------------------------------------
// Corrupt and malformed files: one test per validation rule

TEST_F(SafetensorsTest, MissingFileIsNotFound) {
  const fs::path path = dir_ / "absent.safetensors";
  ExpectError(SafetensorsFile::Open(path).status(), absl::StatusCode::kNotFound, path);
}

TEST_F(SafetensorsTest, DirectoryIsInvalidArgument) {
  ExpectError(SafetensorsFile::Open(dir_).status(), absl::StatusCode::kInvalidArgument, dir_);
}

// Regression: a FIFO named model.safetensors made loading wait in open() for a writer forever.
TEST_F(SafetensorsTest, FifoIsInvalidArgumentWithoutBlocking) {
  const fs::path fifo = dir_ / "fifo.safetensors";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  FifoWatchdog watchdog(fifo);
  const absl::Status status = SafetensorsFile::Open(fifo).status();
  EXPECT_FALSE(watchdog.Stop()) << "SafetensorsFile::Open blocked opening a FIFO";
  ExpectError(status, absl::StatusCode::kInvalidArgument, fifo, {"not a regular file"});
}

TEST_F(SafetensorsTest, CheckpointFifoInPlaceOfAnyFileIsInvalidArgumentWithoutBlocking) {
  // The single file, the index and a shard the index names: each opened by a different path.
  for (const char* name : {"model.safetensors", "model.safetensors.index.json", "s1.safetensors"}) {
    SCOPED_TRACE(name);
    fs::remove_all(dir_);
    ASSERT_TRUE(fs::create_directories(dir_));
    if (std::string(name) == "s1.safetensors") {
      WriteIndex(R"({"weight_map":{"a":"s1.safetensors"}})");
    }
    const fs::path fifo = dir_ / name;
    ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
    FifoWatchdog watchdog(fifo);
    const absl::Status status = SafetensorsCheckpoint::Open(dir_).status();
    EXPECT_FALSE(watchdog.Stop()) << "SafetensorsCheckpoint::Open blocked opening a FIFO";
    ExpectError(status, absl::StatusCode::kInvalidArgument, fifo, {"not a regular file"});
  }
}

TEST_F(SafetensorsTest, ShorterThanEightBytesIsDataLoss) {
  ExpectError(OpenBytes(""), absl::StatusCode::kDataLoss, bad_path(), {"0 bytes"});
  ExpectError(OpenBytes(std::string(7, '\0')), absl::StatusCode::kDataLoss, bad_path(), {"7 bytes"});
}

TEST_F(SafetensorsTest, HeaderLengthBeyondFileIsDataLoss) {
  ExpectError(OpenBytes(LengthPrefix(1000) + "{}"), absl::StatusCode::kDataLoss, bad_path(), {"1000", "2 bytes"});
  // Only the length prefix, announcing one byte.
  ExpectError(OpenBytes(LengthPrefix(1)), absl::StatusCode::kDataLoss, bad_path(), {"1"});
}

TEST_F(SafetensorsTest, AbsurdHeaderLengthIsDataLoss) {
  ExpectError(OpenBytes(LengthPrefix(100'000'001) + "{}"), absl::StatusCode::kDataLoss, bad_path(),
              {"100000001", "limit"});
  ExpectError(OpenBytes(LengthPrefix(~uint64_t{0}) + "{}"), absl::StatusCode::kDataLoss, bad_path(),
              {"18446744073709551615", "limit"});
}

TEST_F(SafetensorsTest, HeaderNotJsonIsDataLoss) {
  ExpectError(OpenBytes(FileBytes("{\"w\": ")), absl::StatusCode::kDataLoss, bad_path(), {"JSON"});
  ExpectError(OpenBytes(FileBytes("")), absl::StatusCode::kDataLoss, bad_path(), {"JSON"});
  ExpectError(OpenBytes(FileBytes(std::string("{}\0\0\0\0\0\0", 8))), absl::StatusCode::kDataLoss, bad_path(),
              {"JSON"});
  ExpectError(OpenBytes(FileBytes("{} garbage")), absl::StatusCode::kDataLoss, bad_path(), {"JSON"});
  ExpectError(OpenBytes(FileBytes(std::string("{}\0{\"w\":5}", 10))), absl::StatusCode::kDataLoss, bad_path(),
              {"JSON"});
  ExpectError(OpenBytes(FileBytes(std::string("{\"a\0\":{}}", 9))), absl::StatusCode::kDataLoss, bad_path(), {"JSON"});
}

TEST_F(SafetensorsTest, HeaderNotUtf8IsDataLoss) {
  ExpectError(OpenBytes(FileBytes("{\"\xff\xfe\":{}}")), absl::StatusCode::kDataLoss, bad_path(), {"JSON"});
}

TEST_F(SafetensorsTest, HeaderNotObjectIsDataLoss) {
  ExpectError(OpenBytes(FileBytes("[1, 2]")), absl::StatusCode::kDataLoss, bad_path(), {"array", "not a JSON object"});
  ExpectError(OpenBytes(FileBytes("\"str\"")), absl::StatusCode::kDataLoss, bad_path(), {"not a JSON object"});
  ExpectError(OpenBytes(FileBytes("null")), absl::StatusCode::kDataLoss, bad_path(), {"not a JSON object"});
}

TEST_F(SafetensorsTest, DeeplyNestedHeaderDoesNotCrash) {
  const int depth = 200'000;
  const std::string nested = std::string(depth, '[') + std::string(depth, ']');
  ExpectError(OpenBytes(FileBytes(absl::StrCat("{\"w\":", nested, "}"))), absl::StatusCode::kDataLoss, bad_path(),
              {"\"w\"", "not an object"});
  ExpectError(OpenBytes(FileBytes(absl::StrCat("{\"w\":{\"dtype\":", nested, "}}"))), absl::StatusCode::kDataLoss,
              bad_path(), {"\"w\"", "dtype"});
  ExpectError(OpenBytes(FileBytes(std::string(depth, '['))), absl::StatusCode::kDataLoss, bad_path(), {"JSON"});
  ExpectError(OpenBytes(FileBytes(std::string(depth, '{'))), absl::StatusCode::kDataLoss, bad_path(), {"JSON"});
}

TEST_F(SafetensorsTest, EntryNotObjectIsDataLoss) {
  ExpectError(OpenEntry("5"), absl::StatusCode::kDataLoss, bad_path(), {"\"w\"", "not an object"});
  ExpectError(OpenEntry("[\"F32\", [4], [0, 16]]"), absl::StatusCode::kDataLoss, bad_path(),
              {"\"w\"", "not an object"});
}

TEST_F(SafetensorsTest, MissingOrMistypedDtypeIsDataLoss) {
  ExpectError(OpenEntry(R"({"shape":[4],"data_offsets":[0,16]})"), absl::StatusCode::kDataLoss, bad_path(),
              {"\"w\"", "dtype"});
  ExpectError(OpenEntry(R"({"dtype":4,"shape":[4],"data_offsets":[0,16]})"), absl::StatusCode::kDataLoss, bad_path(),
              {"\"w\"", "dtype is 4"});
}

TEST_F(SafetensorsTest, UnknownDtypeIsDataLoss) {
  ExpectError(OpenEntry(R"({"dtype":"F33","shape":[4],"data_offsets":[0,16]})"), absl::StatusCode::kDataLoss,
              bad_path(), {"\"w\"", "unknown dtype", "F33"});
  ExpectError(OpenEntry(R"({"dtype":"f32","shape":[4],"data_offsets":[0,16]})"), absl::StatusCode::kDataLoss,
              bad_path(), {"\"w\"", "f32"});
}

TEST_F(SafetensorsTest, SpecDtypeLesionDoesNotSupportIsUnimplemented) {
  ExpectError(OpenEntry(R"({"dtype":"U16","shape":[8],"data_offsets":[0,16]})"), absl::StatusCode::kUnimplemented,
              bad_path(), {"\"w\"", "U16"});
}

TEST_F(SafetensorsTest, ShapeNotArrayIsDataLoss) {
  ExpectError(OpenEntry(R"({"dtype":"F32","data_offsets":[0,16]})"), absl::StatusCode::kDataLoss, bad_path(),
              {"\"w\"", "shape"});
  ExpectError(OpenEntry(R"({"dtype":"F32","shape":4,"data_offsets":[0,16]})"), absl::StatusCode::kDataLoss, bad_path(),
              {"\"w\"", "shape is 4"});
}

TEST_F(SafetensorsTest, NegativeDimensionIsDataLoss) {
  ExpectError(OpenEntry(R"({"dtype":"F32","shape":[2,-2],"data_offsets":[0,16]})"), absl::StatusCode::kDataLoss,
              bad_path(), {"\"w\"", "dimension 1 is -2"});
}

TEST_F(SafetensorsTest, NonIntegerDimensionIsDataLoss) {
  for (absl::string_view dim : {"2.5", "\"4\"", "true", "null", "[4]", "4e0"}) {
    ExpectError(OpenEntry(absl::StrCat(R"({"dtype":"F32","shape":[)", dim, R"(],"data_offsets":[0,16]})")),
                absl::StatusCode::kDataLoss, bad_path(), {"\"w\"", "dimension 0"});
  }
  // Above INT64_MAX (and above UINT64_MAX, which the JSON parser turns into a float).
  ExpectError(OpenEntry(R"({"dtype":"F32","shape":[9223372036854775808],"data_offsets":[0,16]})"),
              absl::StatusCode::kDataLoss, bad_path(), {"\"w\"", "9223372036854775808"});
  ExpectError(OpenEntry(R"({"dtype":"F32","shape":[99999999999999999999],"data_offsets":[0,16]})"),
              absl::StatusCode::kDataLoss, bad_path(), {"\"w\"", "dimension 0"});
}

TEST_F(SafetensorsTest, DataOffsetsNotTwoIntegersIsDataLoss) {
  for (absl::string_view offsets : {"[0]", "[0,8,16]", "[]", "\"0-16\"", "{}"}) {
    ExpectError(OpenEntry(absl::StrCat(R"({"dtype":"F32","shape":[4],"data_offsets":)", offsets, "}")),
                absl::StatusCode::kDataLoss, bad_path(), {"\"w\"", "data_offsets"});
  }
  ExpectError(OpenEntry(R"({"dtype":"F32","shape":[4]})"), absl::StatusCode::kDataLoss, bad_path(),
              {"\"w\"", "data_offsets"});
  ExpectError(OpenEntry(R"({"dtype":"F32","shape":[4],"data_offsets":[0,16.0]})"), absl::StatusCode::kDataLoss,
              bad_path(), {"\"w\"", "[0, 16]", "non-negative"});
}

TEST_F(SafetensorsTest, NegativeDataOffsetIsDataLoss) {
  ExpectError(OpenEntry(R"({"dtype":"F32","shape":[4],"data_offsets":[-16,0]})"), absl::StatusCode::kDataLoss,
              bad_path(), {"\"w\"", "[-16, 0]"});
}

TEST_F(SafetensorsTest, DataOffsetsEndingBeforeTheyBeginIsDataLoss) {
  ExpectError(OpenEntry(R"({"dtype":"F32","shape":[1],"data_offsets":[8,4]})"), absl::StatusCode::kDataLoss, bad_path(),
              {"\"w\"", "[8, 4]"});
}

TEST_F(SafetensorsTest, TruncatedDataSectionIsDataLoss) {
  // 16 data bytes present, 32 announced.
  ExpectError(OpenEntry(R"({"dtype":"F32","shape":[8],"data_offsets":[0,32]})"), absl::StatusCode::kDataLoss,
              bad_path(), {"\"w\"", "[0, 32]", "16 bytes"});
  // A real file cut short.
  const std::string d(64, '\7');
  const fs::path good = dir_ / "good.safetensors";
  ASSERT_OK(WriteSafetensors(good, {{"x", DType::kF64, {8}, AsBytes(d)}}));
  const std::string bytes = ReadBytes(good);
  ExpectError(OpenBytes(bytes.substr(0, bytes.size() - 1)), absl::StatusCode::kDataLoss, bad_path(),
              {"\"x\"", "[0, 64]", "63 bytes"});
}

TEST_F(SafetensorsTest, ByteCountNotMatchingShapeIsDataLoss) {
  ExpectError(OpenEntry(R"({"dtype":"F32","shape":[3],"data_offsets":[0,16]})"), absl::StatusCode::kDataLoss,
              bad_path(), {"\"w\"", "16 bytes", "F32", "[3]", "12"});
  ExpectError(OpenEntry(R"({"dtype":"BF16","shape":[],"data_offsets":[0,0]})"), absl::StatusCode::kDataLoss, bad_path(),
              {"\"w\"", "needs 2"});
}

TEST_F(SafetensorsTest, ShapeOverflowIsDataLoss) {
  // numel overflows 64 bits.
  ExpectError(OpenEntry(R"({"dtype":"F32","shape":[4294967296,4294967296,2],"data_offsets":[0,0]})"),
              absl::StatusCode::kDataLoss, bad_path(), {"\"w\"", "overflows"});
  // numel fits but numel x size does not.
  ExpectError(OpenEntry(R"({"dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,0]})"),
              absl::StatusCode::kDataLoss, bad_path(), {"\"w\"", "overflows"});
  // numel above INT64_MAX.
  ExpectError(OpenEntry(R"({"dtype":"U8","shape":[4611686018427387904,2],"data_offsets":[0,0]})"),
              absl::StatusCode::kDataLoss, bad_path(), {"\"w\"", "overflows"});
}

TEST_F(SafetensorsTest, ZeroDimensionMakesHugeShapeEmpty) {
  const absl::Status s = OpenEntry(R"({"dtype":"F32","shape":[4294967296,4294967296,0],"data_offsets":[4,4]})");
  EXPECT_OK(s);
  // Regression (the same bug as GGUF's, found by fuzz/gguf_fuzzer): numel() multiplied the
  // dimensions in order, overflowing int64 (undefined behaviour, which the UBSan build catches)
  // before it reached the 0.
  auto file = SafetensorsFile::Open(bad_path());
  ASSERT_OK(file);
  ASSERT_EQ((*file)->tensors().size(), 1u);
  EXPECT_EQ((*file)->tensors()[0].numel(), 0);
  EXPECT_TRUE((*file)->Data((*file)->tensors()[0]).empty());
}

TEST_F(SafetensorsTest, OverlappingTensorsIsDataLoss) {
  const std::string data(16, 'x');
  ExpectError(OpenBytes(FileBytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                  R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                                  data)),
              absl::StatusCode::kDataLoss, bad_path(), {"\"a\" [0, 8)", "\"b\" [4, 12)", "overlap"});
  // Two tensors sharing the same bytes.
  ExpectError(OpenBytes(FileBytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                  R"("b":{"dtype":"I32","shape":[2],"data_offsets":[0,8]}})",
                                  data)),
              absl::StatusCode::kDataLoss, bad_path(), {"\"a\"", "\"b\"", "overlap"});
  // A short tensor inside a longer one.
  ExpectError(OpenBytes(FileBytes(R"({"a":{"dtype":"F64","shape":[2],"data_offsets":[0,16]},)"
                                  R"("b":{"dtype":"U8","shape":[],"data_offsets":[9,10]}})",
                                  data)),
              absl::StatusCode::kDataLoss, bad_path(), {"\"a\"", "\"b\"", "overlap"});
}

TEST_F(SafetensorsTest, EmptyTensorsAndGapsAreNotOverlaps) {
  const std::string data(32, 'x');
  const absl::Status s = OpenBytes(FileBytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                             R"("e":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},)"
                                             R"("b":{"dtype":"F32","shape":[2],"data_offsets":[16,24]}})",
                                             data));
  EXPECT_OK(s);
}

TEST_F(SafetensorsTest, MetadataNotStringMapIsDataLoss) {
  ExpectError(OpenBytes(FileBytes(R"({"__metadata__":"pt"})")), absl::StatusCode::kDataLoss, bad_path(),
              {"__metadata__", "\"pt\""});
  ExpectError(OpenBytes(FileBytes(R"({"__metadata__":{"format":"pt","n":3}})")), absl::StatusCode::kDataLoss,
              bad_path(), {"__metadata__", "\"n\"", "3"});
  ExpectError(OpenBytes(FileBytes(R"({"__metadata__":{"k":{"nested":"x"}}})")), absl::StatusCode::kDataLoss, bad_path(),
              {"__metadata__", "\"k\""});
}

TEST_F(SafetensorsTest, NullMetadataMeansNone) {
  auto s = OpenBytes(FileBytes(R"({"__metadata__":null})"));
  EXPECT_OK(s);
}

TEST_F(SafetensorsTest, DataOfForeignTensorInfoIsEmptyOutsideDataSection) {
  const std::string d(8, '\0');
  const fs::path path = dir_ / "x.safetensors";
  ASSERT_OK(WriteSafetensors(path, {{"x", DType::kF32, {2}, AsBytes(d)}}));
  auto file = SafetensorsFile::Open(path);
  ASSERT_OK(file);
  EXPECT_TRUE((*file)->Data(TensorInfo{"y", DType::kF32, {4}, 0, 16}).empty());
  EXPECT_TRUE((*file)->Data(TensorInfo{"y", DType::kF32, {4}, 8, 4}).empty());
}

// ---------------------------------------------------------------------------------------------
// Checkpoint directories

TEST_F(SafetensorsTest, CheckpointSingleFile) {
  WriteShard("model.safetensors", {"b", "a"});
  auto checkpoint = SafetensorsCheckpoint::Open(dir_);
  ASSERT_OK(checkpoint);
  EXPECT_EQ((*checkpoint)->TensorNames(), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ((*checkpoint)->files(), (std::vector<fs::path>{dir_ / "model.safetensors"}));
  auto a = (*checkpoint)->Find("a");
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(a->info->name, "a");
  EXPECT_EQ(a->file->Data(*a->info).size(), 16u);
}

TEST_F(SafetensorsTest, CheckpointPrefersSingleFileOverIndex) {
  WriteShard("model.safetensors", {"a"});
  WriteIndex(R"({"weight_map":{"a":"missing.safetensors"}})");
  auto checkpoint = SafetensorsCheckpoint::Open(dir_);
  ASSERT_OK(checkpoint);
  EXPECT_EQ((*checkpoint)->files().size(), 1u);
}

TEST_F(SafetensorsTest, CheckpointShardedIncludesTensorsMissingFromIndex) {
  WriteShard("s1.safetensors", {"a", "extra"});
  WriteShard("s2.safetensors", {"b"});
  WriteIndex(R"({"metadata":{"total_size":48},
                 "weight_map":{"a":"s1.safetensors","b":"./s2.safetensors"}})");
  auto checkpoint = SafetensorsCheckpoint::Open(dir_);
  ASSERT_OK(checkpoint);
  EXPECT_EQ((*checkpoint)->TensorNames(), (std::vector<std::string>{"a", "b", "extra"}));
  EXPECT_EQ((*checkpoint)->Find("b")->file->path(), dir_ / "s2.safetensors");
}

TEST_F(SafetensorsTest, CheckpointMissingDirectoryIsNotFound) {
  const fs::path dir = dir_ / "absent";
  ExpectError(SafetensorsCheckpoint::Open(dir).status(), absl::StatusCode::kNotFound, dir);
}

TEST_F(SafetensorsTest, CheckpointPathThatIsAFileIsInvalidArgument) {
  WriteShard("model.safetensors", {"a"});
  const fs::path path = dir_ / "model.safetensors";
  ExpectError(SafetensorsCheckpoint::Open(path).status(), absl::StatusCode::kInvalidArgument, path);
}

TEST_F(SafetensorsTest, CheckpointWithoutModelFilesIsNotFound) {
  ExpectError(SafetensorsCheckpoint::Open(dir_).status(), absl::StatusCode::kNotFound, dir_,
              {"model.safetensors.index.json"});
}

TEST_F(SafetensorsTest, CheckpointMissingShardIsNotFound) {
  WriteShard("s1.safetensors", {"a"});
  WriteIndex(R"({"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}})");
  ExpectError(SafetensorsCheckpoint::Open(dir_).status(), absl::StatusCode::kNotFound, dir_ / "s2.safetensors",
              {"model.safetensors.index.json"});
}

TEST_F(SafetensorsTest, CheckpointTensorAbsentFromItsShardIsDataLoss) {
  WriteShard("s1.safetensors", {"a"});
  WriteShard("s2.safetensors", {"b"});
  WriteIndex(R"({"weight_map":{"a":"s1.safetensors","b":"s2.safetensors","c":"s2.safetensors"}})");
  ExpectError(SafetensorsCheckpoint::Open(dir_).status(), absl::StatusCode::kDataLoss, dir_ / "s2.safetensors",
              {"\"c\"", "no such tensor"});
}

TEST_F(SafetensorsTest, CheckpointTensorInAnotherShardThanIndexedIsDataLoss) {
  WriteShard("s1.safetensors", {"a", "b"});
  WriteShard("s2.safetensors", {"c"});
  WriteIndex(R"({"weight_map":{"a":"s1.safetensors","b":"s2.safetensors","c":"s2.safetensors"}})");
  ExpectError(SafetensorsCheckpoint::Open(dir_).status(), absl::StatusCode::kDataLoss, dir_ / "s1.safetensors",
              {"\"b\"", "s2.safetensors"});
}

TEST_F(SafetensorsTest, CheckpointDuplicateNameAcrossShardsIsDataLoss) {
  WriteShard("s1.safetensors", {"a", "dup"});
  WriteShard("s2.safetensors", {"b", "dup"});
  WriteIndex(R"({"weight_map":{"a":"s1.safetensors","b":"s2.safetensors","dup":"s1.safetensors"}})");
  ExpectError(SafetensorsCheckpoint::Open(dir_).status(), absl::StatusCode::kDataLoss, dir_ / "s1.safetensors",
              {"\"dup\"", (dir_ / "s2.safetensors").string()});
}

TEST_F(SafetensorsTest, CheckpointCorruptShardIsDataLoss) {
  WriteShard("s1.safetensors", {"a"});
  WriteBytes(dir_ / "s2.safetensors", "short");
  WriteIndex(R"({"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}})");
  ExpectError(SafetensorsCheckpoint::Open(dir_).status(), absl::StatusCode::kDataLoss, dir_ / "s2.safetensors");
}

TEST_F(SafetensorsTest, CheckpointMalformedIndexIsInvalidArgument) {
  WriteShard("s1.safetensors", {"a"});
  const fs::path index = dir_ / "model.safetensors.index.json";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"{\"weight_map\": ", "JSON"},
      {"[]", "not a JSON object"},
      {R"({"metadata":{}})", "weight_map"},
      {R"({"weight_map":["a"]})", "weight_map"},
      {R"({"weight_map":{"a":3}})", "\"a\""},
      {R"({"weight_map":{"a":"../s1.safetensors"}})", "relative"},
      {R"({"weight_map":{"a":"/etc/passwd"}})", "relative"},
      {R"({"weight_map":{"a":""}})", "relative"},
  };
  for (const auto& [json, needle] : cases) {
    SCOPED_TRACE(json);
    WriteIndex(json);
    ExpectError(SafetensorsCheckpoint::Open(dir_).status(), absl::StatusCode::kInvalidArgument, index, {needle});
  }
}

// ---------------------------------------------------------------------------------------------
// Fuzz: Open must never crash, whatever the bytes. A valid result must be self-consistent.

TEST_F(SafetensorsTest, RandomCorruptionNeverCrashes) {
  const std::string f32(24, '\x3f'), bf16(4, '\x40'), i64(16, '\x01'), b(3, '\x01'), s(8, '\0');
  const fs::path base_path = dir_ / "base.safetensors";
  ASSERT_TRUE(WriteSafetensors(base_path,
                               {{"model.layers.0.weight", DType::kF32, {2, 3}, AsBytes(f32)},
                                {"bf", DType::kBF16, {2}, AsBytes(bf16)},
                                {"empty", DType::kF16, {0, 4}, {}},
                                {"ids", DType::kI64, {2}, AsBytes(i64)},
                                {"mask", DType::kBool, {3}, AsBytes(b)},
                                {"scalar", DType::kF64, {}, AsBytes(s)}},
                               {{"format", "pt"}})
                  .ok());
  const std::vector<std::string> bases = {ReadBytes(base_path), ReadBytes(kTestdata / "python_dtypes.safetensors")};

  std::mt19937_64 rng(20240601);
  auto uniform = [&](size_t n) { return std::uniform_int_distribution<size_t>(0, n - 1)(rng); };
  constexpr absl::string_view kDigits = "0123456789-.e";
  constexpr absl::string_view kStructural = "{}[]:,\" ";
  int ok = 0, errors = 0;
  constexpr int kIterations = 3000;
  for (int iter = 0; iter < kIterations; ++iter) {
    std::string bytes = bases[iter % bases.size()];
    uint64_t header_size = 0;
    std::memcpy(&header_size, bytes.data(), 8);
    const int n_mutations = 1 + static_cast<int>(uniform(3));
    for (int m = 0; m < n_mutations && !bytes.empty(); ++m) {
      const size_t header_span = bytes.size() > 8 ? std::min<size_t>(header_size, bytes.size() - 8) : 0;
      const size_t header_pos = header_span > 0 ? 8 + uniform(header_span) : bytes.size();
      switch (uniform(6)) {
        case 0:  // flip a bit anywhere
          bytes[uniform(bytes.size())] ^= static_cast<char>(1 << uniform(8));
          break;
        case 1:  // truncate
          bytes.resize(uniform(bytes.size() + 1));
          break;
        case 2:  // change a header digit (offsets, shapes) into another number character
          if (header_pos < bytes.size()) {
            const bool digit = std::isdigit(static_cast<unsigned char>(bytes[header_pos]));
            bytes[header_pos] = kDigits[uniform(digit ? kDigits.size() : 10)];
          }
          break;
        case 3:  // break the JSON structure
          if (header_pos < bytes.size()) {
            bytes[header_pos] = kStructural[uniform(kStructural.size())];
          }
          break;
        case 4:  // nudge the header length
          if (bytes.size() >= 8) bytes[uniform(2)] += static_cast<char>(uniform(5)) - 2;
          break;
        case 5:  // insert or delete a header byte, shifting everything after it
          if (header_pos < bytes.size()) {
            if (uniform(2) == 0) {
              bytes.insert(header_pos, 1, static_cast<char>(uniform(256)));
            } else {
              bytes.erase(header_pos, 1);
            }
          }
          break;
      }
    }
    WriteBytes(bad_path(), bytes);
    auto file = SafetensorsFile::Open(bad_path());
    if (!file.ok()) {
      ++errors;
      EXPECT_TRUE(file.status().code() == absl::StatusCode::kDataLoss ||
                  file.status().code() == absl::StatusCode::kUnimplemented)
          << "iteration " << iter << ": " << file.status();
      EXPECT_TRUE(absl::StrContains(file.status().message(), bad_path().string()))
          << "iteration " << iter << ": " << file.status();
      continue;
    }
    ++ok;
    uint64_t previous_end = 0;
    unsigned checksum = 0;
    for (const TensorInfo& t : (*file)->tensors()) {
      const absl::Span<const std::byte> data = (*file)->Data(t);
      ASSERT_EQ(data.size(), t.data_end - t.data_begin) << "iteration " << iter;
      ASSERT_EQ(data.size(), static_cast<uint64_t>(t.numel()) * DTypeSize(t.dtype)) << "iteration " << iter;
      if (!data.empty()) {
        ASSERT_GE(t.data_begin, previous_end) << "iteration " << iter << ": overlap";
        previous_end = t.data_end;
      }
      for (std::byte x : data) checksum += static_cast<unsigned>(x);  // every byte readable
      ASSERT_EQ((*file)->Find(t.name), &t) << "iteration " << iter;
    }
    (void)checksum;
  }
  std::cout << "fuzz: " << ok << " opened, " << errors << " rejected of " << kIterations << "\n";
  EXPECT_GT(ok, 0);
  EXPECT_GT(errors, kIterations / 2);
}

}  // namespace
}  // namespace lesion::model
