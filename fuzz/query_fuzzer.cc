// Fuzzes the query language of `lesion ls --where/--order-by` (storage/query.h). Input: the filter,
// then optionally a NUL byte and the order. Beyond "no crash", it checks that whatever
// CompileQuery accepts is SQL that SQLite prepares and runs against a store holding experiments
// with metrics, tags and interventions: a compiled query that fails there is a compiler bug.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "proto/lesion/v1/result.pb.h"
#include "storage/experiment_store.h"
#include "storage/query.h"

namespace {

using lesion::storage::ExperimentRecord;
using lesion::storage::ExperimentStore;

[[noreturn]] void Die(absl::string_view what, const absl::Status& status) {
  std::fprintf(stderr, "%.*s: %s\n", static_cast<int>(what.size()), what.data(), status.ToString().c_str());
  std::abort();
}

// Two experiments, so that every kind of clause has rows to look at: a finished one with metrics,
// tags and a head ablation, and a failed one with a weight edit.
std::unique_ptr<ExperimentStore> MakeStore() {
  absl::StatusOr<std::unique_ptr<ExperimentStore>> store = ExperimentStore::Open(":memory:");
  if (!store.ok()) Die("open store", store.status());
  const absl::Time t0 = absl::FromUnixSeconds(1796203200);  // 2026-12-02
  ExperimentRecord a;
  a.id = "a";
  a.user = "alice";
  a.name = "ablate";
  a.model = "gpt2";
  a.tags = {"sinks", "sw"};
  a.spec_json = R"({"name":"ablate","interventions":[{"head_ablation":{"layer":5,"heads":[1,3],"mode":"MEAN"}}]})";
  a.created = t0;
  ExperimentRecord b = a;
  b.id = "b";
  b.user = "bob";
  b.tags = {};
  b.spec_json =
      R"({"name":"b","interventions":[{"weight_edit":{"layer":2,"module":"mlp.down","row":"7","col":"9","op":"SCALE","value":0.5}}]})";
  b.created = t0 + absl::Hours(1);
  for (const ExperimentRecord* r : {&a, &b}) {
    if (absl::Status s = (*store)->Insert(*r); !s.ok()) Die("insert", s);
    if (absl::Status s = (*store)->MarkRunning(r->id, r->created + absl::Seconds(1)); !s.ok()) Die("mark running", s);
  }
  lesion::v1::ExperimentResult result;
  lesion::v1::Metric* m = result.add_metrics();
  m->set_name("perplexity");
  m->set_baseline(10);
  m->set_value(10.5);
  m->set_delta(0.5);
  m->set_delta_pct(5);
  if (absl::Status s = (*store)->Finish("a", result, t0 + absl::Minutes(1)); !s.ok()) Die("finish", s);
  if (absl::Status s = (*store)->Fail("b", "oom", t0 + absl::Minutes(2)); !s.ok()) Die("fail", s);
  return *std::move(store);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static ExperimentStore* const store = MakeStore().release();
  const absl::string_view input(reinterpret_cast<const char*>(data), size);
  const size_t nul = input.find('\0');
  const absl::string_view where = input.substr(0, nul);
  const absl::string_view order = nul == absl::string_view::npos ? "" : input.substr(nul + 1);

  absl::StatusOr<lesion::storage::CompiledQuery> compiled = lesion::storage::CompileQuery(where, order);
  if (!compiled.ok()) {
    if (compiled.status().code() != absl::StatusCode::kInvalidArgument) Die("CompileQuery", compiled.status());
    return 0;
  }
  lesion::storage::QueryOptions options;
  options.where = std::string(where);
  options.order_by = std::string(order);
  options.limit = 10;
  absl::StatusOr<lesion::storage::QueryPage> page = store->Query(options);
  if (!page.ok()) Die("a compiled query does not run", page.status());
  return 0;
}
