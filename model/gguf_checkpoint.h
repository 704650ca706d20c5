// GGUF checkpoints (llama.cpp's single-file format) as lesion models, read the way Hugging Face
// transformers' GGUF loader reads them, so that both run the same model:
//   - the metadata becomes the config.json it stands for (GgufConfigJson), parsed by the same
//     ParseModelConfig as a Hugging Face directory's;
//   - the tokenizer.ggml.* keys become the tokenizer (LoadGgufTokenizer);
//   - the tensors are renamed to the Hugging Face layout, dequantized to float32 bit for bit as
//     the `gguf` Python package does, with llama.cpp's rotary row permutation of q/k undone
//     (llama only), GPT-2's matrices given back their Conv1D [in, out] layout and GPT-NeoX's
//     query_key_value its per-head interleaving. Gemma's norms, which llama.cpp stores as the
//     effective gamma 1 + w, load as stored (GgufModelConfig clears norm_adds_one).
// Settings a file does not carry are what llama.cpp assumes (docs/architectures.md, "GGUF").
//
// Architectures (general.architecture): llama (LLaMA, Mistral, SmolLM), qwen2, qwen3, phi3, gemma2,
// gemma3, olmo2, gptneox (Pythia), gpt2.
//
// Thread-safety: the functions are thread-safe; the CheckpointTensors they return is immutable.
#ifndef LESION_MODEL_GGUF_CHECKPOINT_H_
#define LESION_MODEL_GGUF_CHECKPOINT_H_

#include <filesystem>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "model/checkpoint_tensors.h"
#include "model/gguf/gguf.h"
#include "model/model_config.h"
#include "model/tokenizer/tokenizer.h"

namespace lesion::model {

// Whether `path` names a GGUF checkpoint: a file (not a directory) whose name ends in ".gguf".
bool IsGgufPath(const std::filesystem::path& path);

// The config.json text (a JSON object as transformers would write it) that the file's metadata
// stands for. InvalidArgument naming the file and key for an unsupported architecture or a
// missing or mistyped key.
absl::StatusOr<std::string> GgufConfigJson(const GgufCheckpoint& checkpoint);

// GgufConfigJson parsed by ParseModelConfig, with norm_adds_one cleared: the file's norms are
// already the effective gammas.
absl::StatusOr<ModelConfig> GgufModelConfig(const GgufCheckpoint& checkpoint);

// The tokenizer.ggml.* metadata. InvalidArgument naming the key for a mistyped value; a file
// without a tokenizer gives metadata with no tokens.
absl::StatusOr<GgufTokenizerMetadata> GgufTokenizerMetadataOf(const GgufCheckpoint& checkpoint);

// The file's tokenizer: NotFound if it has no tokenizer.ggml.tokens, else as LoadGgufTokenizer.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadGgufFileTokenizer(const GgufCheckpoint& checkpoint);

// The tensors by Hugging Face name (model.layers.0.self_attn.q_proj.weight, ...); tensors with no
// Hugging Face counterpart keep their GGUF name, so that the loader reports them. `config` must be
// GgufModelConfig(*checkpoint). InvalidArgument naming the file and the tensor (as llama.cpp names
// it) when one the config needs is missing. The checkpoint is shared with the returned object.
absl::StatusOr<std::unique_ptr<CheckpointTensors>> OpenGgufTensors(std::shared_ptr<const GgufCheckpoint> checkpoint,
                                                                   const ModelConfig& config);

}  // namespace lesion::model

#endif  // LESION_MODEL_GGUF_CHECKPOINT_H_
