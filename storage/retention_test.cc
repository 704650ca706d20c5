// Captures kept apart from results, byte-bounded query pages, retention (DeleteExperiments,
// DropCaptures, ReclaimSpace), per-user stored bytes, and the migration of a version-1 file.
#include <sqlite3.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "common/testing/scoped_test_dir.h"
#include "common/testing/status_matchers.h"
#include "gtest/gtest.h"
#include "storage/experiment_store.h"

namespace lesion::storage {
namespace {

using ::lesion::matchers::StatusIs;

const absl::Time kT0 = absl::FromUnixSeconds(1796205600);  // 2026-12-02T10:00:00Z

ExperimentRecord Record(absl::string_view id, absl::string_view user = "alice",
                        std::optional<std::string> parent = std::nullopt) {
  ExperimentRecord r;
  r.id = std::string(id);
  r.user = std::string(user);
  r.name = absl::StrCat("name-", id);
  r.model = "gpt2";
  r.spec_json = "{}";
  r.parent_id = std::move(parent);
  r.created = kT0;
  return r;
}

// A result with `capture_bytes` bytes of captured tensor and a per-layer table of `table_bytes`.
lesion::v1::ExperimentResult Result(int64_t capture_bytes, int64_t table_bytes = 16) {
  lesion::v1::ExperimentResult result;
  result.mutable_baseline()->mutable_perplexity()->set_ppl(10);
  result.mutable_intervened()->mutable_perplexity()->set_ppl(11);
  auto* stats = result.mutable_intervened()->add_activation_stats();
  stats->set_site(std::string(table_bytes, 's'));
  for (lesion::v1::PassResult* pass : {result.mutable_baseline(), result.mutable_intervened()}) {
    auto* capture = pass->add_captures();
    capture->set_name("blocks.0.resid_post");
    capture->add_shape(capture_bytes / 4);
    capture->set_dtype("float32");
    capture->set_data(std::string(capture_bytes, '\x01'));
  }
  auto* m = result.add_metrics();
  m->set_name("perplexity");
  m->set_value(11);
  return result;
}

class RetentionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto store = ExperimentStore::Open(Path());
    ASSERT_OK(store);
    store_ = *std::move(store);
  }
  std::string Path() const { return (dir_.path() / "lesion.db").string(); }

  void AddDone(absl::string_view id, int64_t capture_bytes, absl::string_view user = "alice",
               std::optional<std::string> parent = std::nullopt) {
    ASSERT_OK(store_->Insert(Record(id, user, parent)));
    ASSERT_OK(store_->MarkRunning(id, kT0));
    ASSERT_OK(store_->Finish(id, Result(capture_bytes), kT0));
  }
  int64_t Pragma(absl::string_view name) {
    auto read = store_->database()->Prepare(absl::StrCat("PRAGMA ", name));
    EXPECT_OK(read);
    EXPECT_TRUE(*(*read)->Step());
    return (*read)->ColumnInt64(0);
  }

  ScopedTestDir dir_{"retention_test"};
  std::unique_ptr<ExperimentStore> store_;
};

TEST_F(RetentionTest, CapturesAreReadOnlyWhenAskedFor) {
  AddDone("a", 1000);
  auto without = store_->GetResult("a", /*include_captures=*/false);
  ASSERT_OK(without);
  ASSERT_EQ(without->intervened().captures_size(), 1);
  EXPECT_EQ(without->intervened().captures(0).shape(0), 250);  // shape kept
  EXPECT_TRUE(without->intervened().captures(0).data().empty());
  EXPECT_EQ(without->intervened().activation_stats_size(), 1);
  auto with = store_->GetResult("a");
  ASSERT_OK(with);
  EXPECT_EQ(with->SerializeAsString(), Result(1000).SerializeAsString());
  // The result row itself holds no capture bytes: a list never reads them.
  auto size = store_->database()->Prepare("SELECT length(result) FROM results");
  ASSERT_TRUE(size.ok() && *(*size)->Step());
  EXPECT_LT((*size)->ColumnInt64(0), 1000);
}

TEST_F(RetentionTest, QueryPagesAreBoundedByBytesAndSayWhereTheNextStarts) {
  for (int i = 0; i < 5; ++i) AddDone(absl::StrCat("e", i), /*capture_bytes=*/1 << 20);
  QueryOptions options;
  options.include_results = true;
  options.order_by = "id";
  auto all = store_->Query(options);
  ASSERT_OK(all);
  ASSERT_EQ(all->records.size(), 5u);
  ASSERT_EQ(all->results.size(), 5u);
  EXPECT_EQ(all->next_offset, 0);
  for (const auto& result : all->results) {
    ASSERT_TRUE(result.has_value());
    EXPECT_TRUE(result->intervened().captures(0).data().empty());  // never the captures
  }
  // A bound of about two rows: pages of two, walked by next_offset, cover every row once.
  const int64_t row = all->results[0]->ByteSizeLong() + 64;
  options.max_bytes = 2 * row;
  std::vector<std::string> ids;
  int pages = 0;
  do {
    auto page = store_->Query(options);
    ASSERT_OK(page);
    EXPECT_LE(page->records.size(), 2u);
    EXPECT_EQ(page->total, 5);
    for (const auto& r : page->records) ids.push_back(r.id);
    options.offset = page->next_offset;
    ++pages;
  } while (options.offset != 0 && pages < 10);
  EXPECT_EQ(ids, (std::vector<std::string>{"e0", "e1", "e2", "e3", "e4"}));
  EXPECT_EQ(pages, 3);
  // A bound smaller than one row still returns one row.
  options.offset = 0;
  options.max_bytes = 1;
  auto one = store_->Query(options);
  ASSERT_OK(one);
  EXPECT_EQ(one->records.size(), 1u);
  EXPECT_EQ(one->next_offset, 1);
  options.max_bytes = 0;
  EXPECT_THAT(store_->Query(options), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_F(RetentionTest, UserBytesFollowInsertFinishDropAndDelete) {
  EXPECT_EQ(*store_->UserBytes("alice"), 0);
  ASSERT_OK(store_->Insert(Record("a")));
  const int64_t queued = *store_->UserBytes("alice");
  EXPECT_GT(queued, 0);
  ASSERT_OK(store_->MarkRunning("a", kT0));
  ASSERT_OK(store_->Finish("a", Result(100000), kT0));
  const int64_t done = *store_->UserBytes("alice");
  EXPECT_GT(done, queued + 2 * 100000);
  AddDone("b", 5000, "bob");
  EXPECT_EQ(*store_->UserBytes("alice"), done);  // per user
  EXPECT_GT(*store_->UserBytes("bob"), 10000);

  auto dropped = store_->DropCaptures({.where = "user = \"alice\""});
  ASSERT_OK(dropped);
  EXPECT_EQ(dropped->experiments, 1);
  EXPECT_GE(dropped->bytes, 2 * 100000);
  EXPECT_EQ(*store_->UserBytes("alice"), done - dropped->bytes);
  auto again = store_->DropCaptures({.where = "user = \"alice\""});  // nothing left to drop
  EXPECT_EQ(again->experiments, 0);
  EXPECT_EQ(again->bytes, 0);
  auto result = store_->GetResult("a");
  ASSERT_OK(result);
  EXPECT_TRUE(result->intervened().captures(0).data().empty());
  EXPECT_EQ(result->intervened().captures(0).shape(0), 25000);

  auto deleted = store_->DeleteExperiments({.where = "user = \"alice\""});
  ASSERT_OK(deleted);
  EXPECT_EQ(deleted->experiments, 1);
  EXPECT_EQ(deleted->bytes, done - dropped->bytes);
  EXPECT_EQ(*store_->UserBytes("alice"), 0);
  EXPECT_EQ(store_->Get("a").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->Get("b").status().code(), absl::StatusCode::kOk);
}

TEST_F(RetentionTest, DeleteSkipsActiveExperimentsTakesVariantsWithTheirParentAndKeepsBaselines) {
  AddDone("sweep", 10);
  AddDone("sweep.0", 10, "alice", "sweep");
  AddDone("sweep.1", 10, "alice", "sweep");
  AddDone("other", 10);
  AddDone("other.0", 10, "alice", "other");
  ASSERT_OK(store_->Insert(Record("queued")));
  ASSERT_OK(store_->Insert(Record("running")));
  ASSERT_OK(store_->MarkRunning("running", kT0));
  lesion::v1::PassResult baseline;
  baseline.mutable_perplexity()->set_ppl(3);
  ASSERT_OK(store_->PutBaseline("fp:abc", baseline, kT0));

  // The parent "sweep", its variants, the variant "other.0" (its parent does not match), and the
  // two active ones match.
  const RetentionOptions options{.where =
                                     "id = \"sweep\" OR id = \"other.0\" OR id = \"queued\" OR "
                                     "id = \"running\"",
                                 .dry_run = true};
  auto planned = store_->DeleteExperiments(options);
  ASSERT_OK(planned);
  EXPECT_EQ(planned->experiments, 3);
  EXPECT_EQ(planned->skipped_active, 2);
  EXPECT_EQ(planned->skipped_variants, 1);
  EXPECT_EQ(store_->Query({})->total, 7);  // a dry run changes nothing

  RetentionOptions run = options;
  run.dry_run = false;
  auto done = store_->DeleteExperiments(run);
  ASSERT_OK(done);
  EXPECT_EQ(done->experiments, planned->experiments);
  EXPECT_EQ(done->bytes, planned->bytes);
  for (const char* gone : {"sweep", "sweep.0", "sweep.1"}) {
    EXPECT_EQ(store_->Get(gone).status().code(), absl::StatusCode::kNotFound) << gone;
  }
  for (const char* kept : {"other", "other.0", "queued", "running"}) {
    EXPECT_OK(store_->Get(kept));
  }
  auto cached = store_->GetBaseline("fp:abc");
  ASSERT_TRUE(cached.ok() && cached->has_value());
  EXPECT_EQ((*cached)->perplexity().ppl(), 3);

  EXPECT_EQ(store_->DeleteExperiments({}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->DeleteExperiments({.where = "modle = \"x\""}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(RetentionTest, BatchesStopAfterMaxFamilies) {
  for (int i = 0; i < 5; ++i) AddDone(absl::StrCat("e", i), 10);
  int64_t deleted = 0;
  int batches = 0;
  while (true) {
    auto batch = store_->DeleteExperiments({.where = "model = \"gpt2\"", .max_families = 2});
    ASSERT_OK(batch);
    deleted += batch->experiments;
    ++batches;
    if (!batch->more || batches > 5) break;
  }
  EXPECT_EQ(deleted, 5);
  EXPECT_EQ(batches, 3);
}

TEST_F(RetentionTest, DeletingReclaimsTheSpaceOfTheFile) {
  EXPECT_EQ(Pragma("auto_vacuum"), 2);  // incremental, from creation
  EXPECT_OK(store_->auto_vacuum_status());
  for (int i = 0; i < 4; ++i) AddDone(absl::StrCat("e", i), 1 << 20);
  const int64_t before = Pragma("page_count") * Pragma("page_size");
  ASSERT_OK(store_->DeleteExperiments({.where = "created >= 0"}));
  auto reclaimed = store_->ReclaimSpace();
  ASSERT_OK(reclaimed);
  EXPECT_GT(*reclaimed, 8 << 20);
  EXPECT_EQ(Pragma("page_count") * Pragma("page_size"), before - *reclaimed);
}

// A file written by schema version 1 (captures inside the result, no byte counts, no
// auto-vacuum) is migrated at Open: captures split off, bytes counted, auto-vacuum turned on.
TEST_F(RetentionTest, AVersionOneFileIsMigrated) {
  AddDone("a", 4000);
  AddDone("b", 0, "bob");
  store_.reset();
  {
    // Back to version 1: the full result in `results`, none of version 2's tables.
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(Path().c_str(), &db), SQLITE_OK);
    sqlite3_stmt* put = nullptr;
    ASSERT_EQ(sqlite3_prepare_v2(db, "UPDATE results SET result = ? WHERE experiment_id = 'a'", -1, &put, nullptr),
              SQLITE_OK);
    const std::string full = Result(4000).SerializeAsString();
    sqlite3_bind_blob(put, 1, full.data(), static_cast<int>(full.size()), SQLITE_TRANSIENT);
    ASSERT_EQ(sqlite3_step(put), SQLITE_DONE);
    sqlite3_finalize(put);
    const char* kDowngrade =
        "DROP TRIGGER experiments_bytes_insert; DROP TRIGGER experiments_bytes_update; "
        "DROP TRIGGER experiments_bytes_delete; DROP TABLE captures; DROP TABLE user_bytes; "
        "ALTER TABLE experiments DROP COLUMN stored_bytes; PRAGMA user_version = 1; "
        "PRAGMA auto_vacuum = NONE; VACUUM;";
    char* error = nullptr;
    ASSERT_EQ(sqlite3_exec(db, kDowngrade, nullptr, nullptr, &error), SQLITE_OK) << error;
    sqlite3_close(db);
  }
  SetUp();
  ASSERT_NE(store_, nullptr);
  EXPECT_EQ(Pragma("user_version"), ExperimentStore::SchemaVersion());
  EXPECT_EQ(Pragma("auto_vacuum"), 2);
  auto full = store_->GetResult("a");
  ASSERT_OK(full);
  EXPECT_EQ(full->SerializeAsString(), Result(4000).SerializeAsString());
  EXPECT_TRUE(store_->GetResult("a", false)->intervened().captures(0).data().empty());
  EXPECT_GT(*store_->UserBytes("alice"), 2 * 4000);
  EXPECT_GT(*store_->UserBytes("bob"), 0);
  auto dropped = store_->DropCaptures({.where = "id = \"a\""});
  ASSERT_OK(dropped);
  EXPECT_GE(dropped->bytes, 2 * 4000);
}

TEST_F(RetentionTest, ARetentionDryRunWorksOnAReadOnlyStore) {
  AddDone("a", 100);
  auto reader = ExperimentStore::OpenReadOnly(Path());
  ASSERT_OK(reader);
  auto planned = (*reader)->DeleteExperiments({.where = "id = \"a\"", .dry_run = true});
  ASSERT_OK(planned);
  EXPECT_EQ(planned->experiments, 1);
  EXPECT_EQ((*reader)->DeleteExperiments({.where = "id = \"a\""}).status().code(), absl::StatusCode::kPermissionDenied);
}

}  // namespace
}  // namespace lesion::storage
