#include "storage/query.h"

#include <algorithm>

#include "absl/time/time.h"
#include "common/testing/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "storage/experiment_store.h"

namespace lesion::storage {
namespace {

using ::lesion::matchers::StatusIs;

using ::testing::ElementsAre;
using ::testing::HasSubstr;

absl::Time At(absl::string_view rfc3339) {
  absl::Time t;
  std::string err;
  EXPECT_TRUE(absl::ParseTime(absl::RFC3339_full, rfc3339, &t, &err)) << err;
  return t;
}

lesion::v1::Metric MakeMetric(absl::string_view name, double baseline, double value) {
  lesion::v1::Metric m;
  m.set_name(std::string(name));
  m.set_baseline(baseline);
  m.set_value(value);
  m.set_delta(value - baseline);
  m.set_delta_pct(baseline == 0 ? 0 : 100 * (value - baseline) / std::abs(baseline));
  return m;
}

// Five experiments:
//   a: alice gpt2  done   tags sinks       head_ablation layer 5 heads [1,3]   ppl 10 -> 10.5 (+5%)
//   b: bob   gpt2  done   tags sinks,sw    weight_edit mlp.down row 7 SCALE     ppl 10 -> 10.05 (+0.5%)
//   c: alice llama done   tags sw          head_ablation layer 0 heads [2]      ppl 8 -> 12 (+50%)
//   d: bob   llama failed                  norm_channel_reset final             (no metrics)
//   e: carol gpt2  queued                  activation_edit blocks.2.resid_post
class QueryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto store = ExperimentStore::Open(":memory:");
    ASSERT_OK(store);
    store_ = *std::move(store);
    Add("a", "alice", "gpt2", {"sinks"},
        R"({"name":"a","interventions":[{"head_ablation":{"layer":5,"heads":[1,3]}}]})", At("2026-12-01T10:00:00Z"),
        {MakeMetric("perplexity", 10, 10.5), MakeMetric("top1:blocks.0.resid_post", 100, 50)});
    Add("b", "bob", "gpt2", {"sinks", "sw"},
        R"({"name":"b","interventions":[{"weight_edit":{"layer":2,"module":"mlp.down","row":"7","col":"9","op":"SCALE","value":0.5}}]})",
        At("2026-12-02T10:00:00Z"), {MakeMetric("perplexity", 10, 10.05)});
    Add("c", "alice", "llama", {"sw"}, R"({"name":"c","interventions":[{"head_ablation":{"heads":[2]}}]})",
        At("2026-12-03T10:00:00Z"),
        {MakeMetric("perplexity", 8, 12), MakeMetric("top1:blocks.0.resid_post", 100, 150)});
    Add("d", "bob", "llama", {},
        R"({"name":"d","interventions":[{"norm_channel_reset":{"norm":"final","channels":[4]}}]})",
        At("2026-12-04T10:00:00Z"), {});
    ASSERT_OK(store_->Fail("d", "oom", At("2026-12-04T10:00:01Z")));
    ExperimentRecord e;
    e.id = "e";
    e.user = "carol";
    e.name = "e";
    e.model = "gpt2";
    e.spec_json = R"({"name":"e","interventions":[{"activation_edit":{"site":"blocks.2.resid_post","op":"SET"}}]})";
    e.created = At("2026-12-05T10:00:00Z");
    ASSERT_OK(store_->Insert(e));
  }

  void Add(absl::string_view id, absl::string_view user, absl::string_view model, std::vector<std::string> tags,
           absl::string_view spec, absl::Time created, std::vector<lesion::v1::Metric> metrics) {
    ExperimentRecord r;
    r.id = std::string(id);
    r.user = std::string(user);
    r.name = std::string(id);
    r.model = std::string(model);
    r.tags = std::move(tags);
    r.spec_json = std::string(spec);
    r.created = created;
    ASSERT_OK(store_->Insert(r));
    ASSERT_OK(store_->MarkRunning(r.id, created + absl::Seconds(1)));
    if (metrics.empty()) return;
    lesion::v1::ExperimentResult result;
    for (auto& m : metrics) *result.add_metrics() = m;
    ASSERT_OK(store_->Finish(r.id, result, created + absl::Minutes(1)));
  }

  std::vector<std::string> Ids(absl::string_view where, absl::string_view order_by = "id") {
    QueryOptions options;
    options.where = std::string(where);
    options.order_by = std::string(order_by);
    absl::StatusOr<QueryPage> page = store_->Query(options);
    EXPECT_OK(page) << where << ": " << page.status();
    std::vector<std::string> ids;
    if (!page.ok()) return ids;
    for (const auto& r : page->records) ids.push_back(r.id);
    return ids;
  }

  absl::Status Error(absl::string_view where, absl::string_view order_by = "") {
    return CompileQuery(where, order_by).status();
  }

  std::unique_ptr<ExperimentStore> store_;
};

TEST_F(QueryTest, EmptyMatchesEverythingNewestFirst) { EXPECT_THAT(Ids("", ""), ElementsAre("e", "d", "c", "b", "a")); }

TEST_F(QueryTest, RecordFields) {
  EXPECT_THAT(Ids(R"(model = "gpt2")"), ElementsAre("a", "b", "e"));
  EXPECT_THAT(Ids(R"(user != "alice")"), ElementsAre("b", "d", "e"));
  EXPECT_THAT(Ids(R"(id >= "c")"), ElementsAre("c", "d", "e"));
  EXPECT_THAT(Ids(R"(name = "b")"), ElementsAre("b"));
  EXPECT_THAT(Ids(R"(status = "failed")"), ElementsAre("d"));
  // The spelling of the proto's enum names (what frames and the CLI show) means the same.
  EXPECT_THAT(Ids(R"(status = "FAILED")"), ElementsAre("d"));
  EXPECT_THAT(Ids(R"(status != "Failed")"), ElementsAre("a", "b", "c", "e"));
  EXPECT_THAT(Ids(R"(status = "queued" OR status = "done")"), ElementsAre("a", "b", "c", "e"));
}

TEST_F(QueryTest, Tags) {
  EXPECT_THAT(Ids(R"(tag = "sinks")"), ElementsAre("a", "b"));
  EXPECT_THAT(Ids(R"(tag = "sinks" AND tag = "sw")"), ElementsAre("b"));
  EXPECT_THAT(Ids(R"(tag != "sw")"), ElementsAre("a", "d", "e"));
}

TEST_F(QueryTest, TimeRanges) {
  EXPECT_THAT(Ids(R"(created >= "2026-12-02T10:00:00Z" AND created < "2026-12-04")"), ElementsAre("b", "c"));
  const int64_t dec3 = absl::ToUnixSeconds(At("2026-12-03T00:00:00Z"));
  EXPECT_THAT(Ids(absl::StrCat("created > ", dec3)), ElementsAre("c", "d", "e"));
  EXPECT_THAT(Ids(R"(created < "2026-12-02T12:00:00+02:00")"), ElementsAre("a"));  // b is at 10:00Z
  // Queued e has no finished time: it matches neither side.
  EXPECT_THAT(Ids(R"(finished < "2026-12-03T00:00:00Z")"), ElementsAre("a", "b"));
  EXPECT_THAT(Ids(R"(NOT finished < "2026-12-03T00:00:00Z")"), ElementsAre("c", "d", "e"));
}

TEST_F(QueryTest, MetricRanges) {
  EXPECT_THAT(Ids("metric.perplexity.delta_pct > 1"), ElementsAre("a", "c"));
  EXPECT_THAT(Ids("metric.perplexity.delta_pct > 1 AND metric.perplexity.delta_pct < 10"), ElementsAre("a"));
  EXPECT_THAT(Ids("metric.perplexity.baseline = 8"), ElementsAre("c"));
  EXPECT_THAT(Ids("metric.perplexity.delta <= 0.5"), ElementsAre("a", "b"));
  EXPECT_THAT(Ids("metric.top1:blocks.0.resid_post.value > 100"), ElementsAre("c"));
  EXPECT_THAT(Ids(R"(metric."top1:blocks.0.resid_post".value < 100)"), ElementsAre("a"));
  EXPECT_THAT(Ids("metric.nonexistent.value > -1e9"), ElementsAre());
}

TEST_F(QueryTest, InterventionFieldsThroughJson) {
  EXPECT_THAT(Ids("intervention.head_ablation.layer = 5"), ElementsAre("a"));
  // c's layer is omitted from the JSON (proto3 default 0).
  EXPECT_THAT(Ids("intervention.head_ablation.layer = 0"), ElementsAre("c"));
  EXPECT_THAT(Ids("intervention.head_ablation.heads = 3"), ElementsAre("a"));
  EXPECT_THAT(Ids("intervention.head_ablation.heads >= 2"), ElementsAre("a", "c"));
  EXPECT_THAT(Ids(R"(intervention.head_ablation.mode = "ZERO")"), ElementsAre("a", "c"));
  EXPECT_THAT(Ids(R"(intervention.weight_edit.module = "mlp.down")"), ElementsAre("b"));
  EXPECT_THAT(Ids("intervention.weight_edit.row = 7 AND intervention.weight_edit.col = 9"),
              ElementsAre("b"));  // int64 fields are JSON strings
  EXPECT_THAT(Ids(R"(intervention.weight_edit.op = "SCALE")"), ElementsAre("b"));
  EXPECT_THAT(Ids(R"(intervention.norm_channel_reset.norm = "final")"), ElementsAre("d"));
  EXPECT_THAT(Ids("intervention.norm_channel_reset.channels = 4"), ElementsAre("d"));
  EXPECT_THAT(Ids(R"(intervention.activation_edit.site = "blocks.2.resid_post")"), ElementsAre("e"));
  EXPECT_THAT(Ids(R"(intervention.activation_edit.op = "SET")"), ElementsAre("e"));
}

TEST_F(QueryTest, PrecedenceNotAndOr) {
  // AND binds tighter than OR: a OR (c AND gpt2) -> a.
  EXPECT_THAT(Ids(R"(id = "a" OR id = "c" AND model = "gpt2")"), ElementsAre("a"));
  EXPECT_THAT(Ids(R"((id = "a" OR id = "c") AND model = "gpt2")"), ElementsAre("a"));
  // NOT binds tighter than AND.
  EXPECT_THAT(Ids(R"(NOT model = "gpt2" AND user = "bob")"), ElementsAre("d"));
  EXPECT_THAT(Ids(R"(NOT (model = "gpt2" AND user = "bob"))"), ElementsAre("a", "c", "d", "e"));
  EXPECT_THAT(Ids(R"(not not tag = "sw" and (status = "done" or status = "failed"))"), ElementsAre("b", "c"));
}

TEST_F(QueryTest, OrderByMetricAndFields) {
  EXPECT_THAT(Ids("", "metric.perplexity.delta_pct desc"), ElementsAre("c", "a", "b", "d", "e"));
  EXPECT_THAT(Ids("", "metric.perplexity.value asc"), ElementsAre("b", "a", "c", "d", "e"));
  EXPECT_THAT(Ids("", "user desc, created asc"), ElementsAre("e", "b", "d", "a", "c"));
}

TEST_F(QueryTest, PagingWithTotal) {
  QueryOptions options;
  options.where = R"(status != "queued")";
  options.order_by = "created";
  options.limit = 2;
  options.offset = 1;
  auto page = store_->Query(options);
  ASSERT_OK(page);
  EXPECT_EQ(page->total, 4);
  ASSERT_EQ(page->records.size(), 2u);
  EXPECT_EQ(page->records[0].id, "b");
  EXPECT_EQ(page->records[1].id, "c");
  options.offset = 3;
  page = store_->Query(options);
  ASSERT_OK(page);
  EXPECT_EQ(page->total, 4);
  ASSERT_EQ(page->records.size(), 1u);
  EXPECT_EQ(page->records[0].id, "d");
  options.limit = -1;
  EXPECT_THAT(store_->Query(options), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_F(QueryTest, ValuesAreBoundNotSpliced) {
  EXPECT_THAT(Ids(R"(name = "x' OR 1=1 --")"), ElementsAre());
  EXPECT_THAT(Ids(R"(tag = "a\"b")"), ElementsAre());
}

TEST(CompileQuery, BadQueriesSayWhatAndWhere) {
  struct Case {
    const char* where;
    const char* order_by;
    const char* message;
  };
  const Case cases[] = {
      {R"(modle = "gpt2")", "", "unknown field 'modle' at column 1"},
      {R"(model == "gpt2")", "", "unknown operator '==' (use =)"},
      {R"(model <> "gpt2")", "", "unknown operator '<>' (use !=)"},
      {R"(model ~ "gpt2")", "", "unexpected character '~' at column 7"},
      {R"((model = "gpt2")", "", "the '(' at column 1 is never closed"},
      {R"(model = "gpt2"))", "", "unbalanced parentheses: unexpected ')' at column 15"},
      {R"(model = "gpt2)", "", "unterminated string starting at column 9"},
      {R"(model = gpt2)", "", "expected a number or a \"string\" after 'model =', found 'gpt2' at column 9"},
      {R"(model "gpt2")", "", "expected an operator"},
      {R"(model = "a" AND)", "", "expected a field name, found the end of the query at column 16"},
      {R"(model = "a" user = "b")", "", "expected AND, OR or the end, found 'user' at column 13"},
      {R"(status = "finished")", "", "unknown status \"finished\""},
      {R"(status < "done")", "", "field 'status' takes = or !="},
      {R"(tag > "x")", "", "field 'tag' takes = or !="},
      {"metric.perplexity.delta_percent > 1", "", "unknown metric field 'delta_percent'"},
      {"metric.perplexity > 1", "", "must be metric.NAME.FIELD"},
      {R"(metric.perplexity.value > "1")", "", "takes a number"},
      {"intervention.head_pruning.layer = 1", "", "unknown intervention kind 'head_pruning'"},
      {"intervention.head_ablation.site = 1", "", "unknown field 'site' of head_ablation"},
      {R"(intervention.head_ablation.layer = "5")", "", "takes a number"},
      {R"(intervention.head_ablation.mode = "HALF")", "", "unknown value \"HALF\""},
      {R"(created > "yesterday")", "", "bad time \"yesterday\""},
      {"", "tag", "order by: cannot order by 'tag' at column 1"},
      {"", "created sideways", "order by: expected asc, desc, ',' or the end, found 'sideways' at column 9"},
      {"", "metric.ppl.nope desc", "order by: unknown metric field 'nope'"},
  };
  for (const Case& c : cases) {
    const absl::Status status = CompileQuery(c.where, c.order_by).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.where << " | " << c.order_by;
    EXPECT_THAT(std::string(status.message()), HasSubstr(c.message)) << c.where;
  }
}

std::string Repeat(absl::string_view s, int n) {
  std::string out;
  for (int i = 0; i < n; ++i) out.append(s.data(), s.size());
  return out;
}

// Regression: the parser recursed once per NOT and '(' with no limit, so that
// "NOT NOT ... id = "x"" (20,000 of them) or 50,000 '(' overflowed lesiond's stack.
TEST(CompileQuery, HugeNestingIsRefusedNotACrash) {
  for (const std::string& where : {Repeat("NOT ", 20000) + R"(id = "x")", Repeat("(", 50000)}) {
    const absl::Status status = CompileQuery(where, "").status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status.message().substr(0, 200);
    EXPECT_THAT(std::string(status.message()), HasSubstr("more than the limit of 16384 bytes"));
    EXPECT_LT(status.message().size(), 200u) << "the error must not echo the query";
  }
  const absl::Status order = CompileQuery("", Repeat("id, ", 5000) + "id").status();
  EXPECT_THAT(order, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(std::string(order.message()), HasSubstr("limit of 16384 bytes"));
}

TEST(CompileQuery, NestingDeeperThan32IsInvalidArgument) {
  EXPECT_OK(CompileQuery(Repeat("NOT ", 32) + R"(id = "x")", ""));
  EXPECT_OK(CompileQuery(Repeat("(", 32) + R"(id = "x")" + Repeat(")", 32), ""));
  EXPECT_OK(CompileQuery(Repeat("NOT (", 16) + R"(id = "x")" + Repeat(")", 16), ""));
  for (const std::string& where :
       {Repeat("NOT ", 33) + R"(id = "x")", Repeat("(", 33) + R"(id = "x")" + Repeat(")", 33),
        Repeat("NOT (", 17) + R"(id = "x")" + Repeat(")", 17), Repeat("(", 1000)}) {
    const absl::Status status = CompileQuery(where, "").status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << where;
    EXPECT_THAT(std::string(status.message()), HasSubstr("nested more than 32 deep")) << where;
    EXPECT_LT(status.message().size(), 200u);
  }
  // Nesting that is left again does not add up.
  EXPECT_OK(CompileQuery(Repeat(R"((NOT id = "x") AND )", 100) + R"(id = "y")", ""));
}

TEST(CompileQuery, MoreThan256ComparisonsIsInvalidArgument) {
  EXPECT_OK(CompileQuery(Repeat(R"(id = "x" OR )", 255) + R"(id = "y")", ""));
  const absl::Status status = CompileQuery(Repeat(R"(id = "x" OR )", 256) + R"(id = "y")", "").status();
  EXPECT_THAT(status, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(std::string(status.message()), HasSubstr("more than 256 comparisons"));
  EXPECT_OK(CompileQuery("", Repeat("id, ", 255) + "id"));
  const absl::Status order = CompileQuery("", Repeat("id, ", 256) + "id").status();
  EXPECT_THAT(order, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(std::string(order.message()), HasSubstr("more than 256 keys"));
}

// `levels` levels of parentheses, each holding two copies of the level below joined by OR: 2^levels
// copies of `leaf`, every operand as deep as its sibling.
std::string BalancedTree(const std::string& leaf, int levels) {
  if (levels == 0) return leaf;
  const std::string below = BalancedTree(leaf, levels - 1);
  return "(" + below + " OR " + below + ")";
}

// What the limits let through compiles to SQL that SQLite accepts: its parser stack (100 entries in
// 3.40) overflowed at 16 levels of "a OR b AND (" before operands were reordered.
TEST_F(QueryTest, QueriesAtTheLimitsRun) {
  const std::string chain = R"(id = "a")" + Repeat(R"( OR metric.perplexity.value > 1e9)", 255);
  EXPECT_THAT(Ids(Repeat("(", 32) + chain + Repeat(")", 32)), ElementsAre("a"));
  EXPECT_THAT(Ids(Repeat("NOT ", 31) + "(" + chain + ")"), ElementsAre("b", "c", "d", "e"));
  EXPECT_THAT(Ids(Repeat("NOT NOT (", 10) + "NOT NOT " + chain + Repeat(")", 10)), ElementsAre("a"));
  const std::string heads = "intervention.head_ablation.heads = 3";
  EXPECT_THAT(Ids(Repeat(R"(id = "x" OR id != "y" AND ()", 32) + heads + Repeat(")", 32)), ElementsAre("a"));
  EXPECT_THAT(Ids(Repeat(R"(NOT id = "x" AND NOT ()", 16) + heads + Repeat(")", 16)), ElementsAre("a"));
  EXPECT_THAT(Ids(Repeat("(", 24) + BalancedTree(heads, 8) + Repeat(")", 24)), ElementsAre("a"));
  EXPECT_THAT(
      Ids(Repeat(R"(NOT (intervention.head_ablation.heads = 7) AND )", 255) + Repeat("NOT ", 32) + R"(id != "c")"),
      ElementsAre("a", "b", "d", "e"));
}

// Regression: 99999999999999999999999 seconds overflowed the conversion to microseconds and
// `created >= 99999999999999999999999` matched every experiment.
TEST_F(QueryTest, TimesOutOfRangeAreInvalidArgument) {
  for (const char* where : {"created >= 99999999999999999999999", "created >= -99999999999999999999999",
                            "finished < 1e300", "started > 253402300800", R"(created > "99999-01-01")"}) {
    const absl::Status status = Error(where);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << where;
    EXPECT_THAT(std::string(status.message()), HasSubstr("out of range")) << where;
  }
  EXPECT_THAT(Ids("created < 253402300799"), ElementsAre("a", "b", "c", "d", "e"));
  EXPECT_THAT(Ids("created > -62135596800"), ElementsAre("a", "b", "c", "d", "e"));
  const absl::Status huge = Error("metric.perplexity.value > 1e999");
  EXPECT_THAT(huge, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(std::string(huge.message()), HasSubstr("number '1e999' out of range"));
}

TEST(CompileQuery, ErrorsQuoteAtMost80CharactersOfTheInput) {
  const std::string long_name(10000, 'f');
  const std::string cases[] = {
      long_name + R"( = "x")",                     // unknown field
      R"(status = ")" + long_name + R"(")",        // unknown status
      "model = " + long_name,                      // a word where a value belongs
      R"(model = "x" )" + long_name,               // a word where AND / OR belongs
      "metric.perplexity." + long_name + " > 1",   // unknown metric field
      "intervention." + long_name + ".layer = 1",  // unknown intervention kind
      "intervention.head_ablation." + long_name + " = 1",
      R"(intervention.head_ablation.mode = ")" + long_name + R"(")",
      R"(created > ")" + long_name + R"(")",       // bad time
      "id " + std::string(5000, '=') + R"( "x")",  // unknown operator
      "created > 1" + std::string(5000, '0'),      // out of range
      long_name + ". = 1",                         // empty component
  };
  for (const std::string& where : cases) {
    const absl::Status status = CompileQuery(where, "").status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << where.substr(0, 40);
    EXPECT_LT(status.message().size(), 400u) << status.message().substr(0, 400);
    EXPECT_EQ(std::string(status.message()).find(std::string(81, 'f')), std::string::npos);
  }
  const absl::Status order = CompileQuery("", long_name).status();
  EXPECT_THAT(order, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_LT(order.message().size(), 400u) << order.message().substr(0, 400);
}

TEST(CompileQuery, EveryValueIsAParameter) {
  auto q =
      CompileQuery(R"(user = "x" AND metric.perplexity.delta_pct > 1 OR tag = "t")", "metric.kl_divergence.value desc");
  ASSERT_OK(q);
  EXPECT_EQ(q->where_sql.find("\"x\""), std::string::npos);
  EXPECT_EQ(std::count(q->where_sql.begin(), q->where_sql.end(), '?'), static_cast<long>(q->where_params.size()));
  EXPECT_EQ(q->where_params.size(), 4u);
  EXPECT_EQ(q->order_params.size(), 1u);
}

}  // namespace
}  // namespace lesion::storage
