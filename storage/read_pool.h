// ReadPool: a fixed set of read-only ExperimentStores on one database file, lent out one per read.
// WAL lets each connection read a consistent snapshot while the writer writes and while the others
// read, so a slow read (a large list) delays neither the writer nor the other readers; only when
// every connection is lent does a read wait, for the first one returned. The bound is deliberate:
// it caps how many large reads hold memory at once.
//
//   ASSIGN_OR_RETURN(std::unique_ptr<ReadPool> pool, ReadPool::Create("lesion.db", 4));
//   ReadPool::Lease reader = pool->Acquire();
//   ASSIGN_OR_RETURN(ExperimentRecord record, reader->Get(id));
//
// Threads: thread-safe; a Lease belongs to the thread that holds it.
// Ownership: the pool owns its stores; a Lease borrows one and must not outlive the pool.
#ifndef LESION_STORAGE_READ_POOL_H_
#define LESION_STORAGE_READ_POOL_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "storage/experiment_store.h"

namespace lesion::storage {

class ReadPool {
 public:
  // A borrowed store, given back on destruction. Move-only.
  class Lease {
   public:
    Lease(Lease&& other) noexcept
        : pool_(std::exchange(other.pool_, nullptr)), store_(std::exchange(other.store_, nullptr)) {}
    Lease& operator=(Lease&&) = delete;
    ~Lease();
    ExperimentStore* operator->() const { return store_; }
    ExperimentStore& operator*() const { return *store_; }

   private:
    friend class ReadPool;
    Lease(ReadPool* pool, ExperimentStore* store) : pool_(pool), store_(store) {}
    ReadPool* pool_;
    ExperimentStore* store_;
  };

  // Opens `size` (>= 1) read-only connections to the store at `path`, which must exist at the
  // current schema (ExperimentStore::Open it first). InvalidArgument for a size out of range;
  // OpenReadOnly's errors.
  static absl::StatusOr<std::unique_ptr<ReadPool>> Create(const std::string& path, int64_t size);

  // A free connection; waits while all are lent.
  Lease Acquire();
  int size() const { return static_cast<int>(stores_.size()); }

 private:
  explicit ReadPool(std::vector<std::unique_ptr<ExperimentStore>> stores);
  void Return(ExperimentStore* store);

  const std::vector<std::unique_ptr<ExperimentStore>> stores_;
  absl::Mutex mu_;
  std::vector<ExperimentStore*> free_ ABSL_GUARDED_BY(mu_);
};

}  // namespace lesion::storage

#endif  // LESION_STORAGE_READ_POOL_H_
