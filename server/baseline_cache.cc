#include "server/baseline_cache.h"

namespace lesion::server {

void BaselineCache::Put(const std::string& key, const lesion::v1::PassResult& pass) {
  if (pass.captures_size() > 0) return;
  const int64_t size = static_cast<int64_t>(pass.ByteSizeLong()) + static_cast<int64_t>(key.size());
  absl::MutexLock lock(&mu_);
  if (auto it = index_.find(key); it != index_.end()) {
    bytes_ -= it->second->bytes;
    lru_.erase(it->second);
    index_.erase(it);
  }
  if (size > max_bytes_) return;
  lru_.push_front(Entry{key, pass, size});
  index_[key] = lru_.begin();
  bytes_ += size;
  EvictLocked();
}

std::optional<lesion::v1::PassResult> BaselineCache::Get(const std::string& key) {
  absl::MutexLock lock(&mu_);
  auto it = index_.find(key);
  if (it == index_.end()) return std::nullopt;
  lru_.splice(lru_.begin(), lru_, it->second);  // iterators stay valid
  return it->second->pass;
}

void BaselineCache::EvictLocked() {
  while (bytes_ > max_bytes_ && !lru_.empty()) {
    bytes_ -= lru_.back().bytes;
    index_.erase(lru_.back().key);
    lru_.pop_back();
  }
}

int64_t BaselineCache::bytes() const {
  absl::MutexLock lock(&mu_);
  return bytes_;
}

int64_t BaselineCache::entries() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(lru_.size());
}

}  // namespace lesion::server
