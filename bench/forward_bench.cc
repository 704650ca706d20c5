// Forward and perplexity throughput of the lesion runtime, one JSON line per configuration, in the
// same shape as ../shared/bench/hf_anchor.py so the two can be compared line by line.
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
#include "experiments/next_token_ops.h"
#include "experiments/perplexity.h"
#include "experiments/torch_util.h"
#include "nlohmann/json.hpp"

namespace ex = lesion::experiments;
using lesion::bench::Die;
using lesion::bench::OrDie;

int main(int argc, char** argv) {
  std::string shape, model_dir, device_name = "cpu", dtype_name = "float32", batches = "1,8";
  int64_t seq = 0, tokens = 0;
  int reps = 3;
  bool tf32 = false;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--tf32") {
      tf32 = true;
      continue;
    }
    if (i + 1 >= argc) Die(absl::InvalidArgumentError(absl::StrCat(flag, " needs a value")));
    const std::string value = argv[++i];
    if (flag == "--shape") shape = value;
    else if (flag == "--model") model_dir = value;
    else if (flag == "--device") device_name = value;
    else if (flag == "--dtype") dtype_name = value;
    else if (flag == "--batch") batches = value;
    else if (flag == "--seq") seq = std::stoll(value);
    else if (flag == "--tokens") tokens = std::stoll(value);
    else if (flag == "--reps") reps = std::stoi(value);
    else Die(absl::InvalidArgumentError(absl::StrCat("unknown flag ", flag)));
  }
  if (tf32) lesion::bench::AllowTf32();
  const at::Device device = OrDie(ex::ParseDevice(device_name));
  const at::ScalarType dtype = OrDie(ex::ParseDtype(dtype_name));
  at::manual_seed(0);
  auto model = lesion::bench::LoadBenchModel(shape, model_dir, device, dtype);
  if (!model_dir.empty()) shape = model_dir;
  const ex::Transformer& t = model->transformer();
  const ex::ModelConfig& c = t.config();
  if (seq == 0) seq = std::min<int64_t>(c.max_position_embeddings, shape == "llama7b" ? 4096 : 1024);
  if (tokens == 0) tokens = seq * (shape == "llama7b" ? 16 : 256);
  const std::vector<int32_t> ids = lesion::bench::RandomIds(tokens, c.vocab_size);

  for (absl::string_view b : absl::StrSplit(batches, ',')) {
    int64_t batch = 0;
    if (!absl::SimpleAtoi(b, &batch) || batch < 1) Die(absl::InvalidArgumentError("bad --batch"));
    ex::PerplexityOptions options;
    options.seq_len = seq;
    options.batch_size = batch;
    const ex::RunPlan plan(c.n_layers);
    lesion::bench::ResetPeak(device);
    double ppl = 0;
    const double seconds = lesion::bench::Timed(device, reps, [&] {
      ppl = OrDie(ex::EvaluatePerplexity(t, ids, options, std::nullopt, plan)).ppl;
    });
    nlohmann::json line = {{"what", "ppl_eval"},
                           {"impl", "lesion"},
                           {"model", shape},
                           {"dtype", std::string(ex::DtypeName(dtype))},
                           {"tf32", tf32},
                           {"fused_kernels", ex::HasFusedCudaKernels()},
                           {"device", device_name},
                           {"seq", seq},
                           {"bs", batch},
                           {"tokens", tokens},
                           {"s", seconds},
                           {"tok_per_s", static_cast<int64_t>(tokens / seconds)},
                           {"peak_mem_gib", lesion::bench::PeakMemoryGiB(device)},
                           {"ppl", ppl}};
    std::cout << line.dump() << std::endl;
  }
  return 0;
}
