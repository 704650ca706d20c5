#include "storage/experiment_store.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <utility>
#include <variant>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "storage/query.h"

namespace lesion::storage {
namespace {

// Migration i brings the schema from version i to i + 1. Append only; never edit a shipped one.
constexpr const char* kMigrations[] = {
    // 1: the initial schema.
    R"sql(
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
};

constexpr int kSchemaVersion = static_cast<int>(std::size(kMigrations));

constexpr absl::string_view kStatusNames[] = {"queued", "running", "done",
                                              "failed", "cancelled", "interrupted"};

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

absl::string_view ExperimentStatusName(ExperimentStatus status) {
  return kStatusNames[static_cast<int>(status)];
}

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
  RETURN_IF_ERROR(store->Migrate());
  return store;
}

absl::Status ExperimentStore::Migrate() {
  Transaction tx(db_.get());
  RETURN_IF_ERROR(tx.Begin());
  ASSIGN_OR_RETURN(std::unique_ptr<Statement> read, db_->Prepare("PRAGMA user_version"));
  ASSIGN_OR_RETURN(bool row, read->Step());
  const int64_t version = row ? read->ColumnInt64(0) : 0;
  read.reset();
  if (version > kSchemaVersion) {
    return absl::FailedPreconditionError(absl::StrCat(
        "database ", db_->path(), " has schema version ", version, " but this lesion knows only up to ",
        kSchemaVersion, "; use a newer lesion"));
  }
  for (int v = static_cast<int>(version); v < kSchemaVersion; ++v) {
    RETURN_IF_ERROR(db_->Execute(kMigrations[v]));
    // PRAGMA takes no parameters; the value is our own constant.
    RETURN_IF_ERROR(db_->Execute(absl::StrCat("PRAGMA user_version = ", v + 1)));
  }
  return tx.Commit();
}

absl::Status ExperimentStore::Insert(const ExperimentRecord& record) {
  static constexpr absl::string_view kInsert =
      "INSERT INTO experiments (id, user, name, model, model_fingerprint, spec_json, parent_id, "
      "status, created_us) VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?)";
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
  absl::Status status = insert->Run();
  if (!status.ok()) {
    if (absl::IsAlreadyExists(status)) {
      return absl::AlreadyExistsError(absl::StrCat("experiment id '", record.id, "' is taken"));
    }
    return absl::Status(status.code(),
                        absl::StrCat("inserting experiment '", record.id, "': ", status.message()));
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

absl::Status ExperimentStore::Transition(absl::string_view id, std::vector<ExperimentStatus> from,
                                         ExperimentStatus to, absl::Time now,
                                         absl::string_view error) {
  // started_us is set when entering running; finished_us when entering any final status.
  static constexpr absl::string_view kToRunning =
      "UPDATE experiments SET status = ?, started_us = ? WHERE id = ?";
  static constexpr absl::string_view kToFinal =
      "UPDATE experiments SET status = ?, finished_us = ?, error = ? WHERE id = ?";
  Transaction tx(db_.get());
  RETURN_IF_ERROR(tx.Begin());
  ASSIGN_OR_RETURN(ExperimentStatus current, StatusOf(id));
  if (std::find(from.begin(), from.end(), current) == from.end()) {
    std::vector<std::string> names;
    for (ExperimentStatus s : from) names.emplace_back(ExperimentStatusName(s));
    return absl::FailedPreconditionError(absl::StrCat(
        "experiment '", id, "' is ", ExperimentStatusName(current), "; only a ",
        absl::StrJoin(names, " or "), " experiment can become ", ExperimentStatusName(to)));
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
  return Transition(id, {ExperimentStatus::kQueued, ExperimentStatus::kRunning},
                    ExperimentStatus::kFailed, now, error);
}

absl::Status ExperimentStore::Cancel(absl::string_view id, absl::Time now, absl::string_view why) {
  return Transition(id, {ExperimentStatus::kQueued, ExperimentStatus::kRunning},
                    ExperimentStatus::kCancelled, now, why);
}

absl::Status ExperimentStore::Finish(absl::string_view id,
                                     const lesion::v1::ExperimentResult& result, absl::Time now) {
  static constexpr absl::string_view kUpdate =
      "UPDATE experiments SET status = 'done', finished_us = ?, spec_sha256 = ?, "
      "lesion_version = ?, dtype = ?, device = ?, "
      "model_fingerprint = CASE WHEN ? = '' THEN model_fingerprint ELSE ? END WHERE id = ?";
  static constexpr absl::string_view kInsertMetric =
      "INSERT INTO metrics (experiment_id, name, baseline, value, delta, delta_pct) "
      "VALUES (?, ?, ?, ?, ?, ?)";
  static constexpr absl::string_view kInsertResult =
      "INSERT OR REPLACE INTO results (experiment_id, result) VALUES (?, ?)";
  std::set<std::string> names;
  for (const lesion::v1::Metric& m : result.metrics()) {
    if (!names.insert(m.name()).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("experiment '", id, "': metric '", m.name(), "' is given twice"));
    }
  }
  std::string blob;
  if (!result.SerializeToString(&blob)) {
    return absl::InternalError(absl::StrCat("experiment '", id, "': cannot serialize the result"));
  }
  Transaction tx(db_.get());
  RETURN_IF_ERROR(tx.Begin());
  ASSIGN_OR_RETURN(ExperimentStatus current, StatusOf(id));
  if (current != ExperimentStatus::kRunning) {
    return absl::FailedPreconditionError(absl::StrCat("experiment '", id, "' is ",
                                                      ExperimentStatusName(current),
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
  update->BindText(8, id);
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
  static constexpr absl::string_view kTags =
      "SELECT tag FROM experiment_tags WHERE experiment_id = ? ORDER BY tag";
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
                   db_->Prepare(absl::StrCat("SELECT ", kRecordColumns,
                                             " FROM experiments AS e WHERE e.id = ?")));
  select->BindText(1, id);
  ASSIGN_OR_RETURN(bool row, select->Step());
  if (!row) return NoExperiment(id);
  return ReadRecord(*select);
}

absl::StatusOr<lesion::v1::ExperimentResult> ExperimentStore::GetResult(absl::string_view id) {
  static constexpr absl::string_view kSelect =
      "SELECT e.status, r.result FROM experiments AS e "
      "LEFT JOIN results AS r ON r.experiment_id = e.id WHERE e.id = ?";
  ASSIGN_OR_RETURN(std::unique_ptr<Statement> select, db_->Prepare(kSelect));
  select->BindText(1, id);
  ASSIGN_OR_RETURN(bool row, select->Step());
  if (!row) return NoExperiment(id);
  if (select->ColumnIsNull(1)) {
    return absl::NotFoundError(absl::StrCat("experiment '", id, "' has no result (it is ",
                                            select->ColumnText(0), ")"));
  }
  lesion::v1::ExperimentResult result;
  if (!result.ParseFromString(select->ColumnBlob(1))) {
    return absl::DataLossError(absl::StrCat("experiment '", id, "': stored result does not parse"));
  }
  return result;
}

absl::Status ExperimentStore::PutBaseline(absl::string_view key, const lesion::v1::PassResult& pass,
                                          absl::Time now) {
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

absl::StatusOr<std::optional<lesion::v1::PassResult>> ExperimentStore::GetBaseline(
    absl::string_view key) {
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
    return absl::InvalidArgumentError(
        absl::StrCat("limit ", options.limit, " out of range: use 0 to 10000"));
  }
  if (options.offset < 0) {
    return absl::InvalidArgumentError(absl::StrCat("offset ", options.offset, " is negative"));
  }
  ASSIGN_OR_RETURN(CompiledQuery query, CompileQuery(options.where, options.order_by));
  QueryPage page;
  {
    ASSIGN_OR_RETURN(std::unique_ptr<Statement> count,
                     db_->Prepare(absl::StrCat("SELECT count(*) FROM experiments AS e WHERE ",
                                               query.where_sql)));
    BindAll(*count, query.where_params, 1);
    ASSIGN_OR_RETURN(bool row, count->Step());
    page.total = row ? count->ColumnInt64(0) : 0;
  }
  if (options.limit == 0) return page;
  ASSIGN_OR_RETURN(std::unique_ptr<Statement> select,
                   db_->Prepare(absl::StrCat("SELECT ", kRecordColumns,
                                             " FROM experiments AS e WHERE ", query.where_sql,
                                             " ORDER BY ", query.order_sql, " LIMIT ? OFFSET ?")));
  BindAll(*select, query.where_params, 1);
  const int next = 1 + static_cast<int>(query.where_params.size());
  BindAll(*select, query.order_params, next);
  const int limit_index = next + static_cast<int>(query.order_params.size());
  select->BindInt64(limit_index, options.limit);
  select->BindInt64(limit_index + 1, options.offset);
  while (true) {
    ASSIGN_OR_RETURN(bool row, select->Step());
    if (!row) break;
    ASSIGN_OR_RETURN(ExperimentRecord record, ReadRecord(*select));
    page.records.push_back(std::move(record));
  }
  return page;
}

}  // namespace lesion::storage
