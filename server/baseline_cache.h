// BaselineCache: the baseline passes of finished experiments, held in memory by key (BaselineKey of
// tracker.h: fingerprint, device kinds, TF32, spec.baseline_sha256) so that a later experiment with the same model,
// dataset and measurements skips its baseline forward passes. The store keeps every baseline on disk; this is only the
// hot set in front of it:
//   * bounded by bytes (the passes' serialized size), least recently used out first;
//   * a pass with captured tensors is never held (captures can be hundreds of MB; the store reads
//     them back on demand).
//
//   BaselineCache cache(256 << 20);
//   cache.Put(key, pass);
//   std::optional<lesion::v1::PassResult> hit = cache.Get(key);
//
// Thread-safe.
#ifndef LESION_SERVER_BASELINE_CACHE_H_
#define LESION_SERVER_BASELINE_CACHE_H_

#include <cstdint>
#include <list>
#include <optional>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "proto/lesion/v1/result.pb.h"

namespace lesion::server {

class BaselineCache {
 public:
  // `max_bytes` 0 holds nothing.
  explicit BaselineCache(int64_t max_bytes) : max_bytes_(max_bytes) {}

  // Holds `pass` under `key` (replacing an older one), evicting the least recently used entries
  // beyond the bound. A pass with captures, or larger than the bound alone, is not held.
  void Put(const std::string& key, const lesion::v1::PassResult& pass);
  // A copy of the pass under `key`, which becomes the most recently used; nullopt if not held.
  std::optional<lesion::v1::PassResult> Get(const std::string& key);

  int64_t bytes() const;
  int64_t entries() const;
  int64_t max_bytes() const { return max_bytes_; }

 private:
  struct Entry {
    std::string key;
    lesion::v1::PassResult pass;
    int64_t bytes = 0;
  };
  void EvictLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const int64_t max_bytes_;
  mutable absl::Mutex mu_;
  std::list<Entry> lru_ ABSL_GUARDED_BY(mu_);  // most recently used first
  absl::flat_hash_map<std::string, std::list<Entry>::iterator> index_ ABSL_GUARDED_BY(mu_);
  int64_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace lesion::server

#endif  // LESION_SERVER_BASELINE_CACHE_H_
