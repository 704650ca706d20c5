// Checkpoint load benchmark: the wall time of Model::Load (open, dequantize, place on the device,
// fingerprint) and the peak memory of the process, for a model directory or a GGUF file. One load
// per process, so that the peak RSS is the load's own.
//
//   lesion_bench_load --model SmolLM2-135M-Instruct.Q4_1.gguf [--dtype float32] [--device cpu]
//
// Prints one JSON line: {"what": "load", "model", "format", "dequantized_from", "dtype", "device",
// "seconds", "peak_memory_gib" (RSS on the CPU, device memory on CUDA), "weight_gib",
// "rss_before_gib"}.
#include <chrono>
#include <iostream>
#include <string>

#include "bench/bench_common.h"
#include "model/model.h"
#include "model/torch_util.h"
#include "model/weight_addressing.h"
#include "nlohmann/json.hpp"

namespace model = ::lesion::model;
namespace bench = lesion::bench;

int main(int argc, char** argv) {
  std::string model_path;
  model::LoadOptions options;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) bench::Die(absl::InvalidArgumentError(flag + " needs a value"));
    const std::string value = argv[++i];
    if (flag == "--model") {
      model_path = value;
    } else if (flag == "--dtype") {
      options.dtype = bench::OrDie(model::ParseDtype(value));
    } else if (flag == "--device") {
      options.device = bench::OrDie(model::ParseDevice(value));
    } else {
      bench::Die(absl::InvalidArgumentError("unknown flag " + flag + " (flags: --model, --dtype, --device)"));
    }
  }
  if (model_path.empty()) bench::Die(absl::InvalidArgumentError("--model PATH is required"));
  const double rss_before = bench::PeakMemoryGiB(at::kCPU);
  const auto start = std::chrono::steady_clock::now();
  std::unique_ptr<model::Model> model = bench::OrDie(model::Model::Load(model_path, options));
  bench::Synchronize(options.device);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  double weight_bytes = 0;
  for (const at::Tensor* t : model::WeightTensors(model->transformer())) {
    if (t->defined()) weight_bytes += static_cast<double>(t->nbytes());
  }
  nlohmann::json line = {{"what", "load"},
                         {"model", model_path},
                         {"format", model->checkpoint_format()},
                         {"dequantized_from", model->dequantized_from()},
                         {"dtype", std::string(model::DtypeName(model->transformer().dtype()))},
                         {"device", options.device.str()},
                         {"seconds", seconds},
                         {"peak_memory_gib", bench::PeakMemoryGiB(options.device)},
                         {"rss_before_gib", rss_before},
                         {"weight_gib", weight_bytes / (1 << 30)}};
  std::cout << line.dump() << std::endl;
  return 0;
}
