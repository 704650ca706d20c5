#include "server/sweep_shards.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace lesion::server {

ShardedSweep::ShardedSweep(int64_t shards) : shards_(shards), passes_(shards, {0, 0}) {}

bool ShardedSweep::MarkStarted() {
  absl::MutexLock lock(&mu_);
  if (started_) return false;
  started_ = true;
  start_ = std::chrono::steady_clock::now();
  return true;
}

std::pair<int64_t, int64_t> ShardedSweep::ReportProgress(int64_t shard, int64_t done, int64_t planned) {
  absl::MutexLock lock(&mu_);
  passes_[shard] = {done, planned};
  int64_t all_done = 0, all_planned = 0;
  for (const auto& [d, p] : passes_) {
    all_done += d;
    all_planned += p;
  }
  return {all_done, all_planned};
}

void ShardedSweep::Merge(absl::StatusOr<result::Experiment> shard, const std::string& device) {
  absl::MutexLock lock(&mu_);
  if (!shard.ok()) {
    if (error_.ok()) error_ = shard.status();
    return;
  }
  ++succeeded_;
  if (!merged_.has_value()) {
    merged_ = *std::move(shard);
    merged_->run.device = device;
    return;
  }
  for (size_t i = 0; i < shard->sweep.variants.size(); ++i) {
    if (!shard->sweep.variants[i].name.empty()) merged_->sweep.variants[i] = shard->sweep.variants[i];
  }
  merged_->run.forward_passes += shard->run.forward_passes;
  merged_->sweep.variants_per_pass = std::max(merged_->sweep.variants_per_pass, shard->sweep.variants_per_pass);
  absl::StrAppend(&merged_->run.device, ",", device);
}

absl::StatusOr<result::Experiment> ShardedSweep::Outcome() {
  absl::MutexLock lock(&mu_);
  if (!error_.ok()) return error_;
  if (succeeded_ < shards_ || !merged_.has_value()) {
    return absl::CancelledError("the sweep was cancelled before every shard ran");
  }
  merged_->run.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  return *std::move(merged_);
}

}  // namespace lesion::server
