// The executor threads of the engine and the jobs they run (device_executors.h).
#include "server/device_executors.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "model/torch_util.h"

namespace lesion::server {

DeviceExecutors::DeviceExecutors(int64_t max_queue_per_device, RunTask run_task, JobEnded job_ended)
    : max_queue_per_device_(max_queue_per_device), run_task_(std::move(run_task)), job_ended_(std::move(job_ended)) {}

DeviceExecutors::~DeviceExecutors() { Shutdown(); }

void DeviceExecutors::Ensure(const std::vector<std::string>& keys) {
  absl::MutexLock lock(&mu_);
  if (stopping_) return;
  for (const std::string& key : keys) ExecutorLocked(key);
}

int64_t DeviceExecutors::Load(const std::string& key) const {
  absl::MutexLock lock(&mu_);
  auto it = executors_.find(key);
  if (it == executors_.end()) return 0;
  const Executor& e = *it->second;
  return e.queue.size() + (e.running_id.empty() ? 0 : 1);
}

absl::StatusOr<int64_t> DeviceExecutors::Enqueue(std::shared_ptr<Job> job, std::vector<Task> tasks) {
  absl::MutexLock lock(&mu_);
  if (stopping_) return absl::UnavailableError("the engine is shutting down");
  if (jobs_.count(job->id)) return absl::AlreadyExistsError(absl::StrCat("experiment ", job->id, " is already queued"));
  for (const Task& t : tasks) {
    const Executor& executor = ExecutorLocked(t.replica.executor);
    if (executor.queue.size() >= max_queue_per_device_) {
      return absl::ResourceExhaustedError(absl::StrCat("the queue of ", executor.key, " is full (",
                                                       max_queue_per_device_, " experiments); try again later"));
    }
  }
  JobState& state = jobs_[job->id];
  state.job = job;
  state.tasks_left = static_cast<int64_t>(tasks.size());
  for (Task& t : tasks) {
    Executor& executor = ExecutorLocked(t.replica.executor);
    state.executors.push_back(&executor);
    executor.queue.Push(job->user, std::move(t));
    executor.wake.Signal();
  }
  return PositionLocked(job->id);
}

absl::Status DeviceExecutors::Cancel(const std::string& id) {
  std::shared_ptr<Job> removed;
  {
    absl::MutexLock lock(&mu_);
    auto it = jobs_.find(id);
    if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat("experiment ", id, " is not queued or running"));
    JobState& state = it->second;
    bool running = false;
    for (Executor* e : state.executors) {
      if (e->running_id == id) {
        e->cancel_running = true;  // seen before the next forward pass or layer
        running = true;
      }
    }
    for (Executor* e : state.executors) state.tasks_left -= RemoveQueuedLocked(*e, id);
    if (running || state.tasks_left > 0) return absl::OkStatus();  // the running tasks report
    removed = state.job;
    jobs_.erase(it);
  }
  End(*removed, absl::CancelledError(absl::StrCat("experiment ", id, " was cancelled while queued")));
  return absl::OkStatus();
}

absl::StatusOr<int64_t> DeviceExecutors::Position(const std::string& id) const {
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end() || IsRunningLocked(id)) {
    return absl::NotFoundError(absl::StrCat("experiment ", id, " is not queued"));
  }
  return PositionLocked(id);
}

void DeviceExecutors::RunBeforeNextTask(const std::string& key, std::function<void()> work) {
  {
    absl::MutexLock lock(&mu_);
    auto it = executors_.find(key);
    if (it != executors_.end()) {
      it->second->admin.push_back(std::move(work));
      it->second->wake.Signal();
      return;
    }
  }
  work();
}

std::vector<DeviceStats> DeviceExecutors::Stats() const {
  absl::MutexLock lock(&mu_);
  std::vector<DeviceStats> out;
  for (const auto& [key, e] : executors_) out.push_back({key, e->queue.size(), e->running_id});
  return out;
}

bool DeviceExecutors::AllIdle() const {
  absl::MutexLock lock(&mu_);
  for (const auto& [key, e] : executors_) {
    if (!e->running_id.empty()) return false;
  }
  return true;
}

void DeviceExecutors::Shutdown() {
  std::vector<std::shared_ptr<Job>> cancelled;
  std::vector<std::unique_ptr<Executor>> executors;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    for (auto& [key, executor] : executors_) {
      for (Task& task : executor->queue.TakeAll()) {
        auto it = jobs_.find(task.job->id);
        if (it == jobs_.end()) continue;
        if (--it->second.tasks_left == 0 && !IsRunningLocked(task.job->id)) {
          cancelled.push_back(task.job);
          jobs_.erase(it);
        }
      }
      executor->cancel_running = true;
      executor->wake.SignalAll();
      executors.push_back(std::move(executor));
    }
    executors_.clear();
  }
  for (auto& job : cancelled) End(*job, absl::CancelledError("the server is shutting down"));
  // The executors leave their loops once their admin work and current task are done.
  for (auto& executor : executors) executor->thread.join();
}

void DeviceExecutors::Loop(Executor& e) {
  while (true) {
    std::function<void()> admin;
    std::optional<Task> task;
    {
      absl::MutexLock lock(&mu_);
      while (!stopping_ && e.admin.empty() && e.queue.empty()) e.wake.Wait(&mu_);
      if (!e.admin.empty()) {
        admin = std::move(e.admin.front());
        e.admin.pop_front();
      } else if (!e.queue.empty()) {
        task = e.queue.Pop();
        e.running_id = task->job->id;
        e.cancel_running = false;
      } else {
        return;  // stopping, nothing left
      }
    }
    if (admin) {
      admin();
      continue;
    }
    const std::function<bool()> cancelled = [&e] { return e.cancel_running.load(); };
    absl::StatusOr<result::Experiment> outcome = run_task_(*task, e.key, cancelled);
    const std::shared_ptr<Job> job = task->job;
    const bool failed = !outcome.ok();
    const bool out_of_memory = absl::IsResourceExhausted(outcome.status());
    if (task->sweep != nullptr) task->sweep->Merge(std::move(outcome), e.key);
    bool complete = false;
    bool all_idle = true;
    {
      absl::MutexLock lock(&mu_);
      e.running_id.clear();
      for (const auto& [key, other] : executors_) all_idle = all_idle && other->running_id.empty();
      auto it = jobs_.find(job->id);
      if (it != jobs_.end()) {
        JobState& state = it->second;
        --state.tasks_left;
        if (failed && task->sweep != nullptr) {  // one shard failed or was cancelled: stop the others
          for (Executor* other : state.executors) {
            if (other->running_id == job->id) other->cancel_running = true;
            state.tasks_left -= RemoveQueuedLocked(*other, job->id);
          }
        }
        complete = state.tasks_left == 0;
        if (complete) jobs_.erase(it);
      }
    }
    // Nothing of a finished experiment stays reserved on the device. The release is process-wide
    // (every GPU's cache), so it waits until no other executor is mid-experiment, unless this one
    // ran out of memory.
    if (all_idle || out_of_memory) model::ReleaseCachedMemory(task->replica.device);
    if (complete) End(*job, task->sweep != nullptr ? task->sweep->Outcome() : std::move(outcome));
  }
}

void DeviceExecutors::End(const Job& job, absl::StatusOr<result::Experiment> outcome) {
  if (job_ended_) job_ended_(job);
  if (job.callbacks.on_finish) job.callbacks.on_finish(std::move(outcome));
}

DeviceExecutors::Executor& DeviceExecutors::ExecutorLocked(const std::string& key) {
  std::unique_ptr<Executor>& executor = executors_[key];
  if (executor == nullptr) {
    executor = std::make_unique<Executor>();
    executor->key = key;
    Executor* e = executor.get();
    executor->thread = std::thread([this, e] { Loop(*e); });
  }
  return *executor;
}

bool DeviceExecutors::IsRunningLocked(const std::string& id) const {
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return false;
  for (const Executor* e : it->second.executors) {
    if (e->running_id == id) return true;
  }
  return false;
}

// Experiments ahead of `id` on the executor where it waits least.
int64_t DeviceExecutors::PositionLocked(const std::string& id) const {
  int64_t best = -1;
  for (const Executor* e : jobs_.at(id).executors) {
    int64_t ahead = e->running_id.empty() ? 0 : 1;
    for (const Task* queued : e->queue.InServiceOrder()) {
      if (queued->job->id == id) break;
      ++ahead;
    }
    if (best < 0 || ahead < best) best = ahead;
  }
  return std::max<int64_t>(best, 0);
}

// Removes `id`'s queued tasks from `e`; how many.
int64_t DeviceExecutors::RemoveQueuedLocked(Executor& e, const std::string& id) {
  return e.queue.RemoveIf([&id](const Task& task) { return task.job->id == id; });
}

}  // namespace lesion::server
