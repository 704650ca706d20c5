// The executors without a model: scripted tasks that wait on a gate or for their cancellation, to
// test the order of service, cancellation of queued and running jobs and of a sweep's shards,
// queue limits and positions, admin work, shutdown, and that a job ends once (job_ended before
// on_finish).
#include "server/device_executors.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/testing/status_matchers.h"

namespace lesion::server {
namespace {

using ::lesion::matchers::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// What the scripted tasks do and what the executors reported, in order.
class Script {
 public:
  // Task "id" runs until Open("id"), or until cancelled; the first shard (or the single task) of a
  // job whose id starts with "fail" fails at once.
  absl::StatusOr<result::Experiment> Run(Task& task, const std::string& executor,
                                         const std::function<bool()>& cancelled) {
    const std::string& id = task.job->id;
    std::unique_lock<std::mutex> lock(mu_);
    events_.push_back("run " + id + " on " + executor);
    cv_.notify_all();
    if (id.rfind("fail", 0) == 0 && task.shard == 0) return absl::InternalError("scripted failure");
    while (!open_.count(id)) {
      if (cancelled()) return absl::CancelledError("cancelled while running");
      cv_.wait_for(lock, std::chrono::milliseconds(5));
    }
    return result::Experiment{};
  }
  void Ended(const Job& job) { Record("ended " + job.id); }
  JobCallbacks For(const std::string& id) {
    JobCallbacks c;
    c.on_finish = [this, id](absl::StatusOr<result::Experiment> r) {
      std::lock_guard<std::mutex> lock(mu_);
      finished_[id] = r.status();
      events_.push_back("finish " + id);
      cv_.notify_all();
    };
    return c;
  }
  void Open(const std::string& id) {
    std::lock_guard<std::mutex> lock(mu_);
    open_.insert(id);
    cv_.notify_all();
  }
  void Record(const std::string& event) {
    std::lock_guard<std::mutex> lock(mu_);
    events_.push_back(event);
    cv_.notify_all();
  }
  // Waits (a minute at most) until `event` was recorded.
  bool WaitFor(const std::string& event) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, std::chrono::seconds(60),
                        [&] { return std::find(events_.begin(), events_.end(), event) != events_.end(); });
  }
  absl::Status Finished(const std::string& id) {
    std::lock_guard<std::mutex> lock(mu_);
    return finished_.count(id) ? finished_[id] : absl::UnknownError("not finished: " + id);
  }
  std::vector<std::string> Events() {
    std::lock_guard<std::mutex> lock(mu_);
    return events_;
  }
  // The events that start with `prefix`, in order.
  std::vector<std::string> Only(const std::string& prefix) {
    std::vector<std::string> out;
    for (const std::string& e : Events()) {
      if (e.rfind(prefix, 0) == 0) out.push_back(e);
    }
    return out;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::set<std::string> open_;
  std::vector<std::string> events_;
  std::map<std::string, absl::Status> finished_;
};

class DeviceExecutorsTest : public ::testing::Test {
 protected:
  explicit DeviceExecutorsTest(int64_t max_queue = 8)
      : executors_(
            max_queue,
            [this](Task& task, const std::string& executor, const std::function<bool()>& cancelled) {
              return script_.Run(task, executor, cancelled);
            },
            [this](const Job& job) { script_.Ended(job); }) {}

  // A single experiment of `user` on executor `executor`.
  absl::StatusOr<int64_t> Submit(const std::string& id, const std::string& user = "alice",
                                 const std::string& executor = "cpu") {
    auto job = std::make_shared<Job>();
    job->id = id;
    job->user = user;
    job->callbacks = script_.For(id);
    Task task;
    task.job = job;
    task.replica.executor = executor;
    return executors_.Enqueue(job, {std::move(task)});
  }

  Script script_;
  DeviceExecutors executors_;
};

TEST_F(DeviceExecutorsTest, UsersAreServedRoundRobinAndEachJobEndsOnceBeforeItsFinish) {
  ASSERT_OK(Submit("a0"));
  ASSERT_TRUE(script_.WaitFor("run a0 on cpu"));
  ASSERT_OK(Submit("a1"));
  ASSERT_OK(Submit("a2"));
  ASSERT_OK(Submit("b1", "bob"));
  for (const char* id : {"a0", "a1", "b1", "a2"}) script_.Open(id);
  ASSERT_TRUE(script_.WaitFor("finish a2"));
  EXPECT_THAT(script_.Only("run"), ElementsAre("run a0 on cpu", "run a1 on cpu", "run b1 on cpu", "run a2 on cpu"));
  EXPECT_THAT(script_.Only("ended"), ElementsAre("ended a0", "ended a1", "ended b1", "ended a2"));
  const std::vector<std::string> events = script_.Events();
  for (const char* id : {"a0", "a1", "b1", "a2"}) {
    const auto ended = std::find(events.begin(), events.end(), std::string("ended ") + id);
    const auto finished = std::find(events.begin(), events.end(), std::string("finish ") + id);
    EXPECT_LT(ended, finished) << id;
    EXPECT_OK(script_.Finished(id));
  }
}

TEST_F(DeviceExecutorsTest, CancellingEndsAQueuedJobAtOnceAndStopsARunningOne) {
  ASSERT_OK(Submit("running"));
  ASSERT_TRUE(script_.WaitFor("run running on cpu"));
  ASSERT_OK(Submit("queued"));
  EXPECT_THAT(executors_.Position("queued"), absl::StatusOr<int64_t>(1));
  EXPECT_THAT(executors_.Position("running"), StatusIs(absl::StatusCode::kNotFound));

  ASSERT_OK(executors_.Cancel("queued"));  // ends here, on this thread
  EXPECT_THAT(script_.Finished("queued"), StatusIs(absl::StatusCode::kCancelled, HasSubstr("while queued")));
  EXPECT_THAT(script_.Only("ended"), ElementsAre("ended queued"));

  ASSERT_OK(executors_.Cancel("running"));
  ASSERT_TRUE(script_.WaitFor("finish running"));
  EXPECT_THAT(script_.Finished("running"), StatusIs(absl::StatusCode::kCancelled));
  EXPECT_THAT(executors_.Cancel("running"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(script_.Only("run"), ElementsAre("run running on cpu"));  // the cancelled one never ran
}

TEST_F(DeviceExecutorsTest, AFailedShardStopsTheOtherShardsAndTheSweepEndsOnceWithItsError) {
  auto job = std::make_shared<Job>();
  job->id = "fail-sweep";
  job->user = "alice";
  job->callbacks = script_.For(job->id);
  auto sweep = std::make_shared<ShardedSweep>(3);
  std::vector<Task> tasks(3);
  const char* executors[] = {"cpu#1", "cpu#2", "cpu#2"};  // the third shard waits behind the second
  for (int k = 0; k < 3; ++k) {
    tasks[k].job = job;
    tasks[k].replica.executor = executors[k];
    tasks[k].sweep = sweep;
    tasks[k].shard = k;
  }
  // Block both executors first, so that the failing shard starts only once the sweep is queued.
  ASSERT_OK(Submit("gate1", "alice", "cpu#1"));
  ASSERT_OK(Submit("gate2", "alice", "cpu#2"));
  ASSERT_OK(executors_.Enqueue(job, std::move(tasks)));
  script_.Open("gate2");
  ASSERT_TRUE(script_.WaitFor("run fail-sweep on cpu#2"));  // shard 1, until cancelled
  script_.Open("gate1");
  ASSERT_TRUE(script_.WaitFor("finish fail-sweep"));
  EXPECT_THAT(script_.Finished("fail-sweep"), StatusIs(absl::StatusCode::kInternal, HasSubstr("scripted failure")));
  EXPECT_THAT(script_.Only("ended fail-sweep"), ElementsAre("ended fail-sweep"));
  // Shard 0 failed on cpu#1; shard 1 ran on cpu#2 until cancelled; shard 2 never ran.
  EXPECT_THAT(script_.Only("run fail-sweep"), ElementsAre("run fail-sweep on cpu#2", "run fail-sweep on cpu#1"));
}

TEST_F(DeviceExecutorsTest, AFullQueueAndADuplicateIdAreRefusedWithNothingQueued) {
  ASSERT_OK(Submit("a0"));
  ASSERT_TRUE(script_.WaitFor("run a0 on cpu"));
  for (int i = 1; i <= 8; ++i) ASSERT_OK(Submit("a" + std::to_string(i)));
  EXPECT_THAT(Submit("a9"), StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("the queue of cpu is full")));
  EXPECT_THAT(Submit("a1"), StatusIs(absl::StatusCode::kAlreadyExists));
  EXPECT_THAT(executors_.Position("a9"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(executors_.Position("a8"), absl::StatusOr<int64_t>(8));
  std::vector<DeviceStats> stats = executors_.Stats();
  ASSERT_EQ(stats.size(), 1u);
  EXPECT_EQ(stats[0].device, "cpu");
  EXPECT_EQ(stats[0].queued, 8);
  EXPECT_EQ(stats[0].running_id, "a0");
  EXPECT_FALSE(executors_.AllIdle());
  EXPECT_EQ(executors_.Load("cpu"), 9);
  EXPECT_EQ(executors_.Load("cuda:3"), 0);
  for (int i = 0; i <= 8; ++i) script_.Open("a" + std::to_string(i));
  ASSERT_TRUE(script_.WaitFor("finish a8"));
}

TEST_F(DeviceExecutorsTest, AdminWorkGoesBeforeTheNextTask) {
  ASSERT_OK(Submit("a0"));
  ASSERT_TRUE(script_.WaitFor("run a0 on cpu"));
  ASSERT_OK(Submit("a1"));
  executors_.RunBeforeNextTask("cpu", [this] { script_.Record("admin"); });
  script_.Open("a0");
  script_.Open("a1");
  ASSERT_TRUE(script_.WaitFor("finish a1"));
  const std::vector<std::string> events = script_.Events();
  EXPECT_LT(std::find(events.begin(), events.end(), "admin"), std::find(events.begin(), events.end(), "run a1 on cpu"));
}

TEST_F(DeviceExecutorsTest, ShutdownCancelsTheQueueStopsTheRunningAndRefusesMore) {
  ASSERT_OK(Submit("running"));
  ASSERT_TRUE(script_.WaitFor("run running on cpu"));
  ASSERT_OK(Submit("queued", "bob"));
  executors_.Shutdown();
  EXPECT_THAT(script_.Finished("queued"), StatusIs(absl::StatusCode::kCancelled, HasSubstr("shutting down")));
  EXPECT_THAT(script_.Finished("running"), StatusIs(absl::StatusCode::kCancelled));
  EXPECT_THAT(script_.Only("ended"), ::testing::UnorderedElementsAre("ended queued", "ended running"));
  EXPECT_THAT(Submit("late"), StatusIs(absl::StatusCode::kUnavailable));
  bool ran = false;
  executors_.RunBeforeNextTask("cpu", [&ran] { ran = true; });  // no executor left: here, at once
  EXPECT_TRUE(ran);
  executors_.Ensure({"cpu"});
  EXPECT_TRUE(executors_.Stats().empty());
}

}  // namespace
}  // namespace lesion::server
