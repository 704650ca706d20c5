#include "storage/read_pool.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace lesion::storage {

// More connections than this buy nothing on the machines lesiond runs on, and each holds a page
// cache and, while lent, up to a page of results.
constexpr int64_t kMaxReadConnections = 256;

absl::StatusOr<std::unique_ptr<ReadPool>> ReadPool::Create(const std::string& path, int64_t size) {
  if (size < 1 || size > kMaxReadConnections) {
    return absl::InvalidArgumentError(
        absl::StrCat("read connections ", size, " out of range: use 1 to ", kMaxReadConnections));
  }
  std::vector<std::unique_ptr<ExperimentStore>> stores;
  for (int64_t i = 0; i < size; ++i) {
    ASSIGN_OR_RETURN(std::unique_ptr<ExperimentStore> store, ExperimentStore::OpenReadOnly(path));
    stores.push_back(std::move(store));
  }
  return std::unique_ptr<ReadPool>(new ReadPool(std::move(stores)));
}

ReadPool::ReadPool(std::vector<std::unique_ptr<ExperimentStore>> stores) : stores_(std::move(stores)) {
  for (const auto& store : stores_) free_.push_back(store.get());
}

ReadPool::Lease ReadPool::Acquire() {
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(
      +[](std::vector<ExperimentStore*>* free) { return !free->empty(); }, &free_));
  ExperimentStore* store = free_.back();
  free_.pop_back();
  return Lease(this, store);
}

void ReadPool::Return(ExperimentStore* store) {
  absl::MutexLock lock(&mu_);
  free_.push_back(store);
}

ReadPool::Lease::~Lease() {
  if (pool_ != nullptr) pool_->Return(store_);
}

}  // namespace lesion::storage
