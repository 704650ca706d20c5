// Forward and perplexity throughput of the lesion runtime, one JSON line per configuration, in the
// same shape as bench/hf_anchor.py so the two can be compared line by line.
//
//   lesion_bench_forward --shape gpt2 --device cuda --dtype bfloat16 --batch 1,8,32
//   lesion_bench_forward --model models/stories260K --device cpu --seq 256 --batch 1,8
//
// --shape gpt2 | llama7b builds random weights of that shape on the device (speed does not depend
// on weight values); --model DIR loads a checkpoint. Reports tokens/s (median of --reps timed runs
// after one warm-up) and peak device memory. --tf32 allows TF32 matrix products in float32.
#include <ATen/ATen.h>

#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "bench/bench_common.h"
#include "model/next_token_ops.h"
#include "model/perplexity.h"
#include "model/torch_util.h"

namespace model = ::lesion::model;
using lesion::bench::Die;
using lesion::bench::OrDie;

int main(int argc, char** argv) {
  lesion::bench::BenchSetup setup = lesion::bench::ParseAndLoad(argc, argv, {"--batch", "--tokens", "--reps"});
  const std::string batches = setup.flags.count("--batch") ? setup.flags.at("--batch") : "1,8";
  const int reps = static_cast<int>(lesion::bench::IntFlag(setup, "--reps", 3));
  const at::Device device = setup.device;
  const model::Transformer& t = setup.model->transformer();
  const model::ModelConfig& c = t.config();
  const int64_t seq = setup.seq;
  const int64_t tokens = lesion::bench::IntFlag(setup, "--tokens", seq * (setup.shape == "llama7b" ? 16 : 256));
  const std::vector<int32_t> ids = lesion::bench::RandomIds(tokens, c.vocab_size);

  for (absl::string_view b : absl::StrSplit(batches, ',')) {
    int64_t batch = 0;
    if (!absl::SimpleAtoi(b, &batch) || batch < 1) Die(absl::InvalidArgumentError("bad --batch"));
    model::PerplexityOptions options;
    options.seq_len = seq;
    options.batch_size = batch;
    const model::RunPlan plan(c.n_layers);
    lesion::bench::ResetPeak(device);
    double ppl = 0;
    const double seconds = lesion::bench::Timed(
        device, reps, [&] { ppl = OrDie(model::EvaluatePerplexity(t, ids, options, std::nullopt, plan)).ppl; });
    nlohmann::json line = lesion::bench::ResultLine(setup, "ppl_eval");
    line.update({{"bs", batch},
                 {"tokens", tokens},
                 {"s", seconds},
                 {"tok_per_s", static_cast<int64_t>(tokens / seconds)},
                 {"peak_mem_gib", lesion::bench::PeakMemoryGiB(device)},
                 {"ppl", ppl}});
    std::cout << line.dump() << std::endl;
  }
  return 0;
}
