// The `lesion` subcommands that run a model in-process, with no server: inspect, tokenize, dump,
// perplexity, generate, convert-llama2c. Each returns a status; main prints it and sets the exit
// code. Thread-compatible.
#ifndef LESION_CLIENT_CPP_LOCAL_COMMANDS_H_
#define LESION_CLIENT_CPP_LOCAL_COMMANDS_H_

#include "absl/status/status.h"
#include "client/cpp/cli_args.h"

namespace lesion::cli {

absl::Status RunInspect(Args& args);
absl::Status RunTokenize(Args& args);
absl::Status RunDump(Args& args);
absl::Status RunPerplexity(Args& args);
absl::Status RunGenerate(Args& args);
absl::Status RunConvertLlama2c(Args& args);
absl::Status RunLocalExperiment(Args& args);

}  // namespace lesion::cli

#endif  // LESION_CLIENT_CPP_LOCAL_COMMANDS_H_
