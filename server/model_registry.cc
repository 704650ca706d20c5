// The models of the engine and their loads (model_registry.h).
#include "server/model_registry.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/error_text.h"
#include "common/status_macros.h"
#include "model/torch_util.h"
#include "model/weight_addressing.h"

namespace lesion::server {
namespace {

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

absl::Status NotLoaded(const std::string& name) {
  return absl::NotFoundError(absl::StrCat("no model named ", QuoteForError(name), " is loaded"));
}

}  // namespace

// A load in flight: its replicas load on loader threads at once; the last to finish reports.
struct ModelRegistry::PendingLoad {
  std::string name;                        // const after Load
  std::string devices;                     // const after Load
  std::vector<at::Device> placed_on;       // const after Load: one per replica
  std::function<bool()> caller_cancelled;  // const after Load; may be empty
  std::atomic<bool> abandoned{false};      // the registry stops, or another replica failed
  // Guarded by the registry's mu_:
  std::vector<Replica> replicas;
  absl::Status error;
  int64_t remaining = 0;
  std::function<void(absl::StatusOr<ModelSummary>)> done;

  // Asked by the loader threads between tensors, and once more when the last replica is in.
  bool Cancelled() const { return abandoned.load() || (caller_cancelled && caller_cancelled()); }
};

ModelRegistry::ModelRegistry(Hooks hooks) : hooks_(std::move(hooks)) {}

ModelRegistry::~ModelRegistry() { Shutdown(); }

absl::Status ModelRegistry::Load(const std::string& name, const std::string& dir, const std::string& dtype,
                                 const std::string& devices, const std::string& default_device,
                                 std::function<bool()> cancelled,
                                 std::function<void(absl::StatusOr<ModelSummary>)> done) {
  if (name.empty()) return absl::InvalidArgumentError("a model needs a name");
  // A model's name is echoed in every listing and stored with every experiment, like theirs.
  if (name.size() > spec::kMaxNameBytes) {
    return absl::InvalidArgumentError(absl::StrCat("model name ", QuoteForError(name), " is longer than the limit of ",
                                                   spec::kMaxNameBytes, " bytes"));
  }
  model::LoadOptions load;
  if (!dtype.empty()) {
    ASSIGN_OR_RETURN(load.dtype, model::ParseDtype(dtype));
  }
  ASSIGN_OR_RETURN(std::vector<Placement> placements, ParsePlacements(devices.empty() ? default_device : devices));
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
    for (size_t i = 0; i < placements.size(); ++i) {
      model::LoadOptions replica_load = load;
      replica_load.device = placements[i].device;
      auto exited = std::make_shared<std::atomic<bool>>(false);
      std::thread thread([this, dir, replica_load, pending, i, key = placements[i].executor, exited] {
        absl::StatusOr<std::unique_ptr<model::Model>> model = model::Model::Load(dir, replica_load);
        FinishLoad(*pending, i, key, std::move(model));
        exited->store(true);  // the thread's last touch of the registry
      });
      loaders_.push_back({std::move(thread), std::move(exited)});
    }
  }
  for (std::thread& t : finished) t.join();
  return absl::OkStatus();
}

// On a loader thread: records replica `i`; the last replica in registers the model, or drops every
// replica (an error, the caller gone, the registry stopping) and frees them here.
void ModelRegistry::FinishLoad(PendingLoad& pending, size_t i, const std::string& executor,
                               absl::StatusOr<std::unique_ptr<model::Model>> model) {
  std::function<void(absl::StatusOr<ModelSummary>)> done;
  absl::StatusOr<ModelSummary> summary = absl::UnknownError("unset");
  std::vector<std::shared_ptr<model::Model>> dropped;
  std::vector<std::string> executors;
  {
    absl::MutexLock lock(&mu_);
    if (model.ok()) {
      Replica& r = pending.replicas[i];
      r.model = std::shared_ptr<model::Model>(*std::move(model));
      r.device = r.model->transformer().device();
      r.executor = executor;
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
      pending.error = absl::CancelledError(absl::StrCat("the load of model ", QuoteForError(pending.name),
                                                        " was abandoned: its caller cancelled or its deadline passed"));
    }
    if (!pending.error.ok()) {
      summary = pending.error;
      for (Replica& r : pending.replicas) {
        if (r.model != nullptr) dropped.push_back(std::move(r.model));
      }
    } else {
      auto loaded = std::make_shared<LoadedModel>();
      loaded->replicas = std::move(pending.replicas);
      for (const Replica& r : loaded->replicas) executors.push_back(r.executor);
      loaded->summary = Summarize(pending.name, *loaded->replicas.front().model, pending.devices);
      summary = loaded->summary;
      models_[pending.name].model = std::move(loaded);
    }
  }
  if (summary.ok()) {
    if (hooks_.on_registered) hooks_.on_registered(executors);
  } else {
    // No executor ever saw these replicas, so they are freed here. The cache release is
    // process-wide: as after an experiment, only while no executor is mid-experiment.
    dropped.clear();
    if (!hooks_.devices_idle || hooks_.devices_idle()) {
      for (const at::Device& d : pending.placed_on) model::ReleaseCachedMemory(d);
    }
  }
  if (done) done(std::move(summary));
}

// The loader threads that have exited, taken out of loaders_ to be joined outside mu_.
std::vector<std::thread> ModelRegistry::TakeFinishedLoadersLocked() {
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

absl::StatusOr<const ModelRegistry::Entry*> ModelRegistry::FindLocked(const std::string& name) const {
  auto it = models_.find(name);
  if (it == models_.end()) {
    std::string known;
    for (const auto& [n, e] : models_) absl::StrAppend(&known, known.empty() ? "" : ", ", n);
    return absl::NotFoundError(absl::StrCat("no model named ", QuoteForError(name), " is loaded (loaded: ",
                                            known.empty() ? "none" : ClipForError(known, 1024), ")"));
  }
  return &it->second;
}

absl::StatusOr<std::shared_ptr<const LoadedModel>> ModelRegistry::Acquire(const std::string& name) {
  absl::MutexLock lock(&mu_);
  if (stopping_) return absl::UnavailableError("the engine is shutting down");
  auto it = models_.find(name);
  if (it == models_.end()) return NotLoaded(name);
  ++it->second.held;
  return it->second.model;
}

void ModelRegistry::Release(const std::string& name) {
  absl::MutexLock lock(&mu_);
  if (auto it = models_.find(name); it != models_.end() && it->second.held > 0) --it->second.held;
}

absl::StatusOr<std::vector<Replica>> ModelRegistry::Remove(const std::string& name) {
  std::shared_ptr<const LoadedModel> removed;
  {
    absl::MutexLock lock(&mu_);
    auto it = models_.find(name);
    if (it == models_.end()) return NotLoaded(name);
    if (it->second.held > 0) {
      return absl::FailedPreconditionError(absl::StrCat("model ", QuoteForError(name), " has ", it->second.held,
                                                        " experiment(s) queued or running; cancel or wait for them"));
    }
    removed = std::move(it->second.model);
    models_.erase(it);
  }
  return removed->replicas;  // a validation in flight may still share a replica until it is done
}

std::vector<ModelSummary> ModelRegistry::List() const {
  absl::MutexLock lock(&mu_);
  std::vector<ModelSummary> out;
  for (const auto& [name, entry] : models_) out.push_back(entry.model->summary);
  return out;
}

absl::StatusOr<ModelSummary> ModelRegistry::Summary(const std::string& name) const {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(const Entry* entry, FindLocked(name));
  return entry->model->summary;
}

absl::StatusOr<std::shared_ptr<model::Model>> ModelRegistry::AnyReplica(const std::string& name) const {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(const Entry* entry, FindLocked(name));
  return entry->model->replicas.front().model;
}

void ModelRegistry::Shutdown() {
  std::vector<Loader> loaders;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    for (auto& [name, load] : loading_) load->abandoned = true;  // each stops at its next tensor
    loaders = std::move(loaders_);
    loaders_.clear();
  }
  for (Loader& loader : loaders) loader.thread.join();
  std::map<std::string, Entry> models;
  {
    absl::MutexLock lock(&mu_);
    models.swap(models_);
  }
  // The models are freed here, outside the lock.
}

}  // namespace lesion::server
