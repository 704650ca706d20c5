#include "storage/experiment_store.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <utility>
#include <variant>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "storage/query.h"

namespace lesion::storage {
namespace {

// Moves the bytes of every captured tensor of `result` into the returned message: an
// ExperimentResult whose baseline / intervened captures hold only `data`, in the same order.
// `result` keeps the tensors' names, shapes and dtypes. nullopt when no tensor has bytes.
std::optional<lesion::v1::ExperimentResult> SplitCaptures(lesion::v1::ExperimentResult& result) {
  lesion::v1::ExperimentResult captures;
  bool any = false;
  // Only passes that hold captures are touched: mutable_*() would mark an absent pass present, and
  // the stored result must read back equal to the one reported (a sweep's parent has no intervened
  // pass).
  std::vector<std::pair<lesion::v1::PassResult*, lesion::v1::PassResult*>> passes;
  if (result.baseline().captures_size() > 0) passes.push_back({result.mutable_baseline(), captures.mutable_baseline()});
  if (result.intervened().captures_size() > 0) {
    passes.push_back({result.mutable_intervened(), captures.mutable_intervened()});
  }
  for (const auto& [from, to] : passes) {
    for (lesion::v1::Tensor& tensor : *from->mutable_captures()) {
      any = any || !tensor.data().empty();
      to->add_captures()->set_data(std::move(*tensor.mutable_data()));
      tensor.clear_data();
    }
  }
  if (!any) return std::nullopt;
  return captures;
}

// The inverse of SplitCaptures. DataLoss if the two do not line up.
absl::Status MergeCaptures(absl::string_view id, const lesion::v1::ExperimentResult& captures,
                           lesion::v1::ExperimentResult& result) {
  const std::pair<const lesion::v1::PassResult*, const lesion::v1::PassResult*> passes[] = {
      {&result.baseline(), &captures.baseline()}, {&result.intervened(), &captures.intervened()}};
  for (const auto& [to, from] : passes) {
    if (to->captures_size() != from->captures_size()) {
      return absl::DataLossError(absl::StrCat("experiment '", id, "': the stored captures (", from->captures_size(),
                                              ") do not match its result (", to->captures_size(), ")"));
    }
  }
  // As in SplitCaptures: a pass without captures is left as it is (absent stays absent).
  if (captures.baseline().captures_size() > 0) {
    for (int i = 0; i < captures.baseline().captures_size(); ++i) {
      result.mutable_baseline()->mutable_captures(i)->set_data(captures.baseline().captures(i).data());
    }
  }
  if (captures.intervened().captures_size() > 0) {
    for (int i = 0; i < captures.intervened().captures_size(); ++i) {
      result.mutable_intervened()->mutable_captures(i)->set_data(captures.intervened().captures(i).data());
    }
  }
  return absl::OkStatus();
}

// The stored bytes of a record's texts; kRecordBytesSql is the same sum in SQL.
int64_t RecordBytes(const ExperimentRecord& record) {
  int64_t bytes = static_cast<int64_t>(record.id.size() + record.user.size() + record.name.size() +
                                       record.model.size() + record.spec_json.size());
  for (const std::string& tag : std::set<std::string>(record.tags.begin(), record.tags.end())) {
    bytes += static_cast<int64_t>(tag.size());
  }
  return bytes;
}
constexpr absl::string_view kRecordBytesSql =
    "length(CAST(id AS BLOB)) + length(CAST(user AS BLOB)) + length(CAST(name AS BLOB)) + "
    "length(CAST(model AS BLOB)) + length(CAST(spec_json AS BLOB)) + "
    "coalesce((SELECT sum(length(CAST(tag AS BLOB))) FROM experiment_tags "
    "WHERE experiment_id = experiments.id), 0)";

// Migration 2, after its SQL: moves the capture bytes of every stored result into `captures`,
// sets every experiment's stored_bytes and the per-user sums, then installs the triggers that keep
// the sums (after, so the bulk update does not count twice).
absl::Status SplitStoredCapturesAndCountBytes(Database& db) {
  std::vector<std::string> ids;
  {
    ASSIGN_OR_RETURN(std::unique_ptr<Statement> list, db.Prepare("SELECT experiment_id FROM results"));
    while (true) {
      ASSIGN_OR_RETURN(bool row, list->Step());
      if (!row) break;
      ids.push_back(list->ColumnText(0));
    }
  }
  // One row at a time: results with captures can be hundreds of megabytes.
  ASSIGN_OR_RETURN(std::unique_ptr<Statement> read, db.Prepare("SELECT result FROM results WHERE experiment_id = ?"));
  ASSIGN_OR_RETURN(std::unique_ptr<Statement> write,
                   db.Prepare("UPDATE results SET result = ? WHERE experiment_id = ?"));
  ASSIGN_OR_RETURN(std::unique_ptr<Statement> keep,
                   db.Prepare("INSERT INTO captures (experiment_id, tensors) VALUES (?, ?)"));
  for (const std::string& id : ids) {
    read->Reset();
    read->BindText(1, id);
    ASSIGN_OR_RETURN(bool row, read->Step());
    if (!row) continue;
    lesion::v1::ExperimentResult result;
    if (!result.ParseFromString(read->ColumnBlob(0))) continue;  // left as is: GetResult reports it
    std::optional<lesion::v1::ExperimentResult> captures = SplitCaptures(result);
    if (!captures.has_value()) continue;
    write->Reset();
    write->BindBlob(1, result.SerializeAsString());
    write->BindText(2, id);
    RETURN_IF_ERROR(write->Run());
    keep->Reset();
    keep->BindText(1, id);
    keep->BindBlob(2, captures->SerializeAsString());
    RETURN_IF_ERROR(keep->Run());
  }
  RETURN_IF_ERROR(db.Execute(
      absl::StrCat("UPDATE experiments SET stored_bytes = ", kRecordBytesSql,
                   " + coalesce((SELECT length(result) FROM results WHERE experiment_id = experiments.id), 0)"
                   " + coalesce((SELECT length(tensors) FROM captures WHERE experiment_id = experiments.id), 0);"
                   "INSERT INTO user_bytes (user, bytes) "
                   "SELECT user, sum(stored_bytes) FROM experiments GROUP BY user;")));
  return db.Execute(R"sql(
CREATE TRIGGER experiments_bytes_insert AFTER INSERT ON experiments BEGIN
  INSERT INTO user_bytes (user, bytes) VALUES (new.user, new.stored_bytes)
    ON CONFLICT (user) DO UPDATE SET bytes = bytes + excluded.bytes;
END;
CREATE TRIGGER experiments_bytes_update AFTER UPDATE OF stored_bytes ON experiments BEGIN
  UPDATE user_bytes SET bytes = bytes + new.stored_bytes - old.stored_bytes WHERE user = new.user;
END;
CREATE TRIGGER experiments_bytes_delete AFTER DELETE ON experiments BEGIN
  UPDATE user_bytes SET bytes = bytes - old.stored_bytes WHERE user = old.user;
END;
)sql");
}

struct Migration {
  const char* sql;
  // Run after `sql` in the same transaction, for changes SQL alone cannot make; may be null.
  absl::Status (*then)(Database& db);
};

// Migration i brings the schema from version i to i + 1. Append only; never edit a shipped one.
const Migration kMigrations[] = {
    // 1: the initial schema.
    {R"sql(
CREATE TABLE experiments (
  id TEXT PRIMARY KEY NOT NULL CHECK (id <> ''),
  user TEXT NOT NULL,
  name TEXT NOT NULL,
  model TEXT NOT NULL,
  model_fingerprint TEXT NOT NULL DEFAULT '',
  spec_json TEXT NOT NULL CHECK (json_valid(spec_json)),
  parent_id TEXT REFERENCES experiments(id),
  status TEXT NOT NULL CHECK (status IN
      ('queued', 'running', 'done', 'failed', 'cancelled', 'interrupted')),
  created_us INTEGER NOT NULL,
  started_us INTEGER,
  finished_us INTEGER,
  error TEXT NOT NULL DEFAULT '',
  spec_sha256 TEXT NOT NULL DEFAULT '',
  lesion_version TEXT NOT NULL DEFAULT '',
  dtype TEXT NOT NULL DEFAULT '',
  device TEXT NOT NULL DEFAULT ''
);
CREATE INDEX experiments_by_created ON experiments(created_us);
CREATE INDEX experiments_by_status ON experiments(status, created_us);
CREATE INDEX experiments_by_user ON experiments(user, created_us);
CREATE INDEX experiments_by_model ON experiments(model, created_us);
CREATE INDEX experiments_by_finished ON experiments(finished_us);
CREATE INDEX experiments_by_parent ON experiments(parent_id);
CREATE TABLE experiment_tags (
  experiment_id TEXT NOT NULL REFERENCES experiments(id) ON DELETE CASCADE,
  tag TEXT NOT NULL,
  PRIMARY KEY (experiment_id, tag)
) WITHOUT ROWID;
CREATE INDEX experiment_tags_by_tag ON experiment_tags(tag, experiment_id);
CREATE TABLE metrics (
  experiment_id TEXT NOT NULL REFERENCES experiments(id) ON DELETE CASCADE,
  name TEXT NOT NULL,
  -- NULL: not a number (a model that collapsed to NaN logits); it matches no comparison.
  baseline REAL,
  value REAL,
  delta REAL,
  delta_pct REAL,
  PRIMARY KEY (experiment_id, name)
) WITHOUT ROWID;
CREATE INDEX metrics_by_baseline ON metrics(name, baseline);
CREATE INDEX metrics_by_value ON metrics(name, value);
CREATE INDEX metrics_by_delta ON metrics(name, delta);
CREATE INDEX metrics_by_delta_pct ON metrics(name, delta_pct);
CREATE TABLE results (
  experiment_id TEXT PRIMARY KEY NOT NULL REFERENCES experiments(id) ON DELETE CASCADE,
  result BLOB NOT NULL
);
CREATE TABLE baselines (
  key TEXT PRIMARY KEY NOT NULL,
  pass_result BLOB NOT NULL,
  created_us INTEGER NOT NULL
);
)sql",
     nullptr},
    // 2: captured tensors apart from the rest of the result (lists skip them, retention drops
    // them); every experiment's stored bytes and a per-user sum (quotas).
    {R"sql(
CREATE TABLE captures (
  experiment_id TEXT PRIMARY KEY NOT NULL REFERENCES experiments(id) ON DELETE CASCADE,
  tensors BLOB NOT NULL  -- SplitCaptures' message: the bytes of the result's captured tensors
);
ALTER TABLE experiments ADD COLUMN stored_bytes INTEGER NOT NULL DEFAULT 0;
CREATE TABLE user_bytes (
  user TEXT PRIMARY KEY NOT NULL,
  bytes INTEGER NOT NULL
) WITHOUT ROWID;
)sql",
     SplitStoredCapturesAndCountBytes},
};

constexpr int kSchemaVersion = static_cast<int>(std::size(kMigrations));

constexpr absl::string_view kStatusNames[] = {"queued", "running", "done", "failed", "cancelled", "interrupted"};

constexpr absl::string_view kRecordColumns =
    "e.id, e.user, e.name, e.model, e.model_fingerprint, e.spec_json, e.parent_id, e.status, "
    "e.created_us, e.started_us, e.finished_us, e.error, e.spec_sha256, e.lesion_version, e.dtype, "
    "e.device";

void BindAll(Statement& statement, const std::vector<SqlValue>& values, int first) {
  for (size_t i = 0; i < values.size(); ++i) {
    const int index = first + static_cast<int>(i);
    std::visit(
        [&](const auto& v) {
          using T = std::decay_t<decltype(v)>;
          if constexpr (std::is_same_v<T, int64_t>) {
            statement.BindInt64(index, v);
          } else if constexpr (std::is_same_v<T, double>) {
            statement.BindDouble(index, v);
          } else {
            statement.BindText(index, v);
          }
        },
        values[i]);
  }
}

absl::Status NoExperiment(absl::string_view id) {
  return absl::NotFoundError(absl::StrCat("no experiment with id '", id, "'"));
}

}  // namespace

absl::string_view ExperimentStatusName(ExperimentStatus status) { return kStatusNames[static_cast<int>(status)]; }

std::optional<ExperimentStatus> ParseExperimentStatus(absl::string_view name) {
  for (size_t i = 0; i < std::size(kStatusNames); ++i) {
    if (kStatusNames[i] == name) return static_cast<ExperimentStatus>(i);
  }
  return std::nullopt;
}

int ExperimentStore::SchemaVersion() { return kSchemaVersion; }

absl::StatusOr<std::unique_ptr<ExperimentStore>> ExperimentStore::Open(const std::string& path) {
  ASSIGN_OR_RETURN(std::unique_ptr<Database> db, Database::Open(path));
  std::unique_ptr<ExperimentStore> store(new ExperimentStore(std::move(db)));
  // Takes effect on a new file only (before its first table); older files are converted below.
  RETURN_IF_ERROR(store->db_->Execute("PRAGMA auto_vacuum = INCREMENTAL"));
  RETURN_IF_ERROR(store->Migrate());
  store->auto_vacuum_status_ = store->EnableIncrementalVacuum();
  return store;
}

absl::StatusOr<std::unique_ptr<ExperimentStore>> ExperimentStore::OpenReadOnly(const std::string& path) {
  ASSIGN_OR_RETURN(std::unique_ptr<Database> db, Database::Open(path, absl::Seconds(5), Database::Access::kReadOnly));
  ASSIGN_OR_RETURN(std::unique_ptr<Statement> read, db->Prepare("PRAGMA user_version"));
  ASSIGN_OR_RETURN(bool row, read->Step());
  const int64_t version = row ? read->ColumnInt64(0) : 0;
  read.reset();
  if (version != kSchemaVersion) {
    return absl::FailedPreconditionError(absl::StrCat("database ", path, " has schema version ", version,
                                                      ", this lesion reads ", kSchemaVersion,
                                                      ": open it for writing first (that migrates it)"));
  }
  return std::unique_ptr<ExperimentStore>(new ExperimentStore(std::move(db)));
}

absl::Status ExperimentStore::EnableIncrementalVacuum() {
  static constexpr int64_t kIncremental = 2;
  ASSIGN_OR_RETURN(std::unique_ptr<Statement> mode, db_->Prepare("PRAGMA auto_vacuum"));
  ASSIGN_OR_RETURN(bool row, mode->Step());
  if (row && mode->ColumnInt64(0) == kIncremental) return absl::OkStatus();
  mode.reset();
  // A database made before auto_vacuum was set: one VACUUM rewrites it in the mode set at Open.
  // It needs free disk space about the database's size, once.
  absl::Status vacuum = db_->Execute("VACUUM");
  if (!vacuum.ok()) {
    return absl::Status(vacuum.code(),
                        absl::StrCat("converting ", db_->path(), " to incremental auto-vacuum: ", vacuum.message(),
                                     "; deleted experiments free space for "
                                     "reuse but the file does not shrink until a VACUUM succeeds"));
  }
  return absl::OkStatus();
}

absl::Status ExperimentStore::Migrate() {
  Transaction tx(db_.get());
  RETURN_IF_ERROR(tx.Begin());
  ASSIGN_OR_RETURN(std::unique_ptr<Statement> read, db_->Prepare("PRAGMA user_version"));
  ASSIGN_OR_RETURN(bool row, read->Step());
  const int64_t version = row ? read->ColumnInt64(0) : 0;
  read.reset();
  if (version > kSchemaVersion) {
    return absl::FailedPreconditionError(absl::StrCat("database ", db_->path(), " has schema version ", version,
                                                      " but this lesion knows only up to ", kSchemaVersion,
                                                      "; use a newer lesion"));
  }
  for (int v = static_cast<int>(version); v < kSchemaVersion; ++v) {
    RETURN_IF_ERROR(db_->Execute(kMigrations[v].sql));
    if (kMigrations[v].then != nullptr) RETURN_IF_ERROR(kMigrations[v].then(*db_));
    // PRAGMA takes no parameters; the value is our own constant.
    RETURN_IF_ERROR(db_->Execute(absl::StrCat("PRAGMA user_version = ", v + 1)));
  }
  return tx.Commit();
}

absl::Status ExperimentStore::Insert(const ExperimentRecord& record) {
  static constexpr absl::string_view kInsert =
      "INSERT INTO experiments (id, user, name, model, model_fingerprint, spec_json, parent_id, "
      "status, created_us, stored_bytes) VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?)";
  static constexpr absl::string_view kInsertTag =
      "INSERT OR IGNORE INTO experiment_tags (experiment_id, tag) VALUES (?, ?)";
  if (record.id.empty()) return absl::InvalidArgumentError("experiment id is empty");
  Transaction tx(db_.get());
  RETURN_IF_ERROR(tx.Begin());
  ASSIGN_OR_RETURN(std::unique_ptr<Statement> insert, db_->Prepare(kInsert));
  insert->BindText(1, record.id);
  insert->BindText(2, record.user);
  insert->BindText(3, record.name);
  insert->BindText(4, record.model);
  insert->BindText(5, record.model_fingerprint);
  insert->BindText(6, record.spec_json);
  if (record.parent_id.has_value()) {
    insert->BindText(7, *record.parent_id);
  } else {
    insert->BindNull(7);
  }
  insert->BindInt64(8, absl::ToUnixMicros(record.created));
  insert->BindInt64(9, RecordBytes(record));
  absl::Status status = insert->Run();
  if (!status.ok()) {
    if (absl::IsAlreadyExists(status)) {
      return absl::AlreadyExistsError(absl::StrCat("experiment id '", record.id, "' is taken"));
    }
    if (absl::IsFailedPrecondition(status) && record.parent_id.has_value()) {  // the foreign key
      return absl::InvalidArgumentError(
          absl::StrCat("experiment '", record.id, "': parent experiment '", *record.parent_id, "' does not exist"));
    }
    return absl::Status(status.code(), absl::StrCat("inserting experiment '", record.id, "': ", status.message()));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<Statement> tag, db_->Prepare(kInsertTag));
  for (const std::string& t : record.tags) {
    tag->Reset();
    tag->BindText(1, record.id);
    tag->BindText(2, t);
    RETURN_IF_ERROR(tag->Run());
  }
  return tx.Commit();
}

absl::StatusOr<ExperimentStatus> ExperimentStore::StatusOf(absl::string_view id) {
  static constexpr absl::string_view kSelect = "SELECT status FROM experiments WHERE id = ?";
  ASSIGN_OR_RETURN(std::unique_ptr<Statement> select, db_->Prepare(kSelect));
  select->BindText(1, id);
  ASSIGN_OR_RETURN(bool row, select->Step());
  if (!row) return NoExperiment(id);
  const std::string name = select->ColumnText(0);
  std::optional<ExperimentStatus> status = ParseExperimentStatus(name);
  if (!status.has_value()) {
    return absl::DataLossError(absl::StrCat("experiment '", id, "' has unknown status '", name, "'"));
  }
  return *status;
}

absl::Status ExperimentStore::Transition(absl::string_view id, std::vector<ExperimentStatus> from, ExperimentStatus to,
                                         absl::Time now, absl::string_view error) {
  // started_us is set when entering running; finished_us when entering any final status.
  static constexpr absl::string_view kToRunning = "UPDATE experiments SET status = ?, started_us = ? WHERE id = ?";
  static constexpr absl::string_view kToFinal =
      "UPDATE experiments SET status = ?, finished_us = ?, error = ? WHERE id = ?";
  Transaction tx(db_.get());
  RETURN_IF_ERROR(tx.Begin());
  ASSIGN_OR_RETURN(ExperimentStatus current, StatusOf(id));
  if (std::find(from.begin(), from.end(), current) == from.end()) {
    std::vector<std::string> names;
    for (ExperimentStatus s : from) names.emplace_back(ExperimentStatusName(s));
    return absl::FailedPreconditionError(absl::StrCat("experiment '", id, "' is ", ExperimentStatusName(current),
                                                      "; only a ", absl::StrJoin(names, " or "),
                                                      " experiment can become ", ExperimentStatusName(to)));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<Statement> update,
                   db_->Prepare(to == ExperimentStatus::kRunning ? kToRunning : kToFinal));
  update->BindText(1, ExperimentStatusName(to));
  update->BindInt64(2, absl::ToUnixMicros(now));
  if (to == ExperimentStatus::kRunning) {
    update->BindText(3, id);
  } else {
    update->BindText(3, error);
    update->BindText(4, id);
  }
  RETURN_IF_ERROR(update->Run());
  return tx.Commit();
}

absl::Status ExperimentStore::MarkRunning(absl::string_view id, absl::Time now) {
  return Transition(id, {ExperimentStatus::kQueued}, ExperimentStatus::kRunning, now, "");
}

absl::Status ExperimentStore::Fail(absl::string_view id, absl::string_view error, absl::Time now) {
  return Transition(id, {ExperimentStatus::kQueued, ExperimentStatus::kRunning}, ExperimentStatus::kFailed, now, error);
}

absl::Status ExperimentStore::Cancel(absl::string_view id, absl::Time now, absl::string_view why) {
  return Transition(id, {ExperimentStatus::kQueued, ExperimentStatus::kRunning}, ExperimentStatus::kCancelled, now,
                    why);
}

absl::Status ExperimentStore::Finish(absl::string_view id, const lesion::v1::ExperimentResult& result, absl::Time now) {
  static constexpr absl::string_view kUpdate =
      "UPDATE experiments SET status = 'done', finished_us = ?, spec_sha256 = ?, "
      "lesion_version = ?, dtype = ?, device = ?, "
      "model_fingerprint = CASE WHEN ? = '' THEN model_fingerprint ELSE ? END, "
      "stored_bytes = stored_bytes + ? WHERE id = ?";
  static constexpr absl::string_view kInsertMetric =
      "INSERT INTO metrics (experiment_id, name, baseline, value, delta, delta_pct) "
      "VALUES (?, ?, ?, ?, ?, ?)";
  static constexpr absl::string_view kInsertResult =
      "INSERT OR REPLACE INTO results (experiment_id, result) VALUES (?, ?)";
  static constexpr absl::string_view kInsertCaptures =
      "INSERT OR REPLACE INTO captures (experiment_id, tensors) VALUES (?, ?)";
  std::set<std::string> names;
  for (const lesion::v1::Metric& m : result.metrics()) {
    if (!names.insert(m.name()).second) {
      return absl::InvalidArgumentError(absl::StrCat("experiment '", id, "': metric '", m.name(), "' is given twice"));
    }
  }
  // Split on a copy: the caller's result (shared with watchers) keeps its captures.
  lesion::v1::ExperimentResult stripped = result;
  std::optional<lesion::v1::ExperimentResult> captures = SplitCaptures(stripped);
  std::string blob, captures_blob;
  if (!stripped.SerializeToString(&blob) || (captures.has_value() && !captures->SerializeToString(&captures_blob))) {
    return absl::InternalError(absl::StrCat("experiment '", id, "': cannot serialize the result"));
  }
  Transaction tx(db_.get());
  RETURN_IF_ERROR(tx.Begin());
  ASSIGN_OR_RETURN(ExperimentStatus current, StatusOf(id));
  if (current != ExperimentStatus::kRunning) {
    return absl::FailedPreconditionError(absl::StrCat("experiment '", id, "' is ", ExperimentStatusName(current),
                                                      "; only a running experiment can finish"));
  }
  const lesion::v1::RunInfo& run = result.run();
  ASSIGN_OR_RETURN(std::unique_ptr<Statement> update, db_->Prepare(kUpdate));
  update->BindInt64(1, absl::ToUnixMicros(now));
  update->BindText(2, run.spec_sha256());
  update->BindText(3, run.lesion_version());
  update->BindText(4, run.dtype());
  update->BindText(5, run.device());
  update->BindText(6, run.model_fingerprint());
  update->BindText(7, run.model_fingerprint());
  update->BindInt64(8, static_cast<int64_t>(blob.size() + captures_blob.size()));
  update->BindText(9, id);
  RETURN_IF_ERROR(update->Run());
  ASSIGN_OR_RETURN(std::unique_ptr<Statement> metric, db_->Prepare(kInsertMetric));
  for (const lesion::v1::Metric& m : result.metrics()) {
    metric->Reset();
    metric->BindText(1, id);
    metric->BindText(2, m.name());
    int column = 3;
    for (double v : {m.baseline(), m.value(), m.delta(), m.delta_pct()}) {
      if (std::isnan(v)) {
        metric->BindNull(column++);
      } else {
        metric->BindDouble(column++, v);
      }
    }
    RETURN_IF_ERROR(metric->Run());
  }
  ASSIGN_OR_RETURN(std::unique_ptr<Statement> insert, db_->Prepare(kInsertResult));
  insert->BindText(1, id);
  insert->BindBlob(2, blob);
  RETURN_IF_ERROR(insert->Run());
  if (captures.has_value()) {
    ASSIGN_OR_RETURN(std::unique_ptr<Statement> keep, db_->Prepare(kInsertCaptures));
    keep->BindText(1, id);
    keep->BindBlob(2, captures_blob);
    RETURN_IF_ERROR(keep->Run());
  }
  return tx.Commit();
}

absl::StatusOr<int64_t> ExperimentStore::MarkInterruptedOnStart(absl::Time now) {
  static constexpr absl::string_view kUpdate =
      "UPDATE experiments SET status = 'interrupted', finished_us = ?, "
      "error = CASE WHEN error = '' THEN ? ELSE error END "
      "WHERE status IN ('queued', 'running')";
  Transaction tx(db_.get());
  RETURN_IF_ERROR(tx.Begin());
  ASSIGN_OR_RETURN(std::unique_ptr<Statement> update, db_->Prepare(kUpdate));
  update->BindInt64(1, absl::ToUnixMicros(now));
  update->BindText(2, "interrupted: the server stopped before the experiment finished");
  RETURN_IF_ERROR(update->Run());
  const int64_t changed = db_->Changes();
  RETURN_IF_ERROR(tx.Commit());
  return changed;
}

absl::StatusOr<ExperimentRecord> ExperimentStore::ReadRecord(Statement& row) {
  static constexpr absl::string_view kTags = "SELECT tag FROM experiment_tags WHERE experiment_id = ? ORDER BY tag";
  ExperimentRecord r;
  r.id = row.ColumnText(0);
  r.user = row.ColumnText(1);
  r.name = row.ColumnText(2);
  r.model = row.ColumnText(3);
  r.model_fingerprint = row.ColumnText(4);
  r.spec_json = row.ColumnText(5);
  if (!row.ColumnIsNull(6)) r.parent_id = row.ColumnText(6);
  const std::string status = row.ColumnText(7);
  std::optional<ExperimentStatus> parsed = ParseExperimentStatus(status);
  if (!parsed.has_value()) {
    return absl::DataLossError(absl::StrCat("experiment '", r.id, "' has unknown status '", status, "'"));
  }
  r.status = *parsed;
  r.created = absl::FromUnixMicros(row.ColumnInt64(8));
  if (!row.ColumnIsNull(9)) r.started = absl::FromUnixMicros(row.ColumnInt64(9));
  if (!row.ColumnIsNull(10)) r.finished = absl::FromUnixMicros(row.ColumnInt64(10));
  r.error = row.ColumnText(11);
  r.spec_sha256 = row.ColumnText(12);
  r.lesion_version = row.ColumnText(13);
  r.dtype = row.ColumnText(14);
  r.device = row.ColumnText(15);
  ASSIGN_OR_RETURN(std::unique_ptr<Statement> tags, db_->Prepare(kTags));
  tags->BindText(1, r.id);
  while (true) {
    ASSIGN_OR_RETURN(bool more, tags->Step());
    if (!more) break;
    r.tags.push_back(tags->ColumnText(0));
  }
  return r;
}

absl::StatusOr<ExperimentRecord> ExperimentStore::Get(absl::string_view id) {
  ASSIGN_OR_RETURN(std::unique_ptr<Statement> select,
                   db_->Prepare(absl::StrCat("SELECT ", kRecordColumns, " FROM experiments AS e WHERE e.id = ?")));
  select->BindText(1, id);
  ASSIGN_OR_RETURN(bool row, select->Step());
  if (!row) return NoExperiment(id);
  return ReadRecord(*select);
}

absl::StatusOr<lesion::v1::ExperimentResult> ExperimentStore::GetResult(absl::string_view id, bool include_captures) {
  static constexpr absl::string_view kSelect =
      "SELECT e.status, r.result, NULL FROM experiments AS e "
      "LEFT JOIN results AS r ON r.experiment_id = e.id WHERE e.id = ?";
  static constexpr absl::string_view kSelectWithCaptures =
      "SELECT e.status, r.result, c.tensors FROM experiments AS e "
      "LEFT JOIN results AS r ON r.experiment_id = e.id "
      "LEFT JOIN captures AS c ON c.experiment_id = e.id WHERE e.id = ?";
  ASSIGN_OR_RETURN(std::unique_ptr<Statement> select, db_->Prepare(include_captures ? kSelectWithCaptures : kSelect));
  select->BindText(1, id);
  ASSIGN_OR_RETURN(bool row, select->Step());
  if (!row) return NoExperiment(id);
  if (select->ColumnIsNull(1)) {
    return absl::NotFoundError(absl::StrCat("experiment '", id, "' has no result (it is ", select->ColumnText(0), ")"));
  }
  lesion::v1::ExperimentResult result;
  if (!result.ParseFromString(select->ColumnBlob(1))) {
    return absl::DataLossError(absl::StrCat("experiment '", id, "': stored result does not parse"));
  }
  if (!select->ColumnIsNull(2)) {
    lesion::v1::ExperimentResult captures;
    if (!captures.ParseFromString(select->ColumnBlob(2))) {
      return absl::DataLossError(absl::StrCat("experiment '", id, "': stored captures do not parse"));
    }
    RETURN_IF_ERROR(MergeCaptures(id, captures, result));
  }
  return result;
}

absl::Status ExperimentStore::PutBaseline(absl::string_view key, const lesion::v1::PassResult& pass, absl::Time now) {
  static constexpr absl::string_view kPut =
      "INSERT OR REPLACE INTO baselines (key, pass_result, created_us) VALUES (?, ?, ?)";
  std::string blob;
  if (!pass.SerializeToString(&blob)) {
    return absl::InternalError(absl::StrCat("baseline '", key, "': cannot serialize"));
  }
  Transaction tx(db_.get());
  RETURN_IF_ERROR(tx.Begin());
  ASSIGN_OR_RETURN(std::unique_ptr<Statement> put, db_->Prepare(kPut));
  put->BindText(1, key);
  put->BindBlob(2, blob);
  put->BindInt64(3, absl::ToUnixMicros(now));
  RETURN_IF_ERROR(put->Run());
  return tx.Commit();
}

absl::StatusOr<std::optional<lesion::v1::PassResult>> ExperimentStore::GetBaseline(absl::string_view key) {
  static constexpr absl::string_view kGet = "SELECT pass_result FROM baselines WHERE key = ?";
  ASSIGN_OR_RETURN(std::unique_ptr<Statement> get, db_->Prepare(kGet));
  get->BindText(1, key);
  ASSIGN_OR_RETURN(bool row, get->Step());
  if (!row) return std::optional<lesion::v1::PassResult>();
  lesion::v1::PassResult pass;
  if (!pass.ParseFromString(get->ColumnBlob(0))) {
    return absl::DataLossError(absl::StrCat("baseline '", key, "': stored blob does not parse"));
  }
  return std::optional<lesion::v1::PassResult>(std::move(pass));
}

absl::StatusOr<QueryPage> ExperimentStore::Query(const QueryOptions& options) {
  if (options.limit < 0 || options.limit > 10000) {
    return absl::InvalidArgumentError(absl::StrCat("limit ", options.limit, " out of range: use 0 to 10000"));
  }
  if (options.offset < 0) {
    return absl::InvalidArgumentError(absl::StrCat("offset ", options.offset, " is negative"));
  }
  if (options.max_bytes <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("max_bytes ", options.max_bytes, " must be positive"));
  }
  ASSIGN_OR_RETURN(CompiledQuery query, CompileQuery(options.where, options.order_by));
  QueryPage page;
  {
    ASSIGN_OR_RETURN(std::unique_ptr<Statement> count,
                     db_->Prepare(absl::StrCat("SELECT count(*) FROM experiments AS e WHERE ", query.where_sql)));
    BindAll(*count, query.where_params, 1);
    ASSIGN_OR_RETURN(bool row, count->Step());
    page.total = row ? count->ColumnInt64(0) : 0;
  }
  if (options.limit == 0) return page;
  // length() of a blob reads only its header, so a row's size is known before its bytes are read.
  constexpr int kResultSize = 16, kResult = 17;
  ASSIGN_OR_RETURN(
      std::unique_ptr<Statement> select,
      db_->Prepare(absl::StrCat(
          "SELECT ", kRecordColumns, options.include_results ? ", length(r.result), r.result" : ", 0, NULL",
          " FROM experiments AS e", options.include_results ? " LEFT JOIN results AS r ON r.experiment_id = e.id" : "",
          " WHERE ", query.where_sql, " ORDER BY ", query.order_sql, " LIMIT ? OFFSET ?")));
  BindAll(*select, query.where_params, 1);
  const int next = 1 + static_cast<int>(query.where_params.size());
  BindAll(*select, query.order_params, next);
  const int limit_index = next + static_cast<int>(query.order_params.size());
  select->BindInt64(limit_index, options.limit);
  select->BindInt64(limit_index + 1, options.offset);
  int64_t bytes = 0;
  while (true) {
    ASSIGN_OR_RETURN(bool row, select->Step());
    if (!row) break;
    ASSIGN_OR_RETURN(ExperimentRecord record, ReadRecord(*select));
    const int64_t result_bytes = select->ColumnInt64(kResultSize);
    const int64_t row_bytes = RecordBytes(record) + static_cast<int64_t>(record.error.size()) + result_bytes;
    if (!page.records.empty() && bytes + row_bytes > options.max_bytes) break;
    bytes += row_bytes;
    if (options.include_results) {
      std::optional<lesion::v1::ExperimentResult> result;
      if (!select->ColumnIsNull(kResult)) {
        result.emplace();
        if (!result->ParseFromString(select->ColumnBlob(kResult))) {
          return absl::DataLossError(absl::StrCat("experiment '", record.id, "': stored result does not parse"));
        }
      }
      page.results.push_back(std::move(result));
    }
    page.records.push_back(std::move(record));
  }
  const int64_t end = options.offset + static_cast<int64_t>(page.records.size());
  if (end < page.total) page.next_offset = end;
  return page;
}

// ---- Retention and accounting ------------------------------------------------------------------

absl::StatusOr<ExperimentStore::Selection> ExperimentStore::SelectFinal(const RetentionOptions& options,
                                                                        bool variants_alone, bool captures_only) {
  static constexpr absl::string_view kChildren =
      "SELECT id, status IN ('queued', 'running') FROM experiments WHERE parent_id = ? ORDER BY id";
  static constexpr absl::string_view kSize =
      "SELECT e.stored_bytes, coalesce(length(c.tensors), 0) FROM experiments AS e "
      "LEFT JOIN captures AS c ON c.experiment_id = e.id WHERE e.id = ?";
  if (options.where.empty()) {
    return absl::InvalidArgumentError(
        "a retention filter is required (to select every experiment, say 'created >= 0')");
  }
  ASSIGN_OR_RETURN(CompiledQuery query, CompileQuery(options.where, ""));
  struct Match {
    std::string id;
    std::optional<std::string> parent;
    bool active = false;
  };
  std::vector<Match> matches;
  std::set<std::string> matched;
  {
    ASSIGN_OR_RETURN(std::unique_ptr<Statement> select,
                     db_->Prepare(absl::StrCat("SELECT e.id, e.parent_id, e.status IN ('queued', "
                                               "'running') FROM experiments AS e WHERE ",
                                               query.where_sql, " ORDER BY e.created_us, e.id")));
    BindAll(*select, query.where_params, 1);
    while (true) {
      ASSIGN_OR_RETURN(bool row, select->Step());
      if (!row) break;
      Match m{select->ColumnText(0), std::nullopt, select->ColumnInt64(2) != 0};
      if (!select->ColumnIsNull(1)) m.parent = select->ColumnText(1);
      matched.insert(m.id);
      matches.push_back(std::move(m));
    }
  }
  ASSIGN_OR_RETURN(std::unique_ptr<Statement> children, db_->Prepare(kChildren));
  ASSIGN_OR_RETURN(std::unique_ptr<Statement> size, db_->Prepare(kSize));
  Selection selection;
  for (const Match& m : matches) {
    if (m.active) {
      ++selection.skipped_active;
      continue;
    }
    if (m.parent.has_value() && !variants_alone) {
      if (!matched.contains(*m.parent)) ++selection.skipped_variants;
      continue;  // else it goes with its parent
    }
    if (m.parent.has_value() && matched.contains(*m.parent)) continue;  // with its parent
    if (options.max_families > 0 && static_cast<int64_t>(selection.families.size()) >= options.max_families) {
      selection.more = true;
      break;
    }
    Family family;
    family.ids.push_back(m.id);
    children->Reset();
    children->BindText(1, m.id);
    bool active_child = false;
    while (true) {
      ASSIGN_OR_RETURN(bool row, children->Step());
      if (!row) break;
      family.ids.push_back(children->ColumnText(0));
      active_child = active_child || children->ColumnInt64(1) != 0;
    }
    if (active_child) {
      ++selection.skipped_active;
      continue;
    }
    std::vector<std::string> kept;
    for (const std::string& id : family.ids) {
      size->Reset();
      size->BindText(1, id);
      ASSIGN_OR_RETURN(bool row, size->Step());
      if (!row) continue;
      const int64_t bytes = size->ColumnInt64(captures_only ? 1 : 0);
      if (captures_only && bytes == 0) continue;
      family.bytes += bytes;
      kept.push_back(id);
    }
    family.ids = std::move(kept);
    if (!family.ids.empty()) selection.families.push_back(std::move(family));
  }
  return selection;
}

absl::StatusOr<RetentionReport> ExperimentStore::DeleteExperiments(const RetentionOptions& options) {
  static constexpr absl::string_view kDelete = "DELETE FROM experiments WHERE id = ?";
  Transaction tx(db_.get());
  if (!options.dry_run) RETURN_IF_ERROR(tx.Begin());
  ASSIGN_OR_RETURN(Selection selection, SelectFinal(options, /*variants_alone=*/false,
                                                    /*captures_only=*/false));
  RetentionReport report{.skipped_active = selection.skipped_active,
                         .skipped_variants = selection.skipped_variants,
                         .more = selection.more};
  ASSIGN_OR_RETURN(std::unique_ptr<Statement> remove, db_->Prepare(kDelete));
  for (const Family& family : selection.families) {
    report.experiments += static_cast<int64_t>(family.ids.size());
    report.bytes += family.bytes;
    if (options.dry_run) continue;
    // Variants first: they refer to the parent. Tags, metrics, results and captures cascade.
    for (auto id = family.ids.rbegin(); id != family.ids.rend(); ++id) {
      remove->Reset();
      remove->BindText(1, *id);
      RETURN_IF_ERROR(remove->Run());
    }
  }
  if (!options.dry_run) RETURN_IF_ERROR(tx.Commit());
  return report;
}

absl::StatusOr<RetentionReport> ExperimentStore::DropCaptures(const RetentionOptions& options) {
  static constexpr absl::string_view kDrop = "DELETE FROM captures WHERE experiment_id = ?";
  static constexpr absl::string_view kCount = "UPDATE experiments SET stored_bytes = stored_bytes - ? WHERE id = ?";
  Transaction tx(db_.get());
  if (!options.dry_run) RETURN_IF_ERROR(tx.Begin());
  ASSIGN_OR_RETURN(Selection selection, SelectFinal(options, /*variants_alone=*/true,
                                                    /*captures_only=*/true));
  RetentionReport report{.skipped_active = selection.skipped_active, .more = selection.more};
  ASSIGN_OR_RETURN(std::unique_ptr<Statement> size,
                   db_->Prepare("SELECT length(tensors) FROM captures WHERE experiment_id = ?"));
  ASSIGN_OR_RETURN(std::unique_ptr<Statement> drop, db_->Prepare(kDrop));
  ASSIGN_OR_RETURN(std::unique_ptr<Statement> count, db_->Prepare(kCount));
  for (const Family& family : selection.families) {
    report.experiments += static_cast<int64_t>(family.ids.size());
    report.bytes += family.bytes;
    if (options.dry_run) continue;
    for (const std::string& id : family.ids) {
      size->Reset();
      size->BindText(1, id);
      ASSIGN_OR_RETURN(bool row, size->Step());
      if (!row) continue;
      const int64_t bytes = size->ColumnInt64(0);
      drop->Reset();
      drop->BindText(1, id);
      RETURN_IF_ERROR(drop->Run());
      count->Reset();
      count->BindInt64(1, bytes);
      count->BindText(2, id);
      RETURN_IF_ERROR(count->Run());
    }
  }
  if (!options.dry_run) RETURN_IF_ERROR(tx.Commit());
  return report;
}

absl::StatusOr<int64_t> ExperimentStore::ReclaimSpace() {
  auto pragma = [this](absl::string_view name) -> absl::StatusOr<int64_t> {
    ASSIGN_OR_RETURN(std::unique_ptr<Statement> read, db_->Prepare(absl::StrCat("PRAGMA ", name)));
    ASSIGN_OR_RETURN(bool row, read->Step());
    return row ? read->ColumnInt64(0) : 0;
  };
  ASSIGN_OR_RETURN(int64_t mode, pragma("auto_vacuum"));
  if (mode != 2) return 0;  // not incremental: freed pages are reused, the file keeps its size
  ASSIGN_OR_RETURN(int64_t page_size, pragma("page_size"));
  ASSIGN_OR_RETURN(int64_t before, pragma("page_count"));
  RETURN_IF_ERROR(db_->Execute("PRAGMA incremental_vacuum"));
  ASSIGN_OR_RETURN(int64_t after, pragma("page_count"));
  return (before - after) * page_size;
}

absl::StatusOr<int64_t> ExperimentStore::UserBytes(absl::string_view user) {
  ASSIGN_OR_RETURN(std::unique_ptr<Statement> select, db_->Prepare("SELECT bytes FROM user_bytes WHERE user = ?"));
  select->BindText(1, user);
  ASSIGN_OR_RETURN(bool row, select->Step());
  return row ? select->ColumnInt64(0) : 0;
}

}  // namespace lesion::storage
