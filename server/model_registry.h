// ModelRegistry: the models the engine holds, by name, each as one replica per device, and the
// loads in flight. A load reads every replica on a loader thread of its own (a load waits neither
// for another load nor for an experiment), can be abandoned by its caller between tensors, and
// registers the model only when every replica is in. An experiment holds its model (Acquire ...
// Release) so that it cannot be unloaded under it.
//
//   ModelRegistry registry(hooks);
//   registry.Load("smol", dir, "", "cuda:*", /*default_device=*/"cpu", cancelled, done);
//   ASSIGN_OR_RETURN(std::shared_ptr<const LoadedModel> m, registry.Acquire("smol"));
//   ... run on m->replicas[k] ...;  registry.Release("smol");
//
// Thread-safe. `done` and the hooks run on loader threads, without the registry's lock held (so
// they may call back into the registry). The registry frees a replica only when no executor saw it
// (a failed or abandoned load); an unloaded model's replicas go back to the caller, which frees
// each on its device's executor.
#ifndef LESION_SERVER_MODEL_REGISTRY_H_
#define LESION_SERVER_MODEL_REGISTRY_H_

#include <atomic>
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
#include "model/model.h"
#include "server/engine.h"

namespace lesion::server {

// One copy of a model's weights on one device, run by one executor.
struct Replica {
  std::shared_ptr<model::Model> model;  // shared with validations and tasks in flight
  at::Device device = at::kCPU;
  std::string executor;  // the key of the executor that runs it: "cuda:1", "cpu", "cpu#1"
};

struct LoadedModel {
  std::vector<Replica> replicas;  // at least one
  ModelSummary summary;
};

class ModelRegistry {
 public:
  struct Hooks {
    // A model was registered; `executors` are its replicas' executor keys (so that they exist,
    // and are listed, before its first experiment).
    std::function<void(const std::vector<std::string>& executors)> on_registered;
    // Whether no executor is mid-experiment: device caches are released after a failed load only
    // then (the release is process-wide).
    std::function<bool()> devices_idle;
  };

  explicit ModelRegistry(Hooks hooks);
  ~ModelRegistry();  // Shutdown()

  // Loads `dir` as `name` on `devices` ("" = `default_device`; a comma-separated list, or "cuda:*"
  // for every GPU: one replica each) in `dtype` ("" = the checkpoint's). The contract of
  // Engine::LoadModel: errors at once without calling `done`, otherwise `done` once.
  absl::Status Load(const std::string& name, const std::string& dir, const std::string& dtype,
                    const std::string& devices, const std::string& default_device, std::function<bool()> cancelled,
                    std::function<void(absl::StatusOr<ModelSummary>)> done);

  // The model, held until Release(name): Remove refuses it meanwhile. NotFound naming the models
  // that are loaded.
  absl::StatusOr<std::shared_ptr<const LoadedModel>> Acquire(const std::string& name);
  void Release(const std::string& name);

  // Takes the model out of the registry and returns its replicas (for the caller to free on their
  // executors). NotFound, or FailedPrecondition while it is held.
  absl::StatusOr<std::vector<Replica>> Remove(const std::string& name);

  std::vector<ModelSummary> List() const;
  absl::StatusOr<ModelSummary> Summary(const std::string& name) const;
  // The first replica, for checks that read shapes and the tokenizer only.
  absl::StatusOr<std::shared_ptr<model::Model>> AnyReplica(const std::string& name) const;

  // Refuses new loads, abandons those in flight (each stops at its next tensor), joins the loader
  // threads and drops every model. Idempotent.
  void Shutdown();

 private:
  struct Entry {
    std::shared_ptr<const LoadedModel> model;
    int64_t held = 0;  // experiments queued or running on it
  };
  struct PendingLoad;
  // A loader thread; `exited` is set as its last step, so that a later Load joins it at once.
  struct Loader {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> exited;
  };

  void FinishLoad(PendingLoad& pending, size_t replica, const std::string& executor,
                  absl::StatusOr<std::unique_ptr<model::Model>> model);
  std::vector<std::thread> TakeFinishedLoadersLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<const Entry*> FindLocked(const std::string& name) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Hooks hooks_;
  mutable absl::Mutex mu_;
  std::map<std::string, Entry> models_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::shared_ptr<PendingLoad>> loading_ ABSL_GUARDED_BY(mu_);
  std::vector<Loader> loaders_ ABSL_GUARDED_BY(mu_);  // joined by Load once exited, else by Shutdown
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace lesion::server

#endif  // LESION_SERVER_MODEL_REGISTRY_H_
