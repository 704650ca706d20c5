// Test helper: guards a call that must not block on a FIFO. Files that open a FIFO for reading
// without O_NONBLOCK wait in open() for a writer, forever if none comes; a test of that would hang
// instead of failing. A FifoWatchdog opens the FIFO for writing if the call has not returned within
// a deadline, which releases such a reader, and Stop() reports whether it had to.
//
//   FifoWatchdog watchdog(dir / "config.json");   // made with mkfifo
//   absl::StatusOr<std::string> text = ReadFile(dir / "config.json");
//   EXPECT_FALSE(watchdog.Stop()) << "ReadFile blocked opening a FIFO";
//
// Header-only, for tests. Thread-safe: Stop() may be called from any thread, more than once.
#ifndef LESION_COMMON_TESTING_FIFO_WATCHDOG_H_
#define LESION_COMMON_TESTING_FIFO_WATCHDOG_H_

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <thread>
#include <utility>

namespace lesion {

class FifoWatchdog {
 public:
  explicit FifoWatchdog(std::filesystem::path fifo, std::chrono::milliseconds deadline = std::chrono::seconds(5))
      : fifo_(std::move(fifo)), deadline_(deadline), thread_([this] { Run(); }) {}
  ~FifoWatchdog() { Stop(); }
  FifoWatchdog(const FifoWatchdog&) = delete;
  FifoWatchdog& operator=(const FifoWatchdog&) = delete;

  // Ends the watch; true if a reader had to be released (the call under test blocked).
  bool Stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
    return released_.load();
  }

 private:
  void Run() {
    std::unique_lock<std::mutex> lock(mu_);
    if (cv_.wait_for(lock, deadline_, [this] { return done_; })) return;
    // Past the deadline: open the write end until a reader is released. With O_NONBLOCK the open
    // fails (ENXIO) while no reader waits, so this never blocks itself.
    while (!done_) {
      const int fd = ::open(fifo_.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
      if (fd >= 0) {
        released_ = true;
        ::close(fd);
      }
      cv_.wait_for(lock, std::chrono::milliseconds(100), [this] { return done_; });
    }
  }

  const std::filesystem::path fifo_;
  const std::chrono::milliseconds deadline_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;  // guarded by mu_
  std::atomic<bool> released_{false};
  std::thread thread_;  // last: starts after the members it reads
};

}  // namespace lesion

#endif  // LESION_COMMON_TESTING_FIFO_WATCHDOG_H_
