// The `lesion` subcommands that talk to a lesiond server: models, run (without --local), submit,
// watch, show, cancel, ls, status. Torch-free (they include gRPC and protobuf headers; the local commands
// include LibTorch, so the two never share a translation unit).
//
// Every command reads the connection flags: --server ADDR (else $LESION_SERVER, else
// 127.0.0.1:50051), --token T (else $LESION_TOKEN), --user U (else $LESION_USER) and
// --timeout SECONDS (the deadline of every call, default 60; for run and watch also the bound on
// the wait for the experiment, default 24 h). Results go to stdout; progress and counts to stderr.
// Errors are the server's status, code for code; each command returns it and main prints it.
// Thread-compatible.
#ifndef LESION_CLIENT_CPP_REMOTE_COMMANDS_H_
#define LESION_CLIENT_CPP_REMOTE_COMMANDS_H_

#include "absl/status/status.h"
#include "client/cpp/cli_args.h"

namespace lesion::cli {

absl::Status RunModels(Args& args);            // lesion models [--json|--csv]
absl::Status RunRemoteExperiment(Args& args);  // lesion run SPEC.json [--model NAME] [--json]
absl::Status RunSubmit(Args& args);            // lesion submit SPEC.json [--model NAME] [--json]
absl::Status RunWatch(Args& args);             // lesion watch ID [--json]
absl::Status RunShow(Args& args);              // lesion show ID [--json]
absl::Status RunCancel(Args& args);            // lesion cancel ID [--json]
absl::Status RunList(Args& args);              // lesion ls [--where Q] [--order-by O] [--limit N] ...
absl::Status RunStatus(Args& args);            // lesion status [--json]
absl::Status RunRemove(Args& args);            // lesion rm --where Q [--dry-run] [--json]
absl::Status RunGc(Args& args);                // lesion gc --where Q [--dry-run] [--json]

// A mistake of the caller's (a bad spec or query, an unknown id or model): exit status 2, not 1.
bool IsRemoteUserError(const absl::Status& status);

}  // namespace lesion::cli

#endif  // LESION_CLIENT_CPP_REMOTE_COMMANDS_H_
