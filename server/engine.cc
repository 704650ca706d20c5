// The torch side of lesiond (engine.h): the model registry and the device executors
// (model_registry.h, device_executors.h) joined by the planning of each job's tasks.
#include "server/engine.h"

#include <torch/version.h>

#include <memory>
#include <utility>
#include <vector>

// at::accelerator's memory statistics came with LibTorch 2.9 (as in model/torch_util.cc);
// before, device memory reads 0.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 9)
#include <ATen/DeviceAccelerator.h>
#define LESION_ACCELERATOR_MEMORY_API 1
#endif

#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "common/status_macros.h"
#include "experiments/generation.h"
#include "experiments/runner.h"
#include "experiments/sweep.h"
#include "model/model.h"
#include "model/torch_util.h"
#include "server/device_executors.h"
#include "server/engine_tasks.h"
#include "server/model_registry.h"
#include "server/sweep_shards.h"

namespace lesion::server {
namespace {

namespace ex = ::lesion::experiments;

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

// The engine: a registry of models, the executors that run on them, and between the two the
// planning of a job's tasks (which replica runs an experiment, which shards a sweep is cut into).
// The registry and the executors have locks of their own and never call each other with one held.
class EngineImpl : public Engine {
 public:
  explicit EngineImpl(EngineOptions options)
      : options_(std::move(options)),
        limits_(LimitsOf(options_)),
        executors_(
            options_.max_queue_per_device,
            [this](Task& task, const std::string& executor, const std::function<bool()>& cancelled) {
              return RunEngineTask(task, executor, cancelled, options_.data_dir, limits_);
            },
            [this](const Job& job) { registry_.Release(job.model); }),
        registry_({.on_registered = [this](const std::vector<std::string>& keys) { executors_.Ensure(keys); },
                   .devices_idle = [this] { return executors_.AllIdle(); }}) {
    if (options_.tf32) model::AllowTf32();
  }
  ~EngineImpl() override { Shutdown(); }

  absl::Status LoadModel(const std::string& name, const std::string& dir, const std::string& dtype,
                         const std::string& device, std::function<bool()> cancelled,
                         std::function<void(absl::StatusOr<ModelSummary>)> done) override {
    return registry_.Load(name, dir, dtype, device, options_.default_device, std::move(cancelled), std::move(done));
  }

  absl::Status UnloadModel(const std::string& name) override {
    ASSIGN_OR_RETURN(std::vector<Replica> replicas, registry_.Remove(name));
    // The tensors are freed on each replica's executor, like every other torch call on its device.
    for (Replica& r : replicas) {
      executors_.RunBeforeNextTask(r.executor, [model = std::move(r.model), device = r.device]() mutable {
        model.reset();
        model::ReleaseCachedMemory(device);
      });
    }
    return absl::OkStatus();
  }

  std::vector<ModelSummary> ListModels() const override { return registry_.List(); }

  absl::StatusOr<ModelSummary> GetModel(const std::string& name) const override { return registry_.Summary(name); }

  absl::Status Validate(const std::string& model, const spec::Experiment& spec) const override {
    ASSIGN_OR_RETURN(std::shared_ptr<model::Model> m, registry_.AnyReplica(model));
    // Shapes and tokenizer only: safe beside the executor running the same model.
    return ex::ValidateExperiment(*m, spec, options_.data_dir, limits_);
  }

  absl::Status ValidateSweep(const std::string& model, const spec::Experiment& parent,
                             const std::vector<spec::Experiment>& variants) const override {
    ASSIGN_OR_RETURN(std::shared_ptr<model::Model> m, registry_.AnyReplica(model));
    return ex::ValidateSweep(*m, parent, variants, options_.data_dir, limits_);
  }

  absl::Status ValidateGeneration(const std::string& model, const GenerationJob& generation) const override {
    ASSIGN_OR_RETURN(std::shared_ptr<model::Model> m, registry_.AnyReplica(model));
    ASSIGN_OR_RETURN(std::vector<int32_t> prompt, GenerationPrompt(*m, generation));
    return ex::ValidateGeneration(*m, generation.interventions, prompt, GenerationOptionsOf(*m, generation));
  }

  absl::StatusOr<int64_t> Submit(Job job_in) override {
    auto job = std::make_shared<Job>(std::move(job_in));
    // Held from here until the job ends (the executors' job_ended), so that it cannot be unloaded.
    ASSIGN_OR_RETURN(std::shared_ptr<const LoadedModel> model, registry_.Acquire(job->model));
    absl::StatusOr<int64_t> ahead = executors_.Enqueue(job, PlanTasks(job, *model));
    if (!ahead.ok()) registry_.Release(job->model);
    return ahead;
  }

  absl::Status Cancel(const std::string& id) override { return executors_.Cancel(id); }

  absl::StatusOr<int64_t> QueuePosition(const std::string& id) const override { return executors_.Position(id); }

  std::vector<DeviceStats> Devices() const override {
    std::vector<DeviceStats> out = executors_.Stats();
    // Memory outside the executors' lock: the allocator takes its own lock, which an executor may
    // hold mid-pass.
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

  // The executors first (what is queued is cancelled, what runs stops), then the loads and the
  // models: no task is left to use a model when the registry drops it.
  void Shutdown() override {
    executors_.Shutdown();
    registry_.Shutdown();
  }

 private:
  static ex::RunLimits LimitsOf(const EngineOptions& options) {
    ex::RunLimits limits;
    limits.max_capture_bytes = options.max_capture_bytes;
    limits.max_tokens = options.max_tokens;
    limits.max_sweep_variants = options.max_sweep_variants;
    limits.max_pass_tokens = options.max_pass_tokens;
    return limits;
  }

  // The tasks of `job`: a single experiment on the least busy replica, or one per non-empty shard
  // of a sweep (shard k on replica k).
  std::vector<Task> PlanTasks(const std::shared_ptr<Job>& job, const LoadedModel& model) const {
    std::vector<Task> tasks;
    if (job->variants.empty()) {
      size_t best = 0;
      int64_t best_load = executors_.Load(model.replicas[0].executor);
      for (size_t r = 1; r < model.replicas.size(); ++r) {
        const int64_t load = executors_.Load(model.replicas[r].executor);
        if (load < best_load) {
          best = r;
          best_load = load;
        }
      }
      tasks.push_back({job, model.replicas[best], {}, nullptr, 0});
      return tasks;
    }
    std::vector<std::vector<int64_t>> shards =
        SweepShards(model.replicas.front().model->config(), *job, limits_, static_cast<int64_t>(model.replicas.size()));
    int64_t n_shards = 0;
    for (const auto& shard : shards) n_shards += shard.empty() ? 0 : 1;
    auto sweep = std::make_shared<ShardedSweep>(n_shards);
    for (size_t r = 0; r < shards.size(); ++r) {
      if (shards[r].empty()) continue;
      tasks.push_back({job, model.replicas[r], std::move(shards[r]), sweep, static_cast<int64_t>(tasks.size())});
    }
    return tasks;
  }

  const EngineOptions options_;
  const ex::RunLimits limits_;
  // Declared before the registry, destroyed after it: the registry's hooks call the executors.
  DeviceExecutors executors_;
  ModelRegistry registry_;
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
