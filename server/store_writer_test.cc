#include "server/store_writer.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "common/testing/scoped_test_dir.h"
#include "common/testing/status_matchers.h"

namespace lesion::server {
namespace {

class StoreWriterTest : public ::testing::Test {
 protected:
  std::unique_ptr<storage::ExperimentStore> OpenStore() {
    auto store = storage::ExperimentStore::Open((dir_.path() / "lesion.db").string());
    EXPECT_OK(store);
    return store.ok() ? *std::move(store) : nullptr;
  }
  ScopedTestDir dir_{"store_writer"};
};

TEST_F(StoreWriterTest, WritesRunInQueueOrderOnTheWritersConnection) {
  auto store = OpenStore();
  storage::ExperimentStore* const connection = store.get();
  StoreWriter writer(std::move(store));
  std::vector<int> order;  // touched by the writer thread only, read after Flush
  std::thread::id writer_thread;
  for (int i = 0; i < 100; ++i) {
    writer.Enqueue([&, i, connection](storage::ExperimentStore& s) {
      EXPECT_EQ(&s, connection);
      if (i == 0) writer_thread = std::this_thread::get_id();
      EXPECT_EQ(std::this_thread::get_id(), writer_thread);
      order.push_back(i);
    });
  }
  writer.Flush();
  ASSERT_EQ(order.size(), 100u);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(order[i], i);
  EXPECT_NE(writer_thread, std::this_thread::get_id());
}

TEST_F(StoreWriterTest, AfterQueuedWritesWaitsForEarlierWritesWithoutBlocking) {
  StoreWriter writer(OpenStore());
  absl::Notification release, after;
  std::atomic<bool> first_done{false};
  writer.Enqueue([&](storage::ExperimentStore&) {
    release.WaitForNotification();
    first_done = true;
  });
  writer.AfterQueuedWrites([&] {
    EXPECT_TRUE(first_done);
    after.Notify();
  });
  EXPECT_FALSE(after.HasBeenNotified());  // returned at once, the write still held
  release.Notify();
  after.WaitForNotification();
}

TEST_F(StoreWriterTest, DestructionDrainsTheQueue) {
  std::atomic<int> written{0};
  {
    StoreWriter writer(OpenStore());
    for (int i = 0; i < 50; ++i) writer.Enqueue([&](storage::ExperimentStore&) { ++written; });
  }
  EXPECT_EQ(written, 50);
}

}  // namespace
}  // namespace lesion::server
