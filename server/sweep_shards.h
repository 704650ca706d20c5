// ShardedSweep: a sweep cut into shards that run on several executors at once (one per replica of
// the model), and what they report together: one start, the progress summed over the shards, and
// the parent result merged from theirs (the variant rows each shard ran, the forward passes of all,
// the devices that ran them). Torch-free: plain results only.
//
// Thread-safe: the shards report from their executor threads.
#ifndef LESION_SERVER_SWEEP_SHARDS_H_
#define LESION_SERVER_SWEEP_SHARDS_H_

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "spec/result.h"

namespace lesion::server {

class ShardedSweep {
 public:
  explicit ShardedSweep(int64_t shards);

  // True for the first shard to start (which reports the experiment's start); the sweep's time
  // counts from then.
  bool MarkStarted();

  // Records shard `shard`'s progress; returns (passes done, passes planned) over all shards.
  std::pair<int64_t, int64_t> ReportProgress(int64_t shard, int64_t done, int64_t planned);

  // Adds a finished shard, run on `device`: its variant rows and passes, or its error (the first
  // error is the sweep's).
  void Merge(absl::StatusOr<result::Experiment> shard, const std::string& device);

  // The parent's result once no shard is left: merged when every shard succeeded, the first error
  // otherwise, Cancelled when a shard never ran.
  absl::StatusOr<result::Experiment> Outcome();

 private:
  absl::Mutex mu_;  // the callbacks that take it are short
  const int64_t shards_;
  int64_t succeeded_ ABSL_GUARDED_BY(mu_) = 0;
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  std::chrono::steady_clock::time_point start_ ABSL_GUARDED_BY(mu_);
  std::vector<std::pair<int64_t, int64_t>> passes_ ABSL_GUARDED_BY(mu_);  // per shard: done, planned
  std::optional<result::Experiment> merged_ ABSL_GUARDED_BY(mu_);         // the parent result so far
  absl::Status error_ ABSL_GUARDED_BY(mu_);                               // the first shard's error
};

}  // namespace lesion::server

#endif  // LESION_SERVER_SWEEP_SHARDS_H_
