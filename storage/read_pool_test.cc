#include "storage/read_pool.h"

#include <atomic>
#include <thread>

#include "absl/synchronization/notification.h"
#include "common/testing/scoped_test_dir.h"
#include "common/testing/status_matchers.h"
#include "gtest/gtest.h"

namespace lesion::storage {
namespace {

ExperimentRecord Record(absl::string_view id) {
  ExperimentRecord r;
  r.id = std::string(id);
  r.user = "alice";
  r.name = "n";
  r.model = "gpt2";
  r.spec_json = "{}";
  return r;
}

class ReadPoolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = (dir_.path() / "lesion.db").string();
    auto writer = ExperimentStore::Open(path_);
    ASSERT_OK(writer);
    writer_ = *std::move(writer);
    ASSERT_OK(writer_->Insert(Record("a")));
  }

  // Opens a read transaction on `reader` and keeps it open while the returned statement lives
  // (mid-iteration): the state of a slow read that has not finished.
  static std::unique_ptr<Statement> HoldRead(ExperimentStore& reader) {
    auto select = reader.database()->Prepare("SELECT id FROM experiments");
    EXPECT_OK(select);
    auto row = (*select)->Step();
    EXPECT_TRUE(row.ok() && *row);
    return *std::move(select);
  }

  ScopedTestDir dir_{"read_pool_test"};
  std::string path_;
  std::unique_ptr<ExperimentStore> writer_;
};

TEST_F(ReadPoolTest, SizeIsChecked) {
  EXPECT_EQ(ReadPool::Create(path_, 0).status().code(), absl::StatusCode::kInvalidArgument);
  auto missing = ReadPool::Create((dir_.path() / "missing.db").string(), 2);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound) << missing.status();
}

TEST_F(ReadPoolTest, ReadersCannotWrite) {
  auto pool = ReadPool::Create(path_, 1);
  ASSERT_OK(pool);
  ReadPool::Lease reader = (*pool)->Acquire();
  const absl::Status write = reader->Insert(Record("b"));
  EXPECT_EQ(write.code(), absl::StatusCode::kPermissionDenied) << write;
  EXPECT_EQ(write.message().find("INSERT"), absl::string_view::npos) << write;
}

// A read in progress on one thread: another thread's read and the writer's writes go through
// while it is held, and it keeps its snapshot.
TEST_F(ReadPoolTest, AnOpenReadBlocksNeitherOtherReadsNorTheWriter) {
  auto pool = ReadPool::Create(path_, 2);
  ASSERT_OK(pool);
  absl::Notification holding, release;
  std::atomic<int64_t> seen_by_slow_read{-1};
  std::thread slow([&] {
    ReadPool::Lease reader = (*pool)->Acquire();
    std::unique_ptr<Statement> open = HoldRead(*reader);
    holding.Notify();
    release.WaitForNotification();
    // Still its snapshot from before the writes below.
    auto count = reader->database()->Prepare("SELECT count(*) FROM experiments");
    if (count.ok() && (*count)->Step().value_or(false)) seen_by_slow_read = (*count)->ColumnInt64(0);
  });
  holding.WaitForNotification();
  ASSERT_OK(writer_->Insert(Record("b")));  // the writer: no wait, no Unavailable
  ASSERT_OK(writer_->MarkRunning("b", absl::Now()));
  {
    ReadPool::Lease other = (*pool)->Acquire();  // a second reader, while the first is held
    auto page = other->Query({});
    ASSERT_OK(page);
    EXPECT_EQ(page->total, 2);
    EXPECT_EQ(other->Get("b")->status, ExperimentStatus::kRunning);
  }
  release.Notify();
  slow.join();
  EXPECT_EQ(seen_by_slow_read, 1);
}

// With every connection lent, a read waits for the first one given back (and gets it).
TEST_F(ReadPoolTest, AcquireWaitsOnlyWhileEveryConnectionIsLent) {
  auto pool = ReadPool::Create(path_, 1);
  ASSERT_OK(pool);
  std::optional<ReadPool::Lease> held((*pool)->Acquire());
  ExperimentStore* const lent = &**held;
  std::atomic<bool> acquired{false};
  ExperimentStore* got = nullptr;
  std::thread waiter([&] {
    ReadPool::Lease lease = (*pool)->Acquire();
    got = &*lease;
    acquired = true;
  });
  // A waiter that got through here would be a bug; one that has not yet is the expected case.
  EXPECT_FALSE(acquired);
  held.reset();
  waiter.join();
  EXPECT_TRUE(acquired);
  EXPECT_EQ(got, lent);
}

}  // namespace
}  // namespace lesion::storage
