// ExperimentTracker: the live state of every experiment of this server process, between the gRPC
// service and the torch-side Engine, and the owner of the experiment store. Torch-free. It validates
// and queues submissions, turns the engine's reports into states and watcher events, and writes the
// store. The life of an experiment, sweeps, the baseline cache, quotas and shutdown:
// docs/design.md, "How a request flows", "Threads and ownership" and "Durability and failures".
//
//   ASSIGN_OR_RETURN(auto tracker, ExperimentTracker::Create("lesion.db", engine.get()));
//   ASSIGN_OR_RETURN(lesion::v1::Experiment queued, tracker->Submit(principal, spec_proto));
//   ASSIGN_OR_RETURN(auto sub, tracker->Subscribe(queued.id(), [](const ExperimentEvent& e) { ... }));
//
// Ownership: the tracker owns the store's one writer connection and thread (every store write runs
// there, in order), the read connections and the baseline cache; `engine` must outlive it.
// Thread-safety: every method may be called from any thread. Watcher callbacks are called without
// any tracker lock held, from engine executor threads or the writer thread, possibly concurrently;
// they must not block. An event's `sequence` grows with every change of one experiment: a watcher
// keeps the highest it has seen and drops older ones.
// Errors: NotFound (unknown experiment or model), InvalidArgument (bad spec or query),
// PermissionDenied (cancelling someone else's experiment), FailedPrecondition (wrong state),
// ResourceExhausted (a full queue, a quota), Unavailable (shutting down), and the store's
// Unavailable / DataLoss / Internal.
#ifndef LESION_SERVER_TRACKER_H_
#define LESION_SERVER_TRACKER_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "proto/lesion/v1/service.pb.h"
#include "server/auth.h"
#include "server/baseline_cache.h"
#include "server/engine.h"
#include "server/store_writer.h"
#include "storage/experiment_store.h"
#include "storage/read_pool.h"

namespace lesion::server {

struct TrackerOptions {
  int64_t max_sweep_variants = 65536;  // variants of one sweep's expansion
  // Bytes of baseline passes held in memory (least recently used out first); 0 holds none.
  int64_t baseline_cache_bytes = int64_t{256} << 20;
  // Experiments one user may have queued at once (a sweep counts once); 0: no limit of its own
  // (the engine's per-device queue still bounds them).
  int64_t max_queued_per_user = 0;
  // Read-only connections for GetExperiment / ListExperiments / counts (storage/read_pool.h): that
  // many reads run at once, beside the writer; one more waits for a free one.
  int64_t read_connections = 4;
  // Bytes one user's stored experiments may take (ExperimentStore::UserBytes); at or above it,
  // Submit is ResourceExhausted naming the limit. 0: no limit.
  int64_t max_user_bytes = 0;
  // The most bytes of one ListExperiments page (records and results without captures); a page
  // stops short of its limit there and says where the next starts.
  int64_t max_list_bytes = storage::kDefaultMaxPageBytes;
  // The engine's --tf32: part of what makes two baselines the same numbers (BaselineKey).
  bool tf32 = false;
};

// The key of a baseline in the cache and the store: the weights' exact bits (the fingerprint), the
// kinds of device the model's replicas run on (CPU and CUDA kernels differ in the last bits), TF32,
// and the spec's baseline part (spec.baseline_sha256). Equal keys, equal baseline numbers.
std::string BaselineKey(const ModelSummary& model, bool tf32, const std::string& baseline_sha256);

struct ExperimentEvent {
  int64_t sequence = 0;
  lesion::v1::Experiment experiment;
  bool final = false;  // done, failed, cancelled or interrupted: nothing follows
};

class ExperimentTracker {
 private:
  struct WatcherSlot;

 public:
  using Watcher = std::function<void(const ExperimentEvent&)>;

  // The current state and a registration for what follows. Unsubscribes on destruction (and so
  // must not outlive the tracker); once Reset returns, the watcher is not called again (a call in
  // flight is waited for). Move-only.
  class Subscription {
   public:
    Subscription() = default;
    Subscription(Subscription&& other) noexcept { *this = std::move(other); }
    Subscription& operator=(Subscription&& other) noexcept;
    ~Subscription() { Reset(); }
    void Reset();
    const ExperimentEvent& current() const { return current_; }

   private:
    friend class ExperimentTracker;
    ExperimentTracker* tracker_ = nullptr;
    std::string id_;
    int64_t handle_ = 0;
    std::shared_ptr<WatcherSlot> slot_;
    ExperimentEvent current_;
  };

  // Opens the store at `db_path` twice (the writer's and the readers' connection), marks
  // experiments left queued or running by an earlier process interrupted, and starts the writer.
  // `engine` must outlive the tracker.
  static absl::StatusOr<std::unique_ptr<ExperimentTracker>> Create(const std::string& db_path, Engine* engine,
                                                                   TrackerOptions options = {});
  // Drains and joins the writer.
  ~ExperimentTracker() = default;

  // Validates and queues `spec` for `user`; the queued snapshot.
  absl::StatusOr<lesion::v1::Experiment> Submit(const Principal& caller, const lesion::v1::ExperimentSpec& spec);
  // A new experiment with the spec of an interrupted, failed or cancelled one, for `caller`. For a
  // sweep, only the variants that did not finish run again: the new sweep's table names the
  // earlier experiments of the others.
  absl::StatusOr<lesion::v1::Experiment> Resubmit(const Principal& caller, const std::string& id);
  // Cancels a queued or running experiment of the caller (admins: anyone's). FailedPrecondition if
  // it is already final. Returns the snapshot after the request (cancelled, or still running until
  // the engine stops it between passes).
  absl::StatusOr<lesion::v1::Experiment> Cancel(const Principal& caller, const std::string& id);
  // Cancels without a permission check (a RunExperiment call whose client went away).
  void CancelQuietly(const std::string& id);

  // The experiment; captured tensor bytes left out unless `include_captures`.
  absl::StatusOr<lesion::v1::Experiment> Get(const std::string& id, bool include_captures);
  absl::StatusOr<lesion::v1::ListExperimentsResponse> List(const lesion::v1::ListExperimentsRequest& request);

  // The current state, plus `watcher` for every later change unless the current state is final.
  absl::StatusOr<Subscription> Subscribe(const std::string& id, Watcher watcher);

  // Retention (admin checks are the caller's): deletes the matching finished experiments, or drops
  // their captures, as ExperimentStore::DeleteExperiments / DropCaptures; on the writer thread in
  // batches, so that submissions are written between them; then returns the freed pages to the
  // file system. A dry run reads only. InvalidArgument for an empty or bad filter.
  absl::StatusOr<lesion::v1::RetentionResponse> DeleteExperiments(const lesion::v1::RetentionRequest& request);
  absl::StatusOr<lesion::v1::RetentionResponse> DropCaptures(const lesion::v1::RetentionRequest& request);

  // Experiments per state as the store has them ("queued", "running", "done", "failed",
  // "cancelled", "interrupted"; every state present, 0 if none). The store's errors.
  absl::StatusOr<std::map<std::string, int64_t>> CountByStatus();
  // The baseline passes held in memory.
  const BaselineCache& baseline_cache() const { return baselines_; }

  // Called once per experiment that reaches a final state, after that state's store writes (metrics,
  // logs), on the writer thread: must not block or call the tracker. The record carries no spec and no result.
  // Set it before the first Submit.
  using FinishObserver = std::function<void(const lesion::v1::Experiment&)>;
  void SetFinishObserver(FinishObserver observer) { finish_observer_ = std::move(observer); }

  // Shutdown, in this order (lesiond_main.cc): BeginShutdown; with a grace period, InterruptQueued
  // and AwaitUnfinished; Engine::Shutdown; RecordInterrupted.
  //
  // From now on Submit and Resubmit are Unavailable, and cancellations by the engine are reported
  // to watchers as interrupted (and written by RecordInterrupted).
  void BeginShutdown();
  // Takes every queued experiment off the engine's queues (after BeginShutdown: as interrupted),
  // leaving the running ones to finish. Returns how many.
  int64_t InterruptQueued();
  // Waits until no experiment of this process is queued or running, or `timeout` passed; true if
  // none is left.
  bool AwaitUnfinished(absl::Duration timeout);
  // After Engine::Shutdown: records every experiment the store still has queued or running as
  // interrupted (as the next start would after a crash) and waits for the write. Returns how many.
  absl::StatusOr<int64_t> RecordInterrupted();
  // The read connections (tests: to hold one and see who waits).
  storage::ReadPool& read_pool_for_testing() { return *readers_; }
  // Blocks until every store write queued so far is done (tests, shutdown).
  void Flush() { writer_.Flush(); }
  // Calls `fn` on the writer thread once every store write queued so far is done, without
  // blocking the caller: a Submit answer waits for its record to be durable this way.
  void AfterQueuedWrites(std::function<void()> fn) { writer_.AfterQueuedWrites(std::move(fn)); }

 private:
  struct Live {
    lesion::v1::Experiment snapshot;  // with the result once done
    int64_t sequence = 0;
    bool final = false;
    // Store writes are held back until the Insert of this experiment is queued.
    bool inserted = false;
    std::vector<std::function<void(storage::ExperimentStore&)>> held_writes;
    std::map<int64_t, std::shared_ptr<WatcherSlot>> watchers;
    std::string baseline_key;
    // A sweep's parent: its variants' ids, in order (a resubmitted sweep's variants that an earlier
    // run finished keep that run's ids), and the summary rows of those earlier variants.
    std::vector<std::string> children;
    std::map<int64_t, result::SweepVariant> resumed_rows;
  };
  // The variants of an interrupted, failed or cancelled sweep that finished: resubmitting the
  // sweep runs only the others.
  struct FinishedVariants {
    std::string parent;
    std::map<int64_t, result::SweepVariant> rows;  // by variant index; ids set, names not
  };
  using Write = StoreWriter::Write;
  // A watcher and whether its subscription still wants events; events may be delivered after
  // the subscription let go of it (final events wait for the store), so delivery checks.
  struct WatcherSlot {
    absl::Mutex mu;
    bool active ABSL_GUARDED_BY(mu) = true;
    Watcher fn;
  };
  using Delivery = std::pair<ExperimentEvent, std::vector<std::shared_ptr<WatcherSlot>>>;

  ExperimentTracker(Engine* engine, std::unique_ptr<storage::ExperimentStore> writer,
                    std::unique_ptr<storage::ReadPool> readers, std::unique_ptr<storage::ExperimentStore> point_reader,
                    TrackerOptions options);
  // ResourceExhausted if `user`'s stored experiments take TrackerOptions::max_user_bytes or more.
  absl::Status CheckStoredQuota(const std::string& user);
  absl::StatusOr<lesion::v1::RetentionResponse> Retain(const lesion::v1::RetentionRequest& request, bool captures_only);

  // ResourceExhausted if `user` has TrackerOptions::max_queued_per_user experiments queued.
  absl::Status CheckQueuedQuotaLocked(const std::string& user) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<lesion::v1::Experiment> SubmitParsed(const Principal& caller, const lesion::v1::ExperimentSpec& spec,
                                                      const FinishedVariants* finished = nullptr);
  absl::StatusOr<FinishedVariants> ReadFinishedVariants(const std::string& parent);
  absl::StatusOr<std::string> NewId();
  JobCallbacks MakeCallbacks(const std::string& id);
  void OnStart(const std::string& id);
  void OnProgress(const std::string& id, int64_t done, int64_t planned);
  void OnFinish(const std::string& id, absl::StatusOr<result::Experiment> result);
  void OnVariant(const std::string& parent, int64_t index, result::Experiment result);
  // Moves a live, unfinished experiment to its final state for `result`; returns its event and
  // watchers for the caller to notify after unlocking.
  Delivery FinishLocked(const std::string& id, const absl::StatusOr<result::Experiment>& result,
                        std::shared_ptr<const lesion::v1::ExperimentResult> converted, absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RefreshQueuePositions();
  // Bumps the sequence, copies the event and the watchers; the caller notifies after unlocking.
  Delivery PublishLocked(Live& live) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  static void Notify(const ExperimentEvent& event, const std::vector<std::shared_ptr<WatcherSlot>>& watchers);
  void WriteLocked(Live& live, Write write) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Enqueue(Write write) { writer_.Enqueue(std::move(write)); }
  // Queues the removal of a final experiment from memory after its writes.
  void RetireLocked(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Unsubscribe(const std::string& id, int64_t handle);
  absl::StatusOr<lesion::v1::Experiment> ReadStored(const std::string& id, bool include_result, bool include_captures);
  std::optional<result::Pass> LookupBaseline(const std::string& key);

  Engine* const engine_;
  const TrackerOptions options_;
  FinishObserver finish_observer_;  // set before the first Submit, then read-only

  absl::Mutex mu_;
  absl::flat_hash_map<std::string, Live> live_ ABSL_GUARDED_BY(mu_);
  BaselineCache baselines_;
  int64_t next_handle_ ABSL_GUARDED_BY(mu_) = 1;
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;

  const std::unique_ptr<storage::ReadPool> readers_;
  absl::Mutex point_mu_ ABSL_ACQUIRED_AFTER(mu_);
  std::unique_ptr<storage::ExperimentStore> point_reader_ ABSL_GUARDED_BY(point_mu_);

  // Declared last: destroyed first, draining its writes while everything they touch is alive.
  StoreWriter writer_;
};

// Conversions between the store's records and the API's messages.
lesion::v1::ExperimentStatus ToProtoStatus(storage::ExperimentStatus status);
bool IsFinal(lesion::v1::ExperimentStatus status);
// Clears the bytes of every captured tensor of `result` (shape, dtype and positions stay).
void StripCaptures(lesion::v1::ExperimentResult& result);

}  // namespace lesion::server

#endif  // LESION_SERVER_TRACKER_H_
