// DeviceExecutors: one thread per device key ("cuda:1", "cpu", "cpu#1"), each with a fair queue of
// tasks (FairQueue: users round-robin) and a queue of admin work (an unload's frees) that goes
// before the next task. A task is one experiment, or one shard of a sweep spread over the replicas
// of its model; the executors track each job over its tasks, cancel it as a whole and report it
// once, when its last task ends.
//
//   DeviceExecutors executors(max_queue, run_task, job_ended);
//   ASSIGN_OR_RETURN(int64_t ahead, executors.Enqueue(job, std::move(tasks)));
//   executors.Cancel(job->id);
//
// Thread-safe. `run_task` runs on the executor threads, one task per thread at a time; job_ended
// and each job's on_finish run on whichever thread ends the job (an executor, Cancel's or
// Shutdown's caller), without the executors' lock held. Errors: AlreadyExists (an id queued
// twice), ResourceExhausted (a full queue), NotFound (an unknown id), Unavailable (shut down).
#ifndef LESION_SERVER_DEVICE_EXECUTORS_H_
#define LESION_SERVER_DEVICE_EXECUTORS_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "server/engine.h"
#include "server/fair_queue.h"
#include "server/model_registry.h"
#include "server/sweep_shards.h"

namespace lesion::server {

// One unit of an executor's queue: a single experiment, or one shard of a sweep.
struct Task {
  std::shared_ptr<Job> job;
  Replica replica;                      // what it runs on; its executor runs it
  std::vector<int64_t> groups;          // a sweep's shard: its groups
  std::shared_ptr<ShardedSweep> sweep;  // null for a single experiment
  int64_t shard = 0;
};

class DeviceExecutors {
 public:
  // Runs `task` on its executor's thread (`executor` is its key); `cancelled` turns true once the
  // job is cancelled, a sibling shard failed, or the executors shut down.
  using RunTask = std::function<absl::StatusOr<result::Experiment>(Task& task, const std::string& executor,
                                                                   const std::function<bool()>& cancelled)>;
  // Once per job, when its last task is done or dropped, before its on_finish.
  using JobEnded = std::function<void(const Job& job)>;

  DeviceExecutors(int64_t max_queue_per_device, RunTask run_task, JobEnded job_ended);
  ~DeviceExecutors();  // Shutdown()

  // Starts the executors of `keys` that do not exist yet (none after Shutdown).
  void Ensure(const std::vector<std::string>& keys);
  // Work ahead on an executor: its queue and what it runs now (0 for one that does not exist).
  int64_t Load(const std::string& key) const;
  // Queues every task of `job` (each on its replica's executor), or none of them; returns how many
  // experiments are ahead of the job where it waits least.
  absl::StatusOr<int64_t> Enqueue(std::shared_ptr<Job> job, std::vector<Task> tasks);
  // A queued job leaves the queues (its on_finish gets Cancelled at once, on this thread); a
  // running one stops before its next forward pass, every shard of it.
  absl::Status Cancel(const std::string& id);
  // Experiments ahead of a queued job; NotFound if it is not queued (unknown or running).
  absl::StatusOr<int64_t> Position(const std::string& id) const;
  // Runs `work` on executor `key`'s thread before its next task (here, at once, if that executor
  // is gone).
  void RunBeforeNextTask(const std::string& key, std::function<void()> work);
  // Every executor, in key order, without device memory (the engine adds it).
  std::vector<DeviceStats> Stats() const;
  // Whether no executor is mid-task.
  bool AllIdle() const;
  // Stops taking work, cancels what is queued (on_finish: Cancelled) and what runs, and joins the
  // threads. Idempotent.
  void Shutdown();

 private:
  // One device's queue and thread. Members guarded by mu_ unless said otherwise.
  struct Executor {
    std::string key;
    std::deque<std::function<void()>> admin;  // before the next task
    FairQueue<Task> queue;                    // per user in arrival order, users round-robin
    std::string running_id;
    std::atomic<bool> cancel_running{false};  // read by the executor thread without mu_
    absl::CondVar wake;
    std::thread thread;
  };
  struct JobState {
    std::shared_ptr<Job> job;
    std::vector<Executor*> executors;  // where its tasks were queued
    int64_t tasks_left = 0;            // queued or running
  };

  void Loop(Executor& e);
  Executor& ExecutorLocked(const std::string& key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool IsRunningLocked(const std::string& id) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  int64_t PositionLocked(const std::string& id) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  int64_t RemoveQueuedLocked(Executor& e, const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The end of a job: job_ended_, then its on_finish. Without mu_.
  void End(const Job& job, absl::StatusOr<result::Experiment> outcome);

  const int64_t max_queue_per_device_;
  const RunTask run_task_;
  const JobEnded job_ended_;
  mutable absl::Mutex mu_;
  std::map<std::string, std::unique_ptr<Executor>> executors_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, JobState> jobs_ ABSL_GUARDED_BY(mu_);  // queued or running
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace lesion::server

#endif  // LESION_SERVER_DEVICE_EXECUTORS_H_
