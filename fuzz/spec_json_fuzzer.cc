// Fuzzes the experiment spec parsers (spec/spec.h): the JSON form that `lesion run`
// reads and the binary protobuf form that lesiond receives, then the expansion of a sweep. Beyond
// "no crash", it checks the promise the baseline cache rests on: a parsed spec's canonical JSON
// parses again to the same hash, and so does each sweep variant's.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "fuzz/quiet_protobuf.h"
#include "spec/spec.h"

namespace {

namespace spec = lesion::spec;

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "%s\n", what.c_str());
  std::abort();
}

void CheckReparses(const spec::Experiment& e) {
  absl::StatusOr<spec::Experiment> again = spec::ParseExperimentJson(e.canonical_json);
  if (!again.ok()) Die("canonical JSON does not parse again: " + again.status().ToString() + "\n" + e.canonical_json);
  if (again->spec_sha256 != e.spec_sha256 || again->canonical_json != e.canonical_json) {
    Die("canonical JSON is not a fixed point:\n" + e.canonical_json + "\n" + again->canonical_json);
  }
}

void Check(const absl::StatusOr<spec::Experiment>& e) {
  if (!e.ok()) {
    if (e.status().code() != absl::StatusCode::kInvalidArgument) Die("unexpected code: " + e.status().ToString());
    return;
  }
  CheckReparses(*e);
  if (!e->has_sweep) return;
  // A small model, and caps that keep one input's work bounded.
  const spec::ModelShape shape{.n_layers = 4, .n_heads = 4, .d_model = 16};
  absl::StatusOr<std::vector<spec::Experiment>> variants =
      spec::ExpandSweep(*e, shape, /*max_variants=*/64, /*max_spec_bytes=*/1 << 20);
  if (!variants.ok()) return;
  for (const spec::Experiment& v : *variants) CheckReparses(v);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  lesion::fuzz::QuietProtobuf();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view input(reinterpret_cast<const char*>(data), size);
  Check(spec::ParseExperimentJson(input));
  Check(spec::ParseExperimentProto(input));
  return 0;
}
