// StoreWriter: the one thread that writes lesiond's experiment store. Writes run one at a time in
// the order they were queued, on the writer's own connection (SQLite allows one writer; readers
// use their own connections), so that a Submit, a finished result or a retention batch never waits
// for another caller's transaction while holding a lock of the tracker's.
//
//   StoreWriter writer(std::move(store));
//   writer.Enqueue([](storage::ExperimentStore& s) { s.Insert(...); });
//   writer.Flush();  // every write queued so far is done
//
// Thread-safe. The destructor drains the queue, then joins the thread.
#ifndef LESION_SERVER_STORE_WRITER_H_
#define LESION_SERVER_STORE_WRITER_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "storage/experiment_store.h"

namespace lesion::server {

class StoreWriter {
 public:
  // A write runs on the writer thread; it reports its own errors (the store's calls return them).
  using Write = std::function<void(storage::ExperimentStore&)>;

  // Starts the writer thread on `store`.
  explicit StoreWriter(std::unique_ptr<storage::ExperimentStore> store);
  ~StoreWriter();
  StoreWriter(const StoreWriter&) = delete;
  StoreWriter& operator=(const StoreWriter&) = delete;

  void Enqueue(Write write);
  // Blocks until every write queued so far is done.
  void Flush();
  // Calls `fn` on the writer thread once every write queued so far is done, without blocking.
  void AfterQueuedWrites(std::function<void()> fn);

 private:
  void Loop();

  absl::Mutex mu_;
  std::deque<Write> queue_ ABSL_GUARDED_BY(mu_);
  int64_t enqueued_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t written_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  const std::unique_ptr<storage::ExperimentStore> store_;  // used by the writer thread only
  std::thread thread_;
};

}  // namespace lesion::server

#endif  // LESION_SERVER_STORE_WRITER_H_
