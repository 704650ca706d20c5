#include "bench/bench_common.h"

#include <ATen/Context.h>
#include <sys/resource.h>

#include <cstdlib>
#include <iostream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "model/checkpoint_loader.h"
#include "model/model_config.h"
#include "model/next_token_ops.h"
#include "model/torch_util.h"

namespace lesion::bench {
namespace {

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

namespace {

std::unique_ptr<model::Model> LoadBenchModel(const std::string& shape, const std::string& model_dir, at::Device device,
                                             at::ScalarType dtype) {
  if (!model_dir.empty()) {
    model::LoadOptions options;
    options.device = device;
    options.dtype = dtype;
    return OrDie(model::Model::Load(model_dir, options));
  }
  if (shape != "gpt2" && shape != "llama7b")
    Die(absl::InvalidArgumentError("give --shape gpt2|llama7b or --model DIR"));
  model::ModelConfig config = OrDie(model::ParseModelConfig(shape == "gpt2" ? kGpt2Small : kLlama7b, shape));
  model::Transformer t =
      OrDie(model::Transformer::Create(config, OrDie(model::MakeRandomWeights(config, device, dtype))));
  return OrDie(model::Model::FromTransformer(shape, std::move(t)));
}

}  // namespace

BenchSetup ParseAndLoad(int argc, char** argv, const std::set<std::string>& own_flags) {
  BenchSetup setup;
  std::string model_dir, device = "cpu", dtype = "float32";
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--tf32") {
      setup.tf32 = true;
      continue;
    }
    if (i + 1 >= argc) Die(absl::InvalidArgumentError(absl::StrCat(flag, " needs a value")));
    const std::string value = argv[++i];
    if (flag == "--shape")
      setup.shape = value;
    else if (flag == "--model")
      model_dir = value;
    else if (flag == "--device")
      device = value;
    else if (flag == "--dtype")
      dtype = value;
    else if (flag == "--seq")
      setup.seq = std::stoll(value);
    else if (own_flags.count(flag))
      setup.flags[flag] = value;
    else
      Die(absl::InvalidArgumentError(absl::StrCat("unknown flag ", flag)));
  }
  if (setup.tf32) AllowTf32();
  setup.device = OrDie(model::ParseDevice(device));
  setup.dtype = OrDie(model::ParseDtype(dtype));
  at::manual_seed(0);
  setup.model = LoadBenchModel(setup.shape, model_dir, setup.device, setup.dtype);
  if (!model_dir.empty()) setup.shape = model_dir;
  if (setup.seq == 0) {
    setup.seq =
        std::min<int64_t>(setup.model->config().max_position_embeddings, setup.shape == "llama7b" ? 4096 : 1024);
  }
  return setup;
}

nlohmann::json ResultLine(const BenchSetup& setup, const std::string& what) {
  return {{"what", what},
          {"impl", "lesion"},
          {"model", setup.shape},
          {"dtype", std::string(model::DtypeName(setup.dtype))},
          {"tf32", setup.tf32},
          {"fused_kernels", model::HasFusedCudaKernels()},
          {"device", setup.device.str()},
          {"seq", setup.seq}};
}

int64_t IntFlag(const BenchSetup& setup, const std::string& name, int64_t fallback) {
  auto it = setup.flags.find(name);
  if (it == setup.flags.end()) return fallback;
  int64_t value = 0;
  if (!absl::SimpleAtoi(it->second, &value)) Die(absl::InvalidArgumentError(absl::StrCat(name, ": not an integer")));
  return value;
}

std::vector<int32_t> RandomIds(int64_t n, int64_t vocab) {
  at::Tensor random = at::randint(vocab, {n}, at::kInt).contiguous();
  const int32_t* p = random.data_ptr<int32_t>();
  return std::vector<int32_t>(p, p + n);
}

void Synchronize(at::Device device) { model::SynchronizeDevice(device); }

double PeakMemoryGiB(at::Device device) {
  if (device.is_cuda()) return static_cast<double>(model::PeakMemoryBytes(device)) / (1 << 30);
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / (1 << 20);  // ru_maxrss is in KiB
}

void ResetPeak(at::Device device) { model::ResetPeakMemory(device); }

void AllowTf32() { model::AllowTf32(); }

}  // namespace lesion::bench
