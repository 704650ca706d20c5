// The proto-taking form of result_format.h: renders a lesion.v1.ExperimentResult (as the server
// returns it) for people or programs. The local path renders through this too. Includes protobuf
// headers, so only torch-free code may include it (never next to model/ or experiments/ headers).
// Thread-safe (no state).
#ifndef LESION_CLIENT_CPP_RESULT_FORMAT_PROTO_H_
#define LESION_CLIENT_CPP_RESULT_FORMAT_PROTO_H_

#include <string>

#include "proto/lesion/v1/experiment.pb.h"
#include "proto/lesion/v1/result.pb.h"

namespace lesion::cli {

// The JSON form of `result` (pretty-printed, every field), or a readable report of every
// measurement `spec` asked for (its name and intervention count head the report).
std::string RenderResult(const lesion::v1::ExperimentResult& result, const lesion::v1::ExperimentSpec& spec, bool json);

}  // namespace lesion::cli

#endif  // LESION_CLIENT_CPP_RESULT_FORMAT_PROTO_H_
