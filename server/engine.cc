// The torch side of lesiond: models, their replicas and one executor thread per device (engine.h).
#include "server/engine.h"

#include <torch/version.h>

#include <algorithm>
#include <atomic>
#include <deque>
#include <map>
#include <set>
#include <thread>
#include <utility>

// at::accelerator's memory statistics came with LibTorch 2.9 (as in model/torch_util.cc);
// before, device memory reads 0.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 9)
#include <ATen/DeviceAccelerator.h>
#define LESION_ACCELERATOR_MEMORY_API 1
#endif

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "common/error_text.h"
#include "common/status_macros.h"
#include "experiments/generation.h"
#include "experiments/runner.h"
#include "experiments/sweep.h"
#include "model/model.h"
#include "model/torch_util.h"
#include "model/weight_addressing.h"
#include "server/fair_queue.h"
#include "server/sweep_shards.h"

namespace lesion::server {
namespace {

namespace ex = ::lesion::experiments;

int64_t WeightBytes(const model::Transformer& t) {
  int64_t bytes = 0;
  for (const at::Tensor* x : model::WeightTensors(t)) {
    const bool tied_head = x == &t.weights().lm_head && x->is_same(t.weights().embed);
    if (x->defined() && !tied_head) bytes += static_cast<int64_t>(x->nbytes());
  }
  return bytes;
}

ModelSummary Summarize(const std::string& name, const model::Model& m, const std::string& devices) {
  const model::ModelConfig& c = m.config();
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
  s.dtype = std::string(model::DtypeName(m.transformer().dtype()));
  s.device = devices;
  s.weight_bytes = WeightBytes(m.transformer());
  s.fingerprint = m.fingerprint();
  s.dequantized_from = m.dequantized_from();
  return s;
}

// "cuda" and "cuda:0" are one device: executors are keyed by the explicit form.
std::string DeviceKey(const at::Device& d) {
  return d.is_cuda() ? absl::StrCat("cuda:", d.has_index() ? d.index() : 0) : d.str();
}

// One replica of a load request: its device and the key of the executor that runs it ("cpu#1" for
// a second CPU executor).
struct Placement {
  at::Device device = at::kCPU;
  std::string executor;
};

// "cuda:0,cuda:1", "cuda:*" (every GPU), "cpu,cpu": one placement per replica.
absl::StatusOr<std::vector<Placement>> ParsePlacements(const std::string& devices) {
  std::vector<Placement> out;
  std::map<std::string, int> seen;
  for (absl::string_view part : absl::StrSplit(devices, ',')) {
    part = absl::StripAsciiWhitespace(part);
    std::vector<at::Device> expanded;
    if (part == "cuda:*") {
      ASSIGN_OR_RETURN(at::Device first, model::ParseDevice("cuda:0"));
      expanded.push_back(first);
      for (int i = 1;; ++i) {
        absl::StatusOr<at::Device> d = model::ParseDevice(absl::StrCat("cuda:", i));
        if (!d.ok()) break;
        expanded.push_back(*d);
      }
    } else {
      ASSIGN_OR_RETURN(at::Device d, model::ParseDevice(part));
      expanded.push_back(d);
    }
    for (const at::Device& d : expanded) {
      const std::string key = DeviceKey(d);
      const int n = seen[key]++;
      if (n > 0 && d.is_cuda()) {
        return absl::InvalidArgumentError(absl::StrCat("device ", key, " is named twice in ", QuoteForError(devices),
                                                       ": a model holds one replica per GPU"));
      }
      out.push_back({d, n == 0 ? key : absl::StrCat(key, "#", n)});
    }
  }
  if (out.empty()) return absl::InvalidArgumentError("no device given");
  return out;
}

// The groups of `job`'s sweep (ex::GroupSweep) that each of `n_replicas` replicas runs: every group,
// unless a resubmitted sweep finished some (job.skip_variants), spread by ex::ShardGroups.
std::vector<std::vector<int64_t>> SweepShards(const model::ModelConfig& c, const Job& job, const ex::RunLimits& limits,
                                              int64_t n_replicas) {
  const ex::SweepGroups groups = ex::GroupSweep(c, job.spec, job.variants, limits);
  const absl::flat_hash_set<int64_t> skip(job.skip_variants.begin(), job.skip_variants.end());
  ex::SweepGroups to_run;
  to_run.variants_per_pass = groups.variants_per_pass;
  std::vector<int64_t> original;  // index in `groups` of each group of `to_run`
  for (size_t g = 0; g < groups.groups.size(); ++g) {
    bool needed = false;
    for (int64_t v : groups.groups[g]) needed = needed || !skip.contains(v);
    if (!needed) continue;
    to_run.groups.push_back(groups.groups[g]);
    to_run.starts.push_back(groups.starts[g]);
    original.push_back(static_cast<int64_t>(g));
  }
  if (original.empty() && !groups.groups.empty()) {  // everything finished: the baseline still runs
    to_run.groups.push_back(groups.groups.front());
    to_run.starts.push_back(groups.starts.front());
    original.push_back(0);
  }
  std::vector<std::vector<int64_t>> shards = ex::ShardGroups(to_run, c.n_layers, n_replicas);
  for (std::vector<int64_t>& shard : shards) {
    for (int64_t& g : shard) g = original[g];
  }
  return shards;
}

class EngineImpl : public Engine {
 public:
  explicit EngineImpl(EngineOptions options) : options_(std::move(options)) {
    limits_.max_capture_bytes = options_.max_capture_bytes;
    limits_.max_tokens = options_.max_tokens;
    limits_.max_sweep_variants = options_.max_sweep_variants;
    limits_.max_pass_tokens = options_.max_pass_tokens;
    if (options_.tf32) model::AllowTf32();
  }
  ~EngineImpl() override { Shutdown(); }

  absl::Status LoadModel(const std::string& name, const std::string& dir, const std::string& dtype,
                         const std::string& device, std::function<bool()> cancelled,
                         std::function<void(absl::StatusOr<ModelSummary>)> done) override {
    if (name.empty()) return absl::InvalidArgumentError("a model needs a name");
    // A model's name is echoed in every listing and stored with every experiment, like theirs.
    if (name.size() > spec::kMaxNameBytes) {
      return absl::InvalidArgumentError(absl::StrCat("model name ", QuoteForError(name),
                                                     " is longer than the limit of ", spec::kMaxNameBytes, " bytes"));
    }
    model::LoadOptions load;
    if (!dtype.empty()) {
      ASSIGN_OR_RETURN(load.dtype, model::ParseDtype(dtype));
    }
    ASSIGN_OR_RETURN(std::vector<Placement> placements,
                     ParsePlacements(device.empty() ? options_.default_device : device));
    std::vector<std::string> keys;
    for (const Placement& p : placements) keys.push_back(p.executor);
    auto pending = std::make_shared<PendingLoad>();
    pending->name = name;
    pending->devices = absl::StrJoin(keys, ",");
    pending->caller_cancelled = std::move(cancelled);
    pending->replicas.resize(placements.size());
    pending->remaining = static_cast<int64_t>(placements.size());
    pending->done = std::move(done);
    for (const Placement& p : placements) pending->placed_on.push_back(p.device);
    load.cancelled = [pending] { return pending->Cancelled(); };
    std::vector<std::thread> finished;
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return absl::UnavailableError("the engine is shutting down");
      if (models_.count(name) || loading_.count(name)) {
        return absl::AlreadyExistsError(
            absl::StrCat("a model named ", QuoteForError(name), " is already loaded or loading (unload it first)"));
      }
      loading_[name] = pending;
      finished = TakeFinishedLoadersLocked();
      // One loader thread per replica, off the executors: a load waits neither for another load
      // nor for an experiment on its device (see engine.h on device memory).
      for (size_t i = 0; i < placements.size(); ++i) {
        model::LoadOptions replica_load = load;
        replica_load.device = placements[i].device;
        auto exited = std::make_shared<std::atomic<bool>>(false);
        std::thread thread([this, dir, replica_load, pending, i, key = placements[i].executor, exited] {
          absl::StatusOr<std::unique_ptr<model::Model>> model = model::Model::Load(dir, replica_load);
          FinishLoad(*pending, i, key, std::move(model));
          exited->store(true);  // the thread's last touch of the engine
        });
        loaders_.push_back({std::move(thread), std::move(exited)});
      }
    }
    for (std::thread& t : finished) t.join();
    return absl::OkStatus();
  }

  absl::Status UnloadModel(const std::string& name) override {
    absl::MutexLock lock(&mu_);
    auto it = models_.find(name);
    if (it == models_.end())
      return absl::NotFoundError(absl::StrCat("no model named ", QuoteForError(name), " is loaded"));
    if (it->second->active > 0) {
      return absl::FailedPreconditionError(absl::StrCat("model ", QuoteForError(name), " has ", it->second->active,
                                                        " experiment(s) queued or running; cancel or wait for them"));
    }
    // The tensors are freed on each replica's executor, like every other torch call on its device.
    std::shared_ptr<Entry> entry = std::move(it->second);
    models_.erase(it);
    for (Replica& r : entry->replicas) {
      Executor& executor = ExecutorFor(r.executor);
      executor.admin.push_back([model = std::move(r.model), device = r.device]() mutable {
        model.reset();
        model::ReleaseCachedMemory(device);
      });
      executor.wake.Signal();
    }
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

  absl::Status Validate(const std::string& model, const spec::Experiment& spec) const override {
    ASSIGN_OR_RETURN(std::shared_ptr<model::Model> m, AnyReplica(model));
    // Shapes and tokenizer only: safe beside the executor running the same model.
    return ex::ValidateExperiment(*m, spec, options_.data_dir, limits_);
  }

  absl::Status ValidateSweep(const std::string& model, const spec::Experiment& parent,
                             const std::vector<spec::Experiment>& variants) const override {
    ASSIGN_OR_RETURN(std::shared_ptr<model::Model> m, AnyReplica(model));
    return ex::ValidateSweep(*m, parent, variants, options_.data_dir, limits_);
  }

  absl::Status ValidateGeneration(const std::string& model, const GenerationJob& generation) const override {
    ASSIGN_OR_RETURN(std::shared_ptr<model::Model> m, AnyReplica(model));
    ASSIGN_OR_RETURN(std::vector<int32_t> prompt, PromptOf(*m, generation));
    return ex::ValidateGeneration(*m, generation.interventions, prompt, GenerationOptionsOf(*m, generation));
  }

  absl::StatusOr<int64_t> Submit(Job job_in) override {
    auto job = std::make_shared<Job>(std::move(job_in));
    absl::MutexLock lock(&mu_);
    if (stopping_) return absl::UnavailableError("the engine is shutting down");
    auto it = models_.find(job->model);
    if (it == models_.end())
      return absl::NotFoundError(absl::StrCat("no model named ", QuoteForError(job->model), " is loaded"));
    if (jobs_.count(job->id))
      return absl::AlreadyExistsError(absl::StrCat("experiment ", job->id, " is already queued"));
    Entry& entry = *it->second;

    // The tasks: one for a single experiment (on the least busy replica), one per non-empty shard
    // of a sweep (shard k on replica k).
    std::vector<Task> tasks;
    if (job->variants.empty()) {
      size_t best = 0;
      for (size_t r = 1; r < entry.replicas.size(); ++r) {
        if (LoadOf(entry.replicas[r].executor) < LoadOf(entry.replicas[best].executor)) best = r;
      }
      tasks.push_back({job, best, {}, nullptr, 0});
    } else {
      std::vector<std::vector<int64_t>> shards = SweepShards(entry.replicas.front().model->config(), *job, limits_,
                                                             static_cast<int64_t>(entry.replicas.size()));
      int64_t n_shards = 0;
      for (const auto& shard : shards) n_shards += shard.empty() ? 0 : 1;
      auto sweep = std::make_shared<ShardedSweep>(n_shards);
      for (size_t r = 0; r < shards.size(); ++r) {
        if (shards[r].empty()) continue;
        tasks.push_back({job, r, std::move(shards[r]), sweep, static_cast<int64_t>(tasks.size())});
      }
    }
    for (const Task& t : tasks) {
      Executor& executor = ExecutorFor(entry.replicas[t.replica].executor);
      if (executor.queue.size() >= options_.max_queue_per_device) {
        return absl::ResourceExhaustedError(absl::StrCat("the queue of ", executor.device, " is full (",
                                                         options_.max_queue_per_device,
                                                         " experiments); try again later"));
      }
    }
    ++entry.active;
    JobState& state = jobs_[job->id];
    state.job = job;
    state.shards_left = static_cast<int64_t>(tasks.size());
    for (Task& t : tasks) {
      Executor& executor = ExecutorFor(entry.replicas[t.replica].executor);
      state.executors.push_back(&executor);
      executor.queue.Push(job->user, std::move(t));
      executor.wake.Signal();
    }
    return PositionLocked(job->id);
  }

  absl::Status Cancel(const std::string& id) override {
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
      int64_t taken = 0;
      for (Executor* e : state.executors) taken += RemoveQueuedLocked(*e, id);
      state.shards_left -= taken;
      if (running || state.shards_left > 0) return absl::OkStatus();  // the running shards report
      removed = state.job;
      jobs_.erase(it);
      if (auto m = models_.find(removed->model); m != models_.end()) --m->second->active;
    }
    if (removed->callbacks.on_finish) {
      removed->callbacks.on_finish(
          absl::CancelledError(absl::StrCat("experiment ", id, " was cancelled while queued")));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<int64_t> QueuePosition(const std::string& id) const override {
    absl::MutexLock lock(&mu_);
    auto it = jobs_.find(id);
    if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat("experiment ", id, " is not queued"));
    for (const Executor* e : it->second.executors) {
      if (e->running_id == id) return absl::NotFoundError(absl::StrCat("experiment ", id, " is not queued"));
    }
    return PositionLocked(id);
  }

  std::vector<DeviceStats> Devices() const override {
    std::vector<DeviceStats> out;
    {
      absl::MutexLock lock(&mu_);
      for (const auto& [key, e] : executors_) out.push_back({key, e->queue.size(), e->running_id});
    }
    // Memory outside mu_: the allocator takes its own lock, which an executor may hold mid-pass.
    for (DeviceStats& d : out) {
      if (!absl::StartsWith(d.device, "cuda")) continue;
      absl::StatusOr<at::Device> device = model::ParseDevice(d.device);
      if (!device.ok()) continue;
#ifdef LESION_ACCELERATOR_MEMORY_API
      const auto stats = at::accelerator::getDeviceStats(device->index());
      constexpr size_t kAll = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
      d.memory_allocated_bytes = stats.allocated_bytes[kAll].current;
      d.memory_reserved_bytes = stats.reserved_bytes[kAll].current;
#endif
    }
    return out;
  }

  void Shutdown() override {
    std::vector<std::shared_ptr<Job>> cancelled;
    std::vector<std::unique_ptr<Executor>> executors;
    std::vector<Loader> loaders;
    {
      absl::MutexLock lock(&mu_);
      if (stopping_ && executors_.empty() && loaders_.empty()) return;
      stopping_ = true;
      for (auto& [name, load] : loading_) load->abandoned = true;  // each stops at its next tensor
      loaders = std::move(loaders_);
      loaders_.clear();
      for (auto& [key, executor] : executors_) {
        for (Task& task : executor->queue.TakeAll()) {
          auto it = jobs_.find(task.job->id);
          if (it == jobs_.end()) continue;
          if (--it->second.shards_left == 0 && !IsRunningLocked(task.job->id)) {
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
    for (auto& job : cancelled) {
      if (job->callbacks.on_finish) job->callbacks.on_finish(absl::CancelledError("the server is shutting down"));
    }
    for (Loader& loader : loaders) loader.thread.join();
    for (auto& executor : executors) executor->thread.join();
    absl::MutexLock lock(&mu_);
    models_.clear();
  }

 private:
  struct Replica {
    std::shared_ptr<model::Model> model;  // shared with a validation in flight
    at::Device device = at::kCPU;
    std::string executor;
  };
  struct Entry {
    std::vector<Replica> replicas;
    ModelSummary summary;
    int64_t active = 0;  // experiments queued or running on it
  };
  // A load in flight: its replicas load on loader threads at once; the last to finish reports.
  struct PendingLoad {
    std::string name;                        // const after LoadModel
    std::string devices;                     // const after LoadModel
    std::vector<at::Device> placed_on;       // const after LoadModel: one per replica
    std::function<bool()> caller_cancelled;  // const after LoadModel; may be empty
    std::atomic<bool> abandoned{false};      // the engine stops, or another replica failed
    std::vector<Replica> replicas;           // guarded by the engine's mu_, like the rest
    absl::Status error;
    int64_t remaining = 0;
    std::function<void(absl::StatusOr<ModelSummary>)> done;

    // Asked by the loader threads between tensors, and once more when the last replica is in.
    bool Cancelled() const { return abandoned.load() || (caller_cancelled && caller_cancelled()); }
  };
  // A loader thread; `exited` is set as its last step, so that a later LoadModel joins it at once.
  struct Loader {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> exited;
  };
  // One unit of an executor's queue: a single experiment, or one shard of a sweep.
  struct Task {
    std::shared_ptr<Job> job;
    size_t replica = 0;
    std::vector<int64_t> groups;          // a sweep's shard: its groups
    std::shared_ptr<ShardedSweep> sweep;  // null for a single experiment
    int64_t shard = 0;
  };
  // One device's queue and thread. Members guarded by the engine's mu_ unless said otherwise.
  struct Executor {
    std::string device;                       // the executor key ("cuda:1", "cpu#1")
    std::deque<std::function<void()>> admin;  // unloads: before the next experiment
    FairQueue<Task> queue;                    // per user in arrival order, users round-robin
    std::string running_id;
    std::atomic<bool> cancel_running{false};  // read by the executor thread without mu_
    absl::CondVar wake;
    std::thread thread;
  };
  struct JobState {
    std::shared_ptr<Job> job;
    std::vector<Executor*> executors;  // where its tasks were queued
    int64_t shards_left = 0;           // tasks queued or running
  };

  // On a loader thread: records replica `i`; the last replica in registers the model, or drops
  // every replica (an error, the caller gone, the engine stopping) and frees them here.
  void FinishLoad(PendingLoad& pending, size_t i, const std::string& key,
                  absl::StatusOr<std::unique_ptr<model::Model>> model) {
    std::function<void(absl::StatusOr<ModelSummary>)> done;
    absl::StatusOr<ModelSummary> summary = absl::UnknownError("unset");
    std::vector<std::shared_ptr<model::Model>> dropped;
    bool all_idle = true;
    {
      absl::MutexLock lock(&mu_);
      if (model.ok()) {
        pending.replicas[i] = {std::shared_ptr<model::Model>(*std::move(model)), at::kCPU, key};
        pending.replicas[i].device = pending.replicas[i].model->transformer().device();
      } else if (pending.error.ok()) {
        pending.error = model.status();
        pending.abandoned = true;  // the other replicas stop at their next tensor
      }
      if (--pending.remaining > 0) return;
      loading_.erase(pending.name);
      done = std::move(pending.done);
      if (pending.error.ok() && stopping_) pending.error = absl::UnavailableError("the engine is shutting down");
      // A caller that left after the last tensor was read still leaves nothing loaded.
      if (pending.error.ok() && pending.Cancelled()) {
        pending.error =
            absl::CancelledError(absl::StrCat("the load of model ", QuoteForError(pending.name),
                                              " was abandoned: its caller cancelled or its deadline passed"));
      }
      if (!pending.error.ok()) {
        summary = pending.error;
        for (Replica& r : pending.replicas) {
          if (r.model != nullptr) dropped.push_back(std::move(r.model));
        }
        for (const auto& [k, e] : executors_) all_idle = all_idle && e->running_id.empty();
      } else {
        auto entry = std::make_shared<Entry>();
        entry->replicas = std::move(pending.replicas);
        for (const Replica& r : entry->replicas) ExecutorFor(r.executor);
        entry->summary = Summarize(pending.name, *entry->replicas.front().model, pending.devices);
        summary = entry->summary;
        models_[pending.name] = std::move(entry);
      }
    }
    if (!summary.ok()) {
      // No executor ever saw these replicas, so they are freed here. The cache release is
      // process-wide: as after an experiment, only while no executor is mid-experiment.
      dropped.clear();
      if (all_idle) {
        for (const at::Device& d : pending.placed_on) model::ReleaseCachedMemory(d);
      }
    }
    if (done) done(std::move(summary));
  }

  // The loader threads that have exited, taken out of loaders_ to be joined outside mu_.
  std::vector<std::thread> TakeFinishedLoadersLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    std::vector<std::thread> out;
    for (auto it = loaders_.begin(); it != loaders_.end();) {
      if (it->exited->load()) {
        out.push_back(std::move(it->thread));
        it = loaders_.erase(it);
      } else {
        ++it;
      }
    }
    return out;
  }

  absl::StatusOr<std::shared_ptr<model::Model>> AnyReplica(const std::string& name) const {
    absl::MutexLock lock(&mu_);
    ASSIGN_OR_RETURN(const Entry* entry, Find(name));
    return entry->replicas.front().model;
  }

  absl::StatusOr<const Entry*> Find(const std::string& name) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto it = models_.find(name);
    if (it == models_.end()) {
      std::string known;
      for (const auto& [n, e] : models_) absl::StrAppend(&known, known.empty() ? "" : ", ", n);
      return absl::NotFoundError(absl::StrCat("no model named ", QuoteForError(name), " is loaded (loaded: ",
                                              known.empty() ? "none" : ClipForError(known, 1024), ")"));
    }
    return it->second.get();
  }

  Executor& ExecutorFor(const std::string& key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    std::unique_ptr<Executor>& executor = executors_[key];
    if (executor == nullptr) {
      executor = std::make_unique<Executor>();
      executor->device = key;
      Executor* e = executor.get();
      executor->thread = std::thread([this, e] { Loop(*e); });
    }
    return *executor;
  }

  // Work ahead on an executor: its queue and what it runs now.
  int64_t LoadOf(const std::string& key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const Executor& e = ExecutorFor(key);
    return e.queue.size() + (e.running_id.empty() ? 0 : 1);
  }

  bool IsRunningLocked(const std::string& id) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto it = jobs_.find(id);
    if (it == jobs_.end()) return false;
    for (const Executor* e : it->second.executors) {
      if (e->running_id == id) return true;
    }
    return false;
  }

  // Experiments ahead of `id` on the executor where it waits least.
  int64_t PositionLocked(const std::string& id) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
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
  int64_t RemoveQueuedLocked(Executor& e, const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return e.queue.RemoveIf([&id](const Task& task) { return task.job->id == id; });
  }

  // The prompt of a generation: its ids, or BOS and its text tokenized.
  static absl::StatusOr<std::vector<int32_t>> PromptOf(const model::Model& model, const GenerationJob& g) {
    if (!g.has_text) {
      if (g.ids.empty()) return absl::InvalidArgumentError("generate: the prompt is empty (give text or ids)");
      return g.ids;
    }
    ASSIGN_OR_RETURN(const model::Tokenizer* tokenizer, model.RequireTokenizer());
    std::vector<int32_t> ids;
    if (model.bos_id().has_value()) ids.push_back(*model.bos_id());
    ASSIGN_OR_RETURN(std::vector<int32_t> text_ids, tokenizer->Encode(g.text));
    ids.insert(ids.end(), text_ids.begin(), text_ids.end());
    if (ids.empty()) return absl::InvalidArgumentError("generate: empty text and the model has no BOS token");
    return ids;
  }

  static model::GenerationOptions GenerationOptionsOf(const model::Model& model, const GenerationJob& g) {
    model::GenerationOptions options;
    options.max_new_tokens = g.max_new_tokens;
    options.temperature = g.temperature;
    options.top_k = g.top_k;
    options.seed = g.seed;
    options.stop_id = model.config().eos_token_id;
    return options;
  }

  // A generation on the executor thread; its tokens go out through the job's on_token as chosen.
  static absl::StatusOr<result::Experiment> RunGeneration(Executor& e, Job& job, const model::Model& model) {
    GenerationJob& g = *job.generation;
    if (job.callbacks.on_start) job.callbacks.on_start();
    ASSIGN_OR_RETURN(g.prompt_ids, PromptOf(model, g));
    const model::Tokenizer* tokenizer = model.tokenizer();
    auto text_of = [tokenizer](const std::vector<int32_t>& ids) -> std::string {
      if (tokenizer == nullptr) return "";
      absl::StatusOr<std::string> text = tokenizer->Decode(ids);
      return text.ok() ? *text : "";
    };
    // Each token's text is what it adds to its run's decoded continuation (a token decoded alone
    // would lose a SentencePiece word's leading space), so the pieces join to the run's text.
    struct Decoded {
      std::vector<int32_t> ids;
      std::string text;
    };
    Decoded decoded[2];
    ex::GenerationControls controls;
    controls.baseline = g.baseline;
    controls.on_token = [&](bool intervened, int32_t id, double logprob) {
      if (g.on_token) {
        Decoded& d = decoded[intervened ? 1 : 0];
        d.ids.push_back(id);
        std::string now = text_of(d.ids);
        size_t common = 0;
        while (common < d.text.size() && common < now.size() && d.text[common] == now[common]) ++common;
        g.on_token(intervened, id, logprob, now.substr(common));
        d.text = std::move(now);
      }
      return !e.cancel_running.load();
    };
    ASSIGN_OR_RETURN(ex::GenerationRun run, ex::GenerateSideBySide(model, g.interventions, g.prompt_ids,
                                                                   GenerationOptionsOf(model, g), controls));
    if (e.cancel_running.load()) return absl::CancelledError("generation cancelled");
    g.baseline_ids = run.baseline.tokens;
    g.intervened_ids = run.intervened.tokens;
    g.baseline_text = text_of(g.baseline_ids);
    g.intervened_text = text_of(g.intervened_ids);
    return result::Experiment{};
  }

  // Runs a task on the executor thread: a single experiment's result, or a sweep shard's.
  absl::StatusOr<result::Experiment> RunTask(Executor& e, Task& task, const model::Model& model) {
    Job& job = *task.job;
    if (job.generation != nullptr) return RunGeneration(e, job, model);
    const std::function<bool()> cancelled = [&e] { return e.cancel_running.load(); };
    std::optional<result::Pass> cached;
    if (job.lookup_cached_baseline) cached = job.lookup_cached_baseline();
    if (task.sweep == nullptr) {
      if (job.callbacks.on_start) job.callbacks.on_start();
      ex::RunControls controls;
      controls.cancelled = cancelled;
      controls.progress = job.callbacks.on_progress;
      if (cached.has_value()) controls.cached_baseline = &*cached;
      absl::StatusOr<result::Experiment> result =
          ex::RunExperiment(model, job.spec, options_.data_dir, controls, limits_);
      if (result.ok()) result->run.model = job.model;  // the server's name for it
      return result;
    }
    ShardedSweep& sweep = *task.sweep;
    if (sweep.MarkStarted() && job.callbacks.on_start) job.callbacks.on_start();
    ex::SweepControls controls;
    controls.cancelled = cancelled;
    controls.only_groups = task.groups;
    if (cached.has_value()) controls.cached_baseline = &*cached;
    controls.progress = [&sweep, &job, shard = task.shard](int64_t done, int64_t planned) {
      const auto [all_done, all_planned] = sweep.ReportProgress(shard, done, planned);
      if (job.callbacks.on_progress) job.callbacks.on_progress(all_done, all_planned);
    };
    controls.on_variant = [&job, device = e.device](int64_t i, result::Experiment r) {
      r.run.device = device;  // the executor that ran it ("cuda:1", "cpu#1")
      r.run.model = job.model;
      if (job.callbacks.on_variant) job.callbacks.on_variant(i, std::move(r));
    };
    absl::StatusOr<result::Experiment> shard =
        ex::RunSweep(model, job.spec, job.variants, options_.data_dir, controls, limits_);
    if (shard.ok()) shard->run.model = job.model;
    return shard;
  }

  void Loop(Executor& e) {
    while (true) {
      std::function<void()> admin;
      std::optional<Task> task;
      std::shared_ptr<model::Model> model;
      at::Device device = at::kCPU;
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
          const Replica& replica = models_.at(task->job->model)->replicas[task->replica];
          model = replica.model;
          device = replica.device;
        } else {
          return;  // stopping, nothing left
        }
      }
      if (admin) {
        admin();
        continue;
      }
      absl::StatusOr<result::Experiment> outcome = RunTask(e, *task, *model);
      const std::shared_ptr<Job> job = task->job;
      const bool failed = !outcome.ok();
      const bool out_of_memory = absl::IsResourceExhausted(outcome.status());
      if (task->sweep != nullptr) task->sweep->Merge(std::move(outcome), e.device);
      bool complete = false;
      bool all_idle = true;
      {
        absl::MutexLock lock(&mu_);
        e.running_id.clear();
        for (const auto& [key, other] : executors_) all_idle = all_idle && other->running_id.empty();
        auto it = jobs_.find(job->id);
        if (it != jobs_.end()) {
          JobState& state = it->second;
          --state.shards_left;
          if (failed && task->sweep != nullptr) {  // one shard failed or was cancelled: stop the others
            for (Executor* other : state.executors) {
              if (other->running_id == job->id) other->cancel_running = true;
              state.shards_left -= RemoveQueuedLocked(*other, job->id);
            }
          }
          complete = state.shards_left == 0;
          if (complete) {
            jobs_.erase(it);
            if (auto m = models_.find(job->model); m != models_.end()) --m->second->active;
          }
        }
      }
      // Nothing of a finished experiment stays reserved on the device. The release is process-wide
      // (every GPU's cache), so it waits until no other executor is mid-experiment, unless this
      // one ran out of memory.
      if (all_idle || out_of_memory) model::ReleaseCachedMemory(device);
      if (!complete || !job->callbacks.on_finish) continue;
      job->callbacks.on_finish(task->sweep != nullptr ? task->sweep->Outcome() : std::move(outcome));
    }
  }

  const EngineOptions options_;
  ex::RunLimits limits_;  // const after construction
  mutable absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<Entry>> models_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::shared_ptr<PendingLoad>> loading_ ABSL_GUARDED_BY(mu_);
  std::vector<Loader> loaders_ ABSL_GUARDED_BY(mu_);  // joined by LoadModel once exited, else by Shutdown
  std::map<std::string, std::unique_ptr<Executor>> executors_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, JobState> jobs_ ABSL_GUARDED_BY(mu_);  // queued or running
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
