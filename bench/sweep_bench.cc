// The single-head ablation sweep of bench/hf_anchor.py run as one lesion sweep: every
// head of the model zeroed in turn, perplexity of each on the same tokens, one JSON line.
//
//   lesion_bench_sweep --shape gpt2 --device cuda --dtype bfloat16 --tokens 32768 --batch 8
//
// Times RunSweep (the baseline, the shared prefixes, every variant's passes and results) after a
// warm-up run, like the anchor's head_sweep; the spec's expansion into 144 child specs is reported
// apart (a server does it at submission). --variants-per-pass 0 lets the runner size its passes;
// --layers N sweeps the heads of the first N layers only (the anchor's LLaMA sweep: 16 heads).
#include <ATen/ATen.h>

#include <chrono>
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "bench/bench_common.h"
#include "experiments/sweep.h"
#include "model/next_token_ops.h"
#include "model/torch_util.h"

namespace ex = lesion::experiments;
namespace model = ::lesion::model;
namespace spec = ::lesion::spec;
namespace result = ::lesion::result;
using lesion::bench::Die;
using lesion::bench::OrDie;

int main(int argc, char** argv) {
  lesion::bench::BenchSetup setup =
      lesion::bench::ParseAndLoad(argc, argv, {"--tokens", "--batch", "--variants-per-pass", "--max-heads"});
  const int64_t tokens = lesion::bench::IntFlag(setup, "--tokens", 32768);
  const int64_t batch = lesion::bench::IntFlag(setup, "--batch", 8);
  const int64_t per_pass = lesion::bench::IntFlag(setup, "--variants-per-pass", 0);
  const int64_t max_heads = lesion::bench::IntFlag(setup, "--max-heads", 0);
  const at::Device device = setup.device;
  const model::Model& model = *setup.model;
  const model::ModelConfig& c = model.config();
  const int64_t seq = setup.seq;
  const std::vector<int32_t> ids = lesion::bench::RandomIds(tokens, c.vocab_size);

  // The anchor's sweep: heads in (layer, head) order, the first max_heads of them (0: all).
  std::string axis = R"({"heads": {}})";
  if (max_heads > 0) {
    std::vector<std::string> variants;
    for (int64_t k = 0; k < max_heads && k < c.n_layers * c.n_heads; ++k) {
      variants.push_back(absl::StrCat(R"({"name": "L)", k / c.n_heads, ".H", k % c.n_heads,
                                      R"(", "interventions": [{"head_ablation": {"layer": )", k / c.n_heads,
                                      R"(, "heads": [)", k % c.n_heads, "]}}]}"));
    }
    axis = absl::StrCat(R"({"variants": {"variants": [)", absl::StrJoin(variants, ","), "]}}");
  }
  const std::string json =
      absl::StrCat(R"({"name": "head-sweep", "dataset": {"token_ids": {"ids": [)", absl::StrJoin(ids, ","),
                   R"(]}}, "eval": {"seq_len": )", seq, R"(, "batch_size": )", batch,
                   R"(}, "measurements": [{"perplexity": {}}], "sweep": {"axes": [)", axis,
                   R"(], "variants_per_pass": )", per_pass, "}}");
  const auto expand_start = std::chrono::steady_clock::now();
  const spec::Experiment parent = OrDie(spec::ParseExperimentJson(json));
  const std::vector<spec::Experiment> variants =
      OrDie(spec::ExpandSweep(parent, {c.n_layers, c.n_heads, c.d_model}, 1 << 20));
  const double expand_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - expand_start).count();

  std::vector<double> ppl(variants.size());
  ex::RunLimits limits;  // a pass as large as the flags ask for
  limits.max_pass_tokens = std::max(limits.max_pass_tokens, per_pass * batch * seq);
  ex::SweepControls controls;
  controls.on_variant = [&](int64_t i, result::Experiment r) { ppl[i] = r.intervened.perplexity.ppl; };
  result::Experiment parent_result;
  lesion::bench::ResetPeak(device);
  const double seconds = lesion::bench::Timed(
      device, 1, [&] { parent_result = OrDie(ex::RunSweep(model, parent, variants, "data", controls, limits)); });
  nlohmann::json line = lesion::bench::ResultLine(setup, "head_sweep");
  line.update(
      {{"ablations", variants.size()},
       {"tokens_each", parent_result.baseline.perplexity.n_tokens + parent_result.baseline.perplexity.n_windows},
       {"bs", batch},
       {"variants_per_pass", parent_result.sweep.variants_per_pass},
       {"forward_passes", parent_result.run.forward_passes},
       {"s", seconds},
       {"ablations_per_s", static_cast<double>(variants.size()) / seconds},
       {"expand_s", expand_seconds},
       {"peak_mem_gib", lesion::bench::PeakMemoryGiB(device)},
       {"baseline_ppl", parent_result.baseline.perplexity.ppl},
       {"first_ppl", ppl.front()},
       {"last_ppl", ppl.back()}});
  std::cout << line.dump() << std::endl;
  return 0;
}
