// Query times of the experiment store on a database of N experiments (default 100k) made like a
// lab's: 144-head sweeps, weight edits and norm resets on a few models, with perplexity, KL and
// per-head sink metrics. Reports numbers, asserts nothing.
//
//   build/bench/lesion_bench_storage_query [--experiments 100000] [--db /tmp/lesion-bench.db]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "storage/experiment_store.h"
#include "storage/sqlite.h"

namespace {

using lesion::storage::ExperimentRecord;
using lesion::storage::ExperimentStore;
using lesion::storage::QueryOptions;
using lesion::storage::Transaction;

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "error: %s\n", std::string(status.message()).c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t n = 100000;
  std::string db = (std::filesystem::temp_directory_path() / "lesion-bench-queries.db").string();
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--experiments") {
      n = std::atoll(argv[i + 1]);
    } else if (flag == "--db") {
      db = argv[i + 1];
    } else {
      std::fprintf(stderr, "unknown flag %s (known: --experiments N, --db PATH)\n", flag.c_str());
      return 2;
    }
  }
  for (const char* suffix : {"", "-wal", "-shm"}) std::filesystem::remove(db + suffix);
  auto store = ExperimentStore::Open(db);
  if (!store.ok()) return Fail(store.status());

  const char* models[] = {"gpt2", "llama2-7b", "qwen2-1.5b"};
  const absl::Time t0 = absl::Now() - absl::Hours(24 * 30);
  auto start = std::chrono::steady_clock::now();
  {
    Transaction tx((*store)->database());
    if (auto s = tx.Begin(); !s.ok()) return Fail(s);
    for (int64_t i = 0; i < n; ++i) {
      ExperimentRecord r;
      r.id = absl::StrCat("exp-", i);
      r.user = absl::StrCat("user", i % 7);
      r.model = models[i % 3];
      r.model_fingerprint = absl::StrCat("fp-", i % 3);
      const int64_t layer = (i / 12) % 12, head = i % 12;
      switch (i % 10) {
        case 0:
          r.name = "super-weight";
          r.tags = {"super-weights"};
          r.spec_json = absl::StrCat(R"({"interventions":[{"weight_edit":{"layer":)", i % 4,
                                     R"(,"module":"mlp.down","row":"3968","col":"7003"}}]})");
          break;
        case 1:
          r.name = "gamma-reset";
          r.tags = {"norm-outliers"};
          r.spec_json = absl::StrCat(R"({"interventions":[{"norm_channel_reset":{"layer":)", layer,
                                     R"(,"norm":"mlp","channels":[)", i % 768, R"(]}}]})");
          break;
        default:
          r.name = absl::StrCat("sweep/L", layer, ".H", head);
          r.tags = {"sinks", "single-head"};
          r.spec_json =
              absl::StrCat(R"({"interventions":[{"head_ablation":{"layer":)", layer, R"(,"heads":[)", head, R"(]}}]})");
      }
      r.created = t0 + absl::Seconds(i * 20);
      if (auto s = (*store)->Insert(r); !s.ok()) return Fail(s);
      if (auto s = (*store)->MarkRunning(r.id, r.created); !s.ok()) return Fail(s);
      lesion::v1::ExperimentResult result;
      auto add = [&result](const std::string& name, double baseline, double value) {
        auto* m = result.add_metrics();
        m->set_name(name);
        m->set_baseline(baseline);
        m->set_value(value);
        m->set_delta(value - baseline);
        m->set_delta_pct(baseline != 0 ? 100 * (value - baseline) / baseline : 0);
      };
      add("perplexity", 30, 30 * (1 + 0.0001 * static_cast<double>((i * 7919) % 1000)));
      add("kl_divergence", 0, 0.001 * static_cast<double>(i % 97));
      for (int h = 0; h < 12; ++h) add(absl::StrCat("attention_sink:L5.H", h), 0.5, 0.5 + 0.001 * h);
      if (auto s = (*store)->Finish(r.id, result, r.created + absl::Seconds(5)); !s.ok()) return Fail(s);
    }
    if (auto s = tx.Commit(); !s.ok()) return Fail(s);
  }
  std::printf("wrote %lld experiments (14 metrics each) in %.1f s to %s\n", static_cast<long long>(n), Seconds(start),
              db.c_str());

  const QueryOptions queries[] = {
      {"metric.perplexity.delta_pct > 9", "", 100, 0},
      {"metric.perplexity.delta_pct > 9", "metric.perplexity.delta_pct desc", 20, 0},
      {"model = \"gpt2\" AND metric.perplexity.delta_pct > 5 AND intervention.head_ablation.layer = 5", "", 100, 0},
      {"tag = \"super-weights\" AND intervention.weight_edit.layer = 2", "metric.kl_divergence.value desc", 10, 0},
      {"(tag = \"norm-outliers\" OR tag = \"super-weights\") AND user = \"user3\"", "", 100, 500},
      {"metric.\"attention_sink:L5.H3\".delta > 0.0025", "", 100, 0},
      {"created >= \"2020-01-01\" AND status = \"done\"", "created desc", 50, 0},
  };
  std::printf("\n%-100s %10s %10s\n", "where / order by", "matches", "ms");
  for (const QueryOptions& q : queries) {
    double best = 1e9;
    int64_t total = 0;
    for (int rep = 0; rep < 3; ++rep) {
      start = std::chrono::steady_clock::now();
      auto page = (*store)->Query(q);
      if (!page.ok()) return Fail(page.status());
      best = std::min(best, Seconds(start));
      total = page->total;
    }
    const std::string text = q.order_by.empty() ? q.where : absl::StrCat(q.where, "  |  ", q.order_by);
    std::printf("%-100s %10lld %10.2f\n", text.c_str(), static_cast<long long>(total), best * 1e3);
  }
  return 0;
}
