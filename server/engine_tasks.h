// What an executor runs on one replica: a single experiment, one shard of a sweep, or a generation
// (engine.h's Job), through the experiment runner of experiments/. Called on the executor thread.
#ifndef LESION_SERVER_ENGINE_TASKS_H_
#define LESION_SERVER_ENGINE_TASKS_H_

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "experiments/runner.h"
#include "model/generation.h"
#include "model/model.h"
#include "server/device_executors.h"
#include "server/engine.h"
#include "spec/result.h"

namespace lesion::server {

// Runs `task` on its replica. `executor` names the executor in each sweep variant's run.device;
// `cancelled` is asked before every forward pass. The result names the model as the server does
// (job.model).
absl::StatusOr<result::Experiment> RunEngineTask(Task& task, const std::string& executor,
                                                 const std::function<bool()>& cancelled,
                                                 const std::filesystem::path& data_dir,
                                                 const experiments::RunLimits& limits);

// The prompt of a generation: its ids, or BOS and its text tokenized.
absl::StatusOr<std::vector<int32_t>> GenerationPrompt(const model::Model& model, const GenerationJob& generation);
model::GenerationOptions GenerationOptionsOf(const model::Model& model, const GenerationJob& generation);

}  // namespace lesion::server

#endif  // LESION_SERVER_ENGINE_TASKS_H_
