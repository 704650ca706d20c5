// The experiment result (result.h) as a lesion.v1.ExperimentResult and as its JSON form, with the
// scalar metrics derived from the measurements (the names result.proto lists). Torch-free.
// Thread-safe (no state).
#ifndef LESION_SPEC_RESULT_PROTO_H_
#define LESION_SPEC_RESULT_PROTO_H_

#include <string>

#include "absl/strings/string_view.h"
#include "proto/lesion/v1/result.pb.h"
#include "spec/result.h"

namespace lesion::result {

// Both passes, the KL divergence, the run info and the derived metrics, with a warning for every
// metric (or sweep row) that is not a finite number.
lesion::v1::ExperimentResult ToProto(const Experiment& result);

// The inverse of the pass part of ToProto (a cached baseline read back from the store).
Pass FromProto(const lesion::v1::PassResult& pass);

// proto3 JSON with field names as in result.proto; captured tensor bytes are base64 as proto3 JSON
// has it. Pretty-printed when `indent`.
std::string ToJson(const lesion::v1::ExperimentResult& result, bool indent);

}  // namespace lesion::result

#endif  // LESION_SPEC_RESULT_PROTO_H_
