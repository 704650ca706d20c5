// Renders an experiment result for people (a table) or programs (the JSON form of
// lesion.v1.ExperimentResult). Torch-free and proto-free at this interface, so that the local
// commands, which include LibTorch, can call it; the proto lives in the .cc.
// Thread-safe (no state).
#ifndef LESION_CLIENT_CPP_RESULT_FORMAT_H_
#define LESION_CLIENT_CPP_RESULT_FORMAT_H_

#include <string>
#include <vector>

#include "spec/result.h"
#include "spec/spec.h"

namespace lesion::cli {

// The JSON form (pretty-printed), or a readable report of every measurement the spec asked for.
std::string RenderResult(const result::Experiment& result, const spec::Experiment& spec, bool json);

// A local sweep: the parent's table, or {"parent": ExperimentResult, "variants": [ExperimentResult,
// ...]} in the sweep's order.
std::string RenderSweep(const result::Experiment& parent, const std::vector<result::Experiment>& variants,
                        const spec::Experiment& spec, bool json);

}  // namespace lesion::cli

#endif  // LESION_CLIENT_CPP_RESULT_FORMAT_H_
