// A thin RAII wrapper over the SQLite C API: a connection (Database), a prepared statement
// (Statement) and a transaction that rolls back unless committed (Transaction). Every SQLite error
// becomes an absl::Status carrying SQLite's message, never the SQL text (messages reach clients);
// the SQL is attached as the payload kSqlPayloadUrl, which absl::Status::ToString prints for logs:
//   SQLITE_BUSY / SQLITE_LOCKED            -> Unavailable (another connection holds the lock)
//   SQLITE_CORRUPT / SQLITE_NOTADB         -> DataLoss
//   SQLITE_CONSTRAINT_PRIMARYKEY / _UNIQUE -> AlreadyExists
//   SQLITE_CONSTRAINT_FOREIGNKEY           -> FailedPrecondition (a missing or still-referenced row)
//   other SQLITE_CONSTRAINT_* (CHECK, NOT NULL), SQLITE_MISMATCH, SQLITE_RANGE,
//   SQLITE_TOOBIG                          -> InvalidArgument
//   SQLITE_CANTOPEN                        -> NotFound; SQLITE_PERM / SQLITE_READONLY -> PermissionDenied
//   SQLITE_FULL / SQLITE_NOMEM             -> ResourceExhausted; SQLITE_INTERRUPT -> Cancelled
//   anything else (SQLITE_IOERR, SQLITE_ERROR: a bug in our SQL) -> Internal
//
//   ASSIGN_OR_RETURN(std::unique_ptr<Database> db, Database::Open("lab.db"));
//   Transaction tx(db.get());
//   RETURN_IF_ERROR(tx.Begin());
//   ASSIGN_OR_RETURN(std::unique_ptr<Statement> insert, db->Prepare(kInsertSql));
//   insert->BindText(1, id);
//   insert->BindInt64(2, absl::ToUnixMicros(now));
//   RETURN_IF_ERROR(insert->Run());
//   RETURN_IF_ERROR(tx.Commit());
//
// Threads: thread-compatible. A Database and its Statements belong to one thread at a time (the
// connection is opened with SQLITE_OPEN_NOMUTEX); use one Database per thread.
// Ownership: a Statement and a Transaction borrow their Database, which must outlive them.
// SQLite itself is linked privately: this header declares only opaque handles.
#ifndef LESION_STORAGE_SQLITE_H_
#define LESION_STORAGE_SQLITE_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

struct sqlite3;
struct sqlite3_stmt;

namespace lesion::storage {

// The payload type URL under which a status from this file carries the SQL it came from.
inline constexpr absl::string_view kSqlPayloadUrl = "type.lesion/storage.sql";

// Maps an SQLite result code (primary or extended) to a status with `message`; `sql` (may be
// empty) goes into the kSqlPayloadUrl payload, not the message.
absl::Status SqliteStatus(int code, absl::string_view message, absl::string_view sql);

class Statement;

// One SQLite connection. Open() turns on WAL journaling (file databases), foreign keys,
// synchronous=NORMAL and a busy timeout.
class Database {
 public:
  enum class Access { kReadWrite, kReadOnly };

  // Opens or creates the database at `path` (":memory:" for a private in-memory one); kReadOnly
  // opens an existing file without creating it and refuses writes (PermissionDenied). Errors:
  // NotFound (the directory or, read-only, the file does not exist), PermissionDenied, DataLoss
  // (not a database), Internal.
  static absl::StatusOr<std::unique_ptr<Database>> Open(const std::string& path,
                                                        absl::Duration busy_timeout = absl::Seconds(5),
                                                        Access access = Access::kReadWrite);
  ~Database();
  Database(const Database&) = delete;
  Database& operator=(const Database&) = delete;

  // Runs one or more ';'-separated statements that take no parameters (schema, pragmas).
  absl::Status Execute(absl::string_view sql);

  // Compiles one statement. InvalidArgument for trailing text after the first statement; the
  // mapped SQLite error for a syntax error (Internal: SQL text is ours, so it is our bug).
  absl::StatusOr<std::unique_ptr<Statement>> Prepare(absl::string_view sql);

  // Rows changed by the last INSERT / UPDATE / DELETE.
  int64_t Changes() const;
  // True while a transaction is open on this connection.
  bool InTransaction() const;
  const std::string& path() const { return path_; }
  sqlite3* raw() const { return db_; }

 private:
  Database(sqlite3* db, std::string path) : db_(db), path_(std::move(path)) {}
  sqlite3* db_;  // owned
  std::string path_;
};

// A prepared statement. Parameters are 1-based, columns 0-based. Bind errors are deferred: the
// first one is kept and returned by the next Step() / Run(), so call sites bind without checking
// each call. Column getters are valid only after Step() returned true.
class Statement {
 public:
  ~Statement();
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;

  void BindInt64(int index, int64_t value);
  void BindDouble(int index, double value);
  void BindText(int index, absl::string_view value);
  void BindBlob(int index, absl::string_view bytes);
  void BindNull(int index);

  // Advances to the next row: true if there is one, false when done.
  absl::StatusOr<bool> Step();
  // Steps to completion, ignoring rows (INSERT / UPDATE / DELETE).
  absl::Status Run();
  // Makes the statement runnable again and clears its bindings and any deferred error.
  void Reset();

  bool ColumnIsNull(int column) const;
  int64_t ColumnInt64(int column) const;
  double ColumnDouble(int column) const;
  std::string ColumnText(int column) const;
  std::string ColumnBlob(int column) const;

  const std::string& sql() const { return sql_; }

 private:
  friend class Database;
  Statement(Database* db, sqlite3_stmt* stmt, std::string sql) : db_(db), stmt_(stmt), sql_(std::move(sql)) {}
  void CheckBind(int rc, int index);

  Database* db_;        // not owned
  sqlite3_stmt* stmt_;  // owned
  std::string sql_;
  absl::Status bind_status_;
};

// A transaction that rolls back on destruction unless Commit() succeeded. The outermost one is
// BEGIN IMMEDIATE (takes the write lock at once, so a writer never fails half way on a lock
// upgrade); one begun inside another is a SAVEPOINT, so store methods that use a Transaction can be
// batched inside a caller's Transaction.
class Transaction {
 public:
  explicit Transaction(Database* db) : db_(db) {}
  ~Transaction();
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;

  // Errors: Unavailable (the write lock is held elsewhere past the busy timeout), FailedPrecondition
  // (already begun), Internal.
  absl::Status Begin();
  // Errors: FailedPrecondition (not begun, or already committed), the mapped SQLite error.
  absl::Status Commit();

 private:
  Database* db_;  // not owned
  bool active_ = false;
  bool nested_ = false;
};

}  // namespace lesion::storage

#endif  // LESION_STORAGE_SQLITE_H_
