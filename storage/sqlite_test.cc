#include "storage/sqlite.h"

#include <sqlite3.h>

#include <cstdio>
#include <string>

#include "common/testing/status_matchers.h"
#include "gtest/gtest.h"

namespace lesion::storage {
namespace {

using ::lesion::matchers::StatusIs;

std::unique_ptr<Database> OpenMemory() {
  absl::StatusOr<std::unique_ptr<Database>> db = Database::Open(":memory:");
  EXPECT_OK(db);
  return *std::move(db);
}

TEST(SqliteStatus, MapsCodes) {
  EXPECT_EQ(SqliteStatus(SQLITE_BUSY, "m", "s").code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(SqliteStatus(SQLITE_CORRUPT, "m", "s").code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(SqliteStatus(SQLITE_NOTADB, "m", "s").code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(SqliteStatus(SQLITE_CONSTRAINT_PRIMARYKEY, "m", "s").code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(SqliteStatus(SQLITE_CONSTRAINT_CHECK, "m", "s").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SqliteStatus(SQLITE_CONSTRAINT_FOREIGNKEY, "m", "s").code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(SqliteStatus(SQLITE_LOCKED, "m", "s").code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(SqliteStatus(SQLITE_FULL, "m", "s").code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(SqliteStatus(SQLITE_IOERR, "m", "s").code(), absl::StatusCode::kInternal);
  EXPECT_EQ(SqliteStatus(SQLITE_IOERR_WRITE, "m", "s").code(), absl::StatusCode::kInternal);
}

// The message reaches clients: SQLite's words only. The SQL is a payload, for server logs.
TEST(SqliteStatus, KeepsTheSqlOutOfTheMessage) {
  const absl::Status s = SqliteStatus(SQLITE_ERROR, "no such table: t", "SELECT * FROM t");
  EXPECT_EQ(s.message(), "sqlite: no such table: t");
  ASSERT_TRUE(s.GetPayload(kSqlPayloadUrl).has_value());
  EXPECT_EQ(std::string(*s.GetPayload(kSqlPayloadUrl)), "SELECT * FROM t");
  EXPECT_NE(s.ToString().find("SELECT * FROM t"), std::string::npos);
}

TEST(Database, BindStepAndColumns) {
  auto db = OpenMemory();
  ASSERT_OK(db->Execute("CREATE TABLE t (i INTEGER, d REAL, s TEXT, b BLOB)"));
  auto insert = db->Prepare("INSERT INTO t VALUES (?, ?, ?, ?)");
  ASSERT_OK(insert);
  (*insert)->BindInt64(1, 1LL << 40);
  (*insert)->BindDouble(2, 2.5);
  (*insert)->BindText(3, "it's");
  (*insert)->BindBlob(4, std::string("a\0b", 3));
  ASSERT_OK((*insert)->Run());
  auto select = db->Prepare("SELECT i, d, s, b FROM t");
  ASSERT_OK(select);
  auto row = (*select)->Step();
  ASSERT_TRUE(row.ok() && *row);
  EXPECT_EQ((*select)->ColumnInt64(0), 1LL << 40);
  EXPECT_EQ((*select)->ColumnDouble(1), 2.5);
  EXPECT_EQ((*select)->ColumnText(2), "it's");
  EXPECT_EQ((*select)->ColumnBlob(3), std::string("a\0b", 3));
  row = (*select)->Step();
  ASSERT_OK(row);
  EXPECT_FALSE(*row);
}

TEST(Database, ErrorsCarryTheMappedCodeAndTheSqlAsPayload) {
  auto db = OpenMemory();
  ASSERT_OK(db->Execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER CHECK (v > 0))"));
  ASSERT_OK(db->Execute("INSERT INTO t VALUES ('a', 1)"));
  auto dup = db->Prepare("INSERT INTO t VALUES ('a', 2)");
  ASSERT_OK(dup);
  EXPECT_THAT((*dup)->Run(), StatusIs(absl::StatusCode::kAlreadyExists));
  auto check = db->Prepare("INSERT INTO t VALUES ('b', -1)");
  ASSERT_OK(check);
  EXPECT_THAT((*check)->Run(), StatusIs(absl::StatusCode::kInvalidArgument));
  auto bad = db->Prepare("SELECT * FROM missing");
  EXPECT_THAT(bad, StatusIs(absl::StatusCode::kInternal));
  EXPECT_EQ(bad.status().message(), "sqlite: no such table: missing");
  EXPECT_EQ(std::string(*bad.status().GetPayload(kSqlPayloadUrl)), "SELECT * FROM missing");
  auto range = db->Prepare("SELECT ?");
  ASSERT_OK(range);
  (*range)->BindInt64(5, 1);
  const absl::Status bind = (*range)->Step().status();
  EXPECT_THAT(bind, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(bind.message().find("SELECT"), absl::string_view::npos) << bind.message();
  EXPECT_TRUE(bind.GetPayload(kSqlPayloadUrl).has_value());
  ASSERT_OK(db->Execute("CREATE TABLE child (k TEXT REFERENCES t(k))"));
  EXPECT_EQ(db->Execute("INSERT INTO child VALUES ('nope')").code(), absl::StatusCode::kFailedPrecondition);
}

TEST(Database, ReadOnlyRefusesWritesAndMissingFiles) {
  const std::string path = ::testing::TempDir() + "/sqlite_read_only_test.db";
  std::remove(path.c_str());
  EXPECT_EQ(Database::Open(path, absl::Seconds(1), Database::Access::kReadOnly).status().code(),
            absl::StatusCode::kNotFound);
  {
    auto writer = Database::Open(path);
    ASSERT_OK(writer);
    ASSERT_OK((*writer)->Execute("CREATE TABLE t (v INTEGER)"));
  }
  auto reader = Database::Open(path, absl::Seconds(1), Database::Access::kReadOnly);
  ASSERT_OK(reader);
  EXPECT_EQ((*reader)->Execute("INSERT INTO t VALUES (1)").code(), absl::StatusCode::kPermissionDenied);
  std::remove(path.c_str());
}

int64_t Count(Database& db) {
  auto count = db.Prepare("SELECT count(*) FROM t");
  EXPECT_OK(count);
  auto row = (*count)->Step();
  EXPECT_TRUE(row.ok() && *row);
  return (*count)->ColumnInt64(0);
}

TEST(Transaction, RollsBackUnlessCommitted) {
  auto db = OpenMemory();
  ASSERT_OK(db->Execute("CREATE TABLE t (v INTEGER)"));
  {
    Transaction tx(db.get());
    ASSERT_OK(tx.Begin());
    ASSERT_OK(db->Execute("INSERT INTO t VALUES (1)"));
  }
  EXPECT_EQ(Count(*db), 0);
  EXPECT_FALSE(db->InTransaction());
  {
    Transaction tx(db.get());
    ASSERT_OK(tx.Begin());
    ASSERT_OK(db->Execute("INSERT INTO t VALUES (1)"));
    ASSERT_OK(tx.Commit());
    EXPECT_THAT(tx.Commit(), StatusIs(absl::StatusCode::kFailedPrecondition));
  }
  EXPECT_EQ(Count(*db), 1);
}

TEST(Transaction, NestedIsASavepoint) {
  auto db = OpenMemory();
  ASSERT_OK(db->Execute("CREATE TABLE t (v INTEGER)"));
  Transaction outer(db.get());
  ASSERT_OK(outer.Begin());
  {
    Transaction inner(db.get());
    ASSERT_OK(inner.Begin());
    ASSERT_OK(db->Execute("INSERT INTO t VALUES (1)"));
  }  // inner rolled back
  {
    Transaction inner(db.get());
    ASSERT_OK(inner.Begin());
    ASSERT_OK(db->Execute("INSERT INTO t VALUES (2)"));
    ASSERT_OK(inner.Commit());
  }
  EXPECT_TRUE(db->InTransaction());
  ASSERT_OK(outer.Commit());
  EXPECT_EQ(Count(*db), 1);
}

}  // namespace
}  // namespace lesion::storage
