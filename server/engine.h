// Engine: the models lesiond holds and the executors that run experiments on them, one executor
// thread per device. This is the torch side of the server behind a torch-free and proto-free
// interface (plain values of spec/), so that the gRPC side never includes LibTorch and LibTorch
// never meets the generated protobuf code. Scheduling, replicas, sweep shards and loads:
// docs/design.md, "How a request flows" and "Threads and ownership".
//
//   ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine, Engine::Create(options));
//   engine->LoadModel("stories", "models/stories260K", "", "cpu", /*cancelled=*/{}, [](auto summary) { ... });
//   RETURN_IF_ERROR(engine->Validate("stories", spec));      // on the calling thread, no device work
//   ASSIGN_OR_RETURN(int ahead, engine->Submit(std::move(job)));  // queued; callbacks report
//
// Ownership: the engine owns the models (one replica per device), its executor threads and its
// loader threads; only a replica's executor runs forward passes on it and edits its weights.
// Thread-safety: every method may be called from any thread. Callbacks run on executor threads (a
// load's on its loader thread) and must not block (hand work to another thread). Errors: NotFound
// (unknown model or experiment), AlreadyExists (a model name in use), InvalidArgument (a bad spec or
// load request), ResourceExhausted (a full queue, device memory), FailedPrecondition, Cancelled.
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
#include "spec/result.h"
#include "spec/spec.h"

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
  std::string device;            // the replicas' devices, comma-separated ("cuda:0,cuda:1")
  int64_t weight_bytes = 0;      // of one replica
  std::string fingerprint;       // Model::fingerprint(): the weights' exact bits
  std::string dequantized_from;  // Model::dequantized_from(): "" unless the checkpoint was quantized
};

// One device executor now, for lesion status and /metrics.
struct DeviceStats {
  std::string device;      // the executor: "cuda:1", "cpu", "cpu#1"
  int64_t queued = 0;      // experiments waiting (a sweep's shard counts as one)
  std::string running_id;  // the experiment it runs now; "" when idle
  // CUDA: the caching allocator's bytes held by tensors and reserved from the driver (LibTorch >=
  // 2.9; 0 before). The CPU: 0, not tracked.
  int64_t memory_allocated_bytes = 0;
  int64_t memory_reserved_bytes = 0;
};

struct EngineOptions {
  std::filesystem::path data_dir;     // named datasets
  int64_t max_queue_per_device = 64;  // queued experiments; more is ResourceExhausted
  int64_t max_capture_bytes = int64_t{256} << 20;
  int64_t max_tokens = int64_t{64} << 20;
  int64_t max_sweep_variants = 65536;  // variants of one sweep
  int64_t max_pass_tokens = 65536;     // tokens of one batched sweep pass (unless the spec says)
  // float32 matrix products on TF32 tensor cores: a process-wide torch setting, made once by
  // Engine::Create (results record it in run.tf32).
  bool tf32 = false;
  std::string default_device = "cpu";
};

// Reports of one experiment, each called once at most, in this order, on its executor thread.
struct JobCallbacks {
  std::function<void()> on_start;
  std::function<void(int64_t passes_done, int64_t passes_planned)> on_progress;
  // A sweep's variant is done (its index in Job::variants), before on_finish; shards on several
  // devices may call it at once.
  std::function<void(int64_t variant, result::Experiment)> on_variant;
  // The result, or why not: Cancelled, ResourceExhausted (device memory), Internal, ...
  std::function<void(absl::StatusOr<result::Experiment>)> on_finish;
};

// A generation (lesiond's Generate): a prompt decoded with the model as loaded and with
// `interventions`, on the model's executor like an experiment, nothing stored. Shared between the
// caller and the executor, which fills the outcome before the job's on_finish.
struct GenerationJob {
  bool has_text = false;
  std::string text;          // tokenized after BOS (when the model has one), if has_text
  std::vector<int32_t> ids;  // as given, otherwise
  std::vector<spec::Intervention> interventions;
  int64_t max_new_tokens = 64;
  double temperature = 0;  // 0: greedy
  int64_t top_k = 0;
  uint64_t seed = 0;
  bool baseline = true;  // also decode with the model as loaded
  // Per chosen token, on the executor thread: (intervened run?, id, log-probability, the text it
  // adds to its run's decoded continuation, "" without a tokenizer). Must not block.
  std::function<void(bool, int32_t, double, const std::string&)> on_token;
  // The outcome, written by the executor before on_finish.
  std::vector<int32_t> prompt_ids;
  std::vector<int32_t> baseline_ids, intervened_ids;
  std::string baseline_text, intervened_text;
};

struct Job {
  std::string id;
  std::string user;
  std::string model;  // a loaded model's name
  spec::Experiment spec;
  // A sweep: its variants (spec::ExpandSweep of `spec`), each reported through
  // on_variant; on_finish gets the parent's result. Empty for a single experiment.
  std::vector<spec::Experiment> variants;
  // A resubmitted sweep: indices of variants an earlier run finished. Groups of only such variants
  // are not run; groups that run are run whole (so every number is as in a fresh run) and report
  // these variants too. If every variant is done, the first group still runs for the baseline.
  std::vector<int64_t> skip_variants;
  // Asked when the experiment starts (so that a sweep queued at once still finds the baseline its
  // first experiment computed): the baseline pass of an earlier experiment with the same
  // BaselineKey (tracker.h: fingerprint, device kinds, TF32, spec.baseline_sha256), reused (no baseline forward passes)
  // unless the spec needs the baseline's logits or dataset means (KL divergence, MEAN modes; a sweep still runs the
  // baseline's forward passes for its variants' first layers and logits, and reuses the
  // measurements unless MEAN modes need the means). May be empty. Called on the executor thread;
  // must not block for long.
  std::function<std::optional<result::Pass>()> lookup_cached_baseline;
  // Set for a generation instead of an experiment: `spec` is unused and on_finish gets an empty
  // result (or the error); the tokens go through `generation`.
  std::shared_ptr<GenerationJob> generation;
  JobCallbacks callbacks;
};

class Engine {
 public:
  static absl::StatusOr<std::unique_ptr<Engine>> Create(EngineOptions options);
  virtual ~Engine() = default;

  // Loads `dir` as `name` on `device` ("" = the default; a comma-separated list or "cuda:*" for a
  // replica on each) in `dtype` ("" = the checkpoint's), each replica on a loader thread of its
  // own. `done` gets the summary or the first error (the other replicas are then stopped and
  // dropped), once, on a loader thread. The caller checks that `dir` is allowed.
  //
  // `cancelled` (may be empty) is asked by the loader threads before each tensor and once more when
  // every replica is in; once it returns true the load is abandoned: what was read is freed, the
  // name is free again, nothing is registered, and `done` gets Cancelled. It may be called from
  // several loader threads at once and must return quickly; it is not called after `done`.
  //
  // Returns the error at once (and does not call `done`) for a name that is empty, longer than
  // spec::kMaxNameBytes, loaded or loading (AlreadyExists), a bad dtype or device, or
  // a CUDA device named twice.
  virtual absl::Status LoadModel(const std::string& name, const std::string& dir, const std::string& dtype,
                                 const std::string& device, std::function<bool()> cancelled,
                                 std::function<void(absl::StatusOr<ModelSummary>)> done) = 0;
  // FailedPrecondition while experiments on the model are queued or running.
  virtual absl::Status UnloadModel(const std::string& name) = 0;
  virtual std::vector<ModelSummary> ListModels() const = 0;
  virtual absl::StatusOr<ModelSummary> GetModel(const std::string& name) const = 0;

  // Every check of the spec against the model (indices, shapes, tokens, sizes), without device work
  // and without touching the weights. NotFound for an unknown model.
  virtual absl::Status Validate(const std::string& model, const spec::Experiment& spec) const = 0;
  // The same for a sweep: the parent's dataset and measurements, every variant's interventions.
  virtual absl::Status ValidateSweep(const std::string& model, const spec::Experiment& parent,
                                     const std::vector<spec::Experiment>& variants) const = 0;
  // The checks of a generation before any decoding: the prompt's ids or tokenizer, every
  // intervention against the model and the sequence's length. NotFound for an unknown model.
  virtual absl::Status ValidateGeneration(const std::string& model, const GenerationJob& generation) const = 0;
  // Queues `job` (validate it first); returns how many experiments are ahead of it on its device.
  virtual absl::StatusOr<int64_t> Submit(Job job) = 0;
  // A queued experiment leaves the queue (its on_finish gets Cancelled at once, on this thread); a
  // running one stops before its next forward pass (every shard of a sweep). NotFound if the
  // engine does not hold it.
  virtual absl::Status Cancel(const std::string& id) = 0;
  // Experiments ahead of a queued one on its device; NotFound if it is not queued.
  virtual absl::StatusOr<int64_t> QueuePosition(const std::string& id) const = 0;

  // Every executor that exists (one per device used so far), in device order. Never blocks on a
  // running experiment.
  virtual std::vector<DeviceStats> Devices() const = 0;

  // Stops taking work, cancels what is queued, running and loading, and joins the executors and
  // loader threads.
  virtual void Shutdown() = 0;
};

}  // namespace lesion::server

#endif  // LESION_SERVER_ENGINE_H_
