#include "storage/sqlite.h"

#include <sqlite3.h>

#include <utility>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"

namespace lesion::storage {

absl::Status SqliteStatus(int code, absl::string_view message, absl::string_view sql) {
  // The SQL stays out of the message, which reaches clients: it is ours, says nothing the caller
  // can fix, and generated queries can be long. It rides along as a payload for server logs
  // (absl::Status::ToString prints payloads).
  absl::Status status;
  const std::string text = absl::StrCat("sqlite: ", message);
  switch (code & 0xff) {
    case SQLITE_OK:
    case SQLITE_ROW:
    case SQLITE_DONE:
      return absl::OkStatus();
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      status = absl::UnavailableError(text);
      break;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
      status = absl::DataLossError(text);
      break;
    case SQLITE_CONSTRAINT:
      if (code == SQLITE_CONSTRAINT_PRIMARYKEY || code == SQLITE_CONSTRAINT_UNIQUE) {
        status = absl::AlreadyExistsError(text);
      } else if (code == SQLITE_CONSTRAINT_FOREIGNKEY) {
        // A row that refers to a missing one, or is still referred to.
        status = absl::FailedPreconditionError(text);
      } else {
        status = absl::InvalidArgumentError(text);
      }
      break;
    case SQLITE_MISMATCH:
    case SQLITE_RANGE:
    case SQLITE_TOOBIG:
      status = absl::InvalidArgumentError(text);
      break;
    case SQLITE_CANTOPEN:
      status = absl::NotFoundError(text);
      break;
    case SQLITE_PERM:
    case SQLITE_READONLY:
    case SQLITE_AUTH:
      status = absl::PermissionDeniedError(text);
      break;
    case SQLITE_FULL:
    case SQLITE_NOMEM:
      status = absl::ResourceExhaustedError(text);
      break;
    case SQLITE_INTERRUPT:
      status = absl::CancelledError(text);
      break;
    default:
      status = absl::InternalError(text);
      break;
  }
  if (!sql.empty()) status.SetPayload(kSqlPayloadUrl, absl::Cord(sql));
  return status;
}

namespace {

// `status` with `prefix` before its message, payloads (the SQL) kept.
absl::Status Prefixed(const absl::Status& status, absl::string_view prefix) {
  absl::Status out(status.code(), absl::StrCat(prefix, status.message()));
  status.ForEachPayload([&out](absl::string_view url, const absl::Cord& payload) { out.SetPayload(url, payload); });
  return out;
}

absl::Status LastError(sqlite3* db, int rc, absl::string_view sql) {
  const int extended = db != nullptr ? sqlite3_extended_errcode(db) : rc;
  // sqlite3_extended_errcode reports the most recent failure; prefer rc if they disagree.
  const int code = (extended & 0xff) == (rc & 0xff) ? extended : rc;
  const char* message = db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
  return SqliteStatus(code, message, sql);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Database>> Database::Open(const std::string& path, absl::Duration busy_timeout,
                                                         Access access) {
  sqlite3* raw = nullptr;
  const int flags = SQLITE_OPEN_NOMUTEX |
                    (access == Access::kReadOnly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
  const int rc = sqlite3_open_v2(path.c_str(), &raw, flags, nullptr);
  if (rc != SQLITE_OK) {
    absl::Status status = LastError(raw, rc, "");
    sqlite3_close_v2(raw);
    return Prefixed(status, absl::StrCat("cannot open database ", path, ": "));
  }
  sqlite3_extended_result_codes(raw, 1);
  sqlite3_busy_timeout(raw, static_cast<int>(absl::ToInt64Milliseconds(busy_timeout)));
  std::unique_ptr<Database> db(new Database(raw, path));
  // journal_mode answers "memory" for ":memory:" databases; that is fine. A read-only connection
  // cannot change the journal mode: it reads a WAL file as the writer set it up.
  absl::Status status =
      db->Execute(access == Access::kReadOnly
                      ? "PRAGMA foreign_keys = ON;"
                      : "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;");
  if (!status.ok()) {
    return Prefixed(status, absl::StrCat("cannot open database ", path, ": "));
  }
  return db;
}

Database::~Database() { sqlite3_close_v2(db_); }

absl::Status Database::Execute(absl::string_view sql) {
  const std::string text(sql);
  char* message = nullptr;
  const int rc = sqlite3_exec(db_, text.c_str(), nullptr, nullptr, &message);
  if (rc != SQLITE_OK) {
    const std::string detail = message != nullptr ? message : sqlite3_errstr(rc);
    sqlite3_free(message);
    return SqliteStatus(sqlite3_extended_errcode(db_), detail, sql);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Statement>> Database::Prepare(absl::string_view sql) {
  sqlite3_stmt* stmt = nullptr;
  const char* tail = nullptr;
  const int rc = sqlite3_prepare_v2(db_, sql.data(), static_cast<int>(sql.size()), &stmt, &tail);
  if (rc != SQLITE_OK) return LastError(db_, rc, sql);
  if (stmt == nullptr) return SqliteStatus(SQLITE_MISUSE, "empty statement", sql);
  std::unique_ptr<Statement> statement(new Statement(this, stmt, std::string(sql)));
  for (const char* p = tail; p != nullptr && p < sql.data() + sql.size(); ++p) {
    if (*p != ' ' && *p != '\n' && *p != '\t' && *p != ';') {
      absl::Status status = absl::InvalidArgumentError("sqlite: Prepare takes one statement");
      status.SetPayload(kSqlPayloadUrl, absl::Cord(sql));
      return status;
    }
  }
  return statement;
}

int64_t Database::Changes() const { return sqlite3_changes64(db_); }

bool Database::InTransaction() const { return sqlite3_get_autocommit(db_) == 0; }

Statement::~Statement() { sqlite3_finalize(stmt_); }

void Statement::CheckBind(int rc, int index) {
  if (rc != SQLITE_OK && bind_status_.ok()) {
    absl::Status status = LastError(db_->raw(), rc, sql_);
    bind_status_ = Prefixed(status, absl::StrCat("binding parameter ", index, ": "));
  }
}

void Statement::BindInt64(int index, int64_t value) { CheckBind(sqlite3_bind_int64(stmt_, index, value), index); }
void Statement::BindDouble(int index, double value) { CheckBind(sqlite3_bind_double(stmt_, index, value), index); }
void Statement::BindText(int index, absl::string_view value) {
  CheckBind(sqlite3_bind_text64(stmt_, index, value.data(), value.size(), SQLITE_TRANSIENT, SQLITE_UTF8), index);
}
void Statement::BindBlob(int index, absl::string_view bytes) {
  // A zero-length blob with a null pointer would bind NULL; pass a valid pointer.
  static const char kEmpty = 0;
  CheckBind(sqlite3_bind_blob64(stmt_, index, bytes.empty() ? &kEmpty : bytes.data(), bytes.size(), SQLITE_TRANSIENT),
            index);
}
void Statement::BindNull(int index) { CheckBind(sqlite3_bind_null(stmt_, index), index); }

absl::StatusOr<bool> Statement::Step() {
  if (!bind_status_.ok()) return bind_status_;
  const int rc = sqlite3_step(stmt_);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  return LastError(db_->raw(), rc, sql_);
}

absl::Status Statement::Run() {
  while (true) {
    absl::StatusOr<bool> row = Step();
    if (!row.ok()) return row.status();
    if (!*row) return absl::OkStatus();
  }
}

void Statement::Reset() {
  sqlite3_reset(stmt_);
  sqlite3_clear_bindings(stmt_);
  bind_status_ = absl::OkStatus();
}

bool Statement::ColumnIsNull(int column) const { return sqlite3_column_type(stmt_, column) == SQLITE_NULL; }
int64_t Statement::ColumnInt64(int column) const { return sqlite3_column_int64(stmt_, column); }
double Statement::ColumnDouble(int column) const { return sqlite3_column_double(stmt_, column); }
std::string Statement::ColumnText(int column) const {
  const unsigned char* text = sqlite3_column_text(stmt_, column);
  const int size = sqlite3_column_bytes(stmt_, column);
  return text == nullptr ? std::string() : std::string(reinterpret_cast<const char*>(text), size);
}
std::string Statement::ColumnBlob(int column) const {
  const void* blob = sqlite3_column_blob(stmt_, column);
  const int size = sqlite3_column_bytes(stmt_, column);
  return blob == nullptr ? std::string() : std::string(static_cast<const char*>(blob), size);
}

absl::Status Transaction::Begin() {
  if (active_) return absl::FailedPreconditionError("transaction already begun");
  nested_ = db_->InTransaction();
  absl::Status status = db_->Execute(nested_ ? "SAVEPOINT lesion_tx" : "BEGIN IMMEDIATE");
  if (!status.ok()) return status;
  active_ = true;
  return absl::OkStatus();
}

absl::Status Transaction::Commit() {
  if (!active_) return absl::FailedPreconditionError("commit of a transaction that is not open");
  absl::Status status = db_->Execute(nested_ ? "RELEASE lesion_tx" : "COMMIT");
  if (!status.ok()) return status;  // still active: the destructor rolls back
  active_ = false;
  return absl::OkStatus();
}

Transaction::~Transaction() {
  if (!active_) return;
  // Errors here cannot be reported; a failed rollback leaves SQLite's own rollback on close.
  if (nested_) {
    (void)db_->Execute("ROLLBACK TO lesion_tx; RELEASE lesion_tx");
  } else if (db_->InTransaction()) {
    (void)db_->Execute("ROLLBACK");
  }
}

}  // namespace lesion::storage
