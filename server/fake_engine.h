// FakeEngine: an Engine for tests of the gRPC side, with no torch and no threads of its own. Jobs
// wait in a queue until the test scripts their life (Start, Progress, Finish); models are whatever
// the test adds. Validate fails for unknown models, and with a scripted error.
//
//   FakeEngine engine;
//   engine.AddModel("tiny");
//   ... submit through the tracker or the service ...
//   engine.Start(id); engine.Progress(id, 1, 2); engine.Finish(id, FakeEngine::Result(3.5, 4.0));
//
// Thread-safety: every method may be called from any thread; callbacks run on the caller's thread.
#ifndef LESION_SERVER_FAKE_ENGINE_H_
#define LESION_SERVER_FAKE_ENGINE_H_

#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/engine.h"

namespace lesion::server {

class FakeEngine : public Engine {
 public:
  FakeEngine() = default;

  // A model `name` (fingerprint "fp-" + name) on "cpu".
  void AddModel(const std::string& name, int64_t n_layers = 2, int64_t n_heads = 2);
  // Replaces what GetModel says of `name` (added before): its devices and weights' fingerprint.
  void SetModelPlacement(const std::string& name, const std::string& device, const std::string& fingerprint);
  void SetValidateError(absl::Status status);
  void SetSubmitError(absl::Status status);
  // The next LoadModel calls `done` only when CompleteLoad is called (else at once).
  void HoldLoads(bool hold);
  // Finishes the oldest held load: abandoned (Cancelled, nothing added) if its `cancelled` says so,
  // else with the model added.
  void CompleteLoad();
  // Loads held now.
  int64_t HeldLoads() const;
  // What the oldest held load's `cancelled` says now (false if none is held).
  bool HeldLoadCancelled() const;

  // Scripted life of a submitted job. NotFound if the fake holds no such job.
  absl::Status Start(const std::string& id);
  absl::Status Progress(const std::string& id, int64_t done, int64_t planned);
  // A sweep's variant `index` finished with `result`.
  absl::Status Variant(const std::string& id, int64_t index, result::Experiment result);
  absl::Status Finish(const std::string& id, absl::StatusOr<result::Experiment> result);

  // Blocks until `n` jobs were submitted in all (or the timeout); true if they were.
  bool WaitForSubmitted(int64_t n, absl::Duration timeout = absl::Seconds(10));
  std::vector<std::string> SubmittedIds() const;
  // The job as submitted (with its cached baseline, if the tracker gave one).
  std::optional<Job> SubmittedJob(const std::string& id) const;
  bool Cancelled(const std::string& id) const;

  // A result with perplexities `baseline_ppl` and `intervened_ppl` and one capture of 8 bytes.
  static result::Experiment Result(double baseline_ppl, double intervened_ppl, bool baseline_from_cache = false);

  // Engine.
  absl::Status LoadModel(const std::string& name, const std::string& dir, const std::string& dtype,
                         const std::string& device, std::function<bool()> cancelled,
                         std::function<void(absl::StatusOr<ModelSummary>)> done) override;
  absl::Status UnloadModel(const std::string& name) override;
  std::vector<ModelSummary> ListModels() const override;
  absl::StatusOr<ModelSummary> GetModel(const std::string& name) const override;
  absl::Status Validate(const std::string& model, const spec::Experiment& spec) const override;
  absl::Status ValidateSweep(const std::string& model, const spec::Experiment& parent,
                             const std::vector<spec::Experiment>& variants) const override;
  // Known model: OK, or the scripted validation error.
  absl::Status ValidateGeneration(const std::string& model, const GenerationJob& generation) const override;
  absl::StatusOr<int64_t> Submit(Job job) override;
  absl::Status Cancel(const std::string& id) override;
  absl::StatusOr<int64_t> QueuePosition(const std::string& id) const override;
  // One device, "cpu": the jobs not started, the first running one, and SetDeviceMemory's bytes.
  std::vector<DeviceStats> Devices() const override;
  void Shutdown() override;

  void SetDeviceMemory(int64_t allocated_bytes, int64_t reserved_bytes);

 private:
  struct Entry {
    Job job;
    bool running = false;
  };
  // Removes the job and returns its callbacks; NotFound if absent.
  absl::StatusOr<JobCallbacks> TakeLocked(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  std::map<std::string, ModelSummary> models_ ABSL_GUARDED_BY(mu_);
  absl::Status validate_error_ ABSL_GUARDED_BY(mu_);
  absl::Status submit_error_ ABSL_GUARDED_BY(mu_);
  bool hold_loads_ ABSL_GUARDED_BY(mu_) = false;
  struct HeldLoad {
    std::function<bool()> cancelled;  // the caller's, as LoadModel got it
    std::function<void()> finish;
  };
  std::deque<HeldLoad> held_loads_ ABSL_GUARDED_BY(mu_);
  std::deque<Entry> jobs_ ABSL_GUARDED_BY(mu_);  // queued and running, in order
  std::vector<std::string> submitted_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, Job> submitted_jobs_ ABSL_GUARDED_BY(mu_);  // without callbacks
  std::vector<std::string> cancelled_ ABSL_GUARDED_BY(mu_);
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
  int64_t memory_allocated_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t memory_reserved_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace lesion::server

#endif  // LESION_SERVER_FAKE_ENGINE_H_
