// Tokenizers in C++ with no Python at run time: byte-level BPE (GPT-2, LLaMA 3, Qwen2) and
// SentencePiece BPE (LLaMA 2, llama2.c). LoadTokenizer picks the right one for a model directory.
//
//   ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tok, LoadTokenizer("models/stories260K"));
//   ASSIGN_OR_RETURN(std::vector<int32_t> ids, tok->Encode("Once upon a time"));
//
// A Tokenizer is immutable after creation; every method is thread-safe.
#ifndef LESION_EXPERIMENTS_TOKENIZER_TOKENIZER_H_
#define LESION_EXPERIMENTS_TOKENIZER_TOKENIZER_H_

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace lesion::experiments {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Text -> ids; never adds BOS/EOS. InvalidArgument for text that is not valid UTF-8.
  virtual absl::StatusOr<std::vector<int32_t>> Encode(absl::string_view text) const = 0;
  // Ids -> text. InvalidArgument naming the id if one is out of range.
  virtual absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids) const = 0;
  virtual int32_t vocab_size() const = 0;
  virtual std::optional<int32_t> bos_id() const = 0;
  virtual std::optional<int32_t> eos_id() const = 0;
  virtual absl::string_view kind() const = 0;  // "byte_level_bpe" | "sentencepiece_bpe"
};

// Loads the tokenizer of a model directory, trying in order: tokenizer.json (BPE with a ByteLevel
// pre-tokenizer), vocab.json + merges.txt, tokenizer.model (SentencePiece), tokenizer.bin
// (llama2.c). BOS/EOS ids come from the tokenizer or from config.json's bos/eos_token_id.
// NotFound if the directory holds none of these; InvalidArgument / DataLoss naming the file for
// malformed or unsupported ones.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::filesystem::path& model_dir);

// Byte-level BPE from GPT-2's vocab.json + merges.txt.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadByteLevelBpe(const std::filesystem::path& vocab_json,
                                                           const std::filesystem::path& merges_txt);
// Byte-level BPE from a Hugging Face tokenizer.json.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizerJson(const std::filesystem::path& path);
// SentencePiece BPE from a serialized ModelProto (tokenizer.model).
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadSentencePieceModel(const std::filesystem::path& path);
// SentencePiece BPE from llama2.c's tokenizer.bin. `vocab_size` (from the model's config) bounds the
// records read; without it records are read to the end of the file.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadLlama2cTokenizer(const std::filesystem::path& path,
                                                               std::optional<int32_t> vocab_size);

// A serialized SentencePiece ModelProto equivalent to a llama2.c tokenizer.bin (BPE, byte
// fallback, dummy prefix, "\u2581" for spaces, <unk>/<s>/</s> at 0/1/2), so a converted model
// directory carries a tokenizer.model that `sentencepiece` and HF's LlamaTokenizer load.
absl::StatusOr<std::string> Llama2cTokenizerBinToModelProto(const std::filesystem::path& path);

}  // namespace lesion::experiments

#endif  // LESION_EXPERIMENTS_TOKENIZER_TOKENIZER_H_
