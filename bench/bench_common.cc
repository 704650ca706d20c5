#include "bench/bench_common.h"

#include <ATen/Context.h>
#include <sys/resource.h>

#include <cstdlib>
#include <iostream>

#include "experiments/checkpoint_loader.h"
#include "experiments/model_config.h"
#include "experiments/torch_util.h"

namespace lesion::bench {
namespace {

namespace ex = lesion::experiments;

constexpr char kGpt2Small[] = R"({"architectures": ["GPT2LMHeadModel"], "n_layer": 12, "n_embd": 768,
  "n_head": 12, "vocab_size": 50257, "n_positions": 1024})";
constexpr char kLlama7b[] = R"({"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 32,
  "hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32,
  "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 4096})";

}  // namespace

void Die(const absl::Status& status) {
  std::cerr << "lesion benchmark: " << status << "\n";
  std::exit(1);
}

std::unique_ptr<ex::Model> LoadBenchModel(const std::string& shape, const std::string& model_dir, at::Device device,
                                          at::ScalarType dtype) {
  if (!model_dir.empty()) {
    ex::LoadOptions options;
    options.device = device;
    options.dtype = dtype;
    return OrDie(ex::Model::Load(model_dir, options));
  }
  if (shape != "gpt2" && shape != "llama7b") Die(absl::InvalidArgumentError("give --shape gpt2|llama7b or --model DIR"));
  ex::ModelConfig config = OrDie(ex::ParseModelConfig(shape == "gpt2" ? kGpt2Small : kLlama7b, shape));
  ex::Transformer t = OrDie(ex::Transformer::Create(config, OrDie(ex::MakeRandomWeights(config, device, dtype))));
  return OrDie(ex::Model::FromTransformer(shape, std::move(t)));
}

std::vector<int32_t> RandomIds(int64_t n, int64_t vocab) {
  at::Tensor random = at::randint(vocab, {n}, at::kInt).contiguous();
  const int32_t* p = random.data_ptr<int32_t>();
  return std::vector<int32_t>(p, p + n);
}

void Synchronize(at::Device device) {
  ex::SynchronizeDevice(device);
}

double PeakMemoryGiB(at::Device device) {
  if (device.is_cuda()) return static_cast<double>(ex::PeakMemoryBytes(device)) / (1 << 30);
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / (1 << 20);  // ru_maxrss is in KiB
}

void ResetPeak(at::Device device) { ex::ResetPeakMemory(device); }

void AllowTf32() { ex::AllowTf32(); }

}  // namespace lesion::bench
