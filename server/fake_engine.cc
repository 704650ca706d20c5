#include "server/fake_engine.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"

namespace lesion::server {

void FakeEngine::AddModel(const std::string& name, int64_t n_layers, int64_t n_heads) {
  ModelSummary m;
  m.name = name;
  m.architecture = "LlamaForCausalLM";
  m.dir = "/models/" + name;
  m.n_layers = n_layers;
  m.n_heads = n_heads;
  m.n_kv_heads = n_heads;
  m.d_model = 64;
  m.d_ffn = 128;
  m.vocab_size = 512;
  m.n_params = 1000;
  m.dtype = "float32";
  m.device = "cpu";
  m.weight_bytes = 4000;
  m.fingerprint = "fp-" + name;
  absl::MutexLock lock(&mu_);
  models_[name] = m;
}

void FakeEngine::SetModelPlacement(const std::string& name, const std::string& device, const std::string& fingerprint) {
  absl::MutexLock lock(&mu_);
  models_.at(name).device = device;
  models_.at(name).fingerprint = fingerprint;
}

void FakeEngine::SetValidateError(absl::Status status) {
  absl::MutexLock lock(&mu_);
  validate_error_ = std::move(status);
}

void FakeEngine::SetSubmitError(absl::Status status) {
  absl::MutexLock lock(&mu_);
  submit_error_ = std::move(status);
}

void FakeEngine::HoldLoads(bool hold) {
  absl::MutexLock lock(&mu_);
  hold_loads_ = hold;
}

void FakeEngine::CompleteLoad() {
  std::function<void()> load;
  {
    absl::MutexLock lock(&mu_);
    if (held_loads_.empty()) return;
    load = std::move(held_loads_.front().finish);
    held_loads_.pop_front();
  }
  load();
}

int64_t FakeEngine::HeldLoads() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(held_loads_.size());
}

bool FakeEngine::HeldLoadCancelled() const {
  std::function<bool()> cancelled;
  {
    absl::MutexLock lock(&mu_);
    if (held_loads_.empty()) return false;
    cancelled = held_loads_.front().cancelled;
  }
  return cancelled && cancelled();
}

absl::Status FakeEngine::LoadModel(const std::string& name, const std::string& dir, const std::string& dtype,
                                   const std::string& device, std::function<bool()> cancelled,
                                   std::function<void(absl::StatusOr<ModelSummary>)> done) {
  {
    absl::MutexLock lock(&mu_);
    if (models_.contains(name)) return absl::AlreadyExistsError(absl::StrCat("model '", name, "' is loaded"));
    if (!dtype.empty() && dtype != "float32" && dtype != "bfloat16" && dtype != "float16") {
      return absl::InvalidArgumentError(absl::StrCat("unknown dtype '", dtype, "'"));
    }
  }
  auto load = [this, name, dir, device, cancelled, done = std::move(done)] {
    if (cancelled && cancelled()) {
      done(absl::CancelledError(absl::StrCat("the load of model '", name, "' was abandoned")));
      return;
    }
    ModelSummary m;
    m.name = name;
    m.dir = dir;
    m.architecture = "LlamaForCausalLM";
    m.n_layers = 2;
    m.n_heads = 2;
    m.dtype = "float32";
    m.device = device.empty() ? "cpu" : device;
    m.fingerprint = "fp-" + name;
    {
      absl::MutexLock lock(&mu_);
      models_[name] = m;
    }
    done(m);
  };
  {
    absl::MutexLock lock(&mu_);
    if (hold_loads_) {
      held_loads_.push_back({std::move(cancelled), std::move(load)});
      return absl::OkStatus();
    }
  }
  load();
  return absl::OkStatus();
}

absl::Status FakeEngine::UnloadModel(const std::string& name) {
  absl::MutexLock lock(&mu_);
  if (!models_.contains(name)) return absl::NotFoundError(absl::StrCat("no model '", name, "'"));
  for (const Entry& e : jobs_) {
    if (e.job.model == name) {
      return absl::FailedPreconditionError(absl::StrCat("model '", name, "' has queued or running experiments"));
    }
  }
  models_.erase(name);
  return absl::OkStatus();
}

std::vector<ModelSummary> FakeEngine::ListModels() const {
  absl::MutexLock lock(&mu_);
  std::vector<ModelSummary> out;
  for (const auto& [name, m] : models_) out.push_back(m);
  return out;
}

absl::StatusOr<ModelSummary> FakeEngine::GetModel(const std::string& name) const {
  absl::MutexLock lock(&mu_);
  auto it = models_.find(name);
  if (it == models_.end()) return absl::NotFoundError(absl::StrCat("no model '", name, "' is loaded"));
  return it->second;
}

absl::Status FakeEngine::Validate(const std::string& model, const spec::Experiment& spec) const {
  absl::MutexLock lock(&mu_);
  if (!models_.contains(model)) return absl::NotFoundError(absl::StrCat("no model '", model, "' is loaded"));
  return validate_error_;
}

absl::Status FakeEngine::ValidateSweep(const std::string& model, const spec::Experiment& parent,
                                       const std::vector<spec::Experiment>& variants) const {
  return Validate(model, parent);
}

absl::Status FakeEngine::ValidateGeneration(const std::string& model, const GenerationJob&) const {
  spec::Experiment none;
  return Validate(model, none);
}

absl::StatusOr<int64_t> FakeEngine::Submit(Job job) {
  absl::MutexLock lock(&mu_);
  if (shut_down_) return absl::FailedPreconditionError("the engine is shut down");
  if (!submit_error_.ok()) return submit_error_;
  int64_t ahead = static_cast<int64_t>(jobs_.size());
  submitted_.push_back(job.id);
  Job copy = job;
  copy.callbacks = {};
  submitted_jobs_[job.id] = std::move(copy);
  jobs_.push_back(Entry{std::move(job), false});
  return ahead;
}

absl::StatusOr<JobCallbacks> FakeEngine::TakeLocked(const std::string& id) {
  auto it = std::find_if(jobs_.begin(), jobs_.end(), [&](const Entry& e) { return e.job.id == id; });
  if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat("the engine holds no experiment ", id));
  JobCallbacks callbacks = std::move(it->job.callbacks);
  jobs_.erase(it);
  return callbacks;
}

absl::Status FakeEngine::Start(const std::string& id) {
  std::function<void()> on_start;
  {
    absl::MutexLock lock(&mu_);
    auto it = std::find_if(jobs_.begin(), jobs_.end(), [&](const Entry& e) { return e.job.id == id; });
    if (it == jobs_.end()) return absl::NotFoundError(id);
    it->running = true;
    on_start = it->job.callbacks.on_start;
  }
  if (on_start) on_start();
  return absl::OkStatus();
}

absl::Status FakeEngine::Progress(const std::string& id, int64_t done, int64_t planned) {
  std::function<void(int64_t, int64_t)> on_progress;
  {
    absl::MutexLock lock(&mu_);
    auto it = std::find_if(jobs_.begin(), jobs_.end(), [&](const Entry& e) { return e.job.id == id; });
    if (it == jobs_.end()) return absl::NotFoundError(id);
    on_progress = it->job.callbacks.on_progress;
  }
  if (on_progress) on_progress(done, planned);
  return absl::OkStatus();
}

absl::Status FakeEngine::Variant(const std::string& id, int64_t index, result::Experiment result) {
  std::function<void(int64_t, result::Experiment)> on_variant;
  {
    absl::MutexLock lock(&mu_);
    auto it = std::find_if(jobs_.begin(), jobs_.end(), [&](const Entry& e) { return e.job.id == id; });
    if (it == jobs_.end()) return absl::NotFoundError(id);
    if (index < 0 || index >= static_cast<int64_t>(it->job.variants.size())) {
      return absl::OutOfRangeError(absl::StrCat(id, " has no variant ", index));
    }
    on_variant = it->job.callbacks.on_variant;
  }
  if (on_variant) on_variant(index, std::move(result));
  return absl::OkStatus();
}

absl::Status FakeEngine::Finish(const std::string& id, absl::StatusOr<result::Experiment> result) {
  absl::StatusOr<JobCallbacks> callbacks;
  {
    absl::MutexLock lock(&mu_);
    callbacks = TakeLocked(id);
  }
  if (!callbacks.ok()) return callbacks.status();
  if (callbacks->on_finish) callbacks->on_finish(std::move(result));
  return absl::OkStatus();
}

absl::Status FakeEngine::Cancel(const std::string& id) {
  absl::StatusOr<JobCallbacks> callbacks;
  {
    absl::MutexLock lock(&mu_);
    callbacks = TakeLocked(id);
    if (callbacks.ok()) cancelled_.push_back(id);
  }
  if (!callbacks.ok()) return callbacks.status();
  // A real engine stops a running job between passes; the fake stops it at once.
  if (callbacks->on_finish)
    callbacks->on_finish(absl::CancelledError(absl::StrCat("experiment ", id, " was cancelled")));
  return absl::OkStatus();
}

std::vector<DeviceStats> FakeEngine::Devices() const {
  absl::MutexLock lock(&mu_);
  DeviceStats cpu;
  cpu.device = "cpu";
  for (const Entry& e : jobs_) {
    if (!e.running) ++cpu.queued;
    if (e.running && cpu.running_id.empty()) cpu.running_id = e.job.id;
  }
  cpu.memory_allocated_bytes = memory_allocated_;
  cpu.memory_reserved_bytes = memory_reserved_;
  return {cpu};
}

void FakeEngine::SetDeviceMemory(int64_t allocated_bytes, int64_t reserved_bytes) {
  absl::MutexLock lock(&mu_);
  memory_allocated_ = allocated_bytes;
  memory_reserved_ = reserved_bytes;
}

absl::StatusOr<int64_t> FakeEngine::QueuePosition(const std::string& id) const {
  absl::MutexLock lock(&mu_);
  int64_t ahead = 0;
  for (const Entry& e : jobs_) {
    if (e.job.id == id) {
      if (e.running) return absl::NotFoundError(absl::StrCat(id, " is running"));
      return ahead;
    }
    ++ahead;
  }
  return absl::NotFoundError(absl::StrCat(id, " is not queued"));
}

void FakeEngine::Shutdown() {
  std::vector<std::string> ids;
  {
    absl::MutexLock lock(&mu_);
    shut_down_ = true;
    for (const Entry& e : jobs_) ids.push_back(e.job.id);
  }
  for (const std::string& id : ids) Cancel(id).IgnoreError();
}

bool FakeEngine::WaitForSubmitted(int64_t n, absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  struct Arg {
    FakeEngine* e;
    int64_t n;
  } arg{this, n};
  return mu_.AwaitWithTimeout(
      absl::Condition(
          +[](Arg* a) ABSL_NO_THREAD_SAFETY_ANALYSIS { return static_cast<int64_t>(a->e->submitted_.size()) >= a->n; },
          &arg),
      timeout);
}

std::vector<std::string> FakeEngine::SubmittedIds() const {
  absl::MutexLock lock(&mu_);
  return submitted_;
}

std::optional<Job> FakeEngine::SubmittedJob(const std::string& id) const {
  absl::MutexLock lock(&mu_);
  auto it = submitted_jobs_.find(id);
  if (it == submitted_jobs_.end()) return std::nullopt;
  return it->second;
}

bool FakeEngine::Cancelled(const std::string& id) const {
  absl::MutexLock lock(&mu_);
  return std::find(cancelled_.begin(), cancelled_.end(), id) != cancelled_.end();
}

result::Experiment FakeEngine::Result(double baseline_ppl, double intervened_ppl, bool baseline_from_cache) {
  result::Experiment r;
  r.baseline.has_perplexity = true;
  r.baseline.perplexity.ppl = baseline_ppl;
  r.baseline.perplexity.n_tokens = 100;
  r.baseline.perplexity.n_windows = 1;
  r.intervened.has_perplexity = true;
  r.intervened.perplexity.ppl = intervened_ppl;
  r.intervened.perplexity.n_tokens = 100;
  r.intervened.perplexity.n_windows = 1;
  result::Tensor t;
  t.name = "blocks.0.resid_post";
  t.shape = {1, 2};
  t.dtype = "float32";
  t.data = std::string(8, '\x01');
  r.intervened.captures.push_back(t);
  r.baseline_from_cache = baseline_from_cache;
  r.run.model = "tiny";
  r.run.model_fingerprint = "fp-tiny";
  r.run.dtype = "float32";
  r.run.device = "cpu";
  return r;
}

}  // namespace lesion::server
