// ExperimentStore: the SQLite record of every experiment the server ran or will run — its spec,
// status and timestamps, scalar metrics (queryable, see storage/query.h), the full serialized
// lesion.v1.ExperimentResult (per-layer / per-head tables and captured tensors included), the
// reproducibility fingerprint, and the baseline cache.
//
//   ASSIGN_OR_RETURN(std::unique_ptr<ExperimentStore> store, ExperimentStore::Open("lesion.db"));
//   ASSIGN_OR_RETURN(int64_t interrupted, store->MarkInterruptedOnStart(absl::Now()));
//   RETURN_IF_ERROR(store->Insert(record));                 // queued
//   RETURN_IF_ERROR(store->MarkRunning(record.id, absl::Now()));
//   RETURN_IF_ERROR(store->Finish(record.id, result, absl::Now()));
//   ASSIGN_OR_RETURN(QueryPage page, store->Query({.where = "metric.perplexity.delta_pct > 1"}));
//
// Schema: versioned by PRAGMA user_version with ordered migrations (kMigrations in the .cc); Open
// applies the missing ones and refuses a database newer than this code. WAL journal, busy timeout,
// auto_vacuum=INCREMENTAL (set at creation; an older file is converted once by a VACUUM at Open).
// Captured tensors are stored apart from the rest of the result, so that reads that do not want
// them (lists) never load them and retention can drop them alone.
// Stored bytes: every experiment's row counts the bytes of its texts (spec, names, tags), its
// result and its captures (SQLite's page overhead not counted); triggers keep a per-user sum, so
// UserBytes is one lookup.
// Lifecycle: queued -> running -> done | failed | cancelled; queued -> failed | cancelled;
// queued | running -> interrupted (MarkInterruptedOnStart, after a crash). Every state change is
// one transaction.
//
// Threads: thread-compatible (one connection, no locks). The server uses one store from a single
// writer thread; readers open read-only stores on the same file (OpenReadOnly, storage/read_pool.h:
// WAL lets them read while the writer writes, and each other).
// Errors common to every method: Unavailable (the database is locked past the busy timeout),
// DataLoss (a corrupt file or blob), Internal (anything else SQLite reports).
#ifndef LESION_STORAGE_EXPERIMENT_STORE_H_
#define LESION_STORAGE_EXPERIMENT_STORE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "proto/lesion/v1/result.pb.h"
#include "storage/sqlite.h"

namespace lesion::storage {

enum class ExperimentStatus { kQueued, kRunning, kDone, kFailed, kCancelled, kInterrupted };

// "queued", "running", ... as stored and as the query language spells them.
absl::string_view ExperimentStatusName(ExperimentStatus status);
std::optional<ExperimentStatus> ParseExperimentStatus(absl::string_view name);

struct ExperimentRecord {
  std::string id;  // caller-given, unique
  std::string user;
  std::string name;
  std::vector<std::string> tags;         // stored once each, read back sorted
  std::string model;                     // the server's model name
  std::string model_fingerprint;         // replaced by the result's on Finish when that is set
  std::string spec_json;                 // canonical spec JSON (spec/: protobuf's printer,
                                         // proto field names); queried by intervention.* fields
  std::optional<std::string> parent_id;  // an existing experiment (sweeps)

  // Set by the store; Insert ignores them.
  ExperimentStatus status = ExperimentStatus::kQueued;
  absl::Time created = absl::UnixEpoch();  // Insert stores this one
  std::optional<absl::Time> started;
  std::optional<absl::Time> finished;
  std::string error;  // failed / interrupted
  // Reproducibility fingerprint, from ExperimentResult.run on Finish.
  std::string spec_sha256;
  std::string lesion_version;
  std::string dtype;
  std::string device;
};

// The most bytes one Query page holds by default (records plus results, captures never included).
inline constexpr int64_t kDefaultMaxPageBytes = int64_t{64} << 20;

struct QueryOptions {
  std::string where;     // storage/query.h filter; empty: all
  std::string order_by;  // storage/query.h order; empty: newest first
  int64_t limit = 100;   // 0..10000; 0 counts only
  int64_t offset = 0;
  // Also read each done experiment's result, without captured tensor bytes (shapes kept).
  bool include_results = false;
  // The page stops before the row that would take it past this many bytes (texts plus results);
  // it always holds at least one row. > 0.
  int64_t max_bytes = kDefaultMaxPageBytes;
};

struct QueryPage {
  std::vector<ExperimentRecord> records;
  // With include_results: one per record, nullopt for experiments without a result.
  std::vector<std::optional<lesion::v1::ExperimentResult>> results;
  int64_t total = 0;  // experiments matching `where`, over all pages
  // Where the next page starts (offset + records read) when more match; 0 when this page reached
  // the last match. Short of `limit` when the byte bound stopped the page.
  int64_t next_offset = 0;
};

// What a retention call (DeleteExperiments, DropCaptures) did, or would do on a dry run.
struct RetentionOptions {
  std::string where;         // storage/query.h filter; must not be empty
  bool dry_run = false;      // count only; works on a read-only store
  int64_t max_families = 0;  // > 0: stop after this many experiments with their variants (batches)
};
struct RetentionReport {
  int64_t experiments = 0;       // deleted, or whose captures were dropped (variants included)
  int64_t bytes = 0;             // their stored bytes freed
  int64_t skipped_active = 0;    // matched but queued / running, or a sweep with such variants
  int64_t skipped_variants = 0;  // DeleteExperiments: matched sweep variants whose parent did not
  bool more = false;             // max_families stopped it before all were done
};

class ExperimentStore {
 public:
  // Opens (creating and migrating) the store at `path`, ":memory:" for a private one.
  // FailedPrecondition if the file's schema version is newer than this code knows; NotFound /
  // PermissionDenied / DataLoss if the file cannot be opened as a database.
  static absl::StatusOr<std::unique_ptr<ExperimentStore>> Open(const std::string& path);
  // Opens an existing store for reading only: no migration; FailedPrecondition unless its schema
  // is this code's (open it with Open first); every write method fails with PermissionDenied.
  static absl::StatusOr<std::unique_ptr<ExperimentStore>> OpenReadOnly(const std::string& path);

  // The schema version this code writes.
  static int SchemaVersion();

  // Records a new experiment as queued at `record.created`. AlreadyExists for a taken id;
  // InvalidArgument for an empty id, spec_json that is not JSON, or an unknown parent_id.
  absl::Status Insert(const ExperimentRecord& record);

  // queued -> running. NotFound (no such id); FailedPrecondition from any other status.
  absl::Status MarkRunning(absl::string_view id, absl::Time now);
  // running -> done, writing the metrics, the result blob and the fingerprint in one transaction.
  // NotFound; FailedPrecondition unless running; InvalidArgument for a metric name given twice.
  absl::Status Finish(absl::string_view id, const lesion::v1::ExperimentResult& result, absl::Time now);
  // queued | running -> failed with `error`. NotFound; FailedPrecondition otherwise.
  absl::Status Fail(absl::string_view id, absl::string_view error, absl::Time now);
  // queued | running -> cancelled. NotFound; FailedPrecondition otherwise.
  // `why`, if given, is kept as the record's error (e.g. "sweep exp-... stopped: ...").
  absl::Status Cancel(absl::string_view id, absl::Time now, absl::string_view why = "");
  // At server start: every experiment still queued or running (left so by a crash or a stop)
  // becomes interrupted, finished at `now`. Returns how many.
  absl::StatusOr<int64_t> MarkInterruptedOnStart(absl::Time now);

  // NotFound naming the id.
  absl::StatusOr<ExperimentRecord> Get(absl::string_view id);
  // NotFound if there is no such experiment or it has no result (not finished). Without
  // `include_captures` the captured tensors keep names, shapes and dtypes but no bytes, and their
  // bytes are never read. Captures dropped by DropCaptures come back without bytes either way.
  absl::StatusOr<lesion::v1::ExperimentResult> GetResult(absl::string_view id, bool include_captures = true);

  // The baseline cache: a PassResult under a key (model + dataset + eval config + measurements).
  // Put replaces an existing entry. Get returns nullopt on a miss.
  absl::Status PutBaseline(absl::string_view key, const lesion::v1::PassResult& pass, absl::Time now);
  absl::StatusOr<std::optional<lesion::v1::PassResult>> GetBaseline(absl::string_view key);

  // InvalidArgument for a bad query (see storage/query.h), limit / offset / max_bytes out of range.
  absl::StatusOr<QueryPage> Query(const QueryOptions& options);

  // Retention. Both act only on final experiments (done, failed, cancelled, interrupted) matching
  // `where`, and a sweep's parent takes its variants with it; each call is one transaction.
  // InvalidArgument for an empty or bad filter.
  // Deletes the experiments with everything stored for them. A matched variant whose parent does
  // not match stays (the parent's sweep table names it). Baselines (the cache) stay.
  absl::StatusOr<RetentionReport> DeleteExperiments(const RetentionOptions& options);
  // Drops the captured tensors' bytes, keeping the rest of the result (the tensors' shapes too).
  absl::StatusOr<RetentionReport> DropCaptures(const RetentionOptions& options);
  // Returns the pages that deletions freed to the file system (incremental vacuum); the bytes the
  // database shrank by. 0 for a database that is not in incremental auto-vacuum mode.
  absl::StatusOr<int64_t> ReclaimSpace();
  // Why the database is not in incremental auto-vacuum mode (the one-time conversion at Open
  // failed, e.g. no disk space for the copy VACUUM makes); OK when it is.
  const absl::Status& auto_vacuum_status() const { return auto_vacuum_status_; }

  // The stored bytes of `user`'s experiments (see "Stored bytes" above); 0 for an unknown user.
  absl::StatusOr<int64_t> UserBytes(absl::string_view user);

  // The connection, for batching several calls in one outer Transaction (the store's own
  // transactions nest as savepoints) and for tests. Owned by the store.
  Database* database() { return db_.get(); }

 private:
  explicit ExperimentStore(std::unique_ptr<Database> db) : db_(std::move(db)) {}
  absl::Status Migrate();
  absl::Status EnableIncrementalVacuum();
  // Final experiments matching `where` (with their variants, for a matched parent), in families.
  struct Family {
    std::vector<std::string> ids;  // the root first
    int64_t bytes = 0;
  };
  struct Selection {
    std::vector<Family> families;
    int64_t skipped_active = 0;
    int64_t skipped_variants = 0;
    bool more = false;
  };
  // `variants_alone`: a matched variant whose parent did not match is a family of its own (else
  // it is skipped). `captures_only`: families count only their members with captures.
  absl::StatusOr<Selection> SelectFinal(const RetentionOptions& options, bool variants_alone, bool captures_only);
  // Moves `id` from one of `from` to `to`, in its own transaction.
  absl::Status Transition(absl::string_view id, std::vector<ExperimentStatus> from, ExperimentStatus to, absl::Time now,
                          absl::string_view error);
  absl::StatusOr<ExperimentStatus> StatusOf(absl::string_view id);
  absl::StatusOr<ExperimentRecord> ReadRecord(Statement& row);

  std::unique_ptr<Database> db_;
  absl::Status auto_vacuum_status_;
};

}  // namespace lesion::storage

#endif  // LESION_STORAGE_EXPERIMENT_STORE_H_
