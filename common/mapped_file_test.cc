#include "common/mapped_file.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "common/file_util.h"
#include "common/testing/fifo_watchdog.h"
#include "common/testing/scoped_test_dir.h"
#include "common/testing/status_matchers.h"

namespace lesion {
namespace {

namespace fs = std::filesystem;

class MappedFileTest : public ::testing::Test {
 protected:
  ScopedTestDir test_dir_{"mapped_file_test"};
  const fs::path& dir_ = test_dir_.path();
};

std::string AsString(absl::Span<const std::byte> bytes) {
  return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

// Checks the code and that the message contains the path and every one of `needles`.
void ExpectError(const absl::Status& status, absl::StatusCode code, const fs::path& path,
                 std::initializer_list<absl::string_view> needles = {}) {
  EXPECT_EQ(status.code(), code) << status;
  EXPECT_TRUE(absl::StrContains(status.message(), path.string())) << status;
  for (absl::string_view needle : needles) {
    EXPECT_TRUE(absl::StrContains(status.message(), needle)) << "message lacks \"" << needle << "\": " << status;
  }
}

TEST_F(MappedFileTest, MapsTheWholeFile) {
  const std::string contents("binary\0bytes\n", 13);
  ASSERT_OK(WriteFileAtomically(dir_ / "f", contents));
  absl::StatusOr<std::unique_ptr<MappedFile>> file = MappedFile::Open(dir_ / "f", "test file");
  ASSERT_OK(file);
  EXPECT_EQ(AsString((*file)->bytes()), contents);
  EXPECT_EQ((*file)->path(), dir_ / "f");
}

TEST_F(MappedFileTest, BytesOutliveTheFileName) {
  std::string contents(100000, 'a');
  for (size_t i = 0; i < contents.size(); i += 7) contents[i] = static_cast<char>('b' + i % 20);
  ASSERT_OK(WriteFileAtomically(dir_ / "big", contents));
  absl::StatusOr<std::unique_ptr<MappedFile>> file = MappedFile::Open(dir_ / "big", "test file");
  ASSERT_OK(file);
  ASSERT_EQ(::unlink((dir_ / "big").c_str()), 0);  // the mapping keeps the file alive
  EXPECT_EQ(AsString((*file)->bytes()), contents);
}

TEST_F(MappedFileTest, EmptyFileHasEmptyBytes) {
  ASSERT_OK(WriteFileAtomically(dir_ / "empty", ""));
  absl::StatusOr<std::unique_ptr<MappedFile>> file = MappedFile::Open(dir_ / "empty", "test file");
  ASSERT_OK(file);
  EXPECT_TRUE((*file)->bytes().empty());
}

TEST_F(MappedFileTest, SymlinkToARegularFileIsFollowed) {
  ASSERT_OK(WriteFileAtomically(dir_ / "target", "x"));
  fs::create_symlink(dir_ / "target", dir_ / "link");
  absl::StatusOr<std::unique_ptr<MappedFile>> file = MappedFile::Open(dir_ / "link", "test file");
  ASSERT_OK(file);
  EXPECT_EQ(AsString((*file)->bytes()), "x");
  EXPECT_EQ((*file)->path(), dir_ / "link");
}

TEST_F(MappedFileTest, MissingFileIsNotFound) {
  ExpectError(MappedFile::Open(dir_ / "missing", "test file").status(), absl::StatusCode::kNotFound, dir_ / "missing",
              {"cannot open test file"});
  ExpectError(MappedFile::Open(dir_ / "missing" / "below", "test file").status(), absl::StatusCode::kNotFound,
              dir_ / "missing" / "below");
}

TEST_F(MappedFileTest, UnreadableFileIsPermissionDenied) {
  if (::geteuid() == 0) GTEST_SKIP() << "root reads any file";
  ASSERT_OK(WriteFileAtomically(dir_ / "secret", "x"));
  ASSERT_EQ(::chmod((dir_ / "secret").c_str(), 0), 0);
  ExpectError(MappedFile::Open(dir_ / "secret", "test file").status(), absl::StatusCode::kPermissionDenied,
              dir_ / "secret");
}

TEST_F(MappedFileTest, DirectoryIsInvalidArgument) {
  ExpectError(MappedFile::Open(dir_, "test file").status(), absl::StatusCode::kInvalidArgument, dir_,
              {"is a directory", "is not a regular file", "so not a test file"});
}

TEST_F(MappedFileTest, DeviceIsInvalidArgument) {
  ExpectError(MappedFile::Open("/dev/zero", "test file").status(), absl::StatusCode::kInvalidArgument, "/dev/zero",
              {"is not a regular file", "character device"});
}

TEST_F(MappedFileTest, FifoIsRefusedWithoutBlocking) {
  const fs::path fifo = dir_ / "model.gguf";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  FifoWatchdog watchdog(fifo);
  const absl::Status status = MappedFile::Open(fifo, "test file").status();
  EXPECT_FALSE(watchdog.Stop()) << "MappedFile::Open blocked opening a FIFO";
  ExpectError(status, absl::StatusCode::kInvalidArgument, fifo,
              {"is not a regular file", "FIFO", "so not a test file"});
}

}  // namespace
}  // namespace lesion
