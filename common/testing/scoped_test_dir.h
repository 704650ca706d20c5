// ScopedTestDir: a fresh, empty directory for the running GoogleTest test, removed with everything
// in it when the object goes out of scope. For tests only (it reads gtest's current test name).
//
//   class MyTest : public ::testing::Test {
//    protected:
//     ScopedTestDir dir_{"my_test"};   // dir_.path() == $TMPDIR/my_test_<pid>_<TestName>
//   };
//
// Not thread-safe; one per test.
#ifndef LESION_COMMON_TESTING_SCOPED_TEST_DIR_H_
#define LESION_COMMON_TESTING_SCOPED_TEST_DIR_H_

#include <unistd.h>

#include <filesystem>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/file_util.h"
#include "gtest/gtest.h"

namespace lesion {

class ScopedTestDir {
 public:
  explicit ScopedTestDir(absl::string_view prefix) {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = std::filesystem::path(::testing::TempDir()) /
            absl::StrCat(prefix, "_", ::getpid(), "_", info != nullptr ? info->name() : "no_test");
    EXPECT_TRUE(RemoveTree(path_).ok());
    std::error_code ec;
    std::filesystem::create_directories(path_, ec);
    EXPECT_FALSE(ec) << "cannot create " << path_ << ": " << ec.message();
  }
  ~ScopedTestDir() { (void)RemoveTree(path_); }
  ScopedTestDir(const ScopedTestDir&) = delete;
  ScopedTestDir& operator=(const ScopedTestDir&) = delete;

  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

}  // namespace lesion

#endif  // LESION_COMMON_TESTING_SCOPED_TEST_DIR_H_
