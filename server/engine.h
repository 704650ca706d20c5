// Engine: the models lesiond holds and the executors that run experiments on them, one executor
// thread per device. This is the torch side of the server behind a torch-free and proto-free
// interface (plain values of experiments/spec), so that the gRPC side never includes LibTorch and
// LibTorch never meets the generated protobuf code.
//
//   ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine, Engine::Create(options));
//   engine->LoadModel("stories", "models/stories260K", "", "cpu", [](auto summary) { ... });
//   RETURN_IF_ERROR(engine->Validate("stories", spec));      // on the calling thread, no device work
//   ASSIGN_OR_RETURN(int ahead, engine->Submit(std::move(job)));  // queued; callbacks report
//
// Scheduling: each device has a bounded queue. Experiments on a device run one at a time; the next
// one is taken round-robin over the users with queued experiments, in the order each user's
// experiments arrived (one user's sweep cannot starve the others). Model loads and unloads run on
// the executor of their device, between experiments.
//
// Thread-safety: every method may be called from any thread. Callbacks run on executor threads and
// must not block (hand work to another thread). Errors: NotFound (unknown model or experiment),
// AlreadyExists (a model name in use), InvalidArgument (a bad spec or load request),
// ResourceExhausted (a full queue, device memory), FailedPrecondition, Cancelled.
#ifndef LESION_SERVER_ENGINE_H_
#define LESION_SERVER_ENGINE_H_

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "experiments/spec/result.h"
#include "experiments/spec/spec.h"

namespace lesion::server {

struct ModelSummary {
  std::string name;
  std::string architecture;
  std::string dir;
  int64_t n_layers = 0;
  int64_t n_heads = 0;
  int64_t n_kv_heads = 0;
  int64_t d_model = 0;
  int64_t d_ffn = 0;
  int64_t vocab_size = 0;
  int64_t n_params = 0;
  std::string dtype;
  std::string device;
  int64_t weight_bytes = 0;
  std::string fingerprint;  // Model::fingerprint(): the weights' exact bits
};

struct EngineOptions {
  std::filesystem::path data_dir;           // named datasets
  int64_t max_queue_per_device = 64;        // queued experiments; more is ResourceExhausted
  int64_t max_capture_bytes = int64_t{256} << 20;
  int64_t max_tokens = int64_t{64} << 20;
  std::string default_device = "cpu";
};

// Reports of one experiment, each called once at most, in this order, on its executor thread.
struct JobCallbacks {
  std::function<void()> on_start;
  std::function<void(int64_t passes_done, int64_t passes_planned)> on_progress;
  // The result, or why not: Cancelled, ResourceExhausted (device memory), Internal, ...
  std::function<void(absl::StatusOr<experiments::result::Experiment>)> on_finish;
};

struct Job {
  std::string id;
  std::string user;
  std::string model;  // a loaded model's name
  experiments::spec::Experiment spec;
  // Asked when the experiment starts (so that a sweep queued at once still finds the baseline its
  // first experiment computed): the baseline pass of an earlier experiment with the same model
  // fingerprint and spec.baseline_sha256, reused (no baseline forward passes) unless the spec needs
  // the baseline's logits or dataset means (KL divergence, MEAN modes). May be empty. Called on the
  // executor thread; must not block for long.
  std::function<std::optional<experiments::result::Pass>()> lookup_cached_baseline;
  JobCallbacks callbacks;
};

class Engine {
 public:
  static absl::StatusOr<std::unique_ptr<Engine>> Create(EngineOptions options);
  virtual ~Engine() = default;

  // Loads `dir` as `name` on `device` ("" = the default) in `dtype` ("" = the checkpoint's) on that
  // device's executor; `done` gets the summary or the error. The caller checks that `dir` is
  // allowed. Returns the error at once (and does not call `done`) for a name in use or a bad
  // dtype / device.
  virtual absl::Status LoadModel(const std::string& name, const std::string& dir, const std::string& dtype,
                                 const std::string& device,
                                 std::function<void(absl::StatusOr<ModelSummary>)> done) = 0;
  // FailedPrecondition while experiments on the model are queued or running.
  virtual absl::Status UnloadModel(const std::string& name) = 0;
  virtual std::vector<ModelSummary> ListModels() const = 0;
  virtual absl::StatusOr<ModelSummary> GetModel(const std::string& name) const = 0;

  // Every check of the spec against the model (indices, shapes, tokens, sizes), without device work
  // and without touching the weights. NotFound for an unknown model.
  virtual absl::Status Validate(const std::string& model, const experiments::spec::Experiment& spec) const = 0;
  // Queues `job` (validate it first); returns how many experiments are ahead of it on its device.
  virtual absl::StatusOr<int64_t> Submit(Job job) = 0;
  // A queued experiment leaves the queue (its on_finish gets Cancelled at once, on this thread); a
  // running one stops before its next forward pass. NotFound if the engine does not hold it.
  virtual absl::Status Cancel(const std::string& id) = 0;
  // Experiments ahead of a queued one on its device; NotFound if it is not queued.
  virtual absl::StatusOr<int64_t> QueuePosition(const std::string& id) const = 0;

  // Stops taking work, cancels what is queued and running, and joins the executors.
  virtual void Shutdown() = 0;
};

}  // namespace lesion::server

#endif  // LESION_SERVER_ENGINE_H_
