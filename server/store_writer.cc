#include "server/store_writer.h"

#include <utility>

namespace lesion::server {

StoreWriter::StoreWriter(std::unique_ptr<storage::ExperimentStore> store) : store_(std::move(store)) {
  thread_ = std::thread([this] { Loop(); });
}

StoreWriter::~StoreWriter() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  thread_.join();
}

void StoreWriter::Enqueue(Write write) {
  absl::MutexLock lock(&mu_);
  queue_.push_back(std::move(write));
  ++enqueued_;
}

void StoreWriter::Loop() {
  while (true) {
    Write write;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](StoreWriter* w) ABSL_NO_THREAD_SAFETY_ANALYSIS { return w->stop_ || !w->queue_.empty(); }, this));
      if (queue_.empty()) return;  // stop_ and drained
      write = std::move(queue_.front());
      queue_.pop_front();
    }
    write(*store_);
    absl::MutexLock lock(&mu_);
    ++written_;
  }
}

void StoreWriter::AfterQueuedWrites(std::function<void()> fn) {
  Enqueue([fn = std::move(fn)](storage::ExperimentStore&) { fn(); });
}

void StoreWriter::Flush() {
  absl::MutexLock lock(&mu_);
  struct Arg {
    StoreWriter* w;
    int64_t target;
  } arg{this, enqueued_};
  mu_.Await(absl::Condition(
      +[](Arg* a) ABSL_NO_THREAD_SAFETY_ANALYSIS { return a->w->written_ >= a->target; }, &arg));
}

}  // namespace lesion::server
