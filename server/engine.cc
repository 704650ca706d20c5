// The torch side of lesiond: models and one executor thread per device (engine.h).
#include "server/engine.h"

#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/status_macros.h"
#include "experiments/model.h"
#include "experiments/runner.h"
#include "experiments/torch_util.h"
#include "experiments/weight_edits.h"

namespace lesion::server {
namespace {

namespace ex = ::lesion::experiments;

int64_t WeightBytes(const ex::Transformer& t) {
  int64_t bytes = 0;
  for (const at::Tensor* x : ex::WeightTensors(t)) {
    const bool tied_head = x == &t.weights().lm_head && x->is_same(t.weights().embed);
    if (x->defined() && !tied_head) bytes += static_cast<int64_t>(x->nbytes());
  }
  return bytes;
}

ModelSummary Summarize(const std::string& name, const ex::Model& m) {
  const ex::ModelConfig& c = m.config();
  ModelSummary s;
  s.name = name;
  s.architecture = c.architecture;
  s.dir = m.dir().string();
  s.n_layers = c.n_layers;
  s.n_heads = c.n_heads;
  s.n_kv_heads = c.n_kv_heads;
  s.d_model = c.d_model;
  s.d_ffn = c.d_ffn;
  s.vocab_size = c.vocab_size;
  s.n_params = c.n_params();
  s.dtype = std::string(ex::DtypeName(m.transformer().dtype()));
  s.device = m.transformer().device().str();
  s.weight_bytes = WeightBytes(m.transformer());
  s.fingerprint = m.fingerprint();
  return s;
}

// "cuda" and "cuda:0" are one device: executors are keyed by the explicit form.
std::string DeviceKey(const at::Device& d) {
  return d.is_cuda() ? absl::StrCat("cuda:", d.has_index() ? d.index() : 0) : d.str();
}

class EngineImpl : public Engine {
 public:
  explicit EngineImpl(EngineOptions options) : options_(std::move(options)) {
    limits_.max_capture_bytes = options_.max_capture_bytes;
    limits_.max_tokens = options_.max_tokens;
  }
  ~EngineImpl() override { Shutdown(); }

  absl::Status LoadModel(const std::string& name, const std::string& dir, const std::string& dtype,
                         const std::string& device,
                         std::function<void(absl::StatusOr<ModelSummary>)> done) override {
    if (name.empty()) return absl::InvalidArgumentError("a model needs a name");
    ex::LoadOptions load;
    if (!dtype.empty()) {
      ASSIGN_OR_RETURN(load.dtype, ex::ParseDtype(dtype));
    }
    ASSIGN_OR_RETURN(load.device, ex::ParseDevice(device.empty() ? options_.default_device : device));
    absl::MutexLock lock(&mu_);
    if (stopping_) return absl::UnavailableError("the engine is shutting down");
    if (models_.count(name) || loading_.count(name)) {
      return absl::AlreadyExistsError(absl::StrCat("a model named \"", name, "\" is already loaded (unload it first)"));
    }
    loading_.insert(name);
    ExecutorFor(DeviceKey(load.device)).admin.push_back([this, name, dir, load, done = std::move(done)] {
      absl::StatusOr<std::unique_ptr<ex::Model>> model = ex::Model::Load(dir, load);
      absl::StatusOr<ModelSummary> summary = absl::UnknownError("unset");
      if (!model.ok()) summary = model.status();
      {
        absl::MutexLock lock(&mu_);
        loading_.erase(name);
        if (model.ok()) {
          auto entry = std::make_shared<Entry>();
          entry->model = std::shared_ptr<ex::Model>(std::move(*model));
          entry->summary = Summarize(name, *entry->model);
          entry->device = DeviceKey(entry->model->transformer().device());
          summary = entry->summary;
          models_[name] = std::move(entry);
        }
      }
      done(std::move(summary));
    });
    ExecutorFor(DeviceKey(load.device)).wake.Signal();
    return absl::OkStatus();
  }

  absl::Status UnloadModel(const std::string& name) override {
    absl::MutexLock lock(&mu_);
    auto it = models_.find(name);
    if (it == models_.end()) return absl::NotFoundError(absl::StrCat("no model named \"", name, "\" is loaded"));
    if (it->second->active > 0) {
      return absl::FailedPreconditionError(absl::StrCat("model \"", name, "\" has ", it->second->active,
                                                        " experiment(s) queued or running; cancel or wait for them"));
    }
    // The tensors are freed on the model's executor, like every other torch call on its device.
    std::shared_ptr<Entry> entry = std::move(it->second);
    models_.erase(it);
    Executor& executor = ExecutorFor(entry->device);
    executor.admin.push_back([entry]() mutable { entry.reset(); });
    executor.wake.Signal();
    return absl::OkStatus();
  }

  std::vector<ModelSummary> ListModels() const override {
    absl::MutexLock lock(&mu_);
    std::vector<ModelSummary> out;
    for (const auto& [name, entry] : models_) out.push_back(entry->summary);
    return out;
  }

  absl::StatusOr<ModelSummary> GetModel(const std::string& name) const override {
    absl::MutexLock lock(&mu_);
    ASSIGN_OR_RETURN(const Entry* entry, Find(name));
    return entry->summary;
  }

  absl::Status Validate(const std::string& model, const ex::spec::Experiment& spec) const override {
    std::shared_ptr<ex::Model> m;
    {
      absl::MutexLock lock(&mu_);
      ASSIGN_OR_RETURN(const Entry* entry, Find(model));
      m = entry->model;
    }
    // Shapes and tokenizer only: safe beside the executor running the same model.
    return ex::ValidateExperiment(*m, spec, options_.data_dir, limits_);
  }

  absl::StatusOr<int64_t> Submit(Job job) override {
    absl::MutexLock lock(&mu_);
    if (stopping_) return absl::UnavailableError("the engine is shutting down");
    auto it = models_.find(job.model);
    if (it == models_.end()) return absl::NotFoundError(absl::StrCat("no model named \"", job.model, "\" is loaded"));
    if (jobs_.count(job.id)) return absl::AlreadyExistsError(absl::StrCat("experiment ", job.id, " is already queued"));
    Executor& executor = ExecutorFor(it->second->device);
    if (executor.n_queued >= options_.max_queue_per_device) {
      return absl::ResourceExhaustedError(absl::StrCat("the queue of ", it->second->device, " is full (",
                                                       options_.max_queue_per_device,
                                                       " experiments); try again later"));
    }
    const std::string id = job.id;
    const std::string user = job.user;
    ++it->second->active;
    jobs_[id] = &executor;
    if (executor.by_user[user].empty()) executor.user_order.push_back(user);
    executor.by_user[user].push_back(std::move(job));
    ++executor.n_queued;
    executor.wake.Signal();
    return PositionLocked(executor, id);
  }

  absl::Status Cancel(const std::string& id) override {
    std::optional<Job> removed;
    {
      absl::MutexLock lock(&mu_);
      auto it = jobs_.find(id);
      if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat("experiment ", id, " is not queued or running"));
      Executor& executor = *it->second;
      if (executor.running_id == id) {
        executor.cancel_running = true;  // seen before the next forward pass
        return absl::OkStatus();
      }
      removed = RemoveQueuedLocked(executor, id);
    }
    if (removed.has_value() && removed->callbacks.on_finish) {
      removed->callbacks.on_finish(absl::CancelledError(absl::StrCat("experiment ", id, " was cancelled while queued")));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<int64_t> QueuePosition(const std::string& id) const override {
    absl::MutexLock lock(&mu_);
    auto it = jobs_.find(id);
    if (it == jobs_.end() || it->second->running_id == id) {
      return absl::NotFoundError(absl::StrCat("experiment ", id, " is not queued"));
    }
    return PositionLocked(*it->second, id);
  }

  void Shutdown() override {
    std::vector<Job> cancelled;
    std::vector<std::unique_ptr<Executor>> executors;
    {
      absl::MutexLock lock(&mu_);
      if (stopping_ && executors_.empty()) return;
      stopping_ = true;
      for (auto& [key, executor] : executors_) {
        for (auto& [user, queue] : executor->by_user) {
          for (Job& job : queue) {
            jobs_.erase(job.id);
            cancelled.push_back(std::move(job));
          }
        }
        executor->by_user.clear();
        executor->user_order.clear();
        executor->n_queued = 0;
        executor->cancel_running = true;
        executor->wake.SignalAll();
        executors.push_back(std::move(executor));
      }
      executors_.clear();
    }
    for (Job& job : cancelled) {
      if (job.callbacks.on_finish) job.callbacks.on_finish(absl::CancelledError("the server is shutting down"));
    }
    for (auto& executor : executors) executor->thread.join();
    absl::MutexLock lock(&mu_);
    models_.clear();
  }

 private:
  struct Entry {
    std::shared_ptr<ex::Model> model;  // shared with a validation in flight
    ModelSummary summary;
    std::string device;
    int64_t active = 0;  // experiments queued or running on it
  };
  // One device's queue and thread. Members guarded by the engine's mu_ unless said otherwise.
  struct Executor {
    std::string device;
    std::deque<std::function<void()>> admin;        // loads, unloads: before the next experiment
    std::map<std::string, std::deque<Job>> by_user;  // queued experiments per user, in arrival order
    std::deque<std::string> user_order;             // users with queued experiments, round-robin
    int64_t n_queued = 0;
    std::string running_id;
    std::atomic<bool> cancel_running{false};        // read by the executor thread without mu_
    absl::CondVar wake;
    std::thread thread;
  };

  absl::StatusOr<const Entry*> Find(const std::string& name) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto it = models_.find(name);
    if (it == models_.end()) {
      std::string known;
      for (const auto& [n, e] : models_) absl::StrAppend(&known, known.empty() ? "" : ", ", n);
      return absl::NotFoundError(absl::StrCat("no model named \"", name, "\" is loaded (loaded: ",
                                              known.empty() ? "none" : known, ")"));
    }
    return it->second.get();
  }

  Executor& ExecutorFor(const std::string& device) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    std::unique_ptr<Executor>& executor = executors_[device];
    if (executor == nullptr) {
      executor = std::make_unique<Executor>();
      executor->device = device;
      Executor* e = executor.get();
      executor->thread = std::thread([this, e] { Loop(*e); });
    }
    return *executor;
  }

  // The round-robin order: the front user's oldest job, then that user goes to the back.
  std::vector<std::string> OrderLocked(const Executor& e) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    std::vector<std::string> order;
    std::deque<std::string> users = e.user_order;
    std::map<std::string, size_t> taken;
    while (!users.empty()) {
      const std::string user = users.front();
      users.pop_front();
      const std::deque<Job>& queue = e.by_user.at(user);
      order.push_back(queue[taken[user]++].id);
      if (taken[user] < queue.size()) users.push_back(user);
    }
    return order;
  }

  int64_t PositionLocked(const Executor& e, const std::string& id) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const std::vector<std::string> order = OrderLocked(e);
    int64_t ahead = e.running_id.empty() ? 0 : 1;
    for (const std::string& queued : order) {
      if (queued == id) break;
      ++ahead;
    }
    return ahead;
  }

  std::optional<Job> RemoveQueuedLocked(Executor& e, const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    for (auto& [user, queue] : e.by_user) {
      for (auto it = queue.begin(); it != queue.end(); ++it) {
        if (it->id != id) continue;
        Job job = std::move(*it);
        queue.erase(it);
        if (queue.empty()) {
          e.user_order.erase(std::find(e.user_order.begin(), e.user_order.end(), user));
          e.by_user.erase(user);
        }
        --e.n_queued;
        jobs_.erase(id);
        if (auto m = models_.find(job.model); m != models_.end()) --m->second->active;
        return job;
      }
    }
    return std::nullopt;
  }

  void Loop(Executor& e) {
    while (true) {
      std::function<void()> admin;
      std::optional<Job> job;
      std::shared_ptr<ex::Model> model;
      {
        absl::MutexLock lock(&mu_);
        while (!stopping_ && e.admin.empty() && e.user_order.empty()) e.wake.Wait(&mu_);
        if (!e.admin.empty()) {
          admin = std::move(e.admin.front());
          e.admin.pop_front();
        } else if (!e.user_order.empty()) {
          const std::string user = e.user_order.front();
          e.user_order.pop_front();
          std::deque<Job>& queue = e.by_user[user];
          job = std::move(queue.front());
          queue.pop_front();
          if (queue.empty()) {
            e.by_user.erase(user);
          } else {
            e.user_order.push_back(user);
          }
          --e.n_queued;
          e.running_id = job->id;
          e.cancel_running = false;
          model = models_.at(job->model)->model;
        } else {
          return;  // stopping, nothing left
        }
      }
      if (admin) {
        admin();
        continue;
      }
      if (job->callbacks.on_start) job->callbacks.on_start();
      ex::RunControls controls;
      controls.cancelled = [&e] { return e.cancel_running.load(); };
      controls.progress = job->callbacks.on_progress;
      std::optional<ex::result::Pass> cached;
      if (job->lookup_cached_baseline) cached = job->lookup_cached_baseline();
      if (cached.has_value()) controls.cached_baseline = &*cached;
      absl::StatusOr<ex::result::Experiment> result =
          ex::RunExperiment(*model, job->spec, options_.data_dir, controls, limits_);
      {
        absl::MutexLock lock(&mu_);
        e.running_id.clear();
        jobs_.erase(job->id);
        if (auto m = models_.find(job->model); m != models_.end()) --m->second->active;
      }
      if (job->callbacks.on_finish) job->callbacks.on_finish(std::move(result));
    }
  }

  const EngineOptions options_;
  ex::RunLimits limits_;  // const after construction
  mutable absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<Entry>> models_ ABSL_GUARDED_BY(mu_);
  std::set<std::string> loading_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::unique_ptr<Executor>> executors_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, Executor*> jobs_ ABSL_GUARDED_BY(mu_);  // queued or running -> its executor
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(EngineOptions options) {
  if (options.max_queue_per_device < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_queue_per_device must be >= 1, got ", options.max_queue_per_device));
  }
  return std::unique_ptr<Engine>(new EngineImpl(std::move(options)));
}

}  // namespace lesion::server
