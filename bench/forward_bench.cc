// Forward and perplexity throughput of the lesion runtime, one JSON line per configuration, in the
// same shape as ../shared/bench/hf_anchor.py so the two can be compared line by line.
//
//   lesion_bench_forward --shape gpt2 --device cuda --dtype bfloat16 --batch 1,8,32
//   lesion_bench_forward --model models/stories260K --device cpu --seq 256 --batch 1,8
//
// --shape gpt2 | llama7b builds random weights of that shape on the device (speed does not depend
// on weight values); --model DIR loads a checkpoint. Reports tokens/s (median of --reps timed runs
// after one warm-up) and peak device memory.
#include <ATen/ATen.h>
#include <ATen/DeviceAccelerator.h>
#include <c10/core/InferenceMode.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "experiments/checkpoint_loader.h"
#include "experiments/model.h"
#include "experiments/perplexity.h"
#include "experiments/torch_util.h"
#include "nlohmann/json.hpp"

namespace ex = lesion::experiments;

namespace {

constexpr char kGpt2Small[] = R"({"architectures": ["GPT2LMHeadModel"], "n_layer": 12, "n_embd": 768,
  "n_head": 12, "vocab_size": 50257, "n_positions": 1024})";
constexpr char kLlama7b[] = R"({"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 32,
  "hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32,
  "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 4096})";

[[noreturn]] void Die(const absl::Status& status) {
  std::cerr << "lesion_bench_forward: " << status << "\n";
  std::exit(1);
}

template <typename T>
T OrDie(absl::StatusOr<T> v) {
  if (!v.ok()) Die(v.status());
  return *std::move(v);
}

void Synchronize(at::Device device) {
  if (device.is_cuda()) at::accelerator::synchronizeDevice(device.index());
}

double PeakMemoryGiB(at::Device device) {
  if (device.is_cuda()) {
    auto stats = at::accelerator::getDeviceStats(device.index());
    return static_cast<double>(
               stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)].peak) /
           (1 << 30);
  }
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / (1 << 20);  // ru_maxrss is in KiB
}

void ResetPeak(at::Device device) {
  if (device.is_cuda()) at::accelerator::resetPeakStats(device.index());
}

// Median seconds of `reps` runs after one warm-up.
template <typename Fn>
double Timed(at::Device device, int reps, Fn&& fn) {
  fn();
  Synchronize(device);
  std::vector<double> times;
  for (int i = 0; i < reps; ++i) {
    const auto start = std::chrono::steady_clock::now();
    fn();
    Synchronize(device);
    times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  std::string shape, model_dir, device_name = "cpu", dtype_name = "float32", batches = "1,8";
  int64_t seq = 0, tokens = 0;
  int reps = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
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
  const at::Device device = OrDie(ex::ParseDevice(device_name));
  const at::ScalarType dtype = OrDie(ex::ParseDtype(dtype_name));
  at::manual_seed(0);

  std::unique_ptr<ex::Model> loaded;
  std::optional<ex::Transformer> random_model;
  const ex::Transformer* model = nullptr;
  if (!model_dir.empty()) {
    ex::LoadOptions options;
    options.device = device;
    options.dtype = dtype;
    loaded = OrDie(ex::Model::Load(model_dir, options));
    model = &loaded->transformer();
    shape = model_dir;
  } else if (shape == "gpt2" || shape == "llama7b") {
    ex::ModelConfig config =
        OrDie(ex::ParseModelConfig(shape == "gpt2" ? kGpt2Small : kLlama7b, shape));
    random_model.emplace(OrDie(ex::Transformer::Create(config, OrDie(ex::MakeRandomWeights(config, device, dtype)))));
    model = &*random_model;
  } else {
    Die(absl::InvalidArgumentError("give --shape gpt2|llama7b or --model DIR"));
  }
  const ex::ModelConfig& c = model->config();
  if (seq == 0) seq = std::min<int64_t>(c.max_position_embeddings, shape == "llama7b" ? 4096 : 1024);
  if (tokens == 0) tokens = seq * (shape == "llama7b" ? 16 : 256);

  std::vector<int32_t> ids(tokens);
  at::Tensor random_ids = at::randint(c.vocab_size, {tokens}, at::kLong);
  for (int64_t i = 0; i < tokens; ++i) ids[i] = static_cast<int32_t>(random_ids[i].item<int64_t>());

  for (absl::string_view b : absl::StrSplit(batches, ',')) {
    int64_t batch = 0;
    if (!absl::SimpleAtoi(b, &batch) || batch < 1) Die(absl::InvalidArgumentError("bad --batch"));
    ex::PerplexityOptions options;
    options.seq_len = seq;
    options.batch_size = batch;
    const ex::RunPlan plan(c.n_layers);
    ResetPeak(device);
    double ppl = 0;
    const double seconds = Timed(device, reps, [&] {
      ppl = OrDie(ex::EvaluatePerplexity(*model, ids, options, std::nullopt, plan)).ppl;
    });
    nlohmann::json line = {{"what", "ppl_eval"},      {"impl", "lesion"},
                           {"model", shape},          {"dtype", std::string(ex::DtypeName(dtype))},
                           {"device", device_name},   {"seq", seq},
                           {"bs", batch},             {"tokens", tokens},
                           {"s", seconds},            {"tok_per_s", static_cast<int64_t>(tokens / seconds)},
                           {"peak_mem_gib", PeakMemoryGiB(device)}, {"ppl", ppl}};
    std::cout << line.dump() << std::endl;
  }
  return 0;
}
