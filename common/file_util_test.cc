#include "common/file_util.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <string>
#include <utility>

#include "common/testing/fifo_watchdog.h"
#include "common/testing/scoped_test_dir.h"
#include "common/testing/status_matchers.h"

namespace lesion {
namespace {

using ::lesion::matchers::StatusIs;

namespace fs = std::filesystem;

class FileUtilTest : public ::testing::Test {
 protected:
  ScopedTestDir test_dir_{"file_util_test"};
  const fs::path& dir_ = test_dir_.path();
};

TEST_F(FileUtilTest, ReadsAWrittenFile) {
  const std::string contents("binary\0bytes\n", 13);
  ASSERT_OK(WriteFileAtomically(dir_ / "f", contents));
  absl::StatusOr<std::string> read = ReadFile(dir_ / "f");
  ASSERT_OK(read);
  EXPECT_EQ(*read, contents);
}

TEST_F(FileUtilTest, ReadsAFileLargerThanOneBuffer) {
  std::string contents(200000, 'a');
  for (size_t i = 0; i < contents.size(); i += 7) contents[i] = static_cast<char>('b' + i % 20);
  ASSERT_OK(WriteFileAtomically(dir_ / "big", contents));
  absl::StatusOr<std::string> read = ReadFile(dir_ / "big");
  ASSERT_OK(read);
  EXPECT_EQ(*read, contents);
}

TEST_F(FileUtilTest, MissingFileIsNotFound) {
  absl::StatusOr<std::string> read = ReadFile(dir_ / "missing");
  EXPECT_THAT(read, StatusIs(absl::StatusCode::kNotFound));
  EXPECT_NE(read.status().message().find("missing"), std::string::npos) << read.status();
}

TEST_F(FileUtilTest, DirectoryIsInvalidArgument) {
  absl::StatusOr<std::string> read = ReadFile(dir_);
  EXPECT_THAT(read, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_NE(read.status().message().find("is a directory"), std::string::npos) << read.status();
}

// Regression: a FIFO named like a model file (config.json, tokenizer.json) made loading wait in
// open() for a writer forever.
TEST_F(FileUtilTest, FifoIsRefusedWithoutBlocking) {
  const fs::path fifo = dir_ / "config.json";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  FifoWatchdog watchdog(fifo);
  absl::StatusOr<std::string> read = ReadFile(fifo);
  EXPECT_FALSE(watchdog.Stop()) << "ReadFile blocked opening a FIFO";
  EXPECT_EQ(read.status().code(), absl::StatusCode::kInvalidArgument) << read.status();
  EXPECT_NE(read.status().message().find("is not a regular file"), std::string::npos) << read.status();
}

TEST_F(FileUtilTest, DeviceIsInvalidArgument) {
  absl::StatusOr<std::string> read = ReadFile("/dev/zero");  // would never end
  EXPECT_EQ(read.status().code(), absl::StatusCode::kInvalidArgument) << read.status();
  EXPECT_NE(read.status().message().find("is not a regular file"), std::string::npos) << read.status();
}

TEST_F(FileUtilTest, SymlinkToARegularFileIsFollowed) {
  ASSERT_OK(WriteFileAtomically(dir_ / "target", "x"));
  fs::create_symlink(dir_ / "target", dir_ / "link");
  absl::StatusOr<std::string> read = ReadFile(dir_ / "link");
  ASSERT_OK(read);
  EXPECT_EQ(*read, "x");
}

TEST(ErrnoToStatusTest, MapsEachErrnoToItsCode) {
  const std::pair<int, absl::StatusCode> cases[] = {
      {ENOENT, absl::StatusCode::kNotFound},
      {ENOTDIR, absl::StatusCode::kNotFound},
      {EACCES, absl::StatusCode::kPermissionDenied},
      {EPERM, absl::StatusCode::kPermissionDenied},
      {EROFS, absl::StatusCode::kPermissionDenied},
      {ENOSPC, absl::StatusCode::kResourceExhausted},
      {EDQUOT, absl::StatusCode::kResourceExhausted},
      {ENOMEM, absl::StatusCode::kResourceExhausted},
      {EMFILE, absl::StatusCode::kResourceExhausted},
      {ENFILE, absl::StatusCode::kResourceExhausted},
      {EIO, absl::StatusCode::kInternal},
      {EINVAL, absl::StatusCode::kInternal},
  };
  for (const auto& [err, code] : cases) {
    const absl::Status status = ErrnoToStatus(err, "cannot frob /x");
    EXPECT_EQ(status.code(), code) << status;
    EXPECT_EQ(status.message(), std::string("cannot frob /x: ") + std::strerror(err));
  }
}

TEST_F(FileUtilTest, OpenRegularFileGivesTheSize) {
  ASSERT_OK(WriteFileAtomically(dir_ / "f", "12345"));
  absl::StatusOr<OpenedFile> file = OpenRegularFile(dir_ / "f", "test file");
  ASSERT_OK(file);
  EXPECT_GE(file->fd.get(), 0);
  EXPECT_EQ(file->size, 5u);
  EXPECT_EQ(file->fd.Close(), 0);
  EXPECT_EQ(file->fd.get(), -1);
  EXPECT_EQ(file->fd.Close(), 0);  // closing twice is a no-op
}

TEST_F(FileUtilTest, OpenRegularFileNamesTheKindInMessages) {
  absl::StatusOr<OpenedFile> missing = OpenRegularFile(dir_ / "missing", "test file");
  EXPECT_THAT(missing, StatusIs(absl::StatusCode::kNotFound));
  EXPECT_NE(missing.status().message().find("cannot open test file " + (dir_ / "missing").string()), std::string::npos)
      << missing.status();
  absl::StatusOr<OpenedFile> dir = OpenRegularFile(dir_, "test file");
  EXPECT_THAT(dir, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(dir.status().message(), dir_.string() + " is not a regular file (it is a directory), so not a test file");
}

TEST(ScopedFdTest, MovingTransfersOwnership) {
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  ScopedFd read_end(fds[0]);
  ScopedFd moved(std::move(read_end));
  EXPECT_EQ(read_end.get(), -1);  // NOLINT(bugprone-use-after-move): the moved-from state
  EXPECT_EQ(moved.get(), fds[0]);
  { ScopedFd write_end(fds[1]); }
  EXPECT_EQ(::fcntl(fds[1], F_GETFD), -1);  // closed by the destructor
  ScopedFd assigned;
  assigned = std::move(moved);
  EXPECT_EQ(assigned.get(), fds[0]);
  EXPECT_EQ(assigned.Close(), 0);
  EXPECT_EQ(::fcntl(fds[0], F_GETFD), -1);
}

}  // namespace
}  // namespace lesion
