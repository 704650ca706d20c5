#include "storage/experiment_store.h"

#include <sqlite3.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/testing/status_matchers.h"
#include "gtest/gtest.h"

namespace lesion::storage {
namespace {

using ::lesion::matchers::StatusIs;

const absl::Time kT0 = absl::FromUnixSeconds(1796205600);  // 2026-12-02T10:00:00Z

ExperimentRecord MakeRecord(absl::string_view id) {
  ExperimentRecord r;
  r.id = std::string(id);
  r.user = "alice";
  r.name = absl::StrCat("name-", id);
  r.tags = {"z", "a", "z"};
  r.model = "gpt2";
  r.model_fingerprint = "fp-load";
  r.spec_json = R"({"name":"x","interventions":[{"head_ablation":{"layer":5,"heads":[1]}}]})";
  r.created = kT0;
  return r;
}

lesion::v1::ExperimentResult MakeResult() {
  lesion::v1::ExperimentResult result;
  auto* m = result.add_metrics();
  m->set_name("perplexity");
  m->set_baseline(10);
  m->set_value(11);
  m->set_delta(1);
  m->set_delta_pct(10);
  m = result.add_metrics();
  m->set_name("kl_divergence");
  m->set_value(0.25);
  m->set_delta(0.25);
  result.mutable_baseline()->mutable_perplexity()->set_ppl(10);
  auto* capture = result.mutable_intervened()->add_captures();
  capture->set_name("blocks.0.resid_post");
  capture->add_shape(1);
  capture->set_data(std::string("\0\0\x80?", 4));
  result.mutable_run()->set_model_fingerprint("fp-run");
  result.mutable_run()->set_spec_sha256("abc123");
  result.mutable_run()->set_lesion_version("0.1.0");
  result.mutable_run()->set_dtype("float32");
  result.mutable_run()->set_device("cpu");
  return result;
}

QueryOptions Where(std::string where) {
  QueryOptions options;
  options.where = std::move(where);
  return options;
}

std::unique_ptr<ExperimentStore> OpenOrDie(const std::string& path) {
  auto store = ExperimentStore::Open(path);
  EXPECT_OK(store);
  return store.ok() ? *std::move(store) : nullptr;
}

class TempFile {
 public:
  TempFile()
      : path_(std::filesystem::path(::testing::TempDir()) /
              absl::StrCat("lesion_store_", getpid(), "_",
                           ::testing::UnitTest::GetInstance()->current_test_info()->name(), ".db")) {
    Remove();
  }
  ~TempFile() { Remove(); }
  std::string path() const { return path_.string(); }

 private:
  void Remove() {
    for (const char* suffix : {"", "-wal", "-shm"}) {
      std::error_code ec;
      std::filesystem::remove(path_.string() + suffix, ec);
    }
  }
  std::filesystem::path path_;
};

int64_t UserVersion(const std::string& path) {
  sqlite3* db = nullptr;
  EXPECT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  sqlite3_stmt* stmt = nullptr;
  sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &stmt, nullptr);
  sqlite3_step(stmt);
  const int64_t v = sqlite3_column_int64(stmt, 0);
  sqlite3_finalize(stmt);
  sqlite3_close(db);
  return v;
}

TEST(ExperimentStoreSchema, MigratesAnEmptyFileAndReopens) {
  TempFile file;
  {
    auto store = OpenOrDie(file.path());
    ASSERT_NE(store, nullptr);
    ASSERT_OK(store->Insert(MakeRecord("a")));
  }
  EXPECT_EQ(UserVersion(file.path()), ExperimentStore::SchemaVersion());
  auto store = OpenOrDie(file.path());
  ASSERT_NE(store, nullptr);
  auto record = store->Get("a");
  ASSERT_OK(record);
  EXPECT_EQ(record->name, "name-a");
  EXPECT_EQ(UserVersion(file.path()), ExperimentStore::SchemaVersion());
}

TEST(ExperimentStoreSchema, UsesWal) {
  TempFile file;
  auto store = OpenOrDie(file.path());
  ASSERT_NE(store, nullptr);
  auto mode = store->database()->Prepare("PRAGMA journal_mode");
  ASSERT_OK(mode);
  ASSERT_TRUE(*(*mode)->Step());
  EXPECT_EQ((*mode)->ColumnText(0), "wal");
}

TEST(ExperimentStoreSchema, RefusesANewerDatabase) {
  TempFile file;
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(file.path().c_str(), &db), SQLITE_OK);
    const std::string sql = absl::StrCat("PRAGMA user_version = ", ExperimentStore::SchemaVersion() + 1);
    ASSERT_EQ(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr), SQLITE_OK);
    sqlite3_close(db);
  }
  auto store = ExperimentStore::Open(file.path());
  EXPECT_THAT(store, StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_NE(store.status().message().find(absl::StrCat("schema version ", ExperimentStore::SchemaVersion() + 1)),
            absl::string_view::npos)
      << store.status();
}

TEST(ExperimentStoreSchema, NotADatabaseIsDataLoss) {
  TempFile file;
  {
    FILE* f = fopen(file.path().c_str(), "wb");
    ASSERT_NE(f, nullptr);
    fputs("this is not an sqlite database, just some text that is long enough.....", f);
    fclose(f);
  }
  EXPECT_EQ(ExperimentStore::Open(file.path()).status().code(), absl::StatusCode::kDataLoss);
}

TEST(ExperimentStore, InsertAndGet) {
  auto store = OpenOrDie(":memory:");
  ASSERT_OK(store->Insert(MakeRecord("a")));
  auto r = store->Get("a");
  ASSERT_OK(r);
  EXPECT_EQ(r->status, ExperimentStatus::kQueued);
  EXPECT_EQ(r->user, "alice");
  EXPECT_EQ(r->model, "gpt2");
  EXPECT_EQ(r->tags, (std::vector<std::string>{"a", "z"}));
  EXPECT_EQ(r->created, kT0);
  EXPECT_FALSE(r->started.has_value());
  EXPECT_FALSE(r->parent_id.has_value());
  EXPECT_EQ(store->Insert(MakeRecord("a")).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(store->Get("nope").status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(store->Get("nope").status().message().find("'nope'"), absl::string_view::npos);
  ExperimentRecord bad = MakeRecord("");
  EXPECT_THAT(store->Insert(bad), StatusIs(absl::StatusCode::kInvalidArgument));
  bad = MakeRecord("b");
  bad.spec_json = "{not json";
  EXPECT_THAT(store->Insert(bad), StatusIs(absl::StatusCode::kInvalidArgument));
  bad = MakeRecord("c");
  bad.parent_id = "missing-parent";
  EXPECT_THAT(store->Insert(bad), StatusIs(absl::StatusCode::kInvalidArgument));
  ExperimentRecord child = MakeRecord("d");
  child.parent_id = "a";
  ASSERT_OK(store->Insert(child));
  EXPECT_EQ(store->Get("d")->parent_id, std::optional<std::string>("a"));
}

TEST(ExperimentStore, LegalTransitions) {
  auto store = OpenOrDie(":memory:");
  for (const char* id : {"done", "failed", "cancelled_q", "cancelled_r", "failed_q"}) {
    ASSERT_OK(store->Insert(MakeRecord(id)));
  }
  ASSERT_OK(store->MarkRunning("done", kT0 + absl::Seconds(1)));
  ASSERT_OK(store->Finish("done", MakeResult(), kT0 + absl::Seconds(2)));
  ASSERT_OK(store->MarkRunning("failed", kT0));
  ASSERT_OK(store->Fail("failed", "out of memory", kT0 + absl::Seconds(3)));
  ASSERT_OK(store->Fail("failed_q", "bad spec", kT0));
  ASSERT_OK(store->Cancel("cancelled_q", kT0));
  ASSERT_OK(store->MarkRunning("cancelled_r", kT0));
  ASSERT_OK(store->Cancel("cancelled_r", kT0 + absl::Seconds(4)));

  auto done = store->Get("done");
  ASSERT_OK(done);
  EXPECT_EQ(done->status, ExperimentStatus::kDone);
  EXPECT_EQ(done->started, kT0 + absl::Seconds(1));
  EXPECT_EQ(done->finished, kT0 + absl::Seconds(2));
  EXPECT_EQ(done->spec_sha256, "abc123");
  EXPECT_EQ(done->lesion_version, "0.1.0");
  EXPECT_EQ(done->dtype, "float32");
  EXPECT_EQ(done->device, "cpu");
  EXPECT_EQ(done->model_fingerprint, "fp-run");
  auto failed = store->Get("failed");
  EXPECT_EQ(failed->status, ExperimentStatus::kFailed);
  EXPECT_EQ(failed->error, "out of memory");
  EXPECT_EQ(failed->finished, kT0 + absl::Seconds(3));
  EXPECT_EQ(store->Get("cancelled_q")->status, ExperimentStatus::kCancelled);
  EXPECT_EQ(store->Get("cancelled_r")->status, ExperimentStatus::kCancelled);
  EXPECT_EQ(store->Get("failed_q")->status, ExperimentStatus::kFailed);
}

TEST(ExperimentStore, IllegalTransitionsAreFailedPrecondition) {
  auto store = OpenOrDie(":memory:");
  ASSERT_OK(store->Insert(MakeRecord("q")));
  // Finishing a queued experiment.
  absl::Status s = store->Finish("q", MakeResult(), kT0);
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_NE(s.message().find("is queued"), absl::string_view::npos) << s;
  ASSERT_OK(store->MarkRunning("q", kT0));
  EXPECT_EQ(store->MarkRunning("q", kT0).code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_OK(store->Finish("q", MakeResult(), kT0));
  EXPECT_EQ(store->Cancel("q", kT0).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(store->Fail("q", "x", kT0).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(store->Finish("q", MakeResult(), kT0).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(store->MarkRunning("q", kT0).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(store->Get("q")->status, ExperimentStatus::kDone);
  // Unknown ids.
  EXPECT_EQ(store->MarkRunning("x", kT0).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->Cancel("x", kT0).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->Fail("x", "e", kT0).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->Finish("x", MakeResult(), kT0).code(), absl::StatusCode::kNotFound);
}

TEST(ExperimentStore, FinishWritesMetricsAndResultAtomically) {
  auto store = OpenOrDie(":memory:");
  ASSERT_OK(store->Insert(MakeRecord("a")));
  EXPECT_EQ(store->GetResult("a").status().code(), absl::StatusCode::kNotFound);
  ASSERT_OK(store->MarkRunning("a", kT0));

  // A metric given twice fails the whole Finish: nothing is written.
  lesion::v1::ExperimentResult twice = MakeResult();
  *twice.add_metrics() = twice.metrics(0);
  EXPECT_EQ(store->Finish("a", twice, kT0).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store->Get("a")->status, ExperimentStatus::kRunning);
  EXPECT_EQ(store->GetResult("a").status().code(), absl::StatusCode::kNotFound);
  auto page = store->Query(Where("metric.perplexity.value > 0"));
  ASSERT_OK(page);
  EXPECT_EQ(page->total, 0);

  // A failure after the first writes (the result row is taken by a trigger) rolls back too.
  ASSERT_TRUE(store->database()
                  ->Execute("CREATE TEMP TRIGGER fail_result BEFORE INSERT ON results "
                            "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END")
                  .ok());
  EXPECT_FALSE(store->Finish("a", MakeResult(), kT0).ok());
  EXPECT_EQ(store->Get("a")->status, ExperimentStatus::kRunning);
  page = store->Query(Where("metric.perplexity.value > 0"));
  EXPECT_EQ(page->total, 0);
  ASSERT_OK(store->database()->Execute("DROP TRIGGER fail_result"));

  ASSERT_OK(store->Finish("a", MakeResult(), kT0 + absl::Seconds(9)));
  auto result = store->GetResult("a");
  ASSERT_OK(result);
  EXPECT_EQ(result->SerializeAsString(), MakeResult().SerializeAsString());
  EXPECT_EQ(result->intervened().captures(0).data(), std::string("\0\0\x80?", 4));
  page = store->Query(Where("metric.perplexity.delta_pct = 10 AND metric.kl_divergence.value = 0.25"));
  ASSERT_OK(page);
  EXPECT_EQ(page->total, 1);
}

// The stored result reads back equal to the one reported, absent passes included (a regression: a
// sweep parent's result, with no intervened pass, came back with an empty one after the captures
// were split off and merged back; found by the kill -9 loop).
TEST(ExperimentStore, AResultReadsBackExactlyWithAndWithoutCaptures) {
  auto store = OpenOrDie(":memory:");
  lesion::v1::ExperimentResult parent;  // a sweep's parent: a baseline, no intervened pass
  parent.mutable_baseline()->mutable_perplexity()->set_ppl(3.5);
  parent.mutable_sweep()->add_variants()->set_name("L0.H0");
  lesion::v1::ExperimentResult baseline_captures = parent;
  baseline_captures.mutable_baseline()->add_captures()->set_data(std::string(8, '\x02'));
  int n = 0;
  for (const lesion::v1::ExperimentResult& result : {parent, baseline_captures, MakeResult()}) {
    const std::string id = absl::StrCat("r", n++);
    ASSERT_OK(store->Insert(MakeRecord(id)));
    ASSERT_OK(store->MarkRunning(id, kT0));
    ASSERT_OK(store->Finish(id, result, kT0));
    absl::StatusOr<lesion::v1::ExperimentResult> read = store->GetResult(id);
    ASSERT_OK(read);
    EXPECT_EQ(read->SerializeAsString(), result.SerializeAsString()) << id;
    EXPECT_EQ(read->has_intervened(), result.has_intervened()) << id;
  }
}

TEST(ExperimentStore, MarkInterruptedAfterACrash) {
  TempFile file;
  {
    auto store = OpenOrDie(file.path());
    ASSERT_OK(store->Insert(MakeRecord("running")));
    ASSERT_OK(store->MarkRunning("running", kT0));
    ASSERT_OK(store->Insert(MakeRecord("queued")));
    ASSERT_OK(store->Insert(MakeRecord("done")));
    ASSERT_OK(store->MarkRunning("done", kT0));
    ASSERT_OK(store->Finish("done", MakeResult(), kT0));
    // The server dies here: the store is dropped with work in flight.
  }
  auto store = OpenOrDie(file.path());
  ASSERT_NE(store, nullptr);
  const absl::Time restart = kT0 + absl::Hours(1);
  auto marked = store->MarkInterruptedOnStart(restart);
  ASSERT_OK(marked);
  EXPECT_EQ(*marked, 2);
  auto running = store->Get("running");
  EXPECT_EQ(running->status, ExperimentStatus::kInterrupted);
  EXPECT_EQ(running->finished, restart);
  EXPECT_NE(running->error.find("interrupted"), std::string::npos);
  EXPECT_EQ(store->Get("queued")->status, ExperimentStatus::kInterrupted);
  // Nothing that finished is lost.
  EXPECT_EQ(store->Get("done")->status, ExperimentStatus::kDone);
  EXPECT_OK(store->GetResult("done"));
  EXPECT_EQ(*store->MarkInterruptedOnStart(restart), 0);
  EXPECT_EQ(store->Cancel("running", restart).code(), absl::StatusCode::kFailedPrecondition);
}

TEST(ExperimentStore, SecondConnectionReads) {
  TempFile file;
  auto writer = OpenOrDie(file.path());
  auto reader = OpenOrDie(file.path());
  ASSERT_OK(writer->Insert(MakeRecord("a")));
  EXPECT_OK(reader->Get("a"));
}

TEST(ExperimentStore, BaselineCacheRoundTrip) {
  auto store = OpenOrDie(":memory:");
  auto miss = store->GetBaseline("gpt2|wikitext|512");
  ASSERT_OK(miss);
  EXPECT_FALSE(miss->has_value());
  lesion::v1::PassResult pass;
  pass.mutable_perplexity()->set_ppl(29.5);
  pass.add_activation_stats()->set_site("blocks.0.resid_post");
  ASSERT_OK(store->PutBaseline("gpt2|wikitext|512", pass, kT0));
  auto hit = store->GetBaseline("gpt2|wikitext|512");
  ASSERT_TRUE(hit.ok() && hit->has_value());
  EXPECT_EQ((*hit)->SerializeAsString(), pass.SerializeAsString());
  pass.mutable_perplexity()->set_ppl(30);
  ASSERT_OK(store->PutBaseline("gpt2|wikitext|512", pass, kT0));
  EXPECT_EQ((*store->GetBaseline("gpt2|wikitext|512"))->perplexity().ppl(), 30);
}

// A collapsed model gives NaN metrics: the result is still recorded, NaN matches no comparison
// and infinities compare as numbers (a regression: NOT NULL made Finish fail).
TEST(ExperimentStore, NanAndInfiniteMetricsAreRecorded) {
  auto store = OpenOrDie(":memory:");
  ASSERT_OK(store->Insert(MakeRecord("nan")));
  ASSERT_OK(store->MarkRunning("nan", kT0));
  lesion::v1::ExperimentResult result;
  auto* m = result.add_metrics();
  m->set_name("perplexity");
  m->set_baseline(10);
  m->set_value(std::nan(""));
  m->set_delta(std::nan(""));
  m->set_delta_pct(std::nan(""));
  m = result.add_metrics();
  m->set_name("mean_nll");
  m->set_baseline(2);
  m->set_value(std::numeric_limits<double>::infinity());
  ASSERT_OK(store->Finish("nan", result, kT0));
  EXPECT_EQ(store->Get("nan")->status, ExperimentStatus::kDone);
  EXPECT_TRUE(std::isnan(store->GetResult("nan")->metrics(0).value()));
  EXPECT_EQ(store->Query({.where = "metric.perplexity.value > 0", .order_by = ""})->total, 0);
  EXPECT_EQ(store->Query({.where = "metric.perplexity.baseline = 10", .order_by = ""})->total, 1);
  EXPECT_EQ(store->Query({.where = "metric.mean_nll.value > 1000000", .order_by = ""})->total, 1);
}

TEST(ExperimentStore, TwentyThousandExperimentsInOneTransaction) {
  auto store = OpenOrDie(":memory:");
  constexpr int kCount = 20000;
  {
    Transaction tx(store->database());
    ASSERT_OK(tx.Begin());
    for (int i = 0; i < kCount; ++i) {
      ExperimentRecord r = MakeRecord(absl::StrCat("exp", i));
      r.created = kT0 + absl::Seconds(i);
      ASSERT_OK(store->Insert(r));
      ASSERT_OK(store->MarkRunning(r.id, r.created));
      lesion::v1::ExperimentResult result;
      auto* m = result.add_metrics();
      m->set_name("perplexity");
      m->set_baseline(10);
      m->set_value(10 + 0.01 * (i % 100));  // delta_pct 0 .. 9.9
      m->set_delta(m->value() - 10);
      m->set_delta_pct(10 * m->delta());
      auto* kl = result.add_metrics();
      kl->set_name("kl_divergence");
      kl->set_value(i);
      ASSERT_OK(store->Finish(r.id, result, r.created));
    }
    ASSERT_OK(tx.Commit());
  }
  // delta_pct = (i % 100) / 10 > 5  <=>  i % 100 in 51..99: 49 of every 100.
  auto page = store->Query({.where = "metric.perplexity.delta_pct > 5",
                            .order_by = "metric.kl_divergence.value desc",
                            .limit = 3,
                            .offset = 0});
  ASSERT_OK(page);
  EXPECT_EQ(page->total, kCount / 100 * 49);
  ASSERT_EQ(page->records.size(), 3u);
  EXPECT_EQ(page->records[0].id, "exp19999");
}

}  // namespace
}  // namespace lesion::storage
