// Fuzzes the config.json parser (model/model_config.h) on the input as text, and
// CheckModelConfigBounds on a ModelConfig filled from the same bytes, as GGUF metadata fills one.
// Every config either check accepts must be safe to size a model by: n_params() must not overflow
// (UBSan aborts on signed overflow), and a parsed config answers Attends for each of its layers.
#include <fuzzer/FuzzedDataProvider.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "model/model_config.h"

namespace {

using lesion::model::ModelConfig;

void ParseText(absl::string_view text) {
  absl::StatusOr<ModelConfig> config = lesion::model::ParseModelConfig(text, "config.json");
  if (!config.ok()) {
    if (config.status().code() != absl::StatusCode::kInvalidArgument) {
      std::fprintf(stderr, "unexpected code: %s\n", config.status().ToString().c_str());
      std::abort();
    }
    return;
  }
  if (absl::Status bounds = lesion::model::CheckModelConfigBounds(*config, "config.json"); !bounds.ok()) {
    std::fprintf(stderr, "a parsed config is out of bounds: %s\n", bounds.ToString().c_str());
    std::abort();
  }
  volatile int64_t n = config->n_params();
  (void)n;
  for (int64_t layer = 0; layer < config->n_layers; ++layer) {
    volatile bool attends = config->Attends(layer, 7, 0);
    (void)attends;
  }
}

// A config with every size taken from the fuzzer, as a GGUF file's metadata would give them.
void CheckBuilt(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  ModelConfig c;
  c.family = static_cast<lesion::model::Family>(in.ConsumeIntegralInRange<int>(0, 9));
  c.n_layers = in.ConsumeIntegral<int64_t>();
  c.d_model = in.ConsumeIntegral<int64_t>();
  c.n_heads = in.ConsumeIntegral<int64_t>();
  c.n_kv_heads = in.ConsumeIntegral<int64_t>();
  c.head_dim = in.ConsumeIntegral<int64_t>();
  c.d_ffn = in.ConsumeIntegral<int64_t>();
  c.vocab_size = in.ConsumeIntegral<int64_t>();
  c.max_position_embeddings = in.ConsumeIntegral<int64_t>();
  c.norm = in.ConsumeBool() ? lesion::model::NormKind::kLayerNorm : lesion::model::NormKind::kRmsNorm;
  c.gated_mlp = in.ConsumeBool();
  c.qkv_bias = in.ConsumeBool();
  c.o_bias = in.ConsumeBool();
  c.mlp_bias = in.ConsumeBool();
  c.tied_embeddings = in.ConsumeBool();
  c.learned_positions = in.ConsumeBool();
  c.position_offset = in.ConsumeIntegral<int64_t>();
  c.block_layout = static_cast<lesion::model::BlockLayout>(in.ConsumeIntegralInRange<int>(0, 2));
  c.qk_norm = static_cast<lesion::model::QkNorm>(in.ConsumeIntegralInRange<int>(0, 2));
  c.pre_norms = in.ConsumeBool();
  c.post_norms = in.ConsumeBool();
  c.lm_head_bias = in.ConsumeBool();
  if (in.ConsumeBool()) {
    c.rope.emplace();
    c.rope->original_max_position_embeddings = in.ConsumeIntegral<int64_t>();
    c.rotary_dim = in.ConsumeIntegral<int64_t>();
  }
  if (absl::Status s = lesion::model::CheckModelConfigBounds(c, "fuzz"); !s.ok()) return;
  volatile int64_t n = c.n_params();
  (void)n;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ParseText(absl::string_view(reinterpret_cast<const char*>(data), size));
  CheckBuilt(data, size);
  return 0;
}
