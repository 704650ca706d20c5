// Converts a llama2.c checkpoint (Karpathy's legacy "version 0" .bin: 7 x int32 header, then float32
// arrays) and its tokenizer.bin into a Hugging Face LLaMA directory: config.json,
// model.safetensors (float32) and tokenizer.model (SentencePiece protobuf), loadable by lesion and by
// transformers' LlamaForCausalLM / LlamaTokenizer.
//
// llama2.c applies rotary embeddings to interleaved pairs (x[2i], x[2i+1]); HF rotates halves
// (x[i], x[i + hd/2]). The rows of wq and wk are permuted per head so that the HF model computes
// exactly the same function. The converter checks that the file's freq_cis tables are the standard
// theta = 10000 rotary tables and refuses files that are not.
//
// Errors: NotFound for missing inputs, DataLoss for a size that does not match the header,
// InvalidArgument for an inconsistent header. Writes nothing unless all checks pass.
#ifndef LESION_MODEL_LLAMA2C_CONVERTER_H_
#define LESION_MODEL_LLAMA2C_CONVERTER_H_

#include <filesystem>

#include "absl/status/status.h"

namespace lesion::model {

absl::Status ConvertLlama2cCheckpoint(const std::filesystem::path& checkpoint_bin,
                                      const std::filesystem::path& tokenizer_bin, const std::filesystem::path& out_dir);

}  // namespace lesion::model

#endif  // LESION_MODEL_LLAMA2C_CONVERTER_H_
