// The result of one experiment as plain C++ values, mirroring proto/lesion/v1/result.proto field
// for field (see there for the meaning of each). The runner, which links LibTorch, fills these;
// result_proto.h turns them into the proto and its JSON form in torch-free code, because LibTorch
// bundles protobuf headers of its own that must never meet the generated code.
// Value types; thread-compatible.
#ifndef LESION_SPEC_RESULT_H_
#define LESION_SPEC_RESULT_H_

#include <cstdint>
#include <string>
#include <vector>

namespace lesion::result {

struct Perplexity {
  double ppl = 0;
  double mean_nll = 0;
  int64_t n_tokens = 0;
  int64_t n_windows = 0;
  std::string protocol;
};

struct TopActivation {
  double value = 0;
  int64_t sequence = 0;
  int64_t token = 0;
  int64_t dim = 0;
};

struct SiteStats {
  std::string site;
  std::vector<double> mean_top;
  std::vector<TopActivation> max_top;
  double median = 0;
  double mean_abs = 0;
  int64_t n_windows = 0;
};

struct AttentionSink {
  std::vector<int64_t> layers;
  int64_t n_heads = 0;
  std::vector<double> scores;  // [layers, n_heads], row-major
};

struct TokenProbability {
  int32_t token_id = 0;
  std::string token;
  double mean_probability = 0;
};

struct Tensor {
  std::string name;
  std::vector<int64_t> shape;
  std::string dtype;  // "float32"
  std::string data;   // little-endian bytes
  std::vector<int64_t> positions;
  std::vector<int64_t> lengths;  // windows of unequal lengths: each one's (result.proto)
};

struct MassiveActivation {
  int64_t sequence = 0;
  int64_t token = 0;
  int64_t dim = 0;
  double value = 0;
  double ratio = 0;
};

struct MassiveActivationReport {
  std::string site;
  int64_t count = 0;
  std::vector<MassiveActivation> top;
};

struct SuperWeight {
  int64_t layer = 0;
  int64_t row = 0;
  int64_t col = 0;
  double weight = 0;
  int64_t sequence = 0;
  int64_t token = 0;
  double input_spike = 0;
  double output_spike = 0;
  double input_ratio = 0;
  double output_ratio = 0;
};

struct NormOutlier {
  std::string norm;  // "attn", "mlp", "attn_post", "mlp_post", "q", "k" or "final"
  int64_t layer = -1;
  int64_t channel = 0;
  double gamma = 0;
  double z = 0;
  double median = 0;
};

struct AttentionOutlierKey {
  int64_t layer = 0;
  int64_t head = 0;
  int64_t key_position = 0;
  double mass = 0;
};

struct TokenOutputs {
  int64_t top_k = 0;
  int64_t n_predicted = 0;
  int64_t offset = 0;
  std::vector<int64_t> window;
  std::vector<int32_t> position;
  std::vector<int32_t> target;
  std::vector<double> nll;
  std::vector<int64_t> rank;
  std::vector<int32_t> top_ids;   // [rows, top_k]
  std::vector<double> top_probs;  // [rows, top_k]
};

// One prompt of a prompt set in one pass (result.proto, PromptResult).
struct PromptResult {
  int64_t prompt = 0;
  int64_t length = 0;
  int64_t n_tokens = 0;
  double mean_nll = 0;
  double perplexity = 0;
  double last_token_nll = 0;
  std::vector<double> next_token_probabilities;
  double kl_divergence = 0;
  std::vector<double> max_abs, mean_abs;
};

struct Pass {
  bool has_perplexity = false;
  Perplexity perplexity;
  std::vector<SiteStats> activation_stats;
  bool has_attention_sink = false;
  AttentionSink attention_sink;
  std::vector<TokenProbability> token_probabilities;
  std::vector<Tensor> captures;
  std::vector<MassiveActivationReport> massive_activations;
  bool has_super_weights = false;  // the detector ran (it may have found none)
  std::vector<SuperWeight> super_weights;
  bool has_norm_outliers = false;
  std::vector<NormOutlier> norm_outliers;
  bool has_attention_outliers = false;
  std::vector<AttentionOutlierKey> attention_outliers;
  bool has_token_outputs = false;
  TokenOutputs token_outputs;
  std::vector<PromptResult> prompts;
};

struct RunInfo {
  std::string model;
  std::string architecture;
  std::string dtype;
  std::string device;
  std::string model_fingerprint;
  std::string spec_sha256;
  std::string lesion_version;
  double seconds = 0;
  int64_t forward_passes = 0;
  bool tf32 = false;              // float32 matrix products ran on TF32 tensor cores
  std::string checkpoint_format;  // "safetensors" | "gguf"
  std::string dequantized_from;   // "" unless the checkpoint was quantized (see result.proto)
};

// A sweep's parent: one row per variant (each variant is an experiment of its own).
struct SweepVariant {
  std::string name;           // the variant's name within the sweep, e.g. "L3.H5"
  std::string experiment_id;  // the child experiment on a server; empty for local runs
  bool has_perplexity = false;
  double perplexity = 0;
  double perplexity_delta_pct = 0;  // against the baseline
  bool has_kl_divergence = false;
  double kl_divergence = 0;
};

struct SweepSummary {
  int64_t variants_per_pass = 0;  // as run
  std::vector<SweepVariant> variants;
};

struct Experiment {
  Pass baseline;
  bool baseline_from_cache = false;  // the baseline came from RunControls::cached_baseline
  Pass intervened;                   // empty when observational
  // The spec had no interventions: only the baseline pass ran (result.proto, "observational").
  bool observational = false;
  bool has_kl_divergence = false;
  double kl_divergence = 0;
  RunInfo run;
  bool has_sweep = false;
  SweepSummary sweep;
};

}  // namespace lesion::result

#endif  // LESION_SPEC_RESULT_H_
