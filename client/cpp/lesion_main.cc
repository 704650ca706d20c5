// lesion: the command-line entry of the lesion experiment server. Local subcommands run a model
// in-process with no server.
#include <iostream>
#include <set>
#include <string>

#include "absl/status/status.h"
#include "client/cpp/cli_args.h"
#include "client/cpp/local_commands.h"

namespace {

constexpr char kUsage[] = R"(lesion: ablation and intervention experiments on transformer language models

Local commands (no server):
  lesion inspect  --model DIR [--json]
      Architecture, layers, heads, dims, parameter count and dtype of a Hugging Face model dir.
  lesion tokenize --model DIR [--text T | --text-file F] [--add-bos] [--decode]
      Text (stdin by default) to token ids as JSON; with --decode, ids JSON to text.
  lesion dump     --model DIR (--text T | --text-file F | --ids-json FILE) --sites S1,S2,...
                  --out FILE.safetensors [--add-bos] [--dtype D] [--device DEV]
      Run one forward pass and save the activations at hook sites (float32, named by site;
      blocks.*.resid_post selects every layer). Sites: embed, final_norm, logits,
      blocks.L.{attn_in,attn_z,attn_pattern,attn_out,resid_mid,mlp_in,mlp_act,mlp_out,resid_post}.
  lesion perplexity --model DIR (--text T | --text-file F | --ids-json FILE) [--seq-len N]
                  [--stride S] [--add-bos] [--batch-size B] [--max-windows W] [--json]
                  [--dtype D] [--device DEV]
      Perplexity over non-overlapping windows (or sliding ones with --stride; --add-bos puts BOS
      at the start of every window).
  lesion generate --model DIR [--prompt T] [--max-tokens N] [--json] [--dtype D] [--device DEV]
      Greedy continuation from BOS + prompt.
  lesion run --local --model DIR --spec SPEC.json [--json] [--dtype D] [--device DEV]
      Run an experiment spec in-process: baseline and intervened passes with the measurements
      (docs/spec.md; examples in experiments/examples/).
  lesion convert-llama2c --checkpoint X.bin --tokenizer tokenizer.bin --out DIR
      Convert a llama2.c checkpoint into a Hugging Face LLaMA directory.

Dtypes: float32, bfloat16, float16 (default: the checkpoint's). Devices: cpu, cuda, cuda:N.
)";

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "help" ||
      std::string(argv[1]) == "-h") {
    std::cout << kUsage;
    return argc < 2 ? 2 : 0;
  }
  const std::string command = argv[1];
  const std::set<std::string> boolean_flags = {"json", "add-bos", "decode", "local"};
  absl::StatusOr<lesion::cli::Args> args = lesion::cli::Args::Parse(argc, argv, 2, boolean_flags);
  absl::Status status;
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
    status = lesion::cli::RunLocalExperiment(*args);
  } else if (command == "convert-llama2c") {
    status = lesion::cli::RunConvertLlama2c(*args);
  } else {
    std::cerr << "lesion: unknown command \"" << command << "\"\n\n" << kUsage;
    return 2;
  }
  if (!status.ok()) {
    std::cerr << "lesion " << command << ": error: " << status.message() << " ["
              << absl::StatusCodeToString(status.code()) << "]\n";
    return absl::IsInvalidArgument(status) ? 2 : 1;
  }
  return 0;
}
