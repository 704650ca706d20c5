// Model references: what `--model` (CLI), `lesiond --model NAME=REF` and the LoadModel RPC accept,
// turned into the path the checkpoint loader reads. A reference is
//
//   - an existing path (a model directory, or a .gguf file): used as given, always first, so a
//     directory called "org/name" under the working directory stays a directory;
//   - `org/name[@revision][/PATH]`: a model in the local Hugging Face hub cache, found the way
//     transformers finds it with local_files_only=True. Nothing is ever downloaded.
//
//   ASSIGN_OR_RETURN(std::filesystem::path dir, ResolveModelPath("openai-community/gpt2"));
//   // -> ~/.cache/huggingface/hub/models--openai-community--gpt2/snapshots/<commit>
//
// In the cache (HuggingFaceHubCache()), the repository folder is `models--{org}--{name}`. The
// revision defaults to "main"; a 40-hex commit hash names snapshots/<hash> directly, anything else
// (a branch or tag; it may contain '/') is looked up in refs/<revision>, a file holding the commit
// hash. Within snapshots/<hash>/ (or the directory PATH names in it): a directory with config.json
// is the model; otherwise the single GGUF checkpoint below it is (one *.gguf file, or the first of
// a split set NAME-00001-of-0000N.gguf). PATH may also name a file in the snapshot
// (`org/name@v1/model-Q4_K_M.gguf`). With '@', the revision is the longest leading part of
// what follows that the cache knows (so `org/name@some/branch/FILE.gguf` works), the rest is PATH.
//
// Thread-compatible (no state; reads the environment, see HuggingFaceHubCache).
#ifndef LESION_COMMON_MODEL_PATH_H_
#define LESION_COMMON_MODEL_PATH_H_

#include <filesystem>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lesion {

// The hub cache directory, with huggingface_hub's precedence (constants.py): $HF_HUB_CACHE, else
// $HUGGINGFACE_HUB_CACHE (its legacy name), else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub,
// else ~/.cache/huggingface/hub. A leading ~ and $VAR / ${VAR} are expanded as Python's
// expanduser + expandvars do (unknown variables stay as written). Unlike huggingface_hub, a
// variable set to the empty string counts as unset.
std::filesystem::path HuggingFaceHubCache();

// Resolves `reference` (above) against HuggingFaceHubCache(). Returns the existing path as given,
// or the path in the cache: the snapshot directory, or the file in it (its name as in the
// repository, e.g. ending in .gguf; not the blob the cache's symlink points to). A reference that
// is neither an existing path nor of the form org/name... (an absolute path, one starting with '.'
// or '~', or one without '/') is returned unchanged: the loader reports it missing as usual.
//   InvalidArgument: an empty reference; an invalid repo id (characters other than letters,
//     digits, '-', '_', '.'; a part starting or ending with '-' or '.'; "--" or ".."; longer
//     than 96); an empty revision; ".", ".." or empty parts in the revision or PATH; a snapshot
//     holding several GGUF checkpoints and no config.json (the message lists them and says to name
//     one as org/name[@revision]/FILE.gguf).
//   NotFound: the model, revision, snapshot or PATH is not in the cache; the message names the
//     cache directory searched and the folder or file that is missing.
//   FailedPrecondition: a refs/ file that does not hold a commit hash (a damaged cache).
absl::StatusOr<std::filesystem::path> ResolveModelPath(absl::string_view reference);

// The same against the given cache directory instead of the environment's.
absl::StatusOr<std::filesystem::path> ResolveModelPath(absl::string_view reference,
                                                       const std::filesystem::path& hub_cache);

}  // namespace lesion

#endif  // LESION_COMMON_MODEL_PATH_H_
