// lesion: the command-line entry of the lesion experiment server. Local subcommands run a model
// in-process with no server; remote ones talk to lesiond. Only plain headers here: the local
// commands include LibTorch and the remote ones gRPC, each in its own translation unit.
#include <iostream>
#include <set>
#include <string>

#include "absl/status/status.h"
#include "client/cpp/cli_args.h"
#include "client/cpp/local_commands.h"
#include "client/cpp/remote_commands.h"

namespace {

constexpr char kUsage[] = R"(lesion: ablation and intervention experiments on transformer language models

Server commands (a lesiond; docs/server.md):
  lesion models   [--json | --csv]
      The models the server holds: name, architecture, layers, heads, d_model, dtype, device, memory.
  lesion run      SPEC.json [--model NAME] [--json]
      Submit an experiment spec, show its progress on stderr, then print the result table (--json:
      the experiment record). --model overrides the spec's "model". Cancelled if --timeout passes.
  lesion submit   SPEC.json [--model NAME] [--json]
      Queue it and print its id (--json: the queued record).
  lesion watch    ID [--json]
      Follow an experiment with the progress bar, then print its result.
  lesion show     ID [--json]
      An experiment's state and, when done, its result.
  lesion cancel   ID [--json]
      Cancel a queued or running experiment (yours, or any as an admin).
  lesion ls       [--where Q] [--order-by O] [--limit N] [--offset N] [--json | --csv]
      Experiments matching a query (docs/queries.md), e.g. --where 'model = "gpt2" AND
      metric.perplexity.delta_pct > 1' --order-by 'created desc'. The total count goes to stderr.
  lesion rm       --where Q [--dry-run] [--json]
      Admin: delete the finished experiments matching Q (a sweep's variants with their parent)
      and reclaim their space; queued and running ones are skipped. --dry-run only counts.
  lesion gc       --where Q [--dry-run] [--json]
      Admin: drop the captured tensors' bytes of the finished experiments matching Q, keeping
      everything else. --dry-run only counts.
  lesion status   [--json]
      The server at a glance: version, uptime, models, each device's queue and memory,
      experiments by state, baseline-cache and database size.
  Connection flags of every server command:
      --server ADDR   (else $LESION_SERVER, else 127.0.0.1:50051; host:port or unix:PATH)
      --token T       (else $LESION_TOKEN; servers with a tokens file)
      --user U        (else $LESION_USER; servers without one)
      --tls           TLS, trusting the system's root certificates
      --tls-ca FILE   (else $LESION_TLS_CA) TLS, trusting the PEM certificate(s) in FILE: the
                      lab's CA, or the server's own self-signed certificate
      --timeout SECS  deadline of each call (default 60); for run and watch also of the wait
                      for the experiment (default 24 h)
  Exit status: 0, 2 for a mistake of the caller's (INVALID_ARGUMENT, NOT_FOUND), 1 otherwise; the
  error line names the server's status code.

Local commands (no server). MODEL is a Hugging Face model directory (config.json + safetensors),
a GGUF file (quantized weights are dequantized to float32 at load), or org/name[@revision] in the
local Hugging Face cache (never downloaded):
  lesion inspect  --model MODEL [--json] [--tensors]
      Architecture, layers, heads, dims, parameter count and dtype; with --tensors (always in
      --json) every tensor with the type it is stored in (F32, BF16, Q4_1, ...).
  lesion tokenize --model MODEL [--text T | --text-file F] [--add-bos] [--decode]
      Text (stdin by default) to token ids as JSON; with --decode, ids JSON to text.
  lesion dump     --model MODEL (--text T | --text-file F | --ids-json FILE | --prompts-json FILE)
                  --sites S1,S2,... --out FILE.safetensors [--add-bos] [--dtype D] [--device DEV]
      Run one forward pass and save the activations at hook sites (float32, named by site;
      blocks.*.resid_post selects every layer). Sites: embed, final_norm, logits,
      blocks.L.{attn_in,attn_z,attn_pattern,attn_out,resid_mid,mlp_in,mlp_act,mlp_out,resid_post}.
      --prompts-json: a JSON list of prompts (texts or lists of ids) of any lengths, each site
      [prompts, positions, ...] zero-padded past each prompt's length, the lengths (BOS included)
      in the tensor "lengths" (Client.cache from the shell; at most 256 MiB of activations).
  lesion perplexity --model MODEL (--text T | --text-file F | --ids-json FILE) [--seq-len N]
                  [--stride S] [--add-bos] [--batch-size B] [--max-windows W] [--json]
                  [--dtype D] [--device DEV]
      Perplexity over non-overlapping windows (or sliding ones with --stride; --add-bos puts BOS
      at the start of every window).
  lesion generate --model MODEL [--prompt T | --ids-json FILE] [--max-tokens N] [--temperature X]
                  [--top-k K] [--seed S] [--spec SPEC.json [--no-baseline]] [--json] [--dtype D]
                  [--device DEV]
      Continue BOS + prompt (or the ids as given): greedy, or sampled at --temperature (from the
      top K) with a seed; through a KV cache. With --spec, the spec's interventions apply at every
      step, and the baseline and intervened continuations are printed side by side.
  lesion run --local --model MODEL --spec SPEC.json [--json] [--dtype D] [--device DEV]
      Run an experiment spec in-process: baseline and intervened passes with the measurements
      (docs/spec.md; examples in experiments/examples/).
  lesion convert-llama2c --checkpoint X.bin --tokenizer tokenizer.bin --out DIR
      Convert a llama2.c checkpoint into a Hugging Face LLaMA directory.

Dtypes: float32, bfloat16, float16 (default: the checkpoint's; float32 for GGUF). Devices: cpu, cuda, cuda:N.
)";

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "help" || std::string(argv[1]) == "-h") {
    std::cout << kUsage;
    return argc < 2 ? 2 : 0;
  }
  const std::string command = argv[1];
  const std::set<std::string> boolean_flags = {"json",    "csv", "add-bos", "decode",     "local",
                                               "tensors", "tls", "dry-run", "no-baseline"};
  absl::StatusOr<lesion::cli::Args> args = lesion::cli::Args::Parse(argc, argv, 2, boolean_flags);
  absl::Status status;
  bool remote = false;
  if (!args.ok()) {
    status = args.status();
  } else if (command == "inspect") {
    status = lesion::cli::RunInspect(*args);
  } else if (command == "tokenize") {
    status = lesion::cli::RunTokenize(*args);
  } else if (command == "dump") {
    status = lesion::cli::RunDump(*args);
  } else if (command == "perplexity") {
    status = lesion::cli::RunPerplexity(*args);
  } else if (command == "generate") {
    status = lesion::cli::RunGenerate(*args);
  } else if (command == "run") {
    if (args->Flag("local")) {
      status = lesion::cli::RunLocalExperiment(*args);
    } else {
      remote = true;
      status = lesion::cli::RunRemoteExperiment(*args);
    }
  } else if (command == "models" || command == "submit" || command == "watch" || command == "show" ||
             command == "cancel" || command == "ls" || command == "status" || command == "rm" || command == "gc") {
    remote = true;
    status = command == "models"   ? lesion::cli::RunModels(*args)
             : command == "submit" ? lesion::cli::RunSubmit(*args)
             : command == "watch"  ? lesion::cli::RunWatch(*args)
             : command == "show"   ? lesion::cli::RunShow(*args)
             : command == "cancel" ? lesion::cli::RunCancel(*args)
             : command == "status" ? lesion::cli::RunStatus(*args)
             : command == "rm"     ? lesion::cli::RunRemove(*args)
             : command == "gc"     ? lesion::cli::RunGc(*args)
                                   : lesion::cli::RunList(*args);
  } else if (command == "convert-llama2c") {
    status = lesion::cli::RunConvertLlama2c(*args);
  } else {
    std::cerr << "lesion: unknown command \"" << command << "\"\n\n" << kUsage;
    return 2;
  }
  if (!status.ok()) {
    std::cerr << "lesion " << command << ": error: " << status.message() << " ["
              << absl::StatusCodeToString(status.code()) << "]\n";
    if (remote) return lesion::cli::IsRemoteUserError(status) ? 2 : 1;
    return absl::IsInvalidArgument(status) ? 2 : 1;
  }
  return 0;
}
