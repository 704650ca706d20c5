// Renders an experiment result for people (a table) or programs (the JSON form of
// lesion.v1.ExperimentResult). Torch-free and proto-free at this interface, so that the local
// commands, which include LibTorch, can call it; the proto lives in the .cc.
// Thread-safe (no state).
#ifndef LESION_CLIENT_CPP_RESULT_FORMAT_H_
#define LESION_CLIENT_CPP_RESULT_FORMAT_H_

#include <string>
#include <vector>

#include "experiments/spec/result.h"
#include "experiments/spec/spec.h"

namespace lesion::cli {

// The JSON form (pretty-printed), or a readable report of every measurement the spec asked for.
std::string RenderResult(const experiments::result::Experiment& result, const experiments::spec::Experiment& spec,
                         bool json);

// A local sweep: the parent's table, or {"parent": ExperimentResult, "variants": [ExperimentResult,
// ...]} in the sweep's order.
std::string RenderSweep(const experiments::result::Experiment& parent,
                        const std::vector<experiments::result::Experiment>& variants,
                        const experiments::spec::Experiment& spec, bool json);

}  // namespace lesion::cli

#endif  // LESION_CLIENT_CPP_RESULT_FORMAT_H_
