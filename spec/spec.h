// The experiment spec (proto/lesion/v1/experiment.proto) parsed from its JSON form into plain C++
// values for the runner, which must not include protobuf headers (LibTorch ships its own).
// Structural checks happen here (known enum values, one dataset source, non-negative sizes);
// checks against a model's shapes happen in the runner before any compute.
// Thread-compatible value types.
#ifndef LESION_SPEC_SPEC_H_
#define LESION_SPEC_SPEC_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lesion::spec {

struct HeadAblation {
  enum class Mode { kZero, kMean, kScale };
  int64_t layer = 0;
  std::vector<int64_t> heads;
  Mode mode = Mode::kZero;
  double factor = 0;
};
struct WeightEdit {
  enum class Op { kZero, kScale, kSet };
  int64_t layer = 0;
  std::string module;
  int64_t row = 0, col = 0;
  Op op = Op::kZero;
  double value = 0;
};
struct NormChannelReset {
  enum class Mode { kOne, kGammaMean, kValue };
  int64_t layer = 0;
  std::string norm;
  std::vector<int64_t> channels;
  Mode mode = Mode::kOne;
  double value = 0;
};
struct AttentionBias {
  int64_t layer = 0;
  std::vector<float> key, value;
};
struct ActivationEdit {
  enum class Op { kZero, kSet, kScale, kMean, kAdd, kProjectOut, kSetVectors };
  std::string site;
  std::vector<int64_t> positions, dims;
  Op op = Op::kZero;
  double value = 0;
  std::vector<float> vector;  // kAdd, kProjectOut, kSetVectors (experiments/interventions.h)
};
using Intervention = std::variant<HeadAblation, WeightEdit, NormChannelReset, AttentionBias, ActivationEdit>;

struct Perplexity {};
struct ActivationStats {
  std::vector<std::string> sites;
  int64_t top_k = 3;
};
struct AttentionSink {
  std::vector<int64_t> layers;
};
struct TokenProbabilities {
  std::vector<int32_t> token_ids;
  std::vector<std::string> tokens;  // each must encode to exactly one token (checked by the runner)
};
struct KlDivergence {};
struct Capture {
  std::vector<std::string> sites;
  std::vector<int64_t> positions;  // empty: all
  int64_t max_windows = 1;
};
// Defaults of the detectors are filled in by the parser (documented in experiment.proto).
struct MassiveActivations {
  std::vector<std::string> sites;  // default: blocks.*.resid_post
  double min_magnitude = 100;
  double min_ratio = 1000;
  int64_t max_reports = 20;
};
struct SuperWeights {
  double min_ratio = 100;
  double min_magnitude = 0;
};
struct NormOutliers {
  double min_z = 8;
  int64_t max_reports = 10;
};
struct AttentionOutliers {
  std::vector<int64_t> layers;  // empty: all
  double min_mass = 0.3;
  int64_t max_reports = 50;
};
struct TokenOutputs {
  int64_t top_k = 5;
  int64_t max_tokens = 4096;
  int64_t offset = 0;
};
inline constexpr int64_t kMaxTokenOutputsTopK = 100;
inline constexpr int64_t kMaxTokenOutputsTokens = 65536;
using Measurement = std::variant<Perplexity, ActivationStats, AttentionSink, TokenProbabilities, KlDivergence, Capture,
                                 MassiveActivations, SuperWeights, NormOutliers, AttentionOutliers, TokenOutputs>;

// One prompt of a prompt set: text (tokenized by the model's tokenizer) or token ids.
struct Prompt {
  std::string text;
  std::vector<int32_t> token_ids;
};

struct Experiment {
  std::string name;
  std::vector<std::string> tags;
  std::string model;
  // Exactly one of: text, token ids, a named dataset, a prompt set.
  std::string text;
  std::vector<int32_t> token_ids;
  std::string named_dataset;
  std::vector<Prompt> prompts;
  int64_t seq_len = 0;  // 0: default
  int64_t stride = 0;
  int64_t max_windows = 0;
  int64_t batch_size = 0;
  bool add_bos = false;
  std::vector<Intervention> interventions;
  std::vector<Measurement> measurements;
  std::string canonical_json;  // the spec as protobuf's JSON printer writes it
  std::string spec_sha256;     // hex SHA-256 of canonical_json
  // Hex SHA-256 of what the baseline pass depends on: dataset, eval config and measurements (the
  // canonical JSON without name, tags, model and interventions). With the model's fingerprint it
  // keys the baseline cache.
  std::string baseline_sha256;

  // A sweep's parent (the spec has a sweep): its variants come from ExpandSweep.
  bool has_sweep = false;
  int64_t variants_per_pass = 0;  // 0: from the runner's token budget
  // A sweep's child: the variant's name within the sweep ("L3.H5"); empty otherwise.
  std::string variant_name;
};

// Limits of a spec, checked by the parsers. Names and tags are stored with every experiment.
inline constexpr size_t kMaxNameBytes = 256;
inline constexpr int kMaxTags = 64;
inline constexpr size_t kMaxTagBytes = 128;
// Prompts of a prompt set (each one is a window, with a row per pass in the result).
inline constexpr int kMaxPrompts = 16384;
// The numbers of interventions (factor, value, attention-bias key and value, swept values) must be
// finite and at most this in magnitude: the forward pass computes in float32 (or narrower), where
// larger numbers overflow once multiplied and summed, and the run would end with a NaN perplexity.
// The runner also refuses numbers that are not finite in the model's dtype (float16: 65504).
inline constexpr double kMaxInterventionMagnitude = 1e15;

// What a sweep's expansion needs to know of the model ("every layer", "every head", ...).
struct ModelShape {
  int64_t n_layers = 0;
  int64_t n_heads = 0;
  int64_t d_model = 0;
};

// Hex SHA-256 of `bytes`.
std::string Sha256Hex(absl::string_view bytes);

// Parses the JSON form. InvalidArgument with the parser's or the check's message naming the field
// (e.g. "interventions[1].head_ablation: no heads"): among others for an enum number that names no
// value (proto3 enums are open: "mode": 99 parses), a number beyond kMaxInterventionMagnitude or
// not finite, a name, tag list or tag beyond the limits above. Messages quote at most 80
// characters of a string from the spec.
absl::StatusOr<Experiment> ParseExperimentJson(absl::string_view json);

// The same from the binary protobuf form (a serialized lesion.v1.ExperimentSpec), as the server
// receives it. InvalidArgument if the bytes do not parse or a check fails.
absl::StatusOr<Experiment> ParseExperimentProto(absl::string_view serialized);

// A sweep's variants as experiments of their own, in the sweep's order: the parent's spec without
// its sweep, with the variant's interventions after the parent's, named "<parent name>/<variant>"
// (just the variant's name when the parent has none). Each is canonicalised and hashed exactly as
// if it had been submitted alone, so a variant reruns alone from its own spec. InvalidArgument
// naming the axis for a layer, head or channel outside `shape`, an empty axis, a bad norm or op,
// more than `max_variants` variants, or (when `max_spec_bytes` > 0) variants whose specs would
// take more than that many bytes together, checked before any is built; FailedPrecondition if
// `parent` has no sweep.
absl::StatusOr<std::vector<Experiment>> ExpandSweep(const Experiment& parent, const ModelShape& shape,
                                                    int64_t max_variants, int64_t max_spec_bytes = 0);

}  // namespace lesion::spec

#endif  // LESION_SPEC_SPEC_H_
